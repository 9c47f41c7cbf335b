"""The knowledge base's counters: histogram buckets as Prometheus counts them, bounded labels."""

from __future__ import annotations

import pytest

from nobusy.knowledge.stats import KnowledgeStats, Timings


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    timings = Timings((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        timings.observe(seconds)
    assert timings.counts == [2, 2, 1]
    assert timings.total == pytest.approx(8.65)


def test_an_unknown_error_code_counts_as_a_server_error() -> None:
    stats = KnowledgeStats()
    stats.ingested("failed", 0.2, code="something_new")
    stats.searched("grounding", 0.01, ok=False)
    now = stats.snapshot()
    assert set(now.failures) == {"invalid_file", "unsupported_file", "server_error"}
    assert now.failures["server_error"] == 1
    assert now.searches[("grounding", "error")] == 1
    assert sum(now.search_seconds["grounding"].counts) == 1
    stats.ingested("completed", 1.0, size=10, chunks=2)
    assert now.files["completed"] == 0  # a snapshot is a copy
