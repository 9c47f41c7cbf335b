"""The rest of the store-file API with the official `openai` SDK: a store file's attributes
changed (``vector_stores.files.update``), stores and files that expire (``expires_after``).

Expiry is days or hours away, so a test moves a record's clock back in the server's
``nobusy.db`` instead of waiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.api.test_knowledge import ADMIN, CONFIG, LEAVE, client, upload
from tests.conftest import Process, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = serve(tmp_path_factory.mktemp("store-files"), CONFIG)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sdk(server: Process) -> Iterator[openai.OpenAI]:
    with client(server, ADMIN) as admin:
        yield admin


def records(server: Process, sql: str, *args: Any) -> None:
    with sqlite3.connect(server.data_dir / "nobusy.db") as db:
        db.execute(sql, args)


def test_attributes_update(sdk: openai.OpenAI) -> None:
    store = sdk.vector_stores.create(name="attrs")
    document = upload(sdk, "leave.md", LEAVE)
    placed = sdk.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=document.id, attributes={"lang": "zh", "year": 2024}
    )
    assert placed.status == "completed"

    def found(lang: str) -> int:
        page = sdk.vector_stores.search(
            vector_store_id=store.id,
            query="年假",
            filters={"type": "eq", "key": "lang", "value": lang},
        )
        return len(page.data)

    assert found("zh") > 0 and found("en") == 0
    updated = sdk.vector_stores.files.update(
        document.id, vector_store_id=store.id, attributes={"lang": "en", "reviewed": True}
    )
    assert updated.id == document.id and updated.attributes == {"lang": "en", "reviewed": True}
    again = sdk.vector_stores.files.retrieve(document.id, vector_store_id=store.id)
    assert again.attributes == {"lang": "en", "reviewed": True}
    assert found("en") > 0 and found("zh") == 0
    hit = sdk.vector_stores.search(vector_store_id=store.id, query="年假").data[0]
    assert hit.attributes == {"lang": "en", "reviewed": True}

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.vector_stores.files.update(
            document.id,
            vector_store_id=store.id,
            attributes={"nested": {"no": 1}},  # type: ignore[dict-item]
        )
    assert caught.value.body["param"] == "attributes"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.vector_stores.files.update(
            "file-000000000000000000000000", vector_store_id=store.id, attributes={}
        )


def test_store_expires(server: Process, sdk: openai.OpenAI) -> None:
    store = sdk.vector_stores.create(
        name="short-lived", expires_after={"anchor": "last_active_at", "days": 1}
    )
    assert store.status == "completed"
    assert store.expires_at == store.last_active_at + 86400
    updated = sdk.vector_stores.update(
        store.id, name="longer", expires_after={"anchor": "last_active_at", "days": 7}
    )
    assert updated.name == "longer" and updated.expires_after is not None
    assert updated.expires_after.days == 7
    assert updated.expires_at == updated.last_active_at + 7 * 86400

    records(server, "UPDATE kb_stores SET last_active_at = last_active_at - 8 * 86400")
    expired = sdk.vector_stores.retrieve(store.id)
    assert expired.status == "expired"
    assert expired.expires_at is not None and expired.expires_at < updated.last_active_at
    document = upload(sdk, "leave.md", LEAVE)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.vector_stores.files.create(vector_store_id=store.id, file_id=document.id)
    assert caught.value.body["code"] == "vector_store_expired"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.vector_stores.search(store.id, query="annual leave")
    assert caught.value.body["code"] == "vector_store_expired"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        sdk.vector_stores.update(store.id, expires_after={"anchor": "created_at", "days": 3})  # type: ignore[typeddict-item]

    revived = sdk.vector_stores.update(
        store.id, expires_after={"anchor": "last_active_at", "days": 2}
    )
    assert revived.status == "completed"
    placed = sdk.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=document.id)
    assert placed.status == "completed"


def test_file_expires(server: Process, sdk: openai.OpenAI) -> None:
    kept = sdk.files.create(
        file=("leave.md", LEAVE.encode()),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert kept.expires_at == kept.created_at + 3600
    plain = upload(sdk, "plain.md", LEAVE)
    assert plain.expires_at is None
    records(server, "UPDATE kb_files SET expires_at = created_at - 1 WHERE id = ?", kept.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(kept.id)
    listed = [f.id for f in sdk.files.list()]
    assert kept.id not in listed and plain.id in listed

    for bad in (
        {"anchor": "created_at", "seconds": 60},
        {"anchor": "last_active_at", "seconds": 7200},
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.files.create(file=("a.md", b"x"), purpose="assistants", expires_after=bad)  # type: ignore[arg-type]
        assert caught.value.body["param"] == "expires_after"  # type: ignore[index]


def test_update_needs_attributes(server: Process, sdk: openai.OpenAI, tmp_path: Path) -> None:
    store = sdk.vector_stores.create(name="raw")
    document = upload(sdk, "leave.md", LEAVE)
    sdk.vector_stores.files.create(vector_store_id=store.id, file_id=document.id)
    response = httpx.post(
        f"{server.url}/v1/vector_stores/{store.id}/files/{document.id}",
        json={},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "attributes"
