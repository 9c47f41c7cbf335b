"""Server-aware kinds ``vllm``, ``sglang``, ``llamacpp``: the openai kind plus the server's load.

On the wire they are the openai kind (``upstreams.openai``), so streaming, errors and usage
are its. Besides, a poller reads the server's Prometheus ``/metrics`` about once a second, off
the request path (``upstreams.server_metrics``: one table of metric names per server and
version), into ``signals``, which each answer corrects in between. A metrics endpoint that is
missing, slow or reports nonsense is ignored with one warning (and one line when it recovers);
the server's signals then go stale and placement falls back to the learned limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import aiohttp
import orjson
from pydantic import AnyHttpUrl, Field, PositiveFloat, PositiveInt

from nobusy.upstreams import openai
from nobusy.upstreams.base import Chunk, Probe, UpstreamCall
from nobusy.upstreams.http import phrase
from nobusy.upstreams.server_metrics import METRICS, BadReading, ServerSignals, parse_metrics

__all__ = ["ServerSettings", "ServerUpstream"]

log = logging.getLogger("nobusy.upstreams.servers")
_MODELS_EVERY = 30  # polls between two reads of /v1/models


class ServerSettings(openai.Settings):
    """A local inference server speaking the OpenAI API and exporting Prometheus metrics."""

    kind: str = Field(description="vllm, sglang or llamacpp.")  # type: ignore[assignment]
    metrics_url: AnyHttpUrl | None = Field(
        None, description="The server's Prometheus page (default: base_url's host + /metrics)."
    )
    metrics_interval: PositiveFloat = Field(
        1.0, description="Seconds between two reads of the server's metrics."
    )
    metrics_timeout: PositiveFloat = Field(
        0.5, description="Seconds a metrics read may take before it is ignored."
    )
    slots: PositiveInt | None = Field(
        None,
        description=(
            "Requests the server runs at once (vLLM max_num_seqs, SGLang max_running_requests, "
            "llama.cpp --parallel); none: llama.cpp's /slots, else the learned limit."
        ),
    )


class ServerUpstream(openai.Upstream):
    """The openai kind, with ``signals``: the server's load as its own metrics tell it."""

    kind: ClassVar[str] = "vllm"

    def __init__(self, name: str, settings: ServerSettings) -> None:
        super().__init__(name, settings)
        self.server_settings = settings
        stale = 3 * settings.metrics_interval + settings.metrics_timeout
        self.signals = ServerSignals(stale_after=stale, slots=settings.slots)
        root = str(settings.base_url).rstrip("/").removesuffix("/v1")
        self._metrics_url = str(settings.metrics_url) if settings.metrics_url else root + "/metrics"
        self._slots_url = root + "/slots"
        self._poller: asyncio.Task[None] | None = None
        self._polls = 0

    async def start(self) -> None:
        await super().start()
        self._poller = asyncio.create_task(self._poll_forever(), name=f"nobusy-metrics-{self.name}")

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        # Between two polls each request started and ended moves the load estimate.
        signals = self.signals
        signals.delta += 1
        try:
            async for chunk in super().stream(call):
                yield chunk
        finally:
            signals.delta -= 1

    async def _poll_forever(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.server_settings.metrics_interval)

    async def poll(self) -> None:
        """Read the metrics once; a bad read is ignored (warned once) and the signals go stale."""
        settings, signals = self.server_settings, self.signals
        if self._polls % _MODELS_EVERY == 0:
            probe = await super().probe()
            if probe.ok:
                signals.models = tuple(probe.models)
        self._polls += 1
        served = (self.default_model,) if self.default_model else ()
        try:
            async with asyncio.timeout(settings.metrics_timeout):
                text = await self._get(self._metrics_url)
                reading = parse_metrics(self.kind, text, served)
                if self.kind == "llamacpp" and settings.slots is None:
                    signals.slots = await self._slot_count()
        except TimeoutError:
            self._ignore(f"no answer within {settings.metrics_timeout:g} s")
        except aiohttp.ClientError as exc:
            self._ignore(f"unreachable ({phrase(exc)})")
        except BadReading as exc:
            self._ignore(str(exc))
        else:
            if signals.problem:
                log.info("upstream %s: metrics readable again", self.name)
            signals.reading, signals.at, signals.delta = reading, time.monotonic(), 0
            signals.problem = ""

    async def probe(self) -> Probe:
        """The openai kind's probe, then the metrics page: a server of another kind than the
        config says (its metric names are another server's) is said plainly."""
        probe = await super().probe()
        if not probe.ok:
            return probe
        try:
            async with asyncio.timeout(self.server_settings.metrics_timeout * 4):
                text = await self._get(self._metrics_url)
        except (TimeoutError, aiohttp.ClientError, BadReading) as exc:
            probe.detail = f"metrics unreadable ({exc or 'timed out'}): placed by the learned limit"
            return probe
        try:
            parse_metrics(self.kind, text)
        except BadReading as exc:
            others = [k for k in METRICS if k != self.kind and _parses(k, text)]
            if others:
                probe.ok = False
                probe.detail = (
                    f"its metrics are {others[0]}'s, not {self.kind}'s: set kind: {others[0]}"
                )
            else:
                probe.detail = f"metrics ignored ({exc}): placed by the learned limit"
        return probe

    def _ignore(self, problem: str) -> None:
        signals = self.signals
        if problem != signals.problem:
            log.warning(
                "upstream %s: metrics at %s ignored: %s; using the learned limit",
                self.name,
                self._metrics_url,
                problem,
            )
        signals.problem = problem
        signals.reading = None

    async def _get(self, url: str) -> str:
        async with self._client().get(url, headers={"accept": "text/plain"}) as response:
            if response.status != 200:
                raise BadReading(f"HTTP {response.status}")
            return await response.text()

    async def _slot_count(self) -> int | None:
        try:
            slots = orjson.loads(await self._get(self._slots_url))
        except (BadReading, orjson.JSONDecodeError):
            return None
        return len(slots) if isinstance(slots, list) and slots else None

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await super().aclose()


def _parses(kind: str, text: str) -> bool:
    try:
        parse_metrics(kind, text)
    except BadReading:
        return False
    return True
