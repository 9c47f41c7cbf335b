"""A cross-check counts against the caller's key once per upstream call: its limits and its
model list apply to every source."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, serve


@pytest.fixture(scope="module")
def keyed(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("crosscheck-keys")
    data = tmp / "data"
    keys = {
        "two": make_key(data, "--name", "two", "--rpm", "2"),
        "narrow": make_key(data, "--name", "narrow", "--models", "a"),
    }
    config = f"""
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
crosscheck: {{embedder: none}}
models:
  a: [fake/ok]
  b: [fake/ok]
  c: [fake/ok]
"""
    process = serve(tmp, config)
    yield process, keys
    process.stop()


def check(process: Process, key: str, models: list[str]) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], "models": models}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{process.url}/v1/nobusy/crosscheck", json=body, headers=headers, timeout=30)


def test_each_source_is_one_request_of_the_keys_rpm(keyed: tuple[Process, dict[str, str]]) -> None:
    process, keys = keyed
    report = check(process, keys["two"], ["a", "b", "c"]).json()
    statuses = sorted(s["status"] for s in report["sources"])
    assert statuses == ["failed", "ok", "ok"]  # rpm 2: the third call is over the limit
    (failed,) = [s for s in report["sources"] if s["status"] == "failed"]
    assert failed["error"]["code"] == "rate_limit_exceeded"


def test_the_keys_model_list_applies_to_every_source(
    keyed: tuple[Process, dict[str, str]],
) -> None:
    process, keys = keyed
    response = check(process, keys["narrow"], ["a", "b"])
    assert response.status_code == 403
    assert "'b'" in response.json()["error"]["message"]
