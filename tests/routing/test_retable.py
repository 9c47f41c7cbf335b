"""The routing table swapped by a reload (``Router.retable``), in-process: what is kept, what
is retired, what is planned afterwards; and the managed overlay merged over the YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from nobusy.errors import ConfigError
from nobusy.metrics import Metrics
from nobusy.overlay import merge_overlay, write
from nobusy.routing.router import Router
from nobusy.settings import ModelAlias, Route, Settings, load_settings, read_overlay
from nobusy.testing import ScriptedUpstream


def table(upstreams: dict[str, ScriptedUpstream], models: dict[str, list[str]]) -> Settings:
    return Settings(
        upstreams={name: u.settings for name, u in upstreams.items()},
        models={a: ModelAlias(routes=tuple(Route(r) for r in rs)) for a, rs in models.items()},
    )


def test_unchanged_upstreams_keep_their_state_and_removed_ones_retire() -> None:
    a, b = ScriptedUpstream("a", []), ScriptedUpstream("b", [])
    router = Router(table({"a": a, "b": b}, {"m": ["a", "b"]}), {"a": a, "b": b}, Metrics())
    kept_stats, kept_limit = router.stats["a"], router.capacity.limits["a"]
    kept_stats.circuit.failure("down for a while")
    b_stats = router.stats["b"]
    b_stats.in_flight = 1  # an attempt still running on b

    c = ScriptedUpstream("c", [])
    retired = router.retable(table({"a": a, "c": c}, {"m": ["a", "c"]}), {"c": c})

    assert retired == [(b, b_stats)]
    assert router.upstreams == {"a": a, "c": c}
    assert router.stats["a"] is kept_stats and router.capacity.limits["a"] is kept_limit
    assert kept_stats.circuit.reason == "down for a while"
    ordered, _ = router.plan([Route("a"), Route("b"), Route("c")])
    assert {r.upstream for r in ordered} <= {"a", "c"}
    # b's running attempt still releases its slot into b's table; then b is forgotten.
    assert "b" in router.capacity.limits
    router.forget("b")
    assert "b" not in router.capacity.limits and "b" not in router.retry_budgets
    assert router._pause("b") == float("inf")  # a slot b frees goes to no waiter


def test_a_redefined_upstream_gets_a_new_object_and_fresh_statistics() -> None:
    a = ScriptedUpstream("a", [])
    router = Router(table({"a": a}, {"m": ["a"]}), {"a": a}, Metrics())
    old_stats = router.stats["a"]
    again = ScriptedUpstream("a", [], answer="new")
    retired = router.retable(table({"a": again}, {"m": ["a"]}), {"a": again})
    assert retired == [(a, old_stats)]
    assert router.upstreams["a"] is again and router.stats["a"] is not old_stats
    assert "a" in router.capacity.limits  # the slots' table stays: old attempts release there


def test_disabled_upstreams_and_aliases_are_left_out() -> None:
    a, b = ScriptedUpstream("a", []), ScriptedUpstream("b", [])
    settings = table({"a": a, "b": b}, {"m": ["a", "b"], "off": ["a"]})
    disabled = settings.model_copy(
        update={
            "upstreams": {
                **settings.upstreams,
                "b": b.settings.model_copy(update={"enabled": False}),
            },
            "models": {
                **settings.models,
                "off": settings.models["off"].model_copy(update={"enabled": False}),
            },
        }
    )
    router = Router(disabled, {"a": a, "b": b}, Metrics())
    assert router.aliases() == ["m"]
    assert [r.upstream for r in router.plan([Route("a"), Route("b")])[0]] == ["a"]


YAML = """
upstreams:  # the operator's comments stay: nobusy never writes this file
  one: {kind: openai, base_url: "http://127.0.0.1:9/v1", default_model: m}
  two: {kind: openai, base_url: "http://127.0.0.1:9/v1", default_model: m}
models:
  a: [one]
  b: [two]
"""


def test_the_overlay_adds_patches_and_removes_entries(tmp_path: Path) -> None:
    config = tmp_path / "nobusy.yaml"
    config.write_text(YAML)
    overlay = {
        "upstreams": {
            "three": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "default_model": "m"},
            "one": {"enabled": False, "max_concurrency": 3},
        },
        "models": {"a": {"enabled": False}, "b": None, "c": {"routes": ["three", "two"]}},
    }
    write(tmp_path / "nobusy.managed.yaml", overlay)
    settings = load_settings(config, env={})
    assert settings.managed_file == tmp_path / "nobusy.managed.yaml"
    assert read_overlay(settings.managed_file, {}) == overlay
    assert set(settings.upstreams) == {"one", "two", "three"}
    one = settings.upstreams["one"]
    assert not one.enabled and one.max_concurrency == 3 and one.default_model == "m"  # type: ignore[attr-defined]
    assert set(settings.models) == {"a", "c"} and not settings.models["a"].enabled
    assert [str(r) for r in settings.models["c"].routes] == ["three", "two"]
    assert config.read_text() == YAML


def test_an_overlay_that_breaks_the_config_says_what_check_says(tmp_path: Path) -> None:
    config = tmp_path / "nobusy.yaml"
    config.write_text(YAML)
    with pytest.raises(ConfigError, match=r"models\.b\.routes\[0\]: upstream 'two' is not defined"):
        load_settings(config, env={}, managed={"upstreams": {"two": None}})
    with pytest.raises(ConfigError, match=r"models\.a: every upstream of its routes is disabled"):
        load_settings(config, env={}, managed={"upstreams": {"one": {"enabled": False}}})
    (tmp_path / "nobusy.managed.yaml").write_text("port: 9000\n")
    with pytest.raises(ConfigError, match="'port' cannot be set here"):
        load_settings(config, env={})


def test_merge_keeps_the_short_form_of_an_alias() -> None:
    merged = {"models": {"a": ["one"]}}
    merge_overlay(merged, {"models": {"a": {"enabled": False}}})
    assert merged == {"models": {"a": {"routes": ["one"], "enabled": False}}}
