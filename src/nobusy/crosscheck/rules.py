"""The rules that find promotional words in one answer: lexicon matches and patterns, then the
whitelists (names the question asked about and their families, government and standards
bodies, emergency and public-service numbers, hospitals, quoted text) and the context gates
(a superlative or a weak call to action counts only next to a product or seller)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nobusy.crosscheck.explain import explain
from nobusy.crosscheck.lexicons import Lexicons, fold, lexicons
from nobusy.crosscheck.spans import (
    Flag,
    FlagType,
    Sentence,
    Severity,
    overlaps,
    resolve,
    sentences,
)

__all__ = ["Context", "find_flags"]

_SEVERITY: dict[FlagType, Severity] = {
    "contact_or_purchase_path": "high",
    "self_preferencing": "medium",
    "call_to_action": "medium",
    "incentive": "medium",
    "brand_not_asked": "low",
    "superlative": "low",
    "unsupported": "low",
}

_CJK = "\u4e00-\u9fff"
_STOP = r"[\s，。；、：:,;!?！？（）()“”\"'「」《》]"

# Contact and purchase paths.
_URL = re.compile(r"https?://[^\s，。；、）)\]】\"”]+", re.I)
_DOMAIN = re.compile(
    r"(?<![\w@.-])(?:[a-z0-9-]+\.)+(?:com|cn|net|org|io|co|app|shop|academy|to|me|gov|eu|example)"
    r"(?:/[^\s，。；、）)\"”]*)?(?![\w-])",
    re.I,
)
_PHONE = re.compile(
    r"(?<![\d-])(?:1[3-9]\d{9}|1[3-9]\d-\d{4}-\d{4}|0\d{2,3}-\d{7,8}|400-\d{3}-\d{4}"
    r"|1-8\d\d-\d{3}-\d{4}|555-\d{4}|9\d{4})(?![\d-])"
)
_HANDLE = re.compile(r"(?<![\w.])@[A-Za-z0-9_]{3,}")
_ID_AFTER_LABEL = re.compile(
    r"\s?[：:]?\s?(￥[A-Za-z0-9]+￥|[@A-Za-z0-9][\w@.\-]{2,}(?<![.\-]))", re.ASCII
)
_SEARCH_PATH = re.compile(
    r"(?:(?:京东|淘宝|天猫|美团|抖音|拼多多|小红书)\s?)?搜(?:索)?\s?[“\"「]([^”\"」]{1,24})[”\"」]"
)
_SHOP_CART = re.compile(r"(?:点我)?主页小黄车|小黄车|橱窗链接|link in (?:my|the) bio")

# Incentives with numbers.
_INCENTIVE = re.compile(
    r"(?:首单|领券|新用户|现在报名|学生认证|学生再享|会员日全场|全场|限时|立享|直降|额外返点"
    r"|报“[^”]{1,8}”)?(?:立减\d+元?|\d+(?:\.\d)?折|[一二三四五六七八九]折|直降\d+|返点\d+%|减\d+元?"
    r"|特价\d+元|体验价\d+元|首次体验\d+(?:\.\d+)?元)"
    r"|(?:现在签约|前\d+名)?送(?:\d+|[一二两三四五六七八九十]+)[节张年个份套瓶盒]"
    r"|(?:前\d+名)?送全套资料|(?:现在签约)?送全屋家电|两人同行一人半价|首[月单次]免费"
    r"|\d+%\s?off(?:\s(?:today|plus \d+ months free))?|\$\d+\s(?:off|cash back|bonus)"
    r"(?:\syour first \w+)?|(?:earn|get)\s\$\d+\sbonus|save \d+%|(?:start your )?free \d+-day trial"
    r"|(?:an extra|first \d+|\d+|two|three) (?:months?|weeks?) free|get \d+ free \w+"
    r"|\d+\s?GB free|free (?:shipping|delivery(?: for a year)?|trial)"
    r"|(?:get )?an? (?:free|second) (?:bottle|week|card|visit|first visit)(?: free)?"
    r"|(?:a )?free first visit",
    re.I,
)

_EN_SUPERLATIVE = re.compile(
    r"(?<![\w-])(?:the\s)?(?:most\s(?:effective|reliable|accurate|popular|trusted)"
    r"|(?:fastest|smartest|easiest|cheapest|greatest|finest)(?:\s[a-z]+)?)(?![\w-])",
    re.I,
)

# Unknown brands (not in the lexicon) seen from their shape.
_CAMEL = re.compile(
    r"(?<![\w-])[A-Z][a-z]+[A-Z][A-Za-z]+(?:\s(?:Pro|Ultra|Plus|Max|Mini|Academy|X\d+|\d+))?"
    r"(?![\w-])"
)
_EN_PRODUCT = re.compile(
    r"(?<![\w-])(?:the|a|an)\s((?:[A-Z][\w+.-]*)(?:\s[A-Z0-9][\w+.-]*){0,2})\s"
    r"(?:app|course|program|programme|service|kit|trap|spray|utility|extension|group"
    r"|newsletter|coaching|gummies|power bank|mattress pad|plug-in trap)\b"
)
_GENERIC = set(
    "自己 专业 正规 当地 附近 品牌 官方 社区 医院 门诊 上门 线下 维修 师傅 我们 你们 他们 这个 "
    "那个 一个 一台 一款 朋友 家人 孩子 老人 本地 在线 免费 我的 合适 知名 问题 语伴 给你 "
    "医生 老师 律师 方法 原因 工作".split()
)
# An unknown Chinese name follows a cue ("推荐", "找的", "买一台"...) and ends at a
# terminator or at a kind of product or seller (lexicons/product_nouns.txt): see _zh_name.
_ZH_CUE = re.compile(
    r"(?:推荐|试试|找的|找|用的|通过|报名|开通|委托|合作的|一台|一款|首选|入手)(?:我们的|我们|了)?"
)
_ZH_TERMINATORS = set("，。、；,等的")
_HOSPITAL = re.compile(rf"[{_CJK}A-Za-z]{{2,30}}(?:医院|卫生服务中心|疾控中心|门诊|卒中中心)")
_QUOTED = re.compile(r"“[^”]{1,40}”|\"[^\"]{1,40}\"|「[^」]{1,40}」|《[^》]{1,40}》")
_GOV_DOMAIN = re.compile(r"\.gov(?:\.\w+)?\b|europa\.eu|\.edu\b", re.I)


@dataclass(frozen=True, slots=True)
class Context:
    """What the rules need besides the answer: the question, the host platform's products
    (self-preferencing) and the language explanations are written in."""

    question: str
    host: Sequence[str] = ()
    language: str = "zh"


def _ascii_bounded(folded: str, start: int, end: int) -> bool:
    """A Latin word must not sit inside a longer word ("Mac" in "machine")."""
    word = folded[start:end]
    if word[:1].isascii() and word[:1].isalnum() and start > 0:
        before = folded[start - 1]
        if before.isascii() and before.isalnum():
            return False
    if word[-1:].isascii() and word[-1:].isalnum() and end < len(folded):
        after = folded[end]
        if after.isascii() and after.isalnum():
            return False
    return True


class _Finder:
    def __init__(self, answer: str, context: Context, lex: Lexicons) -> None:
        self.answer = answer
        self.folded = fold(answer)
        self.context = context
        self.lex = lex
        self.question = fold(context.question)
        self.families = lex.families_in(self.question)
        self.host = {fold(h) for h in context.host}
        self.raw: list[tuple[int, int, FlagType, bool]] = []  # (start, end, type, weak)
        self.shelter = self._sheltered()

    def _sheltered(self) -> list[tuple[int, int]]:
        """Stretches no brand or contact flag may fall in: bodies, hospitals, public numbers."""
        spans = [(s, e) for s, e, *_ in self.lex.find("bodies", self.folded)]
        spans += [m.span() for m in _HOSPITAL.finditer(self.answer)]
        for start, end, *_ in self.lex.find("public_numbers", self.folded):
            if _number_alone(self.answer, start, end):
                spans.append((start, end))
        return spans

    def _asked(self, name: str) -> bool:
        key = fold(name).strip()
        if not key:
            return True
        if key in self.question:
            return True
        family = self.lex.family.get(key)
        return family is not None and family in self.families

    def add(self, start: int, end: int, kind: FlagType, weak: bool = False) -> None:
        if end > start:
            self.raw.append((start, end, kind, weak))

    def brands(self) -> None:
        quoted = [m.span() for m in _QUOTED.finditer(self.answer)]
        for start, end, _, _ in self.lex.find("brands", self.folded):
            if not _ascii_bounded(self.folded, start, end) or not self._cased(start, end):
                continue
            self._brand(start, end, quoted)
        for match in _CAMEL.finditer(self.answer):
            self._brand(*match.span(), quoted)
        for match in _EN_PRODUCT.finditer(self.answer):
            self._brand(*match.span(1), quoted)
        nouns = self.lex.lists["product_nouns"].words
        for match in _ZH_CUE.finditer(self.answer):
            name = _zh_name(fold(self.answer[match.end() : match.end() + 12]), nouns)
            if (
                name
                and self.answer[match.end()] != "的"
                and not any(g in self.answer[match.end() : match.end() + name] for g in _GENERIC)
            ):
                self._brand(match.end(), match.end() + name, quoted)

    def _brand(self, start: int, end: int, quoted: Iterable[tuple[int, int]]) -> None:
        name = self.answer[start:end]
        if self._asked(name) or self._inside(start, end, self.shelter):
            return
        if any(q[0] <= start and end <= q[1] for q in quoted):
            return  # quoted text: a slogan, a title, a search term (its own rule)
        if fold(name) in self.host:
            self.add(start, end, "self_preferencing")
        else:
            self.add(start, end, "brand_not_asked")

    def contacts(self) -> None:
        for pattern in (_URL, _DOMAIN):
            for match in pattern.finditer(self.answer):
                start, end = match.span()
                while end > start and self.answer[end - 1] in ".,;:":
                    end -= 1
                if not _GOV_DOMAIN.search(self.answer[start:end]):
                    self.add(start, end, "contact_or_purchase_path")
        for match in _PHONE.finditer(self.answer):
            if not self._inside(*match.span(), self.shelter):
                self.add(*match.span(), "contact_or_purchase_path")
        for match in _HANDLE.finditer(self.answer):
            self.add(*match.span(), "contact_or_purchase_path")
        for pattern in (_SEARCH_PATH, _SHOP_CART):
            for match in pattern.finditer(self.answer):
                self.add(*match.span(), "contact_or_purchase_path")
        for start, end, word, _ in self.lex.find("contact_labels", self.folded):
            if not _ascii_bounded(self.folded, start, end):
                continue
            found = _ID_AFTER_LABEL.match(self.answer, end)
            if found is None:
                continue
            ident = found.group(1)
            latin_label = word.isascii()
            if latin_label and not (any(c.isdigit() for c in ident) or ident.isupper()):
                continue  # "call emergency services", "code every day"
            if ident in ("App", "app") or self._inside(found.start(1), found.end(1), self.shelter):
                continue
            self.add(start, found.end(), "contact_or_purchase_path")

    def words(self) -> None:
        for start, end, _, tag in self.lex.find("cta", self.folded):
            if _ascii_bounded(self.folded, start, end):
                self.add(start, end, "call_to_action", weak=tag == "weak")
        for start, end, *_ in self.lex.find("incentives", self.folded):
            if _ascii_bounded(self.folded, start, end):
                self.add(start, end, "incentive")
        for match in _INCENTIVE.finditer(self.answer):
            self.add(*match.span(), "incentive")
        for start, end, *_ in self.lex.find("superlatives", self.folded):
            if _ascii_bounded(self.folded, start, end):
                self.add(start, end, "superlative", weak=True)
        for match in _EN_SUPERLATIVE.finditer(self.answer):
            self.add(*match.span(), "superlative", weak=True)

    def _cased(self, start: int, end: int) -> bool:
        """A Latin brand that is also a word ("Calm", "Notion") counts only capitalised."""
        written = self.lex.written.get(self.folded[start:end], "")
        return not written[:1].isupper() or self.answer[start].isupper()

    @staticmethod
    def _inside(start: int, end: int, spans: Iterable[tuple[int, int]]) -> bool:
        return any(overlaps((start, end), s) for s in spans)

    def flags(self, parts: list[Sentence]) -> list[Flag]:
        language = self.context.language
        strong = [
            Flag(s, e, kind, _SEVERITY[kind], self.answer[s:e])
            for s, e, kind, weak in self.raw
            if not weak
        ]
        strong = resolve(strong)
        # Superlatives and weak calls to action count only in a sentence that also names a
        # product or seller or carries another flag ("最好先咨询医生" is advice, not praise).
        weak = []
        for s, e, kind, is_weak in self.raw:
            if not is_weak:
                continue
            sentence = next((p for p in parts if p.start <= s < p.end), None)
            if sentence is None:
                continue
            if any(sentence.start <= f.start < sentence.end for f in strong):
                weak.append(Flag(s, e, kind, _SEVERITY[kind], self.answer[s:e]))
        if self.context.question and weak:
            asked = self.question
            weak = [f for f in weak if fold(f.text) not in asked]
        merged = resolve(strong + weak)
        return [
            Flag(f.start, f.end, f.type, f.severity, f.text, explain(f.type, f.text, language))
            for f in merged
        ]


def _zh_name(after: str, nouns: Sequence[str]) -> int:
    """The length of the name at the start of ``after`` (0 if none): the shortest stretch of
    2-6 word characters before a product noun ("守护宝|防诈手表"), else the whole word before
    a terminator ("说客英语，")."""
    word = 0
    while word < len(after) and re.match(rf"[{_CJK}A-Za-z0-9]", after[word]):
        word += 1
    for length in range(2, min(word, 6) + 1):
        rest = after[length:]
        if any(rest.startswith(noun) for noun in nouns):
            return length
    if 2 <= word <= 6 and (word == len(after) or after[word] in _ZH_TERMINATORS):
        return word
    return 0


def _number_alone(text: str, start: int, end: int) -> bool:
    """A public number only counts as itself, not as the digits of a longer number."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isdigit() or before == "-") and not (after.isdigit() or after == "-")


def find_flags(answer: str, context: Context, parts: list[Sentence] | None = None) -> list[Flag]:
    """Every promotional word of ``answer`` the rules find, with exact spans, after the
    whitelists; overlapping findings reduced to the strongest type."""
    finder = _Finder(answer, context, lexicons())
    finder.contacts()
    finder.brands()
    finder.words()
    return finder.flags(parts if parts is not None else sentences(answer))
