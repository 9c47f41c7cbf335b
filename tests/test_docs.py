"""The documentation runs: every config it shows loads, and the drill does what it promises.

Configs are taken from the ```yaml blocks of README.md, docs/*.md and examples/README.md and
from examples/nobusy.yaml, and loaded with the real settings loader (fragments naming
upstreams they do not define get stand-ins for them). The drill of examples/README.md is run
as written, with its ports moved to free ones, against real fakes and a real `nobusy serve`;
what the text promises (the answering upstream, the usage row's `tried`) is read from the
text itself, so changing either the code or the doc alone fails here.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from nobusy.settings import load_settings
from tests.conftest import ROOT, free_port, serve, start_process

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
ENV = {
    name: "sk-doc-test"
    for name in re.findall(r"\$\{(\w+)\}", (ROOT / "examples" / "nobusy.yaml").read_text())
}


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(path.read_text()) if lang == language]


def _route_upstreams(models: dict[str, Any]) -> set[str]:
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            names.add(value.split("/", 1)[0])
        elif isinstance(value, dict):
            if "route" in value:
                walk(value["route"])
            for key in ("routes", "overflow"):
                walk(value.get(key, []))
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for spec in models.values():
        walk(spec)
    return names


CONFIGS = [
    pytest.param(path, i, id=f"{path.relative_to(ROOT)}#{i}")
    for path in DOCS
    for i, _ in enumerate(blocks(path, "yaml"))
]


@pytest.mark.parametrize(("path", "index"), CONFIGS)
def test_every_documented_config_loads(path: Path, index: int, tmp_path: Path) -> None:
    text = blocks(path, "yaml")[index]
    data = yaml.safe_load(re.sub(r"\$\{(\w+)(:-[^}]*)?\}", "sk-doc-test", text))
    if not isinstance(data, dict) or not ({"upstreams", "models"} & data.keys()):
        pytest.skip("a fragment, not a configuration")
    upstreams = dict(data.get("upstreams") or {})
    for name in _route_upstreams(data.get("models") or {}) - upstreams.keys():
        upstreams[name] = {
            "kind": "openai",
            "base_url": "http://127.0.0.1:1/v1",
            "default_model": "m",
        }
    for lexicon in (data.get("guard") or {}).get("lexicons") or ():
        (tmp_path / lexicon["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / lexicon["path"]).write_text("word\n")
    config = tmp_path / "nobusy.yaml"
    config.write_text(yaml.safe_dump({**data, "upstreams": upstreams}))
    settings = load_settings(config, env={})
    assert set(settings.models) >= set(data.get("models") or {})


def test_the_example_config_loads_and_lists_its_aliases() -> None:
    settings = load_settings(ROOT / "examples" / "nobusy.yaml", env=ENV)
    text = (ROOT / "examples" / "README.md").read_text()
    promised = re.search(r"with the aliases (.*?)\. Copy it", text, re.S)
    assert promised is not None
    aliases = set(re.findall(r"`([\w-]+)`", promised.group(1)))
    assert aliases == set(settings.models)
    assert settings.models["assistant"].overflow  # the long form the comment describes


def test_the_drill_in_examples_does_what_it_says(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "README.md").read_text()
    drill = text[text.index("A drill:") :]
    commands = re.findall(r"`(nobusy fake-upstream [^`]*)`", drill)
    config = blocks(ROOT / "examples" / "README.md", "yaml")[-1]
    fakes = []
    try:
        for command in commands:
            old = re.search(r"--port (\d+)", command)
            assert old is not None
            port = free_port()
            config = config.replace(f":{old.group(1)}/", f":{port}/")
            args = command.split()[1:]
            args[args.index(old.group(1))] = str(port)
            log = tmp_path / f"fake-{port}.log"
            fakes.append(start_process(args, "/healthz", log, port))
        gateway = serve(tmp_path, config)
        try:
            model = re.search(r"ask for model `(\w+)`", drill)
            assert model is not None
            body = {"model": model.group(1), "messages": [{"role": "user", "content": "hi"}]}
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 200, response.text
            header = re.search(r"`x-nobusy-upstream: ([\w/-]+)`", drill)
            assert header is not None and response.headers["x-nobusy-upstream"] == header.group(1)
            metrics = httpx.get(f"{gateway.url}/metrics").text
            assert "nobusy_upstream_attempts_total" in metrics
        finally:
            gateway.stop()
        promised = re.search(r"`tried: (\[.*?\])`", drill)
        assert promised is not None
        with sqlite3.connect(tmp_path / "data" / "nobusy.db") as db:
            (tried, upstream) = db.execute("SELECT tried, upstream FROM usage").fetchone()
        assert json.loads(tried) == json.loads(promised.group(1))
        assert upstream == header.group(1)
    finally:
        for fake in fakes:
            fake.stop()


def test_the_python_example_of_the_readme_runs(gateway: Any) -> None:
    (code,) = [b for b in blocks(ROOT / "README.md", "python") if "OpenAI(" in b][:1]
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000/v1", gateway.url + "/v1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_anthropic_example_of_the_readme_runs(gateway: Any) -> None:
    (code,) = [b for b in blocks(ROOT / "README.md", "python") if "anthropic.Anthropic(" in b]
    assert 'base_url="http://127.0.0.1:8000"' in code
    code = code.replace("http://127.0.0.1:8000", gateway.url)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
