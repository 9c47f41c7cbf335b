"""The default embedded embedding model, loaded once for the session (it is slow to load)."""

from __future__ import annotations

import pytest

from nobusy.knowledge.embedder import Embedder, load_embedder
from nobusy.knowledge.settings import KnowledgeSettings


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder(KnowledgeSettings().embedding_model)
