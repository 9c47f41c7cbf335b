"""`nobusy keys` as an operator runs it: the secret once, readable tables, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nobusy.cli.keys import keys
from nobusy.errors import KeyRevoked
from nobusy.store.keys import KeyStore


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    command, *rest = args
    return runner.invoke(keys, [command, "--data-dir", str(data_dir), *rest])


def stored(data_dir: Path) -> KeyStore:
    return KeyStore(data_dir)


def test_create_prints_the_key_once(tmp_path: Path) -> None:
    result = run(tmp_path, "create", "--name", "team-a", "--rpm", "60", "--models", "chat,small")
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()  # alone on stdout, so scripts can capture it
    assert secret.startswith("nb-") and len(secret) == 46
    assert result.output.count(secret) == 1
    assert "will not be shown again" in result.stderr
    store = stored(tmp_path)
    try:
        key = store.authenticate(secret)
        assert (key.name, key.rpm, key.models) == ("team-a", 60, ("chat", "small"))
    finally:
        store.close()
    listed = run(tmp_path, "list")
    assert secret not in listed.output and secret[3:11] in listed.output


def test_list_shows_names_limits_and_status(tmp_path: Path) -> None:
    run(tmp_path, "create", "--name", "team-a", "--quota-tokens", "1000", "--priority", "high")
    run(tmp_path, "create", "--name", "team-b", "--tpm", "5000", "--expires", "30d")
    run(tmp_path, "revoke", "team-b")
    result = run(tmp_path, "list")
    assert result.exit_code == 0, result.output
    for text in ("API keys", "team-a", "team-b", "high", "1,000 / 1,000", "tpm 5,000", "revoked"):
        assert text in result.output, text
    assert "active" in result.output and "never" in result.output


def test_show_update_topup(tmp_path: Path) -> None:
    run(tmp_path, "create", "--name", "team-a", "--quota-tokens", "100", "--rpm", "10")
    result = run(tmp_path, "update", "team-a", "--rpm", "none", "--max-wait", "2.5")
    assert result.exit_code == 0, result.output
    assert "unlimited" in result.output and "2.5s" in result.output
    result = run(tmp_path, "topup", "team-a", "50")
    assert result.exit_code == 0, result.output
    assert "150 / 150" in result.output
    result = run(tmp_path, "show", "team-a")
    assert result.exit_code == 0, result.output
    for text in ("team-a", "sm3", "150 / 150", "2.5s", "active"):
        assert text in result.output, text


def test_revoke_refuses_the_key(tmp_path: Path) -> None:
    secret = run(tmp_path, "create", "--name", "team-a").stdout.strip()
    result = run(tmp_path, "revoke", "team-a")
    assert result.exit_code == 0 and "Revoked" in result.output
    store = stored(tmp_path)
    try:
        with pytest.raises(KeyRevoked):
            store.authenticate(secret)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rpm", "-1"], "--rpm"),
        (["--rpm", "lots"], "not a whole number"),
        (["--rpm", "1.5"], "not a whole number"),
        (["--tpm", "0"], "--tpm"),
        (["--priority", "urgent"], "--priority"),
        (["--expires", "soon"], "expected a duration like 30d"),
        (["--models", "chat,,small"], "--models"),
        (["--max-wait", "-3"], "--max-wait"),
    ],
)
def test_invalid_values_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    data_dir = tmp_path / "data"
    result = run(data_dir, "create", "--name", "team-a", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not data_dir.exists()


def test_update_with_invalid_values_changes_nothing(tmp_path: Path) -> None:
    run(tmp_path, "create", "--name", "team-a", "--rpm", "10")
    result = run(tmp_path, "update", "team-a", "--rpm", "-1")
    assert result.exit_code == 2 and "--rpm" in result.output
    assert run(tmp_path, "update", "team-a").exit_code == 2  # nothing to update
    result = run(tmp_path, "topup", "team-a", "0")
    assert result.exit_code == 2 and "'TOKENS'" in result.output
    result = run(tmp_path, "topup", "team-a", "5")
    assert result.exit_code == 1 and "no token quota" in result.output
    store = stored(tmp_path)
    try:
        assert store.get("team-a").rpm == 10
    finally:
        store.close()


def test_clear_errors_for_unknown_and_duplicate_keys(tmp_path: Path) -> None:
    run(tmp_path, "create", "--name", "team-a")
    result = run(tmp_path, "create", "--name", "team-a")
    assert result.exit_code == 1 and "already exists" in result.output
    for command in (["show", "nobody"], ["revoke", "nobody"], ["topup", "nobody", "5"]):
        result = run(tmp_path, *command)
        assert result.exit_code == 1 and "No API key with id or name 'nobody'" in result.output


def test_data_dir_defaults_to_the_environment(tmp_path: Path) -> None:
    runner = CliRunner(env={"NOBUSY_DATA_DIR": str(tmp_path / "env-data")})
    result = runner.invoke(keys, ["create", "--name", "team-a"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env-data" / "nobusy.db").exists()
