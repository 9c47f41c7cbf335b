"""Upstream kinds are plugins of one protocol (``base.Upstream``), found by name.

Built-in kinds are import strings in ``KINDS``; other packages add kinds through the
``nobusy.upstreams`` entry-point group. A kind module exposes ``Settings`` (a subclass of
``UpstreamSettings``) and ``Upstream`` (a class built from a name and those settings).
Modules are imported only when a kind is used, so llama.cpp loads only for ``embedded``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from types import ModuleType

from nobusy.upstreams.base import Upstream, UpstreamSettings

__all__ = ["KINDS", "build_upstream", "kind_module", "settings_class"]

KINDS: dict[str, str] = {
    "openai": "nobusy.upstreams.openai",
    "embedded": "nobusy.upstreams.embedded",
    "anthropic": "nobusy.upstreams.anthropic",
    "vllm": "nobusy.upstreams.servers.vllm",
    "sglang": "nobusy.upstreams.servers.sglang",
    "llamacpp": "nobusy.upstreams.servers.llamacpp",
}


def kind_module(kind: str) -> ModuleType:
    """The module implementing ``kind``; KeyError naming the known kinds if there is none."""
    target = KINDS.get(kind)
    if target is None:
        for ep in entry_points(group="nobusy.upstreams"):
            if ep.name == kind:
                target = ep.value
                break
    if target is None:
        known = ", ".join(
            sorted({*KINDS, *(ep.name for ep in entry_points(group="nobusy.upstreams"))})
        )
        raise KeyError(f"unknown upstream kind '{kind}' (known: {known})")
    return importlib.import_module(target)


def settings_class(kind: str) -> type[UpstreamSettings]:
    cls: type[UpstreamSettings] = kind_module(kind).Settings
    return cls


def build_upstream(name: str, settings: UpstreamSettings) -> Upstream:
    upstream: Upstream = kind_module(settings.kind).Upstream(name, settings)
    return upstream
