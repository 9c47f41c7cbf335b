"""A closed-loop HTTP/1.1 load generator: asyncio + uvloop + httptools, no HTTP client library.

``concurrency`` keep-alive connections each send the same request back to back. A run lasts
``warmup`` seconds (not recorded; longer if some connection has had no answer yet) plus
``duration`` seconds (the window), or until ``requests`` requests were sent when a count is
given instead. A slow path answers a whole wave of connections at once, so a short window
would count one wave more or less; the window is stretched to ``min_round_trips`` times the
median latency seen in the warm-up (at most to ``max_window`` seconds). Responses are parsed by
``httptools.HttpResponseParser``, which handles Content-Length and chunked bodies.

What is recorded per request (``RequestRecord``):

- ``latency``: from writing the request to the end of the response body;
- ``ttft`` (streams only): until the first body piece that completes a non-empty
  ``"content"`` string, i.e. the first content token after the role chunk (whose content is
  ``""``); a chunk split across reads is found once its tail arrives;
- ``events``: SSE ``data:`` lines in the body, not counting ``data: [DONE]``;
- ``status``: the HTTP status (0 when the connection failed).

Throughput is the number of successful responses (status 200, complete body) whose last byte
arrived inside the window, divided by the window's length; latency percentiles come from the
requests that started inside the window (those in flight at its end are waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
import uvloop

__all__ = [
    "LoadResult",
    "LoadSpec",
    "Percentiles",
    "RequestRecord",
    "Sent",
    "Timeline",
    "chat_body",
    "percentile",
    "run_load",
    "run_open",
    "run_timed",
]

# `"content":` then an opening quote and at least one character that is not the closing quote.
_CONTENT = re.compile(rb'"content"\s*:\s*"(?:[^"\\]|\\.)')
_DONE = b"data: [DONE]"
_CONNECT_TIMEOUT = 10.0


def chat_body(
    model: str, stream: bool, prompt: str = "Hello", **extra: object
) -> dict[str, object]:
    """The chat request every path receives (a dict, to be serialised by the caller)."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    body.update(extra)
    return body


@dataclass(frozen=True)
class LoadSpec:
    """One target: where to send what."""

    port: int
    body: bytes
    stream: bool
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/v1/chat/completions"
    host: str = "127.0.0.1"

    def payload(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it; times in seconds (``start`` on perf_counter)."""

    start: float
    latency: float
    ttft: float | None
    events: int
    status: int


@dataclass(frozen=True)
class Percentiles:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Percentiles | None:
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            mean=sum(ordered) / len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )


@dataclass
class LoadResult:
    """The summary of one run against one target. Latencies are in seconds."""

    concurrency: int
    stream: bool
    duration: float
    completed: int
    errors: int
    rps: float
    events_per_s: float
    latency: Percentiles | None
    ttft: Percentiles | None
    events_per_request: float
    statuses: dict[str, int]
    loadgen_cpu: float  # the bench process's CPU seconds per second of window (1.0 = one core)
    records: list[RequestRecord] = field(default_factory=list, repr=False)


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends the payload and waits for the response."""

    def __init__(self, loop: asyncio.AbstractEventLoop, payload: bytes, stream: bool) -> None:
        self.loop = loop
        self.payload = payload
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.keep_alive = True
        self._reset(0.0)

    def _reset(self, start: float) -> None:
        self.start = start
        self.status = 0
        self.ttft: float | None = None
        self.body = bytearray()
        self.scanned = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self.stream:
            return
        self.body += body
        if self.ttft is None:
            # Look again at the last few bytes too: a `"content":"x` may straddle two reads.
            if _CONTENT.search(self.body, max(0, self.scanned - 24)):
                self.ttft = time.perf_counter() - self.start
            self.scanned = len(self.body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self) -> RequestRecord:
        assert self.transport is not None
        start = time.perf_counter()
        self._reset(start)
        self.waiter = self.loop.create_future()
        self.transport.write(self.payload)
        try:
            await self.waiter
        except (OSError, httptools.HttpParserError):
            self.transport.close()
            self.closed = True
            return RequestRecord(start, time.perf_counter() - start, None, 0, 0)
        latency = time.perf_counter() - start
        events = 0
        if self.stream:
            body = bytes(self.body)
            events = body.count(b"\ndata:") + body.startswith(b"data:") - (_DONE in body)
        if not self.keep_alive:
            self.transport.close()
            self.closed = True
        return RequestRecord(start, latency, self.ttft, events, self.status)


async def _connect(loop: asyncio.AbstractEventLoop, spec: LoadSpec) -> _Connection:
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: _Connection(loop, spec.payload(), spec.stream), spec.host, spec.port
        ),
        _CONNECT_TIMEOUT,
    )
    return conn


class _Run:
    def __init__(
        self,
        spec: LoadSpec,
        concurrency: int,
        warmup: float,
        duration: float | None,
        requests: int | None,
    ) -> None:
        self.spec = spec
        self.concurrency = concurrency
        self.warmup = warmup
        self.duration = duration
        self.tickets = requests
        self.records: list[RequestRecord] = []
        self.stop = False
        self.connections: list[_Connection] = []
        self.answered = 0  # connections that have had at least one response
        self.all_answered = asyncio.Event()

    async def worker(self, loop: asyncio.AbstractEventLoop, conn: _Connection) -> None:
        records = self.records
        first = True
        while not self.stop:
            if self.tickets is not None:
                if self.tickets <= 0:
                    return
                self.tickets -= 1
            if conn.closed:
                try:
                    conn = await _connect(loop, self.spec)
                except (OSError, TimeoutError):
                    records.append(RequestRecord(time.perf_counter(), 0.0, None, 0, 0))
                    await asyncio.sleep(0.05)
                    continue
                self.connections.append(conn)
            records.append(await conn.request())
            if first:
                first = False
                self.answered += 1
                if self.answered == self.concurrency:
                    self.all_answered.set()


async def _run(
    spec: LoadSpec,
    concurrency: int,
    warmup: float,
    duration: float | None,
    requests: int | None,
    on_start: Callable[[], None] | None,
    on_end: Callable[[], None] | None,
    drain_timeout: float,
    min_round_trips: float,
    max_window: float,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(spec, concurrency, warmup, duration, requests)
    run.connections = list(
        await asyncio.gather(*(_connect(loop, spec) for _ in range(concurrency)))
    )
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def mark(name: str, hook: Callable[[], None] | None) -> None:
        marks[name] = time.perf_counter()
        times = os.times()
        cpu[name] = times.user + times.system
        if hook is not None:
            hook()

    tasks = [loop.create_task(run.worker(loop, c)) for c in run.connections]
    if duration is not None:
        await asyncio.sleep(warmup)
        # A slow path may not have answered every connection yet: the window starts in the
        # steady state, once each has (or after drain_timeout, whatever happened by then).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_answered.wait(), drain_timeout)
        seen = sorted(r.latency for r in run.records if r.status == 200)
        typical = seen[len(seen) // 2] if seen else 0.0
        window = max(duration, min(min_round_trips * typical, max_window))
        mark("start", on_start)
        await asyncio.sleep(window)
        mark("end", on_end)
        run.stop = True
    else:
        mark("start", on_start)
    done, pending = await asyncio.wait(tasks, timeout=drain_timeout)
    if duration is None:
        mark("end", on_end)
    for conn in run.connections:  # hung requests: abort them, they count as errors
        if conn.transport is not None:
            conn.transport.abort()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return _summarise(run, marks["start"], marks["end"], cpu["end"] - cpu["start"])


def _summarise(run: _Run, t0: float, t1: float, cpu: float) -> LoadResult:
    window = max(t1 - t0, 1e-9)
    inside = [r for r in run.records if t0 <= r.start < t1 or run.duration is None]
    ok = [r for r in inside if r.status == 200]
    finished = sum(1 for r in run.records if r.status == 200 and t0 <= r.start + r.latency <= t1)
    if run.duration is None:
        finished = len(ok)
    events = [r.events for r in ok]
    mean_events = sum(events) / len(events) if events else 0.0
    statuses: dict[str, int] = {}
    for r in inside:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return LoadResult(
        concurrency=run.concurrency,
        stream=run.spec.stream,
        duration=window,
        completed=finished,
        errors=len(inside) - len(ok),
        rps=finished / window,
        events_per_s=finished * mean_events / window,
        latency=Percentiles.of([r.latency for r in ok]),
        ttft=Percentiles.of(ttfts) if run.spec.stream else None,
        events_per_request=mean_events,
        statuses=statuses,
        loadgen_cpu=cpu / window,
        records=run.records,
    )


def run_load(
    spec: LoadSpec,
    concurrency: int,
    *,
    duration: float | None = None,
    warmup: float = 0.0,
    requests: int | None = None,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
    drain_timeout: float = 60.0,
    min_round_trips: float = 0.0,
    max_window: float = 10.0,
    keep_records: bool = False,
) -> LoadResult:
    """Run one load test on a fresh uvloop loop; give ``duration`` or ``requests``.

    ``on_start`` and ``on_end`` are called on the loop at the window's edges (for example to
    read a server's CPU time); keep them quick. ``drain_timeout`` bounds the wait for requests
    still in flight after the window, or for the whole run when counting ``requests``; what is
    still running then is aborted and counted as errors.
    """
    if (duration is None) == (requests is None):
        raise ValueError("give exactly one of duration and requests")
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a full collection over the records would stall every connection at once
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(
                _run(
                    spec,
                    concurrency,
                    warmup,
                    duration,
                    requests,
                    on_start,
                    on_end,
                    drain_timeout,
                    min_round_trips,
                    max_window,
                )
            )
    finally:
        if gc_was_enabled:
            gc.enable()
    if not keep_records:
        result.records = []
    return result


# --- single requests, every body piece timed --------------------------------------------------


@dataclass
class Timeline:
    """One request on its own connection; times in seconds since it started (connect included).

    ``pieces`` are the body as it arrived (chunked encoding removed), each with its arrival
    time; ``error`` says why the response did not complete (``"timed out"``, a reset...).
    """

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    elapsed: float = 0.0
    complete: bool = False
    error: str | None = None

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


class _Timed(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeline: Timeline, start: float) -> None:
        self.timeline = timeline
        self.start = start
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection closed mid-response{f': {exc}' if exc else ''}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.timeline.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.timeline.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.timeline.pieces.append((time.perf_counter() - self.start, bytes(body)))

    def on_message_complete(self) -> None:
        self.timeline.complete = True
        self._finish(None)

    def _finish(self, error: str | None) -> None:
        if not self.done.done():
            self.timeline.error = error
            self.done.set_result(None)


async def _timed(spec: LoadSpec, after: float, timeout: float) -> Timeline:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(after)
    timeline = Timeline()
    start = time.perf_counter()
    protocol: _Timed | None = None
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(
                lambda: _Timed(loop, timeline, start), spec.host, spec.port
            )
            assert protocol.transport is not None
            protocol.transport.write(spec.payload())
            await protocol.done
    except TimeoutError:
        timeline.error = f"timed out after {timeout:g} s"
    except OSError as exc:
        timeline.error = f"connection failed: {exc}"
    finally:
        timeline.elapsed = time.perf_counter() - start
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
    return timeline


def run_timed(requests: list[tuple[float, LoadSpec]], timeout: float) -> list[Timeline]:
    """Send each ``(after, spec)`` on a fresh connection ``after`` seconds from now, all on one
    new uvloop loop, and give each request at most ``timeout`` seconds; the timelines come
    back in the order given. Meant for a few requests whose every token matters, not for load.
    """

    async def main() -> list[Timeline]:
        return list(
            await asyncio.gather(*(_timed(spec, after, timeout) for after, spec in requests))
        )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


# --- open loop: requests sent on a schedule, whatever the answers ----------------------------


@dataclass
class Sent(Timeline):
    """A ``Timeline`` that also knows when it was sent, in seconds since the run began, and
    whether the run's end (not the client's own timeout) cut it off."""

    sent_at: float = 0.0
    cut: bool = False


async def _sent(spec: LoadSpec, sent: Sent, t0: float, after: float, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + after - time.perf_counter()))
    start = time.perf_counter()
    sent.sent_at = start - t0
    protocol: _Timed | None = None
    try:
        async with asyncio.timeout(max(0.0, t0 + deadline - start)):
            _, protocol = await loop.create_connection(
                lambda: _Timed(loop, sent, start), spec.host, spec.port
            )
            assert protocol.transport is not None
            protocol.transport.write(spec.payload())
            await protocol.done
    except TimeoutError:
        sent.error = f"timed out after {time.perf_counter() - start:.1f} s"
    except OSError as exc:
        sent.error = f"connection failed: {exc}"
    finally:
        sent.elapsed = time.perf_counter() - start
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()


async def _tick(lags: list[float], period: float = 0.01) -> None:
    while True:
        due = time.perf_counter() + period
        await asyncio.sleep(period)
        lags.append(max(0.0, time.perf_counter() - due))


def run_open(
    requests: list[tuple[float, LoadSpec, float]],
    cutoff: float | None = None,
    on_start: Callable[[], None] | None = None,
    cutoffs: list[float | None] | None = None,
    lags: list[float] | None = None,
) -> list[Sent]:
    """An open-loop run: each ``(after, spec, timeout)`` is sent on its own connection
    ``after`` seconds from the start, whether or not earlier ones were answered, and given up
    by its client after ``timeout`` seconds. With ``cutoff``, whatever is still running that
    many seconds from the start is aborted and marked ``cut``; ``cutoffs`` gives each request
    its own (None: ``cutoff``). The results come back in the order given; ``on_start`` is
    called on the loop at time zero. ``lags``, when given, receives how late (in seconds) a
    10 ms timer woke on this loop, all run long: the client's own share of the latencies.
    """
    ends = cutoffs if cutoffs is not None else [None] * len(requests)

    async def main() -> list[Sent]:
        results = [Sent() for _ in requests]
        t0 = time.perf_counter()
        if on_start is not None:
            on_start()
        tasks = []
        for (after, spec, timeout), sent, own in zip(requests, results, ends, strict=True):
            deadline = after + timeout
            cut = own if own is not None else cutoff
            if cut is not None and cut < deadline:
                deadline = cut
                sent.cut = True  # provisionally: cleared below if it ended on its own
            tasks.append(asyncio.ensure_future(_sent(spec, sent, t0, after, deadline)))
        ticker = asyncio.ensure_future(_tick(lags)) if lags is not None else None
        await asyncio.gather(*tasks)
        if ticker is not None:
            ticker.cancel()
        for sent in results:
            if sent.cut:
                # Only what was still running when the run ended was cut by it.
                sent.cut = sent.error is not None and sent.error.startswith("timed out")
                if sent.cut:
                    sent.error = "still running at the end of the run"
        return results

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    finally:
        if gc_was_enabled:
            gc.enable()
