"""Settings: the issue's config form, precedence, interpolation, and errors that name the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nobusy.errors import ConfigError
from nobusy.settings import Route, Settings, load_settings
from nobusy.upstreams.base import UpstreamSettings
from nobusy.upstreams.embedded import Settings as EmbeddedSettings
from nobusy.upstreams.openai import Settings as OpenAISettings

ROOT = Path(__file__).resolve().parent.parent

ISSUE_FORM = (ROOT / "tests" / "configs" / "issue-form.yaml").read_text()
ENV = {"DEEPSEEK_API_KEY": "sk-deep", "DASHSCOPE_API_KEY": "sk-dash"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nobusy.yaml"
    path.write_text(text)
    return path


def test_the_issue_config_form_loads_exactly(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ISSUE_FORM), env=ENV)
    assert settings.models["deepseek-chat"].routes == (
        Route("deepseek", "deepseek-chat"),
        Route("bailian", "deepseek-v3", tier=1),
        Route("local", None, tier=2),
    )
    deepseek = settings.upstreams["deepseek"]
    assert isinstance(deepseek, OpenAISettings)
    assert deepseek.api_key is not None and deepseek.api_key.get_secret_value() == "sk-deep"
    assert "sk-deep" not in repr(settings)  # secrets never print
    assert isinstance(settings.upstreams["local"], EmbeddedSettings)


def test_no_config_serves_the_embedded_model_as_local() -> None:
    settings = load_settings(env={})
    assert list(settings.models) == ["local"]
    assert settings.models["local"].routes == (Route("local", None),)
    assert settings.upstreams["local"].kind == "embedded"
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8000, Path("data"))


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9001\nlog_level: warning\nheader_timeout: 3\n")
    env = {"NOBUSY_PORT": "9002", "NOBUSY_LOG_LEVEL": "debug"}
    settings = load_settings(path, env=env, port=9003)
    assert settings.port == 9003  # CLI beats env
    assert settings.log_level == "debug"  # env beats file
    assert settings.header_timeout == 3  # file beats default
    assert settings.max_body_bytes == 10 * 1024 * 1024  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9005\n")
    assert load_settings(env={"NOBUSY_CONFIG": str(path)}).port == 9005


def test_interpolation_default_and_missing(tmp_path: Path) -> None:
    text = "upstreams:\n  a: {kind: openai, base_url: '${BASE:-http://127.0.0.1:1/v1}'}\n"
    text += "models:\n  m: [a/x]\n"
    settings = load_settings(write(tmp_path, text), env={})
    assert str(settings.upstreams["a"].base_url) == "http://127.0.0.1:1/v1"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="DEEPSEEK_API_KEY is referenced"):
        load_settings(write(tmp_path, ISSUE_FORM), env={"DASHSCOPE_API_KEY": "x"})


def test_slashes_in_model_names_and_long_form(tmp_path: Path) -> None:
    text = """
upstreams:
  sf: {kind: openai, base_url: https://api.siliconflow.cn/v1}
  local: {kind: embedded}
models:
  chat:
    routes: [sf/deepseek-ai/DeepSeek-V3]
    overflow: [local]
"""
    alias = load_settings(write(tmp_path, text), env={}).models["chat"]
    assert alias.routes == (Route("sf", "deepseek-ai/DeepSeek-V3"),)
    assert alias.overflow == (Route("local", None),)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("upstreams:\n  a: {kind: openai}\n", r"upstreams\.a\.base_url: Field required"),
        ("upstreams:\n  a: {kind: openai, base_url: 'not a url'}\n", r"upstreams\.a\.base_url"),
        ("upstreams:\n  a: {kind: magic}\n", r"upstreams\.a\.kind: unknown upstream kind 'magic'"),
        ("upstreams:\n  a: {base_url: x}\n", r"upstreams\.a\.kind: required"),
        (
            "upstreams:\n  a: {kind: embedded, first_token_timeout: -1}\n",
            r"upstreams\.a\.first_token_timeout: Input should be greater than 0",
        ),
        (
            "upstreams:\n  a: {kind: embedded, max_concurrency: zero}\n",
            r"upstreams\.a\.max_concurrency",
        ),
        (
            "upstreams:\n  a: {kind: embedded, colour: blue}\n",
            r"upstreams\.a\.colour: Extra inputs",
        ),
        (
            "upstreams:\n  a: {kind: embedded}\nmodels:\n  m: [b/x]\n",
            r"models\.m\.routes\[0\]: upstream 'b' is not defined",
        ),
        ("upstreams:\n  a: {kind: embedded}\nmodels:\n  m: []\n", r"models\.m\.routes: needs"),
        (
            "upstreams:\n  a: {kind: embedded}\nmodels:\n  m: [3]\n",
            r"models\.m\.routes\[0\]: must be",
        ),
        ("port: many\n", r"port: Input should be a valid integer"),
        ("prot: 80\n", r"unknown top-level key .prot. \(did you mean .port.\?\)"),
        ("- just\n- a list\n", r"top level must be a mapping"),
        ("upstreams: [\n", r"not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(write(tmp_path, text), env={})


def test_every_setting_is_documented() -> None:
    check = [sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"]
    assert subprocess.run(check).returncode == 0, "run scripts/config_docs.py to update the docs"
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for model in (Settings, UpstreamSettings, OpenAISettings, EmbeddedSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert re.search(rf"`{name}`", docs), f"{name} is missing from docs/configuration.md"


def test_settings_are_frozen() -> None:
    settings = load_settings(env={})
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_interpolation_ignores_comments_and_fills_empty_defaults(tmp_path: Path) -> None:
    text = """
# api_key: ${NOT_SET_ANYWHERE}
upstreams:
  a: {kind: openai, base_url: "${BASE:-http://127.0.0.1:2/v1}", default_model: m}
"""
    settings = load_settings(write(tmp_path, text), env={"BASE": ""})
    assert str(settings.upstreams["a"].base_url) == "http://127.0.0.1:2/v1"  # type: ignore[attr-defined]
    assert list(settings.models) == ["a"]


def test_route_without_model_needs_a_default_model(tmp_path: Path) -> None:
    text = "upstreams:\n  a: {kind: openai, base_url: 'http://x/v1'}\nmodels:\n  m: [a]\n"
    with pytest.raises(ConfigError, match=r"models\.m\.routes\[0\]: upstream 'a' has no default"):
        load_settings(write(tmp_path, text), env={})


def test_tiers_weights_and_hedge(tmp_path: Path) -> None:
    text = """
upstreams:
  a: {kind: openai, base_url: "http://a/v1", circuit: {consecutive_failures: 2}}
  b: {kind: openai, base_url: "http://b/v1", continuation: prefix}
  local: {kind: embedded}
models:
  chat:
    routes:
      - [a/m, {route: b/m, weight: 3}]
      - local
    hedge: {after: 0.5, budget: 0.1}
"""
    settings = load_settings(write(tmp_path, text), env={})
    alias = settings.models["chat"]
    assert alias.routes == (
        Route("a", "m", 0, 1.0),
        Route("b", "m", 0, 3.0),
        Route("local", None, 1),
    )
    assert alias.hedge is not None and alias.hedge.after == 0.5
    assert settings.upstreams["a"].circuit.consecutive_failures == 2
    assert settings.upstreams["b"].continuation == "prefix"
    assert settings.upstreams["local"].continuation == "prefix"


@pytest.mark.parametrize(
    ("routes", "says"),
    [
        ("[{route: a/m, weight: 0}]", r"models\.m\.routes\[0\]: a weighted route"),
        ("[[a/m, 5]]", r"models\.m\.routes\[0\]\[1\]: must be"),
        ("[{route: a/m, vision: maybe}]", r"models\.m\.routes\[0\]: .*vision, completions, fim"),
        ("[{route: a/m, colour: red}]", r"models\.m\.routes\[0\]: a weighted route"),
    ],
)
def test_bad_routes_name_the_place(tmp_path: Path, routes: str, says: str) -> None:
    text = f"upstreams:\n  a: {{kind: embedded}}\nmodels:\n  m: {routes}\n"
    with pytest.raises(ConfigError, match=says):
        load_settings(write(tmp_path, text), env={})


def test_routes_and_upstreams_say_what_they_take(tmp_path: Path) -> None:
    text = """
upstreams:
  a: {kind: openai, base_url: "http://a/v1", completions: true, fim: true, vision: false}
  local: {kind: embedded}
models:
  m: [{route: a/x, fim: false, vision: true}, a/y, local]
"""
    settings = load_settings(write(tmp_path, text), env={})
    first, second, local = settings.models["m"].routes
    assert (first.vision, first.completions, first.fim) == (True, None, False)
    assert (second.vision, second.completions, second.fim) == (None, None, None)
    a, embedded = settings.upstreams["a"], settings.upstreams["local"]
    assert (a.vision, a.completions, a.fim) == (False, True, True)
    assert (embedded.vision, embedded.completions, embedded.fim) == (False, True, False)


def test_the_shipped_example_loads() -> None:
    text = (ROOT / "examples" / "nobusy.yaml").read_text()
    names = set(re.findall(r"\$\{(\w+)\}", text))  # those without a default
    settings = load_settings(ROOT / "examples" / "nobusy.yaml", env=dict.fromkeys(names, "k"))
    assert "deepseek-chat" in settings.models
    assert settings.upstreams["deepseek"].continuation == "prefix"
