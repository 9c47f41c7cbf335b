"""Two `nobusy serve` replicas on one PostgreSQL, driven as operators and clients would: a key
made by `nobusy keys create` opens both, usage and audit rows of both land in one place,
`nobusy usage` and `nobusy audit verify/export` read it, and start-up errors are clear."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Process, free_port, serve
from tests.postgres_server import PASSWORD, PostgresServer

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}/v1", default_model: ok}}
models:
  ok: [fake/ok]
audit: {{enabled: true}}
"""
DATA_KEY = "00112233445566778899aabbccddeeff"  # the replicas share it: one audit chain key


def knows_keys(replica: Process) -> None:
    """Wait until the replica's copy of the keys has some (it reloads it every second): a
    wrong key is refused from then on."""
    wrong = "nb-" + "x" * 43
    for _ in range(300):
        response = httpx.get(
            f"{replica.url}/v1/models", headers={"authorization": f"Bearer {wrong}"}
        )
        if response.status_code == 401:
            return
        time.sleep(0.02)
    raise AssertionError(f"{replica.url} never learned of the keys")


def until_refused(client: openai.OpenAI) -> bool:
    """Ask until the key is refused (the replica's copy is reloaded every second)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
        except openai.AuthenticationError:
            return True
        time.sleep(0.05)
    return False


def nobusy(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One CLI command against the PostgreSQL at ``url`` (NOBUSY_STORE), in its own folder."""
    env = {**os.environ, "NOBUSY_STORE": url, "NOBUSY_SECRET_KEY": DATA_KEY,
           "NOBUSY_DATA_DIR": str(tmp / "cli-data"), "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "nobusy", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    fake_upstream: Process,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, list[Process]]]:
    url = postgres_server.new_database("fleet")
    tmp = tmp_path_factory.mktemp("pg-fleet")
    started: list[Process] = []
    try:
        for name in ("r1", "r2"):
            (tmp / name).mkdir()
            env = {"NOBUSY_STORE": url, "NOBUSY_SECRET_KEY": DATA_KEY, "NOBUSY_REPLICA_ID": name}
            started.append(serve(tmp / name, CONFIG.format(fake=fake_upstream.url), env=env))
        yield url, tmp, started
    finally:
        for process in started:
            process.stop()


def test_a_key_made_by_the_cli_opens_every_replica(
    fleet: tuple[str, Path, list[Process]],
) -> None:
    url, tmp, replicas = fleet
    made = nobusy(tmp, url, "keys", "create", "--name", "team")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert "Created a new key database" not in made.stderr
    for replica in replicas:
        knows_keys(replica)
        client = openai.OpenAI(base_url=f"{replica.url}/v1", api_key=secret, max_retries=0)
        answer = client.chat.completions.create(
            model="ok", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
    listed = nobusy(tmp, url, "keys", "list")
    assert listed.returncode == 0 and "team" in listed.stdout
    usage = nobusy(tmp, url, "usage", "--by", "key")
    assert usage.returncode == 0, usage.stderr
    team = next(line for line in usage.stdout.splitlines() if line.strip().startswith("team"))
    assert team.split()[2] == "2"  # requests: one through each replica
    revoked = nobusy(tmp, url, "keys", "revoke", "team")
    assert revoked.returncode == 0, revoked.stderr
    for replica in replicas:
        client = openai.OpenAI(base_url=f"{replica.url}/v1", api_key=secret, max_retries=0)
        assert until_refused(client), replica.url


def test_audit_rows_of_both_replicas_form_one_verifiable_chain(
    fleet: tuple[str, Path, list[Process]],
) -> None:
    url, tmp, _ = fleet
    verified = nobusy(tmp, url, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout and "PostgreSQL" in verified.stdout
    assert PASSWORD not in verified.stdout
    exported = nobusy(tmp, url, "audit", "export", "--since", "1h", "--decrypt")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.count('"event":"request"') >= 2


def test_start_up_errors_are_clear_and_keep_the_password_out(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    down = f"postgresql://nobusy:{PASSWORD}@127.0.0.1:{free_port()}/nobusy"
    wrong = postgres_server.url(password="not-the-password-42")
    for url, words in ((down, "cannot reach PostgreSQL"), (wrong, "refused nobusy")):
        for args in (("serve", "--port", str(free_port())), ("keys", "list"), ("usage",)):
            result = nobusy(tmp_path, url, *args)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert words in output and "Traceback" not in output, output
            assert PASSWORD not in output and "not-the-password-42" not in output


def test_a_key_made_through_one_replicas_admin_api_opens_the_other(
    fleet: tuple[str, Path, list[Process]],
) -> None:
    _, _, (first, second) = fleet
    made = httpx.post(f"{first.url}/v1/nobusy/keys", json={"name": "via-admin"}, timeout=10)
    assert made.status_code == 201, made.text
    client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=made.json()["secret"])
    knows = False
    for _ in range(100):  # until the second replica's copy has it (reloaded each second)
        try:
            client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
        except openai.AuthenticationError:
            time.sleep(0.05)
        else:
            knows = True
            break
    assert knows


def test_postgresql_down_loses_no_answered_request(fake_upstream: Process, tmp_path: Path) -> None:
    with PostgresServer.private(free_port()) as server:
        url = server.start_or_skip().url()
        made = nobusy(tmp_path, url, "keys", "create", "--name", "steady")
        assert made.returncode == 0, made.stderr
        env = {"NOBUSY_STORE": url, "NOBUSY_SECRET_KEY": DATA_KEY}
        replica = serve(tmp_path, CONFIG.format(fake=fake_upstream.url), env=env)
        try:
            client = openai.OpenAI(
                base_url=f"{replica.url}/v1", api_key=made.stdout.strip(), max_retries=0
            )
            ids = []

            def ask() -> None:
                answer = client.chat.completions.with_raw_response.create(
                    model="ok", messages=[{"role": "user", "content": "hi"}]
                )
                ids.append(answer.headers["x-request-id"])

            for _ in range(3):
                ask()
            server.stop()
            for _ in range(5):  # keys from the replica's copy; rows to its spill file
                ask()
            spill = tmp_path / "data" / "spill"
            assert any(spill.glob("usage-*.jsonl"))
            ready = httpx.get(f"{replica.url}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["degraded"] == ["postgresql"]
            assert PASSWORD not in ready.text
            server.start()
            for _ in range(2):
                ask()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(spill.glob("*.jsonl")):
                time.sleep(0.05)
        finally:
            replica.stop()
        stored = [row[0] for row in server.execute("SELECT request_id FROM usage ORDER BY id")]
        assert stored == ids  # every answered request, once, in order
        log = (tmp_path / "nobusy.log").read_text()
        assert log.count("is down") == 1 and PASSWORD not in log
        verified = nobusy(tmp_path, url, "audit", "verify")
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout
