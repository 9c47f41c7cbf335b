"""The steps a ``ScriptedUpstream`` plays: one per call, each a way to answer or to fail.

Answers (``Reply``, ``ToolCall``) speak ``text`` if they have one, else the upstream's answer.
Faults after the first token take ``after``: that many pieces of the answer go first (the
answer is ``of``, default ``Reply()``). What each fault raises is in ``scripted``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from nobusy.errors import UpstreamError
from nobusy.upstreams.base import UpstreamCall

__all__ = [
    "Answer",
    "CutAfter",
    "ErrorEvent",
    "Garbage",
    "Hang",
    "KeepAliveOnly",
    "Raise",
    "Refuse",
    "Reply",
    "Script",
    "Slow",
    "Step",
    "ToolCall",
    "Unreachable",
]


@dataclass(frozen=True)
class Reply:
    """A whole answer: optional reasoning, then text, a finish reason and a usage chunk."""

    text: str | Sequence[str] | None = None
    reasoning: str | Sequence[str] = ()
    usage: bool = True


@dataclass(frozen=True)
class ToolCall:
    """An answer that calls one tool, its JSON ``arguments`` streamed in ``parts`` pieces."""

    name: str = "lookup"
    arguments: str = '{"query": "nobusy"}'
    id: str = "call_scripted_1"
    parts: int = 3


Answer: TypeAlias = Reply | ToolCall


@dataclass(frozen=True)
class Slow:
    """An answer (``of``, default ``Reply()``) with ``delay`` before its first token and
    ``gap`` before each later one."""

    gap: float = 0.0
    delay: float = 0.0
    of: Answer | None = None


@dataclass(frozen=True)
class Refuse:
    """An HTTP error status before any chunk (503 and 429 say busy; 401 is our config; 400 is
    the request's fault), optionally with a Retry-After in seconds."""

    status: int = 503
    retry_after: float | None = None
    message: str = "Server busy, please try again later"


@dataclass(frozen=True)
class Unreachable:
    """The connection is refused: nothing was sent."""


@dataclass(frozen=True)
class Hang:
    """Headers and a role chunk, ``after`` pieces, then silence until the caller gives up."""

    after: int = 0
    of: Answer | None = None


@dataclass(frozen=True)
class KeepAliveOnly:
    """``after`` pieces, then only keep-alives every ``interval`` seconds: SSE comments (which
    the openai kind never surfaces) or, with ``empty_chunks``, chunks whose delta is empty.
    After ``beats`` of them (never, when None) the connection drops."""

    after: int = 0
    interval: float = 0.01
    empty_chunks: bool = False
    beats: int | None = None
    of: Answer | None = None


@dataclass(frozen=True)
class CutAfter:
    """``n`` pieces, then the connection drops mid-answer."""

    n: int = 0
    of: Answer | None = None


@dataclass(frozen=True)
class ErrorEvent:
    """``after`` pieces, then an error object inside the 200 event stream."""

    after: int = 0
    message: str = "internal error"
    of: Answer | None = None


@dataclass(frozen=True)
class Garbage:
    """``after`` pieces, then an event whose data is not JSON."""

    after: int = 0
    of: Answer | None = None


@dataclass(frozen=True)
class Raise:
    """``after`` pieces, then ``error`` (any ``UpstreamError``, for faults not listed here)."""

    error: UpstreamError
    after: int = 0
    of: Answer | None = None


Step: TypeAlias = (
    Reply
    | ToolCall
    | Slow
    | Refuse
    | Unreachable
    | Hang
    | KeepAliveOnly
    | CutAfter
    | ErrorEvent
    | Garbage
    | Raise
)
Script: TypeAlias = Sequence[Step] | Callable[[UpstreamCall], Step]
