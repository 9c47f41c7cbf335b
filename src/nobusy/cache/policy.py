"""Whether a request may use the cache, and the key it is kept under.

The key is a hash of the normalised internal request (``nobusy.schema``'s chat body, which
every client protocol is read into): the alias, the messages, the sampling parameters, the
tools, the response format, every other field that can change an answer, and the alias's PII
settings (an answer kept with placeholders is restored only by a request masked the same
way). Fields that change only how the answer is delivered (``stream``, ``stream_options``)
or who asked (``user``, ``metadata``) are left out, so a streamed and a whole request, or a
Messages and a chat request saying the same thing, share an entry. The key's scope is the API
key (no key: one anonymous scope) unless the alias says ``scope: shared``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat

from nobusy.errors import InvalidRequest

__all__ = ["HEADER", "CacheSettings", "Mode", "cache_key", "mode"]

HEADER = "x-nobusy-cache"
Mode = Literal["use", "skip", "refresh"]
MODES: tuple[Mode, ...] = ("use", "skip", "refresh")

# Delivery and attribution only: the same answer whatever they say.
_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


class CacheSettings(BaseModel):
    """The response cache of one alias (off unless ``enabled``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="Answer identical requests from the cache (temperature 0, or the client "
        "sends `x-nobusy-cache: use`); answers are kept on disk or in Redis.",
    )
    ttl: PositiveFloat = Field(300.0, description="Seconds a kept answer is served as a hit.")
    stale_if_error: NonNegativeFloat = Field(
        86400.0,
        description="Seconds past `ttl` a kept answer is still served, marked stale, when no "
        "upstream can answer (every route failed, or the queue cannot admit in time); 0: never.",
    )
    scope: Literal["key", "shared"] = Field(
        "key",
        description="key: an answer is served only to the API key that got it; shared: "
        "to every key allowed the alias.",
    )


def mode(headers: Any) -> Mode | None:
    """The client's ``x-nobusy-cache`` request header (``use``, ``skip``, ``refresh``), or a 400."""
    value = headers.get(HEADER)
    if value is None:
        return None
    value = value.strip().lower()
    if value not in MODES:
        raise InvalidRequest(
            f"{HEADER} must be one of use, skip, refresh (got {value[:40]!r}).", param=HEADER
        )
    result: Mode = value
    return result


def cache_key(
    body: dict[str, Any], scope: str, pii: BaseModel, knowledge: BaseModel | None = None
) -> str:
    """The key of the internal request ``body`` in ``scope`` (a key id, ``-`` or ``*``), under
    the alias's settings that change its answer: PII masking and the stores it answers from
    (a store attached or detached by a reload must not get answers kept before it)."""
    kept = {name: value for name, value in body.items() if name not in _IGNORED}
    for name in _NUMBERS:  # 0 and 0.0 are one temperature
        if isinstance(kept.get(name), int | float):
            kept[name] = float(kept[name])
    if kept.get("max_completion_tokens") is not None and "max_tokens" not in kept:
        kept["max_tokens"] = kept.pop("max_completion_tokens")  # one name for one limit
    grounded = knowledge.model_dump(mode="json") if knowledge is not None else None
    data = orjson.dumps(
        [scope, kept, pii.model_dump(mode="json"), grounded], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(data, digest_size=20).hexdigest()
