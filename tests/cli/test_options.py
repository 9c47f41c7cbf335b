"""One list of settings: every top-level setting one value sets is a NOBUSY_* variable and a
flag of `nobusy serve`, generated from its field, with YAML < env < flag between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from nobusy.cli.serve import serve
from nobusy.settings import SCALARS, Settings, env_name, load_settings


def other_value(name: str) -> tuple[str, Any]:
    """A value other than the default, as typed (flag argument or variable) and as parsed."""
    field = Settings.model_fields[name]
    annotation, default = field.annotation, field.default
    if annotation is bool:
        return str(not default).lower(), not default
    if get_origin(annotation) is Literal:
        choice = [c for c in get_args(annotation) if c != default][-1]
        return choice, choice
    if annotation is int:
        return str(default + 1), default + 1
    if annotation is float:
        return str(default / 2), default / 2
    if annotation is str or get_args(annotation) == (str, type(None)):
        return "example.test", "example.test"
    if annotation is Path or get_args(annotation) == (Path, type(None)):
        return "elsewhere", Path("elsewhere")
    if get_origin(annotation) is tuple:
        return "a.example, b.example", ("a.example", "b.example")
    if name == "state":
        return "redis://:s3cret@cache.test/0", SecretStr("redis://:s3cret@cache.test/0")
    if name == "store":
        url = "postgresql://nobusy:s3cret@db.test/nobusy"
        return url, SecretStr(url)
    if SecretStr in get_args(annotation):
        return "s3cret-" * 3, SecretStr("s3cret-" * 3)
    raise AssertionError(f"{name}: add its type to this test ({annotation})")


def flag_args(name: str) -> list[str]:
    text, value = other_value(name)
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    return [flag, text]


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """What `nobusy serve` would run with; nothing is served."""
    for name in (*SCALARS, "config"):
        monkeypatch.delenv(env_name(name), raising=False)
    runs: list[Settings] = []
    monkeypatch.setattr(
        "nobusy.edge.server.run",
        lambda settings, config_file=None, source=None: runs.append(settings),
    )
    return runs


def test_every_scalar_setting_is_a_variable() -> None:
    env = {env_name(name): other_value(name)[0] for name in SCALARS}
    settings = load_settings(env=env)
    for name in SCALARS:
        assert getattr(settings, name) == other_value(name)[1], env_name(name)


def test_every_scalar_setting_but_secrets_is_a_flag_of_serve(served: list[Settings]) -> None:
    params = {param.name: param for param in serve.params}
    flagged = [n for n in SCALARS if SecretStr not in get_args(Settings.model_fields[n].annotation)]
    # A command line is readable by all; a Redis or PostgreSQL URL may hold a password.
    assert set(SCALARS) - set(flagged) == {"admin_key", "state", "store"}
    assert not {"admin_key", "state", "store"} & set(params)
    for name in flagged:
        param, field = params[name], Settings.model_fields[name]
        assert isinstance(param, click.Option)
        assert "--" + name.replace("_", "-") in param.opts
        assert param.help == field.description
    args = [arg for name in flagged for arg in flag_args(name)]
    result = CliRunner().invoke(serve, args)
    assert result.exit_code == 0, result.output
    for name in flagged:
        assert getattr(served[0], name) == other_value(name)[1], name


def test_help_shows_each_flag_with_its_description_and_default() -> None:
    text = CliRunner().invoke(serve, ["--help"], terminal_width=200).output
    assert "--port INTEGER RANGE" in text and "TCP port to listen on." in text
    assert "[default: 8000; 0<=x<=65535]" in text
    assert "[default: data]" in text and "[default: info]" in text
    assert "NOBUSY_DATA_DIR" in text  # the epilog names the rule: a flag = a variable = a key


def test_a_flag_not_given_overrides_nothing(tmp_path: Path, served: list[Settings]) -> None:
    config = tmp_path / "nobusy.yaml"
    config.write_text("port: 9001\nlog_level: warning\nmax_headers: 50\n")
    args = ["--config", str(config), "--max-headers", "7"]
    result = CliRunner().invoke(serve, args, env={"NOBUSY_LOG_LEVEL": "debug"})
    assert result.exit_code == 0, result.output
    settings = served[0]
    assert settings.port == 9001  # the file, not the default the help shows
    assert settings.log_level == "debug"  # the variable beats the file
    assert settings.max_headers == 7  # the flag beats the file
    assert settings.workers == 1  # the default


def test_a_value_out_of_range_is_a_usage_error(served: list[Settings]) -> None:
    result = CliRunner().invoke(serve, ["--workers", "0"])
    assert result.exit_code == 2 and "x>=1" in result.output
    assert served == []
