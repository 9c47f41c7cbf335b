"""Render the README's terminal screenshots (docs/img/*.svg) from real runs of the CLI.

Starts `nobusy fake-upstream` and `nobusy serve` on loopback, runs `nobusy check` and
`nobusy chat` with colour forced on, and saves what they printed as SVG with rich.
The console's PNGs (docs/img/console-*.png, the Chinese status board among them) come from
the browser tests: `NOBUSY_SCREENSHOTS=1 pytest tests/web` (after scripts/install-chromium.sh,
which installs a CJK font so that the Chinese pages are not boxes).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"


def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def run(*args: str, stdin: str = "") -> str:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "110", "TERM": "xterm-256color"}
    result = subprocess.run(
        [sys.executable, "-m", "nobusy", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


def echo_input(output: str, lines: list[str]) -> str:
    """Put the typed lines back after each prompt: piped stdin is not echoed by a terminal."""
    prompt = "you>\x1b[0m "
    parts = output.split(prompt)
    return (
        "".join(
            part + (prompt + lines[i] + "\n" if i < len(lines) else "")
            for i, part in enumerate(parts[:-1])
        )
        + parts[-1]
    )


def save(name: str, title: str, command: str, output: str) -> None:
    console = Console(
        record=True, width=110, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    console.print(Text(f"$ {command}", style="bold"))
    console.print(Text.from_ansi(output))
    console.save_svg(str(IMG / name), title=title)
    print(f"wrote {IMG / name}")


def main() -> None:
    fake_port, nobusy_port = port(), port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "nobusy.yaml"
        config.write_text(f"""
upstreams:
  deepseek: {{kind: openai, base_url: "http://127.0.0.1:{fake_port}/v1", default_model: ok}}
  bailian: {{kind: openai, base_url: "http://127.0.0.1:{fake_port}/v1", default_model: ok}}
  local: {{kind: embedded}}
models:
  deepseek-chat: [deepseek/ok, bailian/ok, local]
  deepseek-reasoner: [deepseek/reasoning, local]
  local: [local]
""")
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nobusy",
                    "fake-upstream",
                    "--port",
                    str(fake_port),
                    "--chunk-delay",
                    "0.01",
                ],
                cwd=tmp,
            ),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nobusy",
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(nobusy_port),
                    "--data-dir",
                    tmp,
                ],
                cwd=tmp,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            wait(f"http://127.0.0.1:{fake_port}/healthz")
            wait(f"http://127.0.0.1:{nobusy_port}/healthz")
            save(
                "check.svg",
                "nobusy check",
                "nobusy check --config nobusy.yaml",
                run("check", "--config", str(config)),
            )
            url = f"http://127.0.0.1:{nobusy_port}/v1"
            typed = ["Why do gateways fail over?", "/exit"]
            output = run(
                "chat", "--url", url, "--model", "deepseek-reasoner", stdin="\n".join(typed) + "\n"
            )
            save(
                "chat.svg",
                "nobusy chat",
                "nobusy chat --model deepseek-reasoner",
                echo_input(output, typed),
            )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
