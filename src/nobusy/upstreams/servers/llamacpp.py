"""``kind: llamacpp`` — llama.cpp's llama-server, placed by its metrics (``upstreams.servers``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from nobusy.upstreams.servers import ServerSettings, ServerUpstream

__all__ = ["Settings", "Upstream"]


class Settings(ServerSettings):
    """llama.cpp's llama-server (run with --metrics)."""

    kind: Literal["llamacpp"] = Field(
        "llamacpp", description="llama.cpp's llama-server (run with --metrics)."
    )


class Upstream(ServerUpstream):
    """llama.cpp's llama-server (run with --metrics), read through its /metrics."""

    kind: ClassVar[str] = "llamacpp"
    # llama-cpp-python's server (starlette-context) answers a bare 400 to an x-request-id
    # that is not a UUID, and llama-server does not log it: nobusy's id is not sent.
    request_id_header: ClassVar[str | None] = None
