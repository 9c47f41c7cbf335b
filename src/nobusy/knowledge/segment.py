"""Chinese word segmentation for BM25: jieba words, so two-character words match.

SQLite's own tokenizers cannot find 报销 in 差旅报销: ``unicode61`` keeps a run of Chinese
characters as one token and ``trigram`` needs three characters. So texts are cut into words by
jieba in its search mode (which also emits the shorter words inside long ones: 中华人民共和国
gives 中华, 人民, 共和国 too), lower-cased and joined by spaces before FTS5 sees them, and a
query is cut the same way. A user dictionary keeps domain terms whole.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

__all__ = ["Segmenter", "segmenter"]

# Words that match nearly every passage and say nothing about what is asked. BM25 already gives
# them little weight; dropping them from queries also keeps an OR query from scoring every row.
_STOPWORDS = frozenset(
    """的 了 是 在 和 与 及 或 吗 呢 吧 啊 么 什么 怎么 怎样 如何 哪些 哪个 多少 几 有 有没有 是否
    能 能否 可以 可否 需要 要 请问 请 我 我们 你 您 他 她 它 这 那 这个 那个 一个 之 其 为 对 就
    都 也 还 被 把 给 让 从 到 以 于 上 下 中 后 前 时 会 该 应 应该 得 地 着 过 等 吗？ 呀
    a an the is are was were be been being of to in on at by for with from as and or not no
    do does did doing what which who whom whose when where why how can could should would
    will shall may might must i me my we our you your he she it its they them their this that
    these those there here any some about into than then so if""".split()
)
_WORD = re.compile(r"\w", re.UNICODE)


class Segmenter:
    """jieba with its own dictionary state (a user dictionary here touches no other user)."""

    def __init__(self, dictionary: Path | None = None) -> None:
        self._dictionary = dictionary
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _jieba(self) -> Any:
        # jieba builds its prefix dictionary (~0.7 s, ~40 MB) on first use, so not at import.
        with self._lock:
            if self._tokenizer is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                tokenizer = jieba.Tokenizer()
                tokenizer.initialize()
                if self._dictionary is not None:
                    # An open file: given a path, jieba never closes it.
                    with self._dictionary.open("rb") as words:
                        tokenizer.load_userdict(words)
                self._tokenizer = tokenizer
            return self._tokenizer

    def words(self, text: str) -> list[str]:
        """Every word of ``text`` as FTS5 should index it: lower-cased, no punctuation."""
        return [w for w in self._jieba().cut_for_search(text.lower()) if _WORD.search(w)]

    def query_words(self, text: str) -> list[str]:
        """The words of a query worth searching for, each once, in order."""
        seen: dict[str, None] = {}
        for word in self.words(text):
            if word not in _STOPWORDS:
                seen.setdefault(word, None)
        return list(seen)


_segmenters: dict[Path | None, Segmenter] = {}
_segmenters_lock = threading.Lock()


def segmenter(dictionary: Path | None = None) -> Segmenter:
    """The shared segmenter for ``dictionary`` (none: jieba's own dictionary only)."""
    with _segmenters_lock:
        if dictionary not in _segmenters:
            _segmenters[dictionary] = Segmenter(dictionary)
        return _segmenters[dictionary]
