"""Reload under load: the routing table swapped while streams run on the upstream it removes.

nobusy in front of one fake upstream (answers of 20 chunks, 50 ms apart: a stream lasts about
a second), defined as upstream ``a`` or as upstream ``b``, the one route of alias ``m``. 16
client threads stream from the alias without pause; every 0.5 s the bench rewrites the config
file with the other name and asks ``POST /v1/nobusy/reload``: each reload removes the upstream
every running stream is on (those must finish there) and adds the one the next streams take.
A stream is *broken* when it errors or ends without its finish reason and all 20 chunks.
The reload time is the server's own (settings built, new upstreams started, table swapped)
and the round trip of the admin call.

``python -m bench --only reload`` runs it alone.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

from bench import procs
from bench.loadgen import percentile
from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table

__all__ = ["SUITE", "run"]

CLIENTS = 16
TOKENS = 20
EVERY = 0.5  # seconds between reloads


def _config(port: int, first: bool) -> str:
    """The alias's one upstream is ``a`` or ``b``: each reload removes the upstream every
    running stream is on, and adds the one the next streams take."""
    url = f"http://{procs.HOST}:{port}/v1"
    name = "a" if first else "b"
    return (
        f'upstreams:\n  {name}: {{kind: openai, base_url: "{url}", default_model: ok}}\n'
        f"models:\n  m: [{name}]\n"
    )


def run(ctx: Context) -> Result:
    seconds = 8.0 if ctx.settings.quick else 30.0
    fake = ctx.procs.fake_upstream(TOKENS, name="reload-fake", extra=["--chunk-delay", "0.05"])
    path = ctx.procs.run_dir / "reload-nobusy.yaml"
    proc = ctx.procs.nobusy("reload-nobusy", None, config=_config(fake.port, True))
    base = f"http://{procs.HOST}:{proc.port}"
    done = threading.Event()
    lock = threading.Lock()
    streams = {"ok": 0, "broken": 0}
    errors: list[str] = []
    by_upstream: dict[str, int] = {}

    def client() -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                chunks, finished, why = 0, False, ""
                upstream = "?"
                try:
                    with http.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                        upstream = r.headers.get("x-nobusy-upstream", "?")
                        for line in r.iter_lines():
                            if not line.startswith("data: {"):
                                continue
                            event = orjson.loads(line[6:])
                            if "error" in event:
                                why = str(event["error"])
                            for choice in event.get("choices") or ():
                                chunks += bool(choice.get("delta", {}).get("content"))
                                finished = finished or choice.get("finish_reason") == "stop"
                        why = why or ("" if r.status_code == 200 else f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    why = f"{type(exc).__name__}: {exc}"
                whole = finished and chunks == TOKENS and not why
                with lock:
                    streams["ok" if whole else "broken"] += 1
                    by_upstream[upstream] = by_upstream.get(upstream, 0) + 1
                    if not whole and len(errors) < 5:
                        errors.append(why or f"{chunks} chunks, finished={finished}")

    server_s: list[float] = []
    round_trip_s: list[float] = []
    refused = 0
    try:
        with ThreadPoolExecutor(CLIENTS) as pool, httpx.Client(timeout=30) as admin:
            futures = [pool.submit(client) for _ in range(CLIENTS)]
            end = time.monotonic() + seconds
            first = True
            while time.monotonic() < end:
                time.sleep(EVERY)
                first = not first
                path.write_text(_config(fake.port, first))
                started = time.perf_counter()
                answer = admin.post(f"{base}/v1/nobusy/reload")
                round_trip_s.append(time.perf_counter() - started)
                if answer.status_code == 200:
                    server_s.append(answer.json()["seconds"])
                else:
                    refused += 1
            done.set()
            for future in futures:
                future.result()
    finally:
        done.set()
        ctx.procs.stop(proc)
        ctx.procs.stop(fake)
    result: Result = {
        "seconds": seconds,
        "clients": CLIENTS,
        "reloads": len(server_s),
        "refused": refused,
        "streams": streams["ok"] + streams["broken"],
        "broken": streams["broken"],
        "errors": errors,
        "by_upstream": by_upstream,
        "server_ms_p50": statistics.median(server_s) * 1000 if server_s else None,
        "server_ms_p95": percentile(sorted(server_s), 95) * 1000 if server_s else None,
        "round_trip_ms_p50": statistics.median(round_trip_s) * 1000 if round_trip_s else None,
        "round_trip_ms_p95": percentile(sorted(round_trip_s), 95) * 1000 if round_trip_s else None,
    }
    ctx.log(f"[reload] {result}")
    return result


def goals(result: Result) -> list[Goal]:
    return [
        at_most("streams broken by reloads under load", result["broken"], 0, "streams"),
        at_most("reloads refused (every config was valid)", result["refused"], 0, "reloads"),
    ]


def render(result: Result, img: Path) -> str:
    intro = (
        f"{result['clients']} client threads streaming for {result['seconds']:g} s "
        f"({TOKENS} chunks 50 ms apart each) from an alias whose one upstream is renamed, `a` "
        "to `b` and back, by each reload (`POST /v1/nobusy/reload` every "
        f"{EVERY:g} s): each reload removes the upstream every running stream is on. Streams "
        "answered per upstream: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(result["by_upstream"].items()))
        + "."
    )
    body = [
        [
            str(result["reloads"]),
            str(result["streams"]),
            str(result["broken"]),
            fmt(result["server_ms_p50"]),
            fmt(result["server_ms_p95"]),
            fmt(result["round_trip_ms_p50"]),
            fmt(result["round_trip_ms_p95"]),
        ]
    ]
    headers = ["reloads", "streams", "broken", "reload ms p50", "p95",
               "admin call ms p50", "p95"]  # fmt: skip
    return intro + "\n\n" + md_table(headers, body)


SUITE = Suite(
    name="reload",
    title="Reload under load: upstreams removed and added while streams run on them",
    run=run,
    render=render,
    goals=goals,
)
