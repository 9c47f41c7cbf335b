"""Guard: sensitive-word filtering speed, its cost per streamed chunk, evasions and misses.

In-process, no server: a seeded 10,000-word lexicon (9,950 Chinese words of 2–6 common
characters, 50 Latin ones) against ~1 MB of generated Chinese. Every figure comes with a
baseline from the same run: matching without normalization, and checking each chunk alone
without hold-back, as peers do. ``python -m bench.suites.guard [--quick]`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import ahocorasick_rs
import opencc

from bench.suites.base import Context, Goal, Result, Suite, at_least, at_most, fmt, md_table
from nobusy.guard import Hit, Matcher, StreamFilter
from nobusy.guard.lexicon import Entry
from nobusy.guard.normalize import normalize

__all__ = ["SUITE", "measure", "run"]

SEED = 7
WORDS = 10_000
LATIN_WORDS = 50
EVASION_WORDS = 200  # 150 Chinese, 50 Latin
MB_TARGET = 20.0
EVASION_TARGET = 99.0
# The 3,755 most used characters (GB2312 level 1), in the codec's order.
COMMON = [
    bytes([high, low]).decode("gb2312")
    for high in range(0xB0, 0xD8)
    for low in range(0xA1, 0xFF)
    if (high, low) < (0xD7, 0xFA)
]
PUNCTUATION = "，。、；！？：“”"
LOOKALIKES = {"a": "аα", "c": "сϲ", "e": "е", "i": "іι", "o": "оο", "p": "рρ", "x": "хχ", "y": "у"}
SEPARATORS = {
    "spaces": [" ", "  ", "\u3000", "\t", "\u00a0"],
    "symbols": list("*-_.·/|~!@#$%^&，。★♥【】") + ["😀"],
    "zero-width": ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"],
    "full-width": ["\u3000", "＊", "．", "－", "／"],
}


def _lexicon(rng: random.Random) -> list[str]:
    chinese: set[str] = set()
    while len(chinese) < WORDS - LATIN_WORDS:
        chinese.add("".join(rng.choices(COMMON, k=rng.randint(2, 6))))
    latin: set[str] = set()
    while len(latin) < LATIN_WORDS:
        latin.add("".join(rng.choices("acdeghiklmnoprstuvxyz", k=rng.randint(5, 9))))
    return sorted(chinese) + sorted(latin)


def _corpus(rng: random.Random, size: int, words: list[str], rate: float) -> str:
    """Sentences of random common characters; after a share ``rate`` of them, a word."""
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = "".join(rng.choices(COMMON, k=rng.randint(6, 24)))
        if rng.random() < rate:
            sentence += rng.choice(words)
        sentence += rng.choice(PUNCTUATION)
        parts.append(sentence)
        length += len(sentence.encode())
    return "".join(parts)


def _chunks(rng: random.Random, text: str, low: int, high: int) -> list[str]:
    out: list[str] = []
    position = 0
    while position < len(text):
        size = rng.randint(low, high)
        out.append(text[position : position + size])
        position += size
    return out


def _best_of(rounds: int, call: Callable[[], object]) -> float:
    """Median seconds of ``rounds`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _stream(matcher: Matcher, chunks: list[str]) -> list[Hit]:
    stream = StreamFilter(matcher)
    hits: list[Hit] = []
    for chunk in chunks:
        hits += stream.feed(chunk).hits
    hits += stream.finish().hits
    return hits


def _alone(matcher: Matcher, chunks: list[str]) -> list[tuple[int, int, str]]:
    """Each chunk checked by itself, as a filter without hold-back does."""
    found: list[tuple[int, int, str]] = []
    offset = 0
    for chunk in chunks:
        found += [(offset + h.start, offset + h.end, h.word) for h in matcher.check(chunk).hits]
        offset += len(chunk)
    return found


def _streaming(matcher: Matcher, text: str, rng: random.Random, rounds: int) -> Result:
    whole = [(h.start, h.end, h.word) for h in matcher.check(text).hits]
    out: Result = {"chars": len(text), "hits": len(whole)}
    for low, high in ((1, 3), (10, 30)):
        chunks = _chunks(rng, text, low, high)
        streamed = [(h.start, h.end, h.word) for h in _stream(matcher, chunks)]
        alone = set(_alone(matcher, chunks))
        guard_s = _best_of(rounds, partial(_stream, matcher, chunks))
        alone_s = _best_of(rounds, partial(_alone, matcher, chunks))
        out[f"{low}-{high}"] = {
            "chunks": len(chunks),
            "us_per_chunk": guard_s / len(chunks) * 1e6,
            "alone_us_per_chunk": alone_s / len(chunks) * 1e6,
            "x_alone": guard_s / alone_s,
            "stream_equals_whole": streamed == whole,
            "missed": len(set(whole) - set(streamed)),
            "alone_missed": len(set(whole) - alone),
        }
    return out


def _variants(word: str, rng: random.Random, traditional: Callable[[str], str]) -> dict[str, str]:
    def joined(kind: str) -> str:
        return "".join(c + rng.choice(SEPARATORS[kind]) for c in word[:-1]) + word[-1]

    def wide(c: str) -> str:
        return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c

    out = {kind: joined(kind) for kind in ("spaces", "symbols", "zero-width")}
    if word.isascii():
        out["full-width"] = "".join(map(wide, word))
        out["case"] = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
        out["homoglyphs"] = "".join(rng.choice(LOOKALIKES.get(c, c)) for c in word)
        disguise = [rng.choice([*LOOKALIKES.get(c, c), wide(c), c.upper()]) for c in word]
    else:
        out["full-width"] = joined("full-width")
        out["traditional"] = "".join(map(traditional, word))
        disguise = [rng.choice([traditional(c), c]) for c in word]
    anything = [s for kind in SEPARATORS.values() for s in kind] + [""]
    out["mixed"] = "".join(c + rng.choice(anything) for c in disguise[:-1]) + disguise[-1]
    return out


def _evasion(matcher: Matcher, raw: ahocorasick_rs.AhoCorasick, words: list[str]) -> Result:
    """Disguised lexicon words in a sentence: how many are still caught, with and without
    normalization."""
    rng = random.Random(SEED + 3)
    to_traditional = opencc.OpenCC("s2t")
    convertible = [w for w in words if not w.isascii() and to_traditional.convert(w) != w]
    chosen = rng.sample(convertible, 150) + [w for w in words if w.isascii()][:50]
    per_kind: dict[str, list[int]] = {}
    missed: list[str] = []
    for word in chosen:
        for kind, variant in _variants(word, rng, to_traditional.convert).items():
            text = f"这是一段话{variant}然后继续"
            caught = any(h.word == word for h in matcher.check(text).hits)
            unnormalized = word in raw.find_matches_as_strings(text)
            counts = per_kind.setdefault(kind, [0, 0, 0])
            counts[0] += 1
            counts[1] += caught
            counts[2] += unnormalized
            if not caught:
                missed.append(f"{kind}: {variant!r} for {word!r}")
    tried = sum(c[0] for c in per_kind.values())
    return {
        "words": len(chosen),
        "variants": tried,
        "caught_pct": sum(c[1] for c in per_kind.values()) / tried * 100,
        "unnormalized_caught_pct": sum(c[2] for c in per_kind.values()) / tried * 100,
        "per_kind": {
            kind: {"variants": c[0], "caught": c[1], "unnormalized": c[2]}
            for kind, c in per_kind.items()
        },
        "missed_examples": missed[:20],
    }


def measure(quick: bool, log: Callable[[str], None] = print) -> Result:
    """Every figure of this suite; ``quick`` shrinks the texts (256 KB) and the rounds."""
    rng = random.Random(SEED)
    size = 256_000 if quick else 1_000_000
    rounds = 3 if quick else 7
    words = _lexicon(rng)
    started = time.perf_counter()
    matcher = Matcher(Entry(word, "generated", None, "mask") for word in words)
    build_ms = (time.perf_counter() - started) * 1000
    raw = ahocorasick_rs.AhoCorasick(
        words,
        matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
        implementation=ahocorasick_rs.Implementation.ContiguousNFA,
    )
    text = _corpus(rng, size, words, rate=0.05)
    clean = _corpus(random.Random(SEED + 1), size, [], rate=0)
    megabytes = len(text.encode()) / 1e6
    log(f"[guard] {len(words):,} words compiled in {build_ms:.0f} ms; {megabytes:.2f} MB of text")

    check_s = _best_of(rounds, lambda: matcher.check(text))
    raw_s = _best_of(rounds, lambda: raw.find_matches_as_indexes(text))
    normalize_s = _best_of(rounds, lambda: normalize(text).text)
    throughput = {
        "mb": megabytes,
        "hits": len(matcher.check(text).hits),
        "mb_per_s": megabytes / check_s,
        "unnormalized_mb_per_s": megabytes / raw_s,
        "normalize_mb_per_s": megabytes / normalize_s,
        "x_unnormalized": raw_s / check_s,
    }
    log(
        f"[guard] check {throughput['mb_per_s']:.1f} MB/s (normalization alone "
        f"{throughput['normalize_mb_per_s']:.1f}, matching without it "
        f"{throughput['unnormalized_mb_per_s']:.1f})"
    )

    # Random common characters form short lexicon words by chance: those are real hits. The
    # ones owed to folding (a word across removed punctuation, say) are the false ones.
    clean_mb = len(clean.encode()) / 1e6
    clean_hits = {(h.start, h.end) for h in matcher.check(clean).hits}
    clean_raw = {(low, high) for _, low, high in raw.find_matches_as_indexes(clean)}
    false_hits = {
        "mb": clean_mb,
        "hits": len(clean_hits),
        "unnormalized_hits": len(clean_raw),
        "folding_only": len(clean_hits - clean_raw),
        "folding_only_per_mb": len(clean_hits - clean_raw) / clean_mb,
        "per_mb": len(clean_hits) / clean_mb,
    }
    log(
        f"[guard] clean text: {len(clean_hits)} hits, {false_hits['folding_only']} of them "
        f"owed to folding ({len(clean_raw)} without normalization)"
    )

    portion = text[: (60_000 if quick else 200_000)]
    streaming = _streaming(matcher, portion, random.Random(SEED + 2), max(rounds // 2, 1))
    for key in ("1-3", "10-30"):
        row = streaming[key]
        log(
            f"[guard] {key} chars per chunk: {row['us_per_chunk']:.1f} µs/chunk "
            f"(alone {row['alone_us_per_chunk']:.1f}); missed {row['missed']} of "
            f"{streaming['hits']} (alone: {row['alone_missed']})"
        )
    evasion = _evasion(matcher, raw, words)
    log(
        f"[guard] evasion: {evasion['caught_pct']:.2f}% of {evasion['variants']} variants caught "
        f"({evasion['unnormalized_caught_pct']:.1f}% without normalization)"
    )
    result: Result = {
        "quick": quick,
        "words": len(words),
        "build_ms": build_ms,
        "throughput": throughput,
        "streaming": streaming,
        "evasion": evasion,
        "false_hits": false_hits,
    }
    result["summary"] = _summary(result)
    return result


def _summary(result: Result) -> list[list[Any]]:
    """(metric, value, target, met) rows; rows without a target are context for the others."""
    t, s, e, f = (result[k] for k in ("throughput", "streaming", "evasion", "false_hits"))
    small, typical = s["1-3"], s["10-30"]
    mb, caught = t["mb_per_s"], e["caught_pct"]
    return [
        ["check throughput incl. normalization (MB/s)", mb, f">= {MB_TARGET:g}", mb >= MB_TARGET],
        ["  x matching without normalization", t["x_unnormalized"], None, None],
        ["µs per chunk, 1-3 chars", small["us_per_chunk"], None, None],
        ["  x each chunk checked alone", small["x_alone"], None, None],
        ["µs per chunk, 10-30 chars", typical["us_per_chunk"], None, None],
        ["  x each chunk checked alone", typical["x_alone"], None, None],
        ["hits missed streaming 1-3 chars", small["missed"], "0", small["missed"] == 0],
        ["  missed checking each chunk alone", small["alone_missed"], None, None],
        ["evasion variants caught (%)", caught, f">= {EVASION_TARGET:g}", caught >= EVASION_TARGET],
        ["  caught without normalization (%)", e["unnormalized_caught_pct"], None, None],
        ["false hits on clean text (per MB)", f["folding_only_per_mb"], None, None],
        ["  hits incl. words formed by chance (per MB)", f["per_mb"], None, None],
    ]


def run(ctx: Context) -> Result:
    return measure(ctx.settings.quick, ctx.log)


def goals(result: Result) -> list[Goal]:
    streaming = result["streaming"]["1-3"]
    return [
        at_least(
            "Guard throughput incl. normalization, 10,000 words",
            result["throughput"]["mb_per_s"],
            MB_TARGET,
            " MB/s",
        ),
        at_least(
            "Guard: disguised words caught", result["evasion"]["caught_pct"], EVASION_TARGET, "%"
        ),
        at_most(
            "Guard: hits missed when streaming 1–3 chars per chunk", streaming["missed"], 0, "hits"
        ),
    ]


def render(result: Result, img: Path) -> str:
    t, s, e, f = (result[k] for k in ("throughput", "streaming", "evasion", "false_hits"))
    intro = (
        f"In-process: {result['words']:,} generated words (compiled in "
        f"{fmt(result['build_ms'], 0)} ms) against {t['mb']:.2f} MB of generated Chinese with "
        f"{t['hits']:,} hits. The baseline for checking is the same automaton on the raw text, "
        "without normalization; for streaming it is each chunk checked alone, with no "
        f"hold-back, as filters that check chunks do. Streaming covers the first "
        f"{s['chars']:,} characters ({s['hits']:,} hits)."
    )

    def speed(value: float) -> str:
        return fmt(value, 1, " MB/s")

    body = [
        ["check, incl. normalization", speed(t["mb_per_s"]), speed(t["unnormalized_mb_per_s"])],
        ["normalization alone", speed(t["normalize_mb_per_s"]), "—"],
    ]
    for key in ("1-3", "10-30"):
        row, label = s[key], key.replace("-", "–")
        per_chunk = [fmt(row[k], 1, " µs/chunk") for k in ("us_per_chunk", "alone_us_per_chunk")]
        body.append([f"stream, {label} chars per chunk", *per_chunk])
        missed = [f"{row[k]:,} of {s['hits']:,}" for k in ("missed", "alone_missed")]
        body.append([f"hits missed, {label} chars per chunk", *missed])
    caught = [fmt(e[k], 2, "%") for k in ("caught_pct", "unnormalized_caught_pct")]
    body.append(["disguised words caught", *caught])
    clean = f"{f['hits']:,}, {f['folding_only']:,} owed to folding"
    body.append(["hits on clean generated text", clean, f"{f['unnormalized_hits']:,}"])
    kinds = [
        [kind, str(c["variants"]), str(c["caught"]), str(c["unnormalized"])]
        for kind, c in e["per_kind"].items()
    ]
    note = (
        "On clean text, random common characters form 2-character lexicon words by chance: "
        "those hits are real. The false ones are owed to folding, mostly a word read across "
        "removed punctuation (一个词。语 → 词语): the price of catching 词，语."
    )
    return "\n\n".join(
        [
            intro,
            md_table(["", "guard", "baseline"], body),
            md_table(["disguise", "variants", "caught", "without normalization"], kinds),
            note,
        ]
    )


SUITE = Suite(
    name="guard",
    title="Guard: sensitive-word filtering",
    run=run,
    render=render,
    goals=goals,
)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suites.guard", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 KB of text, fewer rounds")
    parser.add_argument("--json", action="store_true", help="also print the whole result")
    args = parser.parse_args()
    figures = measure(args.quick)
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2))
    rows = [
        [
            metric,
            fmt(value) if isinstance(value, float) else str(value),
            target or "",
            "" if met is None else ("yes" if met else "NO"),
        ]
        for metric, value, target, met in figures["summary"]
    ]
    print(md_table(["metric", "value", "target", "met"], rows))


if __name__ == "__main__":
    _main()
