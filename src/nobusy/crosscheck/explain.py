"""Why a flag was raised, in the question's language (zh or en)."""

from __future__ import annotations

import re

from nobusy.crosscheck.spans import FlagType

__all__ = ["explain", "language_of"]

_TEMPLATES: dict[FlagType, dict[str, str]] = {
    "brand_not_asked": {
        "zh": "提到了问题中没有问到的品牌、店铺、平台或应用：“{text}”。",
        "en": 'Names a brand, shop, platform or app the question did not ask about: "{text}".',
    },
    "call_to_action": {
        "zh": "引导读者去做某个商业动作：“{text}”。",
        "en": 'Tells the reader to act towards a seller: "{text}".',
    },
    "contact_or_purchase_path": {
        "zh": "给出了联系方式或购买途径：“{text}”"
        "（《互联网广告管理办法》第九条：附购买途径的推介应标明为广告）。",
        "en": 'Gives a contact or purchase path: "{text}".',
    },
    "incentive": {
        "zh": "带有优惠或诱因：“{text}”。",
        "en": 'Offers an incentive (discount, free trial, limited time): "{text}".',
    },
    "superlative": {
        "zh": "对商品或商家使用绝对化用语：“{text}”（《广告法》第九条第三项禁止）。",
        "en": 'Praises a product or seller with a superlative: "{text}".',
    },
    "self_preferencing": {
        "zh": "推荐了回答方所属平台自己的产品：“{text}”。",
        "en": 'Recommends the host platform\'s own product: "{text}".',
    },
    "unsupported": {
        "zh": "只有这一个来源提出这项推荐，其他回答都没有提到：“{text}”。",
        "en": 'Only this source makes this recommendation; no other answer says it: "{text}".',
    },
}

_CJK = re.compile(r"[\u4e00-\u9fff]")


def language_of(text: str) -> str:
    """``zh`` when the text has any CJK ideograph, else ``en``."""
    return "zh" if _CJK.search(text) else "en"


def explain(kind: FlagType, text: str, language: str) -> str:
    """The explanation of a flag of ``kind`` over ``text``."""
    short = text if len(text) <= 40 else text[:39] + "…"
    return _TEMPLATES[kind]["zh" if language == "zh" else "en"].format(text=short)
