"""``kind: sglang`` — SGLang, placed by its own metrics (``upstreams.servers``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from nobusy.upstreams.servers import ServerSettings, ServerUpstream

__all__ = ["Settings", "Upstream"]


class Settings(ServerSettings):
    """SGLang's OpenAI-compatible server."""

    kind: Literal["sglang"] = Field("sglang", description="SGLang's OpenAI-compatible server.")


class Upstream(ServerUpstream):
    """SGLang's OpenAI-compatible server, read through its /metrics."""

    kind: ClassVar[str] = "sglang"
