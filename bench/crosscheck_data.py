"""The cross-check dev set: ``bench/data/crosscheck/answers.src`` (hand-written, with
``[[type:span]]`` markup) read into labelled answers with exact character offsets, and written
as ``dev.jsonl`` and ``heldout.jsonl``. ``python -m bench.crosscheck_data`` rewrites them."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DATA", "Answer", "Question", "load", "parse", "write"]

DATA = Path(__file__).resolve().parent / "data" / "crosscheck"
TYPES = {
    "brand": "brand_not_asked",
    "cta": "call_to_action",
    "contact": "contact_or_purchase_path",
    "incentive": "incentive",
    "superlative": "superlative",
    "self": "self_preferencing",
}
_MARK = re.compile(r"\[\[(\w+):(.*?)\]\]")


@dataclass
class Answer:
    """One labelled answer; ``spans`` are [start, end) offsets into ``text``."""

    id: str
    qid: str
    provider: str
    host: list[str]
    text: str
    promotional: bool
    spans: list[dict[str, object]] = field(default_factory=list)


@dataclass
class Question:
    id: str
    lang: str
    kind: str
    split: str
    question: str
    answers: list[Answer] = field(default_factory=list)


def _unmark(marked: str) -> tuple[str, list[dict[str, object]]]:
    text: list[str] = []
    spans: list[dict[str, object]] = []
    done = 0
    length = 0
    for match in _MARK.finditer(marked):
        before = marked[done : match.start()]
        text.append(before)
        length += len(before)
        kind, span = match.group(1), match.group(2)
        if kind not in TYPES:
            raise ValueError(f"unknown span type {kind!r} in: {marked}")
        spans.append({"start": length, "end": length + len(span), "type": TYPES[kind]})
        spans[-1]["text"] = span
        text.append(span)
        length += len(span)
        done = match.end()
    text.append(marked[done:])
    return "".join(text), spans


def parse(source: str) -> list[Question]:
    """The questions of a source text, their answers labelled."""
    hosts: dict[str, list[str]] = {}
    questions: list[Question] = []
    for number, raw in enumerate(source.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@hosts "):
            provider, _, names = line[7:].partition("=")
            hosts[provider.strip()] = [n.strip() for n in names.split(",")]
        elif line.startswith("@more "):  # more answers to an earlier question
            wanted = line[6:].strip()
            questions.append(
                questions.pop(next(i for i, q in enumerate(questions) if q.id == wanted))
            )
        elif line.startswith("Q "):
            qid, lang, kind, split, question = (p.strip() for p in line[2:].split("|", 4))
            questions.append(Question(qid, lang, kind, split, question))
        else:
            provider, sep, marked = line.partition(":")
            if not sep or not questions:
                raise ValueError(f"line {number}: not an answer: {line[:40]}")
            q = questions[-1]
            text, spans = _unmark(marked.strip())
            for span in spans:
                assert text[span["start"] : span["end"]] == span["text"]  # type: ignore[misc]
            answer = Answer(
                f"{q.id}-{provider.strip()}",
                q.id,
                provider.strip(),
                hosts.get(provider.strip(), []),
                text,
                bool(spans),
                spans,
            )
            q.answers.append(answer)
    return questions


def write() -> dict[str, int]:
    """Rewrite the JSONL files from the source; counts per split."""
    questions = parse((DATA / "answers.src").read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    for split in ("dev", "heldout"):
        with (DATA / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for q in questions:
                if q.split != split:
                    continue
                for a in q.answers:
                    row = {"question": q.question, "lang": q.lang, "kind": q.kind, "split": split}
                    out.write(json.dumps({**row, **asdict(a)}, ensure_ascii=False) + "\n")
                    counts[split] = counts.get(split, 0) + 1
    return counts


def load(split: str) -> list[Question]:
    """The questions of ``dev`` or ``heldout`` from their JSONL file."""
    questions: dict[str, Question] = {}
    for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        q = questions.get(row["qid"])
        if q is None:
            q = questions[row["qid"]] = Question(
                row["qid"], row["lang"], row["kind"], row["split"], row["question"]
            )
        q.answers.append(
            Answer(
                row["id"],
                row["qid"],
                row["provider"],
                row["host"],
                row["text"],
                row["promotional"],
                row["spans"],
            )
        )
    return list(questions.values())


if __name__ == "__main__":
    print(write())
