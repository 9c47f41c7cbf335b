"""The index on real SQLite files with the real embedder: Chinese words, hybrid search,
dedup, removal, filters, thresholds, one model per store."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nobusy.errors import InvalidRequest
from nobusy.knowledge.chunking import chunk
from nobusy.knowledge.embedder import Embedder
from nobusy.knowledge.index import Index

LEAVE = """# 员工休假管理办法
## 年休假
员工累计工作已满1年不满10年的，年休假5天。申请年休假须提前3个工作日在人力资源系统提交申请。
## 婚假
符合法定结婚条件的员工可享受婚假3天，另加奖励假7天。
"""
TRAVEL = """# 差旅费报销管理办法
## 报销时限
出差人员应在出差结束后30日内办理报销，单笔报销金额超过5000元的，须经财务总监审批。
## 住宿
在直辖市及省会城市出差，住宿费每人每天不超过500元。
"""
WIRES = """# Wire Transfer Procedures
## Cut-off times
International wires must be submitted by 2:00 p.m. to be sent the same day.
## Fees
Outgoing international wires cost $45 each.
"""


def _add(
    index: Index, embedder: Embedder, store: str, file_id: str, text: str, **attributes: object
) -> int:
    pieces = chunk(text, size=200, overlap=30)
    vectors = embedder.embed([p.context for p in pieces], query=False)
    return index.add(store, file_id, pieces, vectors, attributes)


@pytest.fixture()
def index(tmp_path: Path, embedder: Embedder) -> Index:
    index = Index(tmp_path / "knowledge.db", embedder.name)
    _add(index, embedder, "vs_a", "leave", LEAVE, department="hr", year=2024)
    _add(index, embedder, "vs_a", "travel", TRAVEL, department="finance", year=2023)
    _add(index, embedder, "vs_a", "wires", WIRES, department="ops", year=2025)
    return index


def _search(index: Index, embedder: Embedder, query: str, **options: object) -> list[str]:
    vector = embedder.embed([query], query=True)[0]
    hits = index.search(["vs_a"], query, vector, k=options.pop("k", 3), **options)  # type: ignore[arg-type]
    return [h.file_id for h in hits]


@pytest.mark.parametrize(
    ("query", "file_id"),
    [("报销", "travel"), ("年休假", "leave"), ("婚假", "leave"), ("住宿费", "travel")],
)
def test_two_character_words_are_found_by_bm25(index: Index, query: str, file_id: str) -> None:
    hits = index.search(["vs_a"], query, None, k=3, mode="bm25")
    assert hits and hits[0].file_id == file_id
    assert hits[0].scores["bm25"] > 0 and hits[0].scores["coverage"] == 1.0


def test_hybrid_finds_a_question_in_the_other_language(index: Index, embedder: Embedder) -> None:
    assert _search(index, embedder, "国际电汇几点之前提交")[0] == "wires"
    # Vectors alone: no word of the question is in the passage.
    assert "travel" in _search(index, embedder, "hotel costs on business trips", k=2)


def test_hits_carry_offsets_scores_and_attributes(index: Index, embedder: Embedder) -> None:
    vector = embedder.embed(["婚假几天"], query=True)[0]
    hit = index.search(["vs_a"], "婚假几天", vector, k=1)[0]
    assert LEAVE[hit.start : hit.end] == hit.text and "婚假3天" in hit.text
    assert hit.heading == "员工休假管理办法 > 婚假"
    assert 0 < hit.score <= 1 and hit.score == hit.scores["relevance"]
    assert {"rrf", "vector", "bm25", "coverage"} <= set(hit.scores)
    assert hit.attributes == {"department": "hr", "year": 2024}


def test_a_retried_file_adds_no_chunk_twice(index: Index, embedder: Embedder) -> None:
    before = index.count("vs_a")
    assert _add(index, embedder, "vs_a", "leave", LEAVE) == 0
    assert _add(index, embedder, "vs_a", "leave-again", LEAVE) == 0  # same text, new file id
    assert index.count("vs_a") == before
    # A chunk shared by two files stays until the last of them goes.
    assert index.remove_file("vs_a", "leave") == 0
    assert _search(index, embedder, "婚假", k=1) == ["leave-again"]
    assert index.remove_file("vs_a", "leave-again") > 0
    assert "leave-again" not in _search(index, embedder, "婚假")


def test_stores_are_apart_and_removed_whole(index: Index, embedder: Embedder) -> None:
    _add(index, embedder, "vs_b", "wires", WIRES)
    vector = embedder.embed(["报销"], query=True)[0]
    assert all(h.store_id == "vs_b" for h in index.search(["vs_b"], "报销", vector, k=5))
    index.remove_store("vs_a")
    assert index.count("vs_a") == 0 and index.count("vs_b") > 0
    assert index.search(["vs_a"], "报销", vector, k=5) == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"type": "eq", "key": "department", "value": "hr"}, {"leave"}),
        ({"type": "ne", "key": "department", "value": "hr"}, {"travel", "wires"}),
        ({"type": "gte", "key": "year", "value": 2024}, {"leave", "wires"}),
        ({"type": "lt", "key": "year", "value": 2024}, {"travel"}),
        ({"type": "in", "key": "department", "value": ["ops", "hr"]}, {"leave", "wires"}),
        (
            {
                "type": "and",
                "filters": [
                    {"type": "gt", "key": "year", "value": 2023},
                    {"type": "lte", "key": "year", "value": 2024},
                ],
            },
            {"leave"},
        ),
        (
            {
                "type": "or",
                "filters": [
                    {"type": "eq", "key": "department", "value": "ops"},
                    {"type": "eq", "key": "year", "value": 2023},
                ],
            },
            {"travel", "wires"},
        ),
        ({"type": "eq", "key": "missing", "value": 1}, set()),
    ],
)
def test_attribute_filters(
    index: Index, embedder: Embedder, filters: dict[str, object], expected: set[str]
) -> None:
    for mode in ("hybrid", "bm25", "vector"):
        found = set(_search(index, embedder, "报销 年假 wire", k=10, filters=filters, mode=mode))
        assert found <= expected and (found or not expected), (mode, found)


@pytest.mark.parametrize(
    "filters",
    [
        {"type": "eq"},
        {"type": "and", "filters": []},
        {"type": "like", "key": "a", "value": 1},
        {"type": "eq", "key": "a", "value": {"x": 1}},
        "not a filter",
    ],
)
def test_bad_filters_are_a_clear_400(index: Index, filters: object) -> None:
    with pytest.raises(InvalidRequest):
        index.search(["vs_a"], "报销", None, k=3, filters=filters)  # type: ignore[arg-type]


def test_score_threshold_turns_away_a_question_with_no_answer(
    index: Index, embedder: Embedder
) -> None:
    answered = embedder.embed(["出差住宿费标准"], query=True)[0]
    top = index.search(["vs_a"], "出差住宿费标准", answered, k=1)[0].score
    assert index.search(["vs_a"], "出差住宿费标准", answered, k=1, score_threshold=top)
    assert not index.search(["vs_a"], "出差住宿费标准", answered, k=1, score_threshold=top + 1e-6)


def test_mmr_returns_k_distinct_hits(index: Index, embedder: Embedder) -> None:
    vector = embedder.embed(["报销和年假"], query=True)[0]
    hits = index.search(["vs_a"], "报销和年假", vector, k=3, diversity=0.5)
    assert len(hits) == 3 and len({h.chunk_id for h in hits}) == 3


def test_a_store_refuses_vectors_of_another_model(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "knowledge.db"
    _add(Index(path, embedder.name), embedder, "vs_x", "leave", LEAVE)
    other = Index(path, "another-model")
    assert other.store_embedder("vs_x") == embedder.name
    with pytest.raises(InvalidRequest) as caught:
        _add(other, embedder, "vs_x", "travel", TRAVEL)
    assert caught.value.code == "embedding_model_mismatch"


def test_the_index_survives_a_reopen_and_threads(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "knowledge.db"
    first = Index(path, embedder.name)
    _add(first, embedder, "vs_a", "leave", LEAVE)
    first.close()
    index = Index(path, embedder.name)
    vector = embedder.embed(["年假"], query=True)[0]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            _add(index, embedder, "vs_a", f"travel-{n}", TRAVEL.replace("500", str(n)))
            assert index.search(["vs_a"], "年假", vector, k=1)[0].file_id == "leave"
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert index.count("vs_a") > 0
