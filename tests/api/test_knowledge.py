"""The Files and Vector Stores API with the official `openai` SDK, against a real server.

Keys decide what each client sees: the tests make two keys (alice, bob) with the admin key,
and use the admin key itself. Documents are embedded by the embedded model, so a test adds
few and small ones.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Process, serve
from tests.knowledge.documents import HTML_WITH_SCRIPTS, docx, encrypted_pdf, pdf, zip_bomb

ADMIN = "admin-key-for-the-knowledge-tests"
CONFIG = f"""
admin_key: {ADMIN}
knowledge: {{max_file_bytes: 60000, chunk_size: 300, chunk_overlap: 40}}
upstreams:
  fake: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  ok: [fake/ok]
"""
LEAVE = """# 年假制度

员工每年享有十五天年假。年假需提前三天在系统中申请，由部门经理审批。

# 报销制度

出差报销需在三十天内提交发票，超过期限不予报销。
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = serve(tmp_path_factory.mktemp("knowledge"), CONFIG)
    yield process
    process.stop()


def make_key(server: Process, name: str) -> str:
    response = httpx.post(
        f"{server.url}/v1/nobusy/keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    response.raise_for_status()
    secret: str = response.json()["secret"]
    return secret


def client(server: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def keys(server: Process) -> dict[str, str]:
    return {"alice": make_key(server, "alice"), "bob": make_key(server, "bob"), "admin": ADMIN}


@pytest.fixture(scope="module")
def alice(server: Process, keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    with client(server, keys["alice"]) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def bob(server: Process, keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    with client(server, keys["bob"]) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def admin(server: Process, keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    with client(server, keys["admin"]) as sdk:
        yield sdk


def nobusy(item: Any) -> Any:
    """What nobusy adds to an OpenAI object (the SDK keeps unknown fields as extras)."""
    return item.model_extra["nobusy"]


def upload(sdk: openai.OpenAI, name: str, data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    return sdk.files.create(file=(name, io.BytesIO(raw)), purpose="assistants")


@pytest.fixture(scope="module")
def hr_store(alice: openai.OpenAI) -> Any:
    """alice's store with the leave policy (md) and the travel policy (html with scripts)."""
    store = alice.vector_stores.create(name="hr", metadata={"team": "hr"})
    leave = upload(alice, "leave.md", LEAVE)
    travel = upload(alice, "travel.html", HTML_WITH_SCRIPTS)
    batch = alice.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[
            {"file_id": leave.id, "attributes": {"lang": "zh", "year": 2025}},
            {"file_id": travel.id, "attributes": {"lang": "en", "year": 2024}},
        ],
    )
    assert batch.status == "completed"
    assert batch.file_counts.completed == 2 and batch.file_counts.total == 2
    return alice.vector_stores.retrieve(store.id)


def test_files_round_trip(alice: openai.OpenAI) -> None:
    created = upload(alice, "notes.md", "# Notes\n\nhello")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.bytes == len("# Notes\n\nhello") and created.purpose == "assistants"
    assert created.filename == "notes.md" and created.status == "processed"
    assert created.id in [f.id for f in alice.files.list()]
    assert alice.files.retrieve(created.id).filename == "notes.md"
    assert alice.files.content(created.id).text == "# Notes\n\nhello"
    deleted = alice.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as caught:
        alice.files.retrieve(created.id)
    assert caught.value.body["code"] == "not_found"  # type: ignore[index]


def test_store_ingests_and_searches(alice: openai.OpenAI, hr_store: Any) -> None:
    assert hr_store.id.startswith("vs_") and hr_store.status == "completed"
    assert hr_store.file_counts.completed == 2 and hr_store.usage_bytes > 0
    assert hr_store.metadata == {"team": "hr"}
    files = list(alice.vector_stores.files.list(vector_store_id=hr_store.id))
    assert {f.status for f in files} == {"completed"}
    # A two-character Chinese word finds its passage first.
    page = alice.vector_stores.search(vector_store_id=hr_store.id, query="报销")
    assert page.object == "vector_store.search_results.page"
    assert page.search_query == ["报销"]
    top = page.data[0]
    assert top.filename == "leave.md" and "发票" in top.content[0].text
    assert top.attributes == {"lang": "zh", "year": 2025}
    assert 0 < top.score <= 1
    scores = [hit.score for hit in page.data]
    assert scores == sorted(scores, reverse=True)
    # The HTML's scripts, styles and noscript never became text.
    everything = alice.vector_stores.search(
        vector_store_id=hr_store.id, query="evilpayload cookie javascript", max_num_results=50
    )
    assert not any("evilpayload" in hit.content[0].text for hit in everything.data)
    assert nobusy(page)["vector_store_status"] == "completed"


def test_search_options(alice: openai.OpenAI, hr_store: Any) -> None:
    english = alice.vector_stores.search(
        vector_store_id=hr_store.id,
        query="hotel",
        filters={"type": "eq", "key": "lang", "value": "en"},
    )
    assert english.data and {hit.filename for hit in english.data} == {"travel.html"}
    old = alice.vector_stores.search(
        vector_store_id=hr_store.id,
        query="报销",
        filters={"type": "lt", "key": "year", "value": 2025},
    )
    assert all(hit.attributes["year"] == 2024 for hit in old.data)
    one = alice.vector_stores.search(vector_store_id=hr_store.id, query="年假", max_num_results=1)
    assert len(one.data) == 1
    none = alice.vector_stores.search(
        vector_store_id=hr_store.id, query="年假", ranking_options={"score_threshold": 1.0}
    )
    assert none.data == [] or all(hit.score >= 1.0 for hit in none.data)
    with pytest.raises(openai.BadRequestError) as caught:
        alice.vector_stores.search(vector_store_id=hr_store.id, query="x", max_num_results=51)
    assert caught.value.body["param"] == "max_num_results"  # type: ignore[index]


def test_bad_files_fail_with_reasons(alice: openai.OpenAI) -> None:
    bad = {
        "setup.exe": (b"MZ\x90\x00", "unsupported_file"),
        "empty.txt": (b"", "invalid_file"),
        "cut.pdf": (pdf("Annual leave")[:150], "invalid_file"),
        "locked.pdf": (encrypted_pdf("secret"), "invalid_file"),
        "bomb.docx": (zip_bomb(), "invalid_file"),
        "huge.txt": (b"long text. " * 7000, "invalid_file"),  # over max_file_bytes (60000)
    }
    ids = {upload(alice, name, data).id: (name, code) for name, (data, code) in bad.items()}
    good = upload(alice, "ok.docx", docx("Leave", "Fifteen days a year."))
    store = alice.vector_stores.create(name="bad input", file_ids=[*ids, good.id])
    deadline = time.monotonic() + 60
    while alice.vector_stores.retrieve(store.id).status == "in_progress":
        assert time.monotonic() < deadline, "ingestion stuck in progress"
        time.sleep(0.2)
    final = alice.vector_stores.retrieve(store.id)
    assert final.file_counts.failed == len(bad) and final.file_counts.completed == 1
    for placed in alice.vector_stores.files.list(vector_store_id=store.id, filter="failed"):
        name, code = ids[placed.id]
        assert placed.last_error is not None and placed.last_error.code == code, name
        assert placed.last_error.message
    huge = next(f for f, (n, _) in ids.items() if n == "huge.txt")
    placed = alice.vector_stores.files.retrieve(file_id=huge, vector_store_id=store.id)
    assert placed.last_error is not None and "max_file_bytes" in placed.last_error.message


def test_unknown_ids_are_404(alice: openai.OpenAI, hr_store: Any) -> None:
    for call in (
        lambda: alice.files.retrieve("file-000000000000000000000000"),
        lambda: alice.files.content("file-nope"),
        lambda: alice.vector_stores.retrieve("vs_nope"),
        lambda: alice.vector_stores.search(vector_store_id="vs_nope", query="x"),
        lambda: alice.vector_stores.files.retrieve(file_id="file-x", vector_store_id=hr_store.id),
        lambda: alice.vector_stores.files.create(vector_store_id=hr_store.id, file_id="file-x"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        body: Any = caught.value.body
        assert body["type"] == "invalid_request_error" and body["message"]


def test_access_follows_keys(
    server: Process, alice: openai.OpenAI, bob: openai.OpenAI, admin: openai.OpenAI, hr_store: Any
) -> None:
    leave_id = next(iter(alice.vector_stores.files.list(vector_store_id=hr_store.id))).id
    # bob sees none of alice's stores or files: the same 404 as an unknown id.
    assert hr_store.id not in [s.id for s in bob.vector_stores.list()]
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.retrieve(hr_store.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(leave_id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.search(vector_store_id=hr_store.id, query="报销")
    # The admin key sees every store and file.
    assert hr_store.id in [s.id for s in admin.vector_stores.list()]
    assert admin.files.retrieve(leave_id).id == leave_id
    # Granted the store, bob reads and searches it, and may not change it.
    granted = httpx.patch(
        f"{server.url}/v1/nobusy/keys/bob",
        json={"stores": [hr_store.id]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert granted.status_code == 200 and granted.json()["stores"] == [hr_store.id]
    assert bob.vector_stores.retrieve(hr_store.id).name == "hr"
    assert bob.vector_stores.search(vector_store_id=hr_store.id, query="报销").data
    with pytest.raises(openai.PermissionDeniedError) as caught:
        bob.vector_stores.delete(hr_store.id)
    assert caught.value.body["code"] == "permission_denied"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(leave_id)  # the store, not alice's files
    revoked = httpx.patch(
        f"{server.url}/v1/nobusy/keys/bob",
        json={"stores": []},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert revoked.json()["stores"] == []
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.retrieve(hr_store.id)
    unknown = httpx.patch(
        f"{server.url}/v1/nobusy/keys/bob",
        json={"stores": ["vs_nope"]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert unknown.status_code == 400 and "vs_nope" in unknown.json()["error"]["message"]


def test_store_lifecycle(alice: openai.OpenAI) -> None:
    store = alice.vector_stores.create(
        name="temp", expires_after={"anchor": "last_active_at", "days": 7}
    )
    assert store.expires_at is not None and store.status == "completed"
    renamed = alice.vector_stores.update(store.id, name="renamed", metadata={"k": "v"})
    assert renamed.name == "renamed" and renamed.metadata == {"k": "v"}
    note = upload(alice, "n.txt", "Overtime is paid at 1.5 times the hourly rate.")
    placed = alice.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=note.id)
    assert placed.status == "completed"
    removed = alice.vector_stores.files.delete(file_id=note.id, vector_store_id=store.id)
    assert removed.deleted
    assert alice.vector_stores.search(vector_store_id=store.id, query="overtime").data == []
    assert alice.files.retrieve(note.id).id == note.id  # the file stays
    deleted = alice.vector_stores.delete(store.id)
    assert deleted.deleted and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        alice.vector_stores.retrieve(store.id)


def test_upload_needs_a_file_and_a_purpose(server: Process, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    no_file = httpx.post(
        f"{server.url}/v1/files",
        data={"purpose": "assistants"},
        headers=headers,
        files={"other": ("a.txt", b"x")},
    )
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    bad_purpose = httpx.post(
        f"{server.url}/v1/files",
        data={"purpose": "nope"},
        files={"file": ("a.txt", b"x")},
        headers=headers,
    )
    assert bad_purpose.status_code == 400 and bad_purpose.json()["error"]["param"] == "purpose"
    anonymous = httpx.post(
        f"{server.url}/v1/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"x")}
    )
    assert anonymous.status_code == 401


def test_cli_grants_stores(server: Process, hr_store: Any, bob: openai.OpenAI) -> None:
    """`nobusy keys update --stores` grants stores, as the admin API does."""
    data_dir = server.data_dir
    run = [sys.executable, "-m", "nobusy", "keys"]
    done = subprocess.run(
        [*run, "update", "bob", "--stores", hr_store.id, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert hr_store.id in done.stdout
    assert bob.vector_stores.retrieve(hr_store.id).id == hr_store.id
    missing = subprocess.run(
        [*run, "update", "bob", "--stores", "vs_nope", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "vs_nope" in missing.stderr
    subprocess.run(
        [*run, "update", "bob", "--stores", "none", "--data-dir", str(data_dir)], check=True
    )
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.retrieve(hr_store.id)


def test_resumes_after_a_kill(tmp_path: Path) -> None:
    """A server killed mid-ingestion takes the file up again at start; nothing is indexed
    twice, also when the same file is put in the store again."""
    config = CONFIG
    process = serve(tmp_path, config)
    text = "\n\n".join(
        f"## 第{n}节\n\n第{n}条规定：员工报销第{n}类费用需附发票。" for n in range(4)
    )
    try:
        with client(process, ADMIN) as sdk:
            document = upload(sdk, "rules.md", text)
            store = sdk.vector_stores.create(name="resume")
            sdk.vector_stores.files.create(vector_store_id=store.id, file_id=document.id)
        os.kill(process.proc.pid, signal.SIGKILL)
        process.proc.wait()
    finally:
        process.stop()
    with sqlite3.connect(tmp_path / "data" / "nobusy.db") as db:
        (status,) = db.execute("SELECT status FROM kb_store_files").fetchone()
    assert status == "in_progress"  # killed before its first batch was embedded
    process = serve(tmp_path, config)
    try:
        with client(process, ADMIN) as sdk:
            placed = sdk.vector_stores.files.poll(
                file_id=document.id, vector_store_id=store.id, poll_interval_ms=200
            )
            assert placed.status == "completed"
            chunks = nobusy(sdk.vector_stores.retrieve(store.id))["chunks"]
            assert chunks == nobusy(placed)["chunks"] > 1
            again = sdk.vector_stores.files.create_and_poll(
                vector_store_id=store.id, file_id=document.id, poll_interval_ms=200
            )
            assert again.status == "completed"
            assert nobusy(sdk.vector_stores.retrieve(store.id))["chunks"] == chunks
            page = sdk.vector_stores.search(
                vector_store_id=store.id, query="报销", max_num_results=50
            )
            texts = [hit.content[0].text for hit in page.data]
            assert len(texts) == len(set(texts)) == chunks
    finally:
        process.stop()


def test_kb_commands(server: Process, keys: dict[str, str], tmp_path: Path) -> None:
    """`nobusy kb add/list/search` against the running server, with a key."""
    (tmp_path / "overtime.md").write_text("# 加班\n\n加班费按小时工资的1.5倍计算。\n")
    (tmp_path / "setup.exe").write_bytes(b"MZ")
    env = {**os.environ, "NOBUSY_API_KEY": keys["alice"], "COLUMNS": "200"}
    kb = [sys.executable, "-m", "nobusy", "kb"]
    where = ["--url", server.url]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*kb, *args, *where], capture_output=True, text=True, env=env)

    added = run("add", "rules", str(tmp_path / "overtime.md"), str(tmp_path / "setup.exe"))
    assert added.returncode == 1, added.stderr  # one file failed, and the table says why
    assert "overtime.md" in added.stdout and "completed" in added.stdout
    assert "setup.exe" in added.stdout and "not supported" in added.stdout
    listed = run("list")
    assert listed.returncode == 0 and "rules" in listed.stdout
    found = run("search", "rules", "加班费")
    assert found.returncode == 0, found.stderr
    assert "overtime.md" in found.stdout and "1.5" in found.stdout
