"""API keys on a running server: checked before the body, limits named in 429s, admin API."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest

from nobusy.db import DB_NAME
from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process, serve

MESSAGES = [{"role": "user", "content": "hi"}]


def make_key(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "nobusy", "keys", "create", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def keyed(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("keyed")
    data = tmp / "data"
    keys = {
        "plain": make_key(data, "--name", "plain"),
        "slow": make_key(data, "--name", "slow", "--rpm", "2"),
        "small": make_key(data, "--name", "small", "--quota-tokens", "20"),
        "narrow": make_key(data, "--name", "narrow", "--models", "ok"),
        "gone": make_key(data, "--name", "gone"),
    }
    subprocess.run(
        [sys.executable, "-m", "nobusy", "keys", "revoke", "gone", "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
  other: [fake/ok]
"""
    process = serve(tmp, config)
    yield process, keys
    process.stop()


def chat(process: Process, key: str | None, model: str = "ok") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{process.url}/v1/chat/completions",
        headers=headers,
        json={"model": model, "messages": MESSAGES},
    )


def test_a_valid_key_works_with_the_sdk(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    with openai.OpenAI(
        base_url=f"{process.url}/v1", api_key=keys["plain"], max_retries=0
    ) as client:
        completion = client.chat.completions.create(model="ok", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == answer_text(MESSAGES)


@pytest.mark.parametrize(
    ("key", "code", "says"),
    [
        (None, "invalid_api_key", "needs an API key"),
        ("nb-not-a-real-key", "invalid_api_key", ""),
        ("sk-something-else", "invalid_api_key", ""),
    ],
)
def test_missing_or_unknown_keys_are_401(
    keyed: tuple[Process, dict[str, str]], key: str | None, code: str, says: str
) -> None:
    response = chat(keyed[0], key)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"]
    assert (key or "zz") not in response.text


def test_revoked_key_says_so(keyed: tuple[Process, dict[str, str]]) -> None:
    response = chat(keyed[0], keyed[1]["gone"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "key_revoked"
    assert "revoked" in response.json()["error"]["message"]


def test_key_is_checked_before_the_body_is_read(keyed: tuple[Process, dict[str, str]]) -> None:
    process, _ = keyed
    with socket.create_connection(("127.0.0.1", process.port)) as sock:
        # Promise 5 MB and send none of it: the answer must not wait for the body.
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"authorization: Bearer nb-wrong\r\ncontent-length: 5000000\r\n\r\n"
        )
        sock.settimeout(5)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401")


def test_rpm_limit_is_named_with_retry_after(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    assert [chat(process, keys["slow"]).status_code for _ in range(2)] == [200, 200]
    limited = chat(process, keys["slow"])
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "2 requests per minute" in error["message"] and "resets in" in error["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_quota_runs_out_with_insufficient_quota(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    assert chat(process, keys["small"]).status_code == 200  # 2 + 12 tokens
    time.sleep(0.6)  # charges are written in batches, at most every half second
    assert chat(process, keys["small"]).status_code == 200  # 28 of 20: the last may overdraw
    time.sleep(0.6)
    response = chat(process, keys["small"])
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


def test_model_allow_list(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    assert chat(process, keys["narrow"], "ok").status_code == 200
    response = chat(process, keys["narrow"], "other")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"


def test_usage_log_names_the_key(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    response = chat(process, keys["plain"])
    rid = response.headers["x-request-id"]
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as db:
        db.row_factory = sqlite3.Row
        records = [dict(row) for row in db.execute("SELECT * FROM usage")]
    record = next(r for r in records if r["request_id"] == rid)  # written before the answer
    assert record["key_id"].startswith("key_")
    text = json.dumps(records)
    assert all(secret not in text for secret in keys.values())  # never a key in a log


def test_admin_api_creates_and_revokes_keys(keyed: tuple[Process, dict[str, str]]) -> None:
    process, _ = keyed
    created = httpx.post(f"{process.url}/v1/nobusy/keys", json={"name": "from-api", "rpm": 5})
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert chat(process, secret).status_code == 200
    key_id = created.json()["id"]
    assert httpx.post(f"{process.url}/v1/nobusy/keys/{key_id}/revoke").status_code == 200
    assert chat(process, secret).status_code == 401
    listed = httpx.get(f"{process.url}/v1/nobusy/keys").json()["data"]
    assert any(k["name"] == "from-api" for k in listed)
    assert secret not in json.dumps(listed)


def test_failed_authentications_are_rate_limited(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    statuses = [chat(process, "nb-wrong-key").status_code for _ in range(25)]
    first = statuses.index(429)  # earlier tests here spent part of the allowance of 20
    assert set(statuses[:first]) == {401} and set(statuses[first:]) == {429}
    assert chat(process, keys["plain"]).status_code == 200  # a good key still gets through
