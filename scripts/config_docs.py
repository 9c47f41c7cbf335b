"""Regenerate the settings tables in docs/configuration.md from the code's Field descriptions.

Run `python scripts/config_docs.py` after changing a setting; tests/test_settings.py fails when
the tables and the code disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from nobusy.cache import CacheSettings
from nobusy.crosscheck.settings import CrossCheckSettings
from nobusy.guard import GuardSettings, LexiconSettings
from nobusy.guard.pii import PiiSettings
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.money.prices import ModelPrice, Price, PriceWindow, PricingSettings
from nobusy.settings import AuditSettings, HedgeSettings, ModelAlias, Settings
from nobusy.upstreams.anthropic import Settings as AnthropicSettings
from nobusy.upstreams.base import CircuitSettings, UpstreamSettings
from nobusy.upstreams.embedded import Settings as EmbeddedSettings
from nobusy.upstreams.openai import Settings as OpenAISettings
from nobusy.upstreams.servers.vllm import Settings as ServerSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
MODELS: dict[str, type[BaseModel]] = {
    "Settings": Settings,
    "ModelAlias": ModelAlias,
    "HedgeSettings": HedgeSettings,
    "CircuitSettings": CircuitSettings,
    "Price": Price,
    "PriceWindow": PriceWindow,
    "ModelPrice": ModelPrice,
    "PricingSettings": PricingSettings,
    "GuardSettings": GuardSettings,
    "LexiconSettings": LexiconSettings,
    "AuditSettings": AuditSettings,
    "KnowledgeSettings": KnowledgeSettings,
    "CrossCheckSettings": CrossCheckSettings,
    "PiiSettings": PiiSettings,
    "CacheSettings": CacheSettings,
    "UpstreamSettings": UpstreamSettings,
    "openai": OpenAISettings,
    "embedded": EmbeddedSettings,
    "anthropic": AnthropicSettings,
    "servers": ServerSettings,
}
BLOCK = re.compile(r"(<!-- fields:(\w+) -->\n).*?(<!-- /fields -->)", re.S)


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = re.sub(r"typing\.|pathlib\.|pydantic\.types\.|pydantic\.networks\.", "", str(text))
    text = re.sub(r"Annotated\[(\w+), .*\]", r"\1", text)
    return text.replace("NoneType", "None").replace("|", "or")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "*required*" if field.default_factory is None else "`{}`"
    return f"`{field.default}`" if field.default is not None else "none"


def table(model: type[BaseModel]) -> str:
    rows = ["| Name | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {field.description} |"
        )
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(MODELS[m.group(2)]) + m.group(3), text)


if __name__ == "__main__":
    new = render(DOC.read_text())
    if "--check" in sys.argv:
        sys.exit(0 if new == DOC.read_text() else 1)
    DOC.write_text(new)
    print(f"updated {DOC}")
