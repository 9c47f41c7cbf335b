"""jieba words for BM25: two-character words whole, stop words out of queries, a user
dictionary for domain terms."""

from __future__ import annotations

from pathlib import Path

from nobusy.knowledge.segment import Segmenter


def test_two_character_words_stay_whole() -> None:
    words = Segmenter().words("差旅报销须附发票，挂失后补办")
    assert {"报销", "发票", "挂失"} <= set(words)


def test_queries_drop_stop_words_and_repeats() -> None:
    assert Segmenter().query_words("请问怎么报销？报销需要什么") == ["报销"]
    assert Segmenter().query_words("How do I report the card?") == ["report", "card"]


def test_a_user_dictionary_keeps_domain_terms_whole(tmp_path: Path) -> None:
    assert Segmenter().words("年假") == ["年", "假"]  # jieba's own dictionary splits it
    dictionary = tmp_path / "terms.txt"
    dictionary.write_text("年假 1000 n\n双录 1000 n\n")
    assert Segmenter(dictionary).words("年假和双录") == ["年假", "和", "双录"]
