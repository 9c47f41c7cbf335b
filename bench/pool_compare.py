"""A first comparison for the pool (not yet a ``python -m bench`` suite): four fake vLLM servers
(one twice as fast) behind nobusy, balanced by its power of two choices over in-flight × TTFT
(``kind: openai``) and by placement (``kind: vllm``), on multi-turn chats that share long
system prompts (RAG-like). Prefix-cache hit rate as the fakes count it, TTFT at the client.

    PYTHONPATH=src python -m bench.pool_compare [--conversations 32] [--turns 5]

Each policy gets fresh fakes (cold caches); 16 system prompts of ~3 KB, each fake's cache
holds ~8 of them. No cloud tier, no LiteLLM, no idle-while-waiting figure yet: the issue's
full benchmark (``python -m bench --only pool``) is the next step.

Measured 2026-12-07 on the shared 2-core build machine (load average 8 – 14), 32 conversations
of 5 turns, twice: power of two: hit rate 32.3% / 31.4%, TTFT p50 433 / 404 ms, p95 1165 /
1017 ms; placement: hit rate 83.5% / 83.9%, p50 193 / 141 ms, p95 1100 / 756 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from nobusy.upstreams.server_metrics import parse_metrics

PROMPTS = [
    f"Handbook {i}: " + f"rule {i} says to be careful with section {i}. " * 60 for i in range(16)
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], folder: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    log = (folder / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nobusy", *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        cwd=folder,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{name} did not start: see {folder / name}.log")


async def _conversation(client: openai.AsyncOpenAI, i: int, turns: int, ttfts: list[float]) -> None:
    rng = random.Random(i)
    messages = [{"role": "system", "content": PROMPTS[i % len(PROMPTS)]}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Conversation {i}, question {turn}?"})
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="pool",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        )
        first = None
        text = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                text.append(chunk.choices[0].delta.content)
        ttfts.append((first or time.perf_counter()) - start)
        messages.append({"role": "assistant", "content": "".join(text)})
        await asyncio.sleep(rng.uniform(0.05, 0.3))  # the user reads, then asks again


def run(kind: str, conversations: int, turns: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix=f"pool-{kind}-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fakes = {}
        speeds = [("a", 0.00025, 0.005)] + [(n, 0.0005, 0.01) for n in ("b", "c", "d")]
        for name, prefill, gap in speeds:  # a is twice as fast
            args = ["fake-upstream", "--server", "vllm", "--capacity", "4", "--tokens", "20"]
            args += ["--prefill-per-token", str(prefill), "--chunk-delay", str(gap)]
            args += ["--cache-blocks", "400"]
            proc, port = _start(args, folder, name)
            procs.append(proc)
            fakes[name] = port
        lines = [
            f"  {n}: {{kind: {kind}, base_url: 'http://127.0.0.1:{p}/v1', "
            "default_model: fake-model, first_token_timeout: 60}"
            for n, p in fakes.items()
        ]
        config = "upstreams:\n" + "\n".join(lines) + "\nmodels:\n  pool: [[a, b, c, d]]\n"
        (folder / "nobusy.yaml").write_text(config)
        server, port = _start(
            ["serve", "--config", "nobusy.yaml", "--data-dir", "data"], folder, "nobusy"
        )
        procs.append(server)
        time.sleep(1.5)  # the servers' metrics read once
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        ttfts: list[float] = []

        async def all_of_them() -> None:
            await asyncio.gather(
                *(_conversation(client, i, turns, ttfts) for i in range(conversations))
            )

        asyncio.run(all_of_them())
        hits = queries = 0.0
        for fake in fakes.values():
            reading = parse_metrics("vllm", httpx.get(f"http://127.0.0.1:{fake}/metrics").text)
            hits += reading.cache_hits or 0.0
            queries += reading.cache_queries or 0.0
        ttfts.sort()
        return {
            "hit_rate": hits / queries if queries else 0.0,
            "ttft_p50_ms": statistics.median(ttfts) * 1000,
            "ttft_p95_ms": ttfts[int(len(ttfts) * 0.95) - 1] * 1000,
            "requests": len(ttfts),
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    for label, kind in (("power of two (in-flight x TTFT)", "openai"), ("placement", "vllm")):
        figures = run(kind, args.conversations, args.turns)
        print(
            f"{label:34} hit rate {figures['hit_rate']:.1%}  TTFT p50 "
            f"{figures['ttft_p50_ms']:.0f} ms  p95 {figures['ttft_p95_ms']:.0f} ms  "
            f"({figures['requests']:.0f} requests)",
            flush=True,
        )


if __name__ == "__main__":
    main()
