"""200 words, each disguised the ways people evade filters: at least 99% must still be caught."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import opencc

from nobusy.guard import Matcher
from nobusy.guard.lexicon import Entry

# Common characters (GB2312 level 1, the 3,755 most used) that have a traditional form.
COMMON = [
    bytes([high, low]).decode("gb2312")
    for high in range(0xB0, 0xD8)
    for low in range(0xA1, 0xFF)
    if (high, low) < (0xD7, 0xFA)
]
# Look-alikes written out here, independently of the module's own map.
LOOKALIKES = {
    "a": "аα",
    "c": "сϲ",
    "e": "еЕ",
    "i": "іι",
    "j": "ј",
    "k": "κК",
    "o": "оοΟ",
    "p": "рρ",
    "s": "ѕ",
    "x": "хχ",
    "y": "уУ",
}
SPACES = [" ", "  ", "\u3000", "\t", "\u00a0", "\n"]
SYMBOLS = list("*-_.·/|~!@#$%^&，。、★♥【】") + ["😀", "()"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
FULL_WIDTH_SEPARATORS = ["\u3000", "＊", "．", "－", "／"]


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def words(rng: random.Random) -> tuple[list[str], list[str]]:
    to_traditional = opencc.OpenCC("s2t")
    convertible = [c for c in COMMON if to_traditional.convert(c) != c]
    chinese: set[str] = set()
    while len(chinese) < 150:
        size = rng.randint(2, 4)
        # At least one character changes when written traditionally, the others any.
        word = [rng.choice(convertible)] + rng.choices(COMMON, k=size - 1)
        rng.shuffle(word)
        chinese.add("".join(word))
    latin: set[str] = set()
    while len(latin) < 50:
        latin.add("".join(rng.choices("acdeghijklmnoprstuvxyz", k=rng.randint(4, 8))))
    return sorted(chinese), sorted(latin)


def variants(word: str, rng: random.Random, traditional: Callable[[str], str]) -> dict[str, str]:
    def joined(separators: list[str]) -> str:
        return "".join(c + rng.choice(separators) for c in word[:-1]) + word[-1]

    def lookalike(c: str) -> str:
        return rng.choice(LOOKALIKES[c]) if c in LOOKALIKES else c

    out = {
        "spaces": joined(SPACES),
        "symbols": joined(SYMBOLS),
        "zero-width": joined(ZERO_WIDTH),
    }
    if word.isascii():
        out["full-width"] = full_width(word)
        out["case"] = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
        out["homoglyphs"] = "".join(lookalike(c) for c in word)
        disguise = [rng.choice([lookalike(c), full_width(c), c.upper()]) for c in word]
    else:
        out["full-width"] = joined(FULL_WIDTH_SEPARATORS)
        out["traditional"] = "".join(traditional(c) for c in word)
        disguise = [rng.choice([traditional(c), c]) for c in word]
    separators = SPACES + SYMBOLS + ZERO_WIDTH + FULL_WIDTH_SEPARATORS
    out["mixed"] = "".join(c + rng.choice(["", *separators]) for c in disguise[:-1])
    out["mixed"] += disguise[-1]
    return out


def test_disguised_words_are_caught() -> None:
    rng = random.Random(20240607)
    chinese, latin = words(rng)
    matcher = Matcher(Entry(word, "test.txt", None, "mask") for word in chinese + latin)
    to_traditional = opencc.OpenCC("s2t")
    tried: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    examples: list[str] = []
    for word in chinese + latin:
        for kind, variant in variants(word, rng, to_traditional.convert).items():
            text = f"这是一段话{variant}然后继续"
            verdict = matcher.check(text)
            tried[kind] += 1
            if word not in [hit.word for hit in verdict.hits]:
                missed[kind] += 1
                examples.append(f"{kind}: {variant!r} for {word!r}")
            else:
                [hit] = [hit for hit in verdict.hits if hit.word == word]
                assert text[hit.start : hit.end] == variant  # the exact original span
    caught = 1 - sum(missed.values()) / sum(tried.values())
    assert sum(tried.values()) >= 1200
    assert caught >= 0.99, (caught, missed, examples[:20])
    # Only traditional spellings may miss: OpenCC's character table cannot know that a
    # traditional character such as 著 stands for 着 in this word and 著 in another.
    assert set(missed) <= {"traditional", "mixed"}, examples
