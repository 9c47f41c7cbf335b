"""Chunks end at headings, paragraphs and sentence ends, overlap, and point into the text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nobusy.knowledge.chunking import chunk

HANDBOOK = """# 员工手册
## 年假
员工入职满一年后享有年假5天。年假需提前三天在OA系统提交申请！经部门负责人审批后生效？

未休年假可顺延至次年三月底。
## Expenses
Employees must submit receipts within 30 days. Claims over 5,000 CNY need director approval.
"""


def test_chunks_never_cross_a_heading_and_carry_its_path() -> None:
    chunks = chunk(HANDBOOK, size=200, overlap=20)
    assert [c.heading for c in chunks] == ["员工手册 > 年假", "员工手册 > Expenses"]
    assert chunks[0].text.startswith("## 年假") and "Expenses" not in chunks[0].text
    assert all(HANDBOOK[c.start : c.end] == c.text for c in chunks)


def test_a_heading_alone_is_not_a_chunk() -> None:
    assert all(c.text != "# 员工手册" for c in chunk(HANDBOOK, size=40, overlap=10))


@pytest.mark.parametrize("end", ["。", "！", "？", "；"])
def test_chinese_sentences_end_at_their_marks(end: str) -> None:
    text = f"第一句话说的是规定{end}第二句话说的是例外{end}第三句话说的是附则{end}"
    chunks = chunk(text, size=22, overlap=0)
    assert [c.text for c in chunks] == [
        f"第一句话说的是规定{end}第二句话说的是例外{end}",
        f"第三句话说的是附则{end}",
    ]


def test_english_sentences_end_at_a_stop_before_a_space() -> None:
    text = "Claims over 5,000 CNY need approval. See policy 4.2 for details. Keep receipts."
    pieces = [c.text for c in chunk(text, size=40, overlap=0)]
    assert pieces == [
        "Claims over 5,000 CNY need approval.",
        "See policy 4.2 for details.",
        "Keep receipts.",
    ]


def test_overlap_repeats_whole_sentences() -> None:
    text = "甲条规定了年假。乙条规定了病假。丙条规定了婚假。丁条规定了产假。"
    chunks = chunk(text, size=16, overlap=8)
    assert chunks[0].text == "甲条规定了年假。乙条规定了病假。"
    assert chunks[1].text.startswith("乙条规定了病假。")


def test_a_sentence_longer_than_size_is_cut_with_overlap() -> None:
    text = "无标点的长句" * 50
    chunks = chunk(text, size=60, overlap=10)
    assert all(len(c.text) <= 60 for c in chunks)
    assert all(a.end > b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert chunks[-1].end == len(text)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        chunk("x", size=10, overlap=10)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("年假报销。！？.!? \n#ab1")), max_size=400),
    st.integers(5, 80),
    st.data(),
)
def test_every_character_of_substance_is_in_some_chunk(
    text: str, size: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    chunks = chunk(text, size=size, overlap=overlap)
    covered = set()
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text.strip()
        covered.update(range(c.start, c.end))
    # Whitespace and heading marks between chunks may be left out; words never are.
    body = [i for i, ch in enumerate(text) if ch in "年假报销ab1"]
    headings = {i for c in chunks for i in range(c.start, c.end)} | {
        i for i, ch in enumerate(text) if ch == "#"
    }
    missing = [i for i in body if i not in covered and i not in headings]
    assert all(_in_heading_line(text, i) for i in missing)


def _in_heading_line(text: str, i: int) -> bool:
    line_start = text.rfind("\n", 0, i) + 1
    return text[line_start:].lstrip().startswith("#")
