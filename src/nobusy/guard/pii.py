"""PII masking: personal data in a request is swapped for placeholders before the request leaves
for an upstream, and put back in the answer before the client sees it.

A placeholder reads ``[[PII_MOBILE_1]]``: plain ASCII, which every tokenizer splits into common
tokens that models copy verbatim (rarer brackets such as ``⟦`` become byte tokens and are more
often altered); double brackets around a ``PII_`` tag do not occur in ordinary text, and text
that does look like a placeholder is itself masked as a literal, so ``restore(mask(text)) ==
text`` for every text. One value (exactly as written) gets one placeholder per request.

Restoring tolerates what models do to such tokens while kind and number stay unambiguous: ASCII
case (``[[pii_mobile_1]]``), one space just inside each bracket pair, ``_``, ``-``, a space or
nothing between the parts, leading zeros in the number. Anything else (single brackets, another
tag, an unknown number) is left as written.

Detection reads a folded copy of the text, each character mapped alone: full-width and other
compatibility forms to ASCII (NFKC: ``１３８``, ``＠``), the CJK numerals ``〇一二…九`` (and
``零``, ``幺``, ``壹``…``玖``) to digits, format characters (zero-width, bidi controls, soft
hyphen) dropped. Digit groups may be separated by a space, ``.`` or ``-`` (``138.0013.8000``,
an ID number as ``110105 19491231 002X``). Each value found is replaced where it is written:
the placeholder stands for the original characters, so restoring gives back the text as sent.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nobusy.guard import payload

__all__ = ["KINDS", "Kind", "Masker", "PiiSettings", "Restorer"]

Kind = Literal["id_card", "mobile", "bank_card", "email", "ip"]
KINDS: tuple[Kind, ...] = ("id_card", "mobile", "bank_card", "email", "ip")


class PiiSettings(BaseModel):
    """Masking of personal data in requests to an alias's upstreams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="Replace personal data with placeholders before a request leaves for an "
        "upstream, and put it back in the answer.",
    )
    kinds: tuple[Kind, ...] = Field(KINDS, description="Which kinds of personal data to mask.")


_SEPARATORS = re.compile(r"[ .-]")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit's Luhn value in a doubled position
_EARLIEST_BIRTH = date(1900, 1, 1)


def _id_card(text: str) -> bool:
    """GB 11643: ISO 7064 MOD 11-2 check character and a birth date that has happened."""
    text = _SEPARATORS.sub("", text)
    total = sum(int(digit) * weight for digit, weight in zip(text[:17], _ID_WEIGHTS, strict=True))
    if "10X98765432"[total % 11] != text[17].upper():
        return False
    try:
        born = date.fromisoformat(text[6:14])  # YYYYMMDD is ISO 8601's basic format
    except ValueError:
        return False
    return _EARLIEST_BIRTH <= born <= date.today()


def _bank_card(text: str) -> bool:
    digits = [int(char) for char in text if char.isdigit()]
    total = sum(_DOUBLED[d] if i % 2 else d for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    # 127.0.0.1, ::1, 0.0.0.0 and :: identify no one and fill technical questions.
    return not (address.is_loopback or address.is_unspecified)


def _anything(text: str) -> bool:
    return True


# Checked in this order: an e-mail's local part may be a phone number (QQ-style
# 13800138000@qq.com), and an ID number that passes its checksum is no bank card.
_DETECTORS: dict[Kind, tuple[str, str, Callable[[str], bool]]] = {
    "email": (
        "EMAIL",
        # Starting only where a run of local-part characters starts keeps long runs linear.
        r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        _anything,
    ),
    # A separator may stand between any two digits of an ID number: people group it 6-8-4,
    # 3-3-4-4-4 or otherwise; the checksum and birth date keep false matches rare.
    "id_card": ("ID", r"(?<!\d)\d(?:[ .-]?\d){16}[ .-]?[\dXx](?!\d)", _id_card),
    "bank_card": (
        "CARD",
        r"(?<!\d)\d{4}(?:[ .-]?\d{4}){3}(?:[ .-]?\d{1,3})?(?!\d)",
        _bank_card,
    ),
    "mobile": ("MOBILE", r"(?<!\d)(?:\+?86[ .-]?)?1[3-9]\d(?:[ .-]?\d{4}){2}(?!\d)", _anything),
    "ip": (
        "IP",
        # IPv6 needs a digit too: Rust and C++ paths such as Abc::def are valid addresses.
        r"(?<![\w:.])(?=[0-9A-Fa-f:]*\d)(?:[0-9A-Fa-f]{0,4}:){2,7}"
        r"(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)"
        r"|(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d)",
        _ip,
    ),
}
_PATTERNS = {kind: re.compile(pattern, re.ASCII) for kind, (_, pattern, _) in _DETECTORS.items()}


def _prefixes(word: str) -> str:
    """A regex for every prefix of ``word``, the empty one included."""
    return "".join(f"(?:{re.escape(char)}" for char in word) + ")?" * len(word)


_TAG_LIST = [tag for tag, _, _ in _DETECTORS.values()]
# A placeholder as restoring accepts it, part by part, each with a regex for its prefixes: from
# them the stream restorer learns exactly what could still become a placeholder.
_PARTS = (
    (r"\[\[", r"\[{0,2}"),
    (" ?", " ?"),
    ("PII", _prefixes("PII")),
    ("[ _-]?", "[ _-]?"),
    (f"({'|'.join(_TAG_LIST)})", f"(?:{'|'.join(map(_prefixes, _TAG_LIST))})"),
    ("[ _-]?", "[ _-]?"),
    (r"(\d{1,5})", r"\d{0,5}"),
    (" ?", " ?"),
    (r"\]\]", r"\]?"),  # proper prefixes only: a whole placeholder is not held back
)
_LONGEST_PARTIAL = len(f"[[ PII_{max(_TAG_LIST, key=len)}_99999 ]")


def _prefix_pattern(parts: tuple[tuple[str, str], ...]) -> str:
    """Every prefix of what ``parts`` match in sequence: of the first, or all of it and then a
    prefix of the rest."""
    (whole, prefix), *rest = parts
    return f"(?:{prefix}|{whole}{_prefix_pattern(tuple(rest))})" if rest else prefix


_DROP = "\x00"  # what a dropped character becomes before the final removal
# Numerals as digits are written in Chinese: 幺 is how 1 is read out in phone numbers, 壹…玖 the
# forms used on cheques.
_CJK_DIGITS = dict(
    zip("〇零一二三四五六七八九幺壹贰叁肆伍陆柒捌玖", "001234567891123456789", strict=True)
)


class _Fold(dict[int, str]):
    """``str.translate`` table filled on first sight of each code point: the character PII
    detection reads in its place (itself, mostly), or NUL for a dropped one."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Cf":  # zero-width, joiners, bidi controls, soft hyphen
            value = _DROP
        elif char in _CJK_DIGITS:
            value = _CJK_DIGITS[char]
        else:
            folded = unicodedata.normalize("NFKC", char)
            value = folded if len(folded) == 1 and folded.isascii() else char
        if category not in ("Cn", "Co", "Cs"):  # never remember the ~970,000 unassigned
            self[code] = value
        return value


_FOLD = _Fold()


class _Folded:
    """A text as detection reads it, and the way back to the original's offsets."""

    __slots__ = ("_adjust", "text")

    def __init__(self, text: str) -> None:
        marked = text.translate(_FOLD)
        self.text = marked.replace(_DROP, "") if _DROP in marked else marked
        # For the k-th dropped character at original offset d: d - k kept characters precede
        # it; a folded offset p maps back to p plus the drops before it.
        drops = [m.start() for m in re.finditer(_DROP, marked)] if _DROP in marked else []
        self._adjust = [d - k for k, d in enumerate(drops)]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of folded ``text[start:end]``."""
        first = start + bisect_right(self._adjust, start)
        last = end - 1 + bisect_right(self._adjust, end - 1)
        return first, last + 1


_FLAGS = re.ASCII | re.IGNORECASE
_PLACEHOLDER = re.compile("".join(whole for whole, _ in _PARTS), _FLAGS)
_PARTIAL = re.compile(_prefix_pattern(_PARTS), _FLAGS)

Values = Mapping[tuple[str, int], str]


def _restore(values: Values, text: str) -> str:
    def put_back(match: re.Match[str]) -> str:
        return values.get((match[1].upper(), int(match[2])), match[0])

    return _PLACEHOLDER.sub(put_back, text)


class Restorer:
    """Restores an answer that arrives piece by piece, exactly as restoring it whole would."""

    def __init__(self, values: Values) -> None:
        self._values = values
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Take the next piece; return the restored text that no later piece can change."""
        pending = self._pending + piece
        cut = len(pending)
        # Hold back from the first '[' whose rest could still grow into a placeholder; a
        # placeholder has '[' only at its start, so no match crosses the cut.
        at = pending.find("[", max(cut - _LONGEST_PARTIAL, 0))
        while at >= 0:
            if _PARTIAL.fullmatch(pending, at):
                cut = at
                break
            at = pending.find("[", at + 1)
        self._pending = pending[cut:]
        return _restore(self._values, pending[:cut])

    def finish(self) -> str:
        """The answer has ended: restore and return what was held back."""
        text, self._pending = self._pending, ""
        return _restore(self._values, text)


class Masker:
    """Masks one request's personal data and restores it in the answer; ``found`` counts the
    distinct values masked per kind, for the audit log."""

    def __init__(self, kinds: Iterable[Kind] = KINDS) -> None:
        wanted = set(kinds)
        self._kinds = [kind for kind in _DETECTORS if kind in wanted]
        self._numbers: dict[tuple[str, str], int] = {}  # (tag, value) -> its number
        self._values: dict[tuple[str, int], str] = {}  # (tag, number) -> the value
        self._next: dict[str, int] = {}
        self.found: dict[str, int] = {}

    def mask(self, text: str) -> str:
        """``text`` with each detected value replaced by its placeholder."""
        if text.isascii():  # nothing to fold: offsets are the text's own
            folded, spans = text, None
        else:
            view = _Folded(text)
            folded, spans = view.text, view
        found: list[tuple[int, int, str]] = []  # original start, end, placeholder
        taken: list[tuple[int, int]] = []  # folded spans already replaced

        def free(start: int, end: int) -> bool:
            return all(end <= low or start >= high for low, high in taken)

        # Text that already reads as a placeholder is masked as a literal of its own, so
        # restoring cannot turn it into someone's data. Then each kind, in _DETECTORS' order.
        matches: list[tuple[Kind | None, re.Match[str]]]
        matches = [(None, m) for m in _PLACEHOLDER.finditer(folded)]
        for wanted in self._kinds:
            matches += [(wanted, m) for m in _PATTERNS[wanted].finditer(folded)]
        for kind, match in matches:
            if not free(*match.span()):
                continue
            start, end = match.span() if spans is None else spans.span(*match.span())
            value = text[start:end]
            if kind is None:
                tag = match[1].upper()
            else:
                tag, _, valid = _DETECTORS[kind]
                if not valid(match[0]):
                    continue
                if (tag, value) not in self._numbers:
                    self.found[kind] = self.found.get(kind, 0) + 1
            taken.append(match.span())
            found.append((start, end, self._placeholder(tag, value)))
        if not found:
            return text
        parts: list[str] = []
        done = 0
        for start, end, placeholder in sorted(found):
            parts += (text[done:start], placeholder)
            done = end
        parts.append(text[done:])
        return "".join(parts)

    def mask_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of a chat request with every string that goes upstream masked (see
        ``nobusy.guard.payload``: names, tool calls and schemas, ``user``, unknown fields...); the
        input is left untouched, so the audit log keeps the request as sent."""
        out = payload.copy(body)
        payload.rewrite(out, self.mask)
        return out

    def mask_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """New chat messages with every string masked; the input is left untouched."""
        masked: list[dict[str, Any]] = self.mask_request({"messages": messages})["messages"]
        return masked

    def restore(self, text: str) -> str:
        """A whole answer with its placeholders put back."""
        return _restore(self._values, text)

    def restorer(self) -> Restorer:
        """A restorer for a streamed answer; it also sees values masked after it was made."""
        return Restorer(self._values)

    def _placeholder(self, tag: str, value: str) -> str:
        number = self._numbers.get((tag, value))
        if number is None:
            number = self._next[tag] = self._next.get(tag, 0) + 1
            self._numbers[tag, value] = number
            self._values[tag, number] = value
        return f"[[PII_{tag}_{number}]]"
