"""The one protocol every upstream kind implements: a request in, an async iterator of chunks out.

A chunk is one OpenAI ``chat.completion.chunk`` as a dict. Non-streaming answers are built by
collecting the same chunks (``nobusy.routing.relay``), so every kind gets streaming,
non-streaming, first-token detection (``nobusy.routing.attempt``) and mid-stream continuation
(``nobusy.routing.answer``) from one code path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from nobusy.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejectedRequest,
)
from nobusy.money.prices import Price

__all__ = [
    "Chunk",
    "CircuitSettings",
    "Probe",
    "Upstream",
    "UpstreamCall",
    "UpstreamSettings",
    "has_token",
    "is_text_completion",
    "status_error",
    "text_chunk",
]

Chunk = dict[str, Any]


def has_token(chunk: Chunk) -> bool:
    """True when a chunk carries something the client sees, or ends the answer."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason"):
            return True
    return False


def is_text_completion(body: dict[str, Any]) -> bool:
    """Whether an internal request is a text completion (``/v1/completions``): its body is
    the completions body, a ``prompt`` (and maybe a ``suffix``) where chat has ``messages``."""
    return "prompt" in body and "messages" not in body


def text_chunk(text: str, finish: str | None = None) -> Chunk:
    """A piece of a text completion as the internal chunk every kind yields (its text as
    ``delta.content``), so that the relay, continuation and the output guard treat it as chat."""
    delta = {"content": text} if text else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class CircuitSettings(BaseModel):
    """When an upstream is taken out of rotation, and for how long.

    Declared here, beside the other options of an upstream, so that reading an upstream's
    settings does not import the router (``nobusy.routing.circuit`` applies them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consecutive_failures: PositiveInt = Field(
        5, description="Consecutive failed attempts that open the circuit."
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of failed attempts in the window that opens it."
    )
    min_requests: PositiveInt = Field(
        20, description="Attempts needed in the window before the failure rate counts."
    )
    window: PositiveFloat = Field(30.0, description="Seconds of history for the failure rate.")
    ejection: PositiveFloat = Field(
        30.0, description="Seconds out of rotation on the first ejection; multiplied by n."
    )
    max_ejection: PositiveFloat = Field(300.0, description="Longest ejection, in seconds.")


class UpstreamSettings(BaseModel):
    """Options every upstream kind accepts; each kind subclasses this with its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(
        description="Which upstream plugin serves this source (openai, embedded, ...)."
    )
    enabled: bool = Field(
        True,
        description="false: kept in the config, but sent no request (the console's Disable); "
        "its routes are skipped.",
    )
    first_token_timeout: PositiveFloat = Field(
        30.0, description="Seconds from an attempt's start to its first token before failing over."
    )
    idle_timeout: PositiveFloat = Field(
        60.0, description="Longest gap between two tokens, in seconds, before the attempt fails."
    )
    max_concurrency: PositiveInt | None = Field(
        None, description="Ceiling on requests in flight to this upstream (none: unlimited)."
    )
    rpm: PositiveInt | None = Field(
        None,
        description=(
            "Requests per minute this upstream accepts from nobusy, all replicas together "
            "(its account's RPM); past it the next route is tried, or the request waits."
        ),
    )
    tpm: PositiveInt | None = Field(
        None,
        description=(
            "Tokens per minute this upstream accepts from nobusy, all replicas together "
            "(estimated when sent, corrected by the usage it reports)."
        ),
    )
    continuation: Literal["auto", "prefix", "vllm", "none"] = Field(
        "auto",
        description=(
            "How this upstream continues a partial answer after a failover: `auto` probes "
            "it once, on first need, and uses the native mode seen to work, else `none`."
        ),
    )
    circuit: CircuitSettings = Field(
        default_factory=CircuitSettings,
        description="When to eject this upstream, and for how long.",
    )
    health_check_interval: PositiveFloat | None = Field(
        None, description="Seconds between active health probes (none: passive checks only)."
    )
    embeddings: bool = Field(
        False,
        description="This upstream serves `POST /v1/embeddings` too: an alias's routes to it "
        "answer embedding requests, with failover, like chat.",
    )
    local: bool = Field(
        False,
        description="This upstream runs on premises (vLLM, llama.cpp on the LAN): passages of "
        "`local_only` vector stores may be sent to it. The embedded kind always is.",
    )
    completions: bool = Field(
        False,
        description=(
            "Serves `/v1/completions` (a prompt to continue): only such routes get a "
            "completions request."
        ),
    )
    fim: bool = Field(
        False,
        description=(
            "Serves fill-in-the-middle (`/v1/completions` with `suffix`), as DeepSeek's "
            "`/beta` does: only such routes get a request with a suffix."
        ),
    )
    vision: bool = Field(
        True,
        description=(
            "Takes images in messages; `false` (a text-only model) skips this upstream for a "
            "request with an image. A route may say otherwise for its model."
        ),
    )
    price: Price | None = Field(
        None,
        description="What this upstream's tokens cost, per million (none: free); see "
        "docs/money.md. Also what spilling to its tier costs (`nobusy pool`).",
    )
    tier: int | None = Field(
        None,
        ge=0,
        description="Where this upstream ranks in every alias that routes to it, lower first "
        "(e.g. local servers 0, a cloud account 1); none: its place in the alias's list.",
    )

    # A kind that continues a partial answer by construction names how (embedded: raw
    # completion after the chat template); None: by the `continuation` setting.
    native_continuation: ClassVar[str | None] = None
    # How the failover note names this kind's `prefix`/`vllm` continuation when it is not
    # those request fields (anthropic: a trailing assistant turn, the Messages API's prefill).
    continuation_label: ClassVar[str | None] = None

    def has_default_model(self) -> bool:
        """Whether a route may name this upstream alone, without a model."""
        return True


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt at one upstream: the validated request body with the route's model in it."""

    model: str | None
    body: dict[str, Any]
    request_id: str = ""


@dataclass(slots=True)
class Probe:
    """What ``nobusy check`` learns from probing an upstream."""

    ok: bool
    latency_ms: float
    models: list[str] = field(default_factory=list)
    detail: str = ""


@runtime_checkable
class Upstream(Protocol):
    """A model source. ``stream`` must translate every foreign error into ``nobusy.errors``.

    These are all the members the router and the app use; each kind implements every one."""

    kind: ClassVar[str]
    name: str
    default_model: str

    @property
    def settings(self) -> UpstreamSettings:
        """This upstream's options: the router reads its timeouts and continuation mode here."""
        ...

    async def start(self) -> None:
        """Get ready to serve, once at app start-up (load a model; a no-op for most kinds)."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Yield the answer as OpenAI chunks; closing the iterator cancels the request."""
        ...

    async def probe(self) -> Probe:
        """Check that the upstream answers and list the models it offers."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...


def status_error(
    status: int, message: str, upstream: str, retry_after: float | None = None
) -> UpstreamError:
    """What an upstream's HTTP error ``status`` means for failover: busy (try elsewhere, teach
    the limit), refused credentials, a request no upstream would take, or any other failure.

    The one table for every kind that speaks HTTP, and for ``nobusy.testing``'s double.
    """
    text = f"HTTP {status}: {message}"
    if status in (429, 503, 529):
        return UpstreamOverloaded(text, upstream=upstream, status=status, retry_after=retry_after)
    if status in (401, 403):
        return UpstreamAuthFailed(text, upstream=upstream, status=status)
    if status in (400, 413, 422):
        return UpstreamRejectedRequest(message, upstream=upstream, status=status)
    return UpstreamError(text, upstream=upstream, status=status, retry_after=retry_after)
