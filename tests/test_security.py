"""The security module on a running server: sensitive words on every path, the audit log."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Process, serve


@pytest.fixture(scope="module")
def guarded(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("guarded")
    words = tmp / "words"
    words.mkdir()
    (words / "block.txt").write_text("forbiddenword\tpolitics\n")
    (words / "outblock.txt").write_text("dangerword\n")
    (words / "mask.txt").write_text("secretname\n# a comment\n秘密代号\n")
    (words / "flag.txt").write_text("brandx\tads\n")
    config = f"""
audit: {{enabled: true, store: full}}
guard:
  lexicons:
    - {{path: words/block.txt, action: block, scope: both}}
    - {{path: words/outblock.txt, action: block, scope: output}}
    - {{path: words/mask.txt, action: mask, scope: output}}
    - {{path: words/flag.txt, action: flag, scope: output}}
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
  other: [fake/reasoning]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


def ask(process: Process, text: str, stream: bool) -> tuple[int, str, str | None]:
    """(status, the answer's text, its finish reason) as a client sees it."""
    body = {"model": "ok", "stream": stream, "messages": [{"role": "user", "content": text}]}
    if not stream:
        response = httpx.post(f"{process.url}/v1/chat/completions", json=body)
        if response.status_code != 200:
            return response.status_code, response.json()["error"]["code"], None
        choice = response.json()["choices"][0]
        return 200, choice["message"]["content"], choice["finish_reason"]
    parts, finish = [], None
    with httpx.stream("POST", f"{process.url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.json()["error"]["code"], None
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk: dict[str, Any] = json.loads(line[6:])
                for choice in chunk["choices"]:
                    parts.append(choice["delta"].get("content") or "")
                    finish = choice.get("finish_reason") or finish
    return 200, "".join(parts), finish


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_input_is_400_content_filter(guarded: Process, stream: bool) -> None:
    assert ask(guarded, "tell me about forbiddenword", stream)[:2] == (400, "content_filter")
    # Evasion does not help: spaces, full-width letters, zero-width characters.
    assert ask(guarded, "f o r b i d d e n w o r d", stream)[0] == 400
    assert ask(guarded, "ｆｏｒｂｉｄｄｅｎ\u200bword", stream)[0] == 400


@pytest.mark.parametrize("stream", [False, True])
def test_masked_output_is_the_same_streaming_or_not(guarded: Process, stream: bool) -> None:
    status, text, finish = ask(guarded, "who is secretname", stream)
    assert status == 200 and finish == "stop"
    assert "secretname" not in text
    assert "who is ＊＊＊＊＊＊＊＊＊＊" in text


@pytest.mark.parametrize("stream", [False, True])
def test_a_word_split_across_chunks_is_still_caught(guarded: Process, stream: bool) -> None:
    # The fake streams one word per chunk: "secret " and "name" arrive apart.
    _, text, _ = ask(guarded, "who is secret name", stream)
    assert "secret name" not in text and "＊＊＊＊＊＊＊＊＊＊＊" in text


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_output_ends_with_content_filter(guarded: Process, stream: bool) -> None:
    status, text, finish = ask(guarded, "say dangerword please", stream)
    assert status == 200 and finish == "content_filter"
    assert "dangerword" not in text
    assert text.startswith("Fake answer to: say ")


def test_compare_mode_cannot_bypass_the_filter(guarded: Process) -> None:
    # Compare mode in the console sends the same question to several models at once.
    def one(model: str) -> str:
        body = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "who is secretname"}],
        }
        with httpx.stream("POST", f"{guarded.url}/v1/chat/completions", json=body) as r:
            return r.read().decode()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(one, ["ok", "other"]))
    for raw in answers:
        assert "secretname" not in raw and "＊＊＊＊" in raw


def test_chinese_words_are_masked(guarded: Process) -> None:
    _, text, _ = ask(guarded, "秘密代号是什么", stream=True)
    assert "秘密代号" not in text and "＊＊＊＊是什么" in text


def test_audit_log_verifies_and_records_flags(guarded: Process) -> None:
    ask(guarded, "is brandx good", stream=True)
    time.sleep(0.3)  # the audit writer flushes every 50 ms
    env = {**os.environ, "COLUMNS": "120"}
    verify = subprocess.run(
        [sys.executable, "-m", "nobusy", "audit", "verify", "--data-dir", str(guarded.data_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "nobusy",
            "audit",
            "export",
            "--since",
            "1d",
            "--decrypt",
            "--data-dir",
            str(guarded.data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    events = {row["event"] for row in rows}
    assert {"request", "response", "flag", "mask"} <= events
    flag = next(row for row in rows if row["event"] == "flag")
    assert flag["content"]["word"] == "brandx"


def test_lexicons_reload_without_a_restart(guarded: Process) -> None:
    words: Path = guarded.log.parent / "words" / "block.txt"
    assert ask(guarded, "what about newword", stream=False)[0] == 200
    words.write_text("forbiddenword\nnewword\n")
    os.utime(words, (time.time() + 5, time.time() + 5))
    deadline = time.monotonic() + 5
    while ask(guarded, "what about newword", stream=False)[0] != 400:
        assert time.monotonic() < deadline, "the new word was never picked up"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def masking(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("pii")
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  private: {{routes: [fake/ok], pii: {{enabled: true}}}}
  plain: [fake/ok]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_personal_data_never_reaches_the_upstream(
    masking: Process, fake_upstream: Process, stream: bool
) -> None:
    text = "call 13800138000 or mail li.lei@example.com, ID 11010519491231002X"
    body = {"model": "private", "stream": stream, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{masking.url}/v1/chat/completions", json=body)
    seen = httpx.get(f"{fake_upstream.url}/_fake/last").json()
    upstream_text = seen["messages"][-1]["content"]
    for secret in ("13800138000", "li.lei@example.com", "11010519491231002X"):
        assert secret not in upstream_text
        assert secret in response.text  # restored for the client
    assert "[[PII_MOBILE_1]]" in upstream_text


def test_upstream_keys_can_sit_encrypted_in_the_config(tmp_path: Path) -> None:
    from nobusy.settings import load_settings

    env = {**os.environ, "NOBUSY_DATA_DIR": str(tmp_path / "data")}
    token = subprocess.run(
        [sys.executable, "-m", "nobusy", "secret", "encrypt"],
        input="sk-upstream-real-key",
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert token.startswith("enc:") and "sk-upstream" not in token
    config = tmp_path / "nobusy.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nupstreams:\n"
        f"  a: {{kind: openai, base_url: 'http://x/v1', default_model: m, api_key: '{token}'}}\n"
    )
    settings = load_settings(config, env={})
    api_key = settings.upstreams["a"].api_key  # type: ignore[attr-defined]
    assert api_key.get_secret_value() == "sk-upstream-real-key"
    (tmp_path / "data" / "secret.key").write_text("00" * 32 + "\n")  # another data key
    from nobusy.errors import ConfigError

    with pytest.raises(ConfigError, match="does not decrypt"):
        load_settings(config, env={})


def test_no_secret_reaches_logs_metrics_or_errors(gateway: Process) -> None:
    secret = "sk-test-secret-123"  # the fake upstream's key in the shared gateway's config
    for model in ("ok", "alldown", "nope"):
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body)
        assert secret not in response.text
    places = [
        httpx.get(f"{gateway.url}/metrics").text,
        httpx.get(f"{gateway.url}/v1/nobusy/upstreams").text,
        gateway.log.read_text(),
        *(p.read_text(errors="replace") for p in gateway.data_dir.glob("*.jsonl")),
    ]
    assert all(secret not in text for text in places)
