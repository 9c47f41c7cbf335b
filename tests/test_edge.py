"""The HTTP edge on a running server: secrets, cross-site pages, rebinding, heads, slow bodies."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nobusy.errors import ConfigError
from nobusy.settings import load_settings
from tests.conftest import Process, free_port, serve

ADMIN_KEY = "edge-admin-key-7d2e4b9a"
CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
EVIL = "https://evil.example"
DEAD_PORT = free_port()  # nothing listens here


@pytest.fixture(scope="module")
def open_server(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """The default setup: loopback, no API keys, no admin key; one-second body limits."""
    tmp = tmp_path_factory.mktemp("open")
    config = f"""
body_timeout: 30
body_deadline: 2
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
  refused: {{kind: openai, base_url: "http://127.0.0.1:{DEAD_PORT}/v1", default_model: ok}}
  busy: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: http503}}
models:
  ok: [fake/ok]
  alldown: [refused, busy]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def keyed_server(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """An admin key, and API keys (so every API request needs one)."""
    tmp = tmp_path_factory.mktemp("keyed-edge")
    config = f"""
admin_key: "{ADMIN_KEY}"
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
"""
    process = serve(tmp, config)
    yield process
    process.stop()


@pytest.fixture()
def fresh_keyed_server(fake_upstream: Process, tmp_path: Path) -> Iterator[Process]:
    """A keyed server of the test's own: failed keys from 127.0.0.1 count for a minute."""
    config = f"""
admin_key: "{ADMIN_KEY}"
upstreams:
  fake: {{kind: openai, base_url: "{fake_upstream.url}/v1", default_model: ok}}
models:
  ok: [fake/ok]
"""
    process = serve(tmp_path, config)
    yield process
    process.stop()


def admin(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    code: str = error["code"]
    return code


def key_names(process: Process) -> list[str]:
    response = httpx.get(f"{process.url}/v1/nobusy/keys")
    response.raise_for_status()
    return [key["name"] for key in response.json()["data"]]


# Item 1: an empty or short admin key.


@pytest.mark.parametrize(
    ("yaml", "env", "says"),
    [
        ("", {"NOBUSY_ADMIN_KEY": ""}, "admin_key is set but empty"),
        ("admin_key: ${X:-}\n", {}, "admin_key is set but empty"),
        ("admin_key: '   '\n", {}, "admin_key is set but empty"),
        ("", {"NOBUSY_ADMIN_KEY": "hunter2"}, "at least 16 characters"),
    ],
    ids=["empty-env", "empty-interpolation", "blank", "short"],
)
def test_an_empty_or_short_admin_key_is_refused(
    tmp_path: Path, yaml: str, env: dict[str, str], says: str
) -> None:
    path = tmp_path / "nobusy.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(path, env=env)


def test_serve_with_an_empty_admin_key_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "nobusy", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "NOBUSY_ADMIN_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "admin_key is set but empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_authorization_never_passes(keyed_server: Process) -> None:
    for headers in (
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer"},
    ):
        response = httpx.get(f"{keyed_server.url}/v1/nobusy/keys", headers=headers)
        assert error_code(response, 401) == "invalid_api_key"


# Item 2: cross-site pages and DNS rebinding against the default setup.


@pytest.mark.parametrize("path", ["/v1/nobusy/keys", "/v1/chat/completions"])
def test_a_page_of_another_site_cannot_post(
    open_server: Process, fake_stats: httpx.Client, path: str
) -> None:
    before = key_names(open_server)
    body = '{"name": "from-evil", "model": "ok", "messages": [{"role": "user", "content": "x"}]}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        response = httpx.post(
            open_server.url + path,
            content=body,
            headers={"origin": EVIL, "content-type": content_type},
        )
        assert error_code(response, 403) == "origin_not_allowed"
    assert key_names(open_server) == before
    assert fake_stats.get("/_fake/stats").json()["requests"] == 0


def test_a_revoke_from_another_site_is_refused(fake_upstream: Process, tmp_path: Path) -> None:
    # A server of its own: once a key exists, every API request needs one.
    config = f"upstreams:\n  fake: {{kind: openai, base_url: '{fake_upstream.url}/v1'}}\n"
    config += "models:\n  ok: [fake/ok]\n"
    process = serve(tmp_path, config)
    try:
        url = f"{process.url}/v1/nobusy/keys"
        httpx.post(url, json={"name": "victim"}).raise_for_status()
        for headers in ({"origin": EVIL}, {"origin": "null"}):
            response = httpx.post(f"{url}/victim/revoke", headers=headers)
            assert error_code(response, 403) == "origin_not_allowed"
            response = httpx.post(f"{url}/victim/topup", content='{"tokens": 5}', headers=headers)
            assert error_code(response, 403) == "origin_not_allowed"
        got = httpx.get(f"{url}/victim").json()
        assert (got["status"], got["balance"]) == ("active", None)
    finally:
        process.stop()


@pytest.mark.parametrize("path", ["/v1/nobusy/keys", "/v1/chat/completions"])
def test_json_endpoints_refuse_form_and_text_bodies(
    open_server: Process, fake_stats: httpx.Client, path: str
) -> None:
    before = key_names(open_server)
    body = '{"name": "plain-text", "model": "ok", "messages": [{"role": "user", "content": "x"}]}'
    for headers in ({"content-type": "text/plain"}, {"content-type": "multipart/form-data"}, {}):
        response = httpx.post(open_server.url + path, content=body, headers=headers)
        assert error_code(response, 415) == "unsupported_media_type"
        assert "application/json" in response.json()["error"]["message"]
    assert key_names(open_server) == before
    assert fake_stats.get("/_fake/stats").json()["requests"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/nobusy/keys"),
        ("POST", "/v1/nobusy/upstreams/all/reset"),
        ("GET", "/metrics"),
        ("GET", "/"),
    ],
)
def test_a_rebinding_host_name_is_refused(open_server: Process, method: str, path: str) -> None:
    response = httpx.request(
        method, open_server.url + path, json=CHAT, headers={"host": "evil.example:8000"}
    )
    assert error_code(response, 421) == "host_not_allowed"


def test_the_console_own_origin_and_loopback_names_pass(open_server: Process) -> None:
    own = f"http://127.0.0.1:{open_server.port}"
    response = httpx.post(
        f"{open_server.url}/v1/chat/completions", json=CHAT, headers={"origin": own}
    )
    assert response.status_code == 200, response.text
    for host in ("localhost", f"localhost:{open_server.port}", "[::1]:8000", "app.localhost"):
        response = httpx.get(f"{open_server.url}/v1/models", headers={"host": host})
        assert response.status_code == 200, (host, response.text)


def test_a_valid_api_key_is_served_under_any_host_name(keyed_server: Process) -> None:
    created = httpx.post(
        f"{keyed_server.url}/v1/nobusy/keys", json={"name": "any-host"}, headers=admin()
    )
    secret = created.json()["secret"]
    response = httpx.post(
        f"{keyed_server.url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {secret}", "host": "gpu-box.lan:8000"},
    )
    assert response.status_code == 200, response.text


# Item 9: the smaller ones.


def test_wrong_admin_keys_are_rate_limited(fresh_keyed_server: Process) -> None:
    keyed_server = fresh_keyed_server
    codes = [
        httpx.get(f"{keyed_server.url}/v1/nobusy/upstreams", headers=admin("x" * 20)).status_code
        for _ in range(25)
    ]
    assert codes[0] == 401 and codes[-1] == 429
    # The right key still gets through from the same address (a shared NAT).
    assert httpx.get(f"{keyed_server.url}/v1/nobusy/upstreams", headers=admin()).status_code == 200


def test_a_forged_forwarded_for_buys_no_fresh_allowance(fresh_keyed_server: Process) -> None:
    keyed_server = fresh_keyed_server
    httpx.post(f"{keyed_server.url}/v1/nobusy/keys", json={"name": "exists"}, headers=admin())
    codes = []
    for i in range(25):
        response = httpx.post(
            f"{keyed_server.url}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer nb-" + "a" * 43, "x-forwarded-for": f"10.9.0.{i}"},
        )
        codes.append(response.status_code)
    assert codes[0] == 401 and codes[-1] == 429


def test_an_undeclared_proxy_does_not_make_clients_loopback(open_server: Process) -> None:
    response = httpx.get(
        f"{open_server.url}/v1/nobusy/upstreams", headers={"x-forwarded-for": "203.0.113.9"}
    )
    assert error_code(response, 401) == "invalid_api_key"
    assert "trusted_proxies" in response.json()["error"]["message"]


def raw_answer(sock: socket.socket, within: float = 10) -> bytes:
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def send_head(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            for start in range(0, len(head), 1 << 16):
                sock.sendall(head[start : start + (1 << 16)])
        except OSError:
            pass  # the server answered and stopped reading
        return raw_answer(sock)


def test_a_16_mib_header_gets_431(open_server: Process) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    answer = send_head(open_server.port, head)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"headers_too_large"' in body
    assert httpx.get(open_server.url + "/healthz").status_code == 200


def test_too_many_headers_get_431(open_server: Process) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    answer = send_head(
        open_server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_body_trickled_byte_by_byte_is_cut_by_the_deadline(open_server: Process) -> None:
    with socket.create_connection(("127.0.0.1", open_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
        )
        sock.settimeout(0.5)
        answer = b""
        for _ in range(40):  # one byte every half second: never a long pause
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                sock.settimeout(10)
                while b"}}" not in answer and (more := sock.recv(65536)):
                    answer += more  # the head and the body may come apart
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"in full within 2 seconds" in body


def test_a_client_leaving_mid_body_is_one_quiet_line(open_server: Process) -> None:
    with socket.create_connection(("127.0.0.1", open_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model"'
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = open_server.log.read_text()
        if "left before sending its whole body" in log:
            break
        time.sleep(0.05)
    assert "left before sending its whole body" in log
    assert "Traceback" not in log and " ERROR " not in log


def test_data_dir_and_databases_are_private(open_server: Process) -> None:
    data = open_server.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("nobusy.db")]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_503_names_no_internal_host_or_port(open_server: Process) -> None:
    # The client is told which upstream and what kind of failure, in nobusy's own words; the
    # error text of the HTTP client (which can quote an address) and of the upstream stays
    # with the operator.
    port = str(DEAD_PORT)
    for stream in (False, True):
        httpx.post(f"{open_server.url}/v1/nobusy/upstreams/all/reset").raise_for_status()
        response = httpx.post(
            f"{open_server.url}/v1/chat/completions",
            json={"model": "alldown", "stream": stream, "messages": CHAT["messages"]},
        )
        assert error_code(response, 503) == "all_upstreams_failed"
        message = response.json()["error"]["message"]
        assert message == (
            "All upstreams for model 'alldown' failed: "
            "refused: cannot connect; busy: HTTP 503 (busy)"
        )
        assert "127.0.0.1" not in response.text and port not in response.text
    # The operator still sees the detail: the admin endpoint and the log keep it.
    upstreams = httpx.get(f"{open_server.url}/v1/nobusy/upstreams").json()["data"]
    busy = next(u for u in upstreams if u["name"] == "busy")
    assert "Server busy, please try again later" in (busy["last_error"] or "")
    assert "busy: HTTP 503: Server busy, please try again later" in open_server.log.read_text()


def test_a_revoked_key_error_does_not_name_the_key(keyed_server: Process) -> None:
    created = httpx.post(
        f"{keyed_server.url}/v1/nobusy/keys", json={"name": "team-secret-name"}, headers=admin()
    ).json()
    httpx.post(
        f"{keyed_server.url}/v1/nobusy/keys/team-secret-name/revoke", headers=admin()
    ).raise_for_status()
    time.sleep(1.2)  # every worker refuses it within a second
    response = httpx.post(
        f"{keyed_server.url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {created['secret']}"},
    )
    assert error_code(response, 401) == "key_revoked"
    assert "team-secret-name" not in response.text and created["id"] not in response.text
