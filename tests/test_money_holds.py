"""Money budgets held exactly: a real server with ``--workers 2`` in front of the fake upstream,
the openai SDK, SQLite shared by both workers.

Twenty requests at once against a budget that fits about five: each reserves its worst case
before its upstream call, so the spend ends within one request's cost of the budget and the
others are refused with 429 naming the budget. A group's budget is shared by its keys; a
client that leaves mid-stream settles its hold; a hold left by a dead worker expires; a
top-up lifts the refusal; spend totals equal the sum of the rows' costs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nobusy.store.migrations import DB_NAME
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, serve
from tests.redis_server import RedisServer

ADMIN = "holds-admin-key-0123456789abcdef"
HELLO: list[Any] = [{"role": "user", "content": "hello there friend"}]  # 3 prompt tokens
# One answer: 3 x 3 + 12 x 15 = 189 micro-dollars, 1323 micro-yuan at 7. Its worst case with
# max_tokens 12 is a little more (the prompt is estimated from the body's bytes).
COST = 1323
BUDGET = "0.0066"  # about five answers


def nobusy(data: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nobusy", *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def held(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("holds")
    data = tmp / "data"
    nobusy(data.parent / "data", "keys", "groups", "create", "--name", "eng", "--budget", BUDGET)
    keys = {
        "team": make_key(data, "--name", "team", "--budget", BUDGET),
        "g1": make_key(data, "--name", "g1", "--group", "eng"),
        "g2": make_key(data, "--name", "g2", "--group", "eng", "--budget", "1"),
        "gone": make_key(data, "--name", "gone", "--budget", "1"),
        "dead": make_key(data, "--name", "dead", "--budget", BUDGET),
    }
    fake = f"{fake_upstream.url}/v1"
    config = f"""
admin_key: {ADMIN}
pricing: {{currency: CNY, rates: {{USD: 7}}}}
upstreams:
  dear: {{kind: openai, base_url: "{fake}", price: {{currency: USD, input: 3, output: 15}}}}
models:
  dear: ["dear/ok:delay=0.5"]
  quick: ["dear/ok"]
  drip: ["dear/slow:chunk_delay=0.5"]
"""
    process = serve(tmp, config, "--workers", "2")
    yield process, keys
    process.stop()


def ask(process: Process, key: str, model: str = "dear") -> tuple[int, str]:
    """One request on a connection of its own (the kernel spreads them over both workers)."""
    with httpx.Client(timeout=60) as client:
        answer = client.post(
            f"{process.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": model, "messages": HELLO, "max_tokens": 12},
        )
    if answer.status_code == 200:
        return 200, ""
    return answer.status_code, answer.json()["error"]["message"]


def db(process: Process) -> sqlite3.Connection:
    return sqlite3.connect(process.data_dir / DB_NAME)


def settled(process: Process, key_ids: list[str] | None = None) -> None:
    """Wait until no hold is left (settlements run just after each answer)."""
    for _ in range(200):
        with closing(db(process)) as conn:
            holds = conn.execute("SELECT count(*) FROM money_holds").fetchone()[0]
        if holds == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{holds} money holds left")


def key_row(process: Process, name: str) -> tuple[str, int, int]:
    with closing(db(process)) as conn:
        row = conn.execute(
            "SELECT id, spent_micros, reserved_micros FROM keys WHERE name = ?", (name,)
        ).fetchone()
    return row[0], row[1], row[2]


def rows_cost(process: Process, *key_ids: str) -> tuple[int, int]:
    """The sum of the rows' costs and how many rows were answered, for ``key_ids``."""
    marks = ", ".join("?" * len(key_ids))
    with closing(db(process)) as conn:
        total, answered = conn.execute(
            f"SELECT COALESCE(SUM(report_cost_micros), 0), "
            f"SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) FROM usage WHERE key_id IN ({marks})",
            key_ids,
        ).fetchone()
    return total, answered or 0


def test_twenty_at_once_spend_within_one_request_of_the_budget(
    held: tuple[Process, dict[str, str]],
) -> None:
    process, keys = held
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: ask(process, keys["team"]), range(20)))
    refused = [message for status, message in answers if status == 429]
    assert len(refused) + sum(1 for status, _ in answers if status == 200) == 20
    assert refused and all(m.startswith("Key 'team' has spent its daily budget") for m in refused)
    assert all("resets at" in m for m in refused)
    # Until the budget is spent, requests keep coming: a later wave is admitted as holds settle.
    while ask(process, keys["team"])[0] == 200:
        pass
    settled(process)
    key_id, spent, reserved = key_row(process, "team")
    total, answered = rows_cost(process, key_id)
    assert reserved == 0 and spent == total == answered * COST  # to the micro-unit
    assert 6600 <= spent <= 6600 + COST  # the budget, overspent by one request at most


def test_a_group_budget_is_shared_and_named_and_a_top_up_lifts_it(
    held: tuple[Process, dict[str, str]],
) -> None:
    process, keys = held
    refusal = ""
    for turn in range(20):  # alternating keys: the group's budget is spent by both
        status, refusal = ask(process, keys["g1" if turn % 2 else "g2"], "quick")
        if status == 429:
            break
        settled(process)
    assert refusal.startswith("Key group 'eng' has spent its daily budget of 0.0066 CNY")
    assert "nobusy keys groups topup" in refusal
    settled(process)
    g1, g1_spent, _ = key_row(process, "g1")
    g2, g2_spent, _ = key_row(process, "g2")
    total, answered = rows_cost(process, g1, g2)
    assert g1_spent > 0 and g2_spent > 0 and g1_spent + g2_spent == total
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.get(f"{process.url}/v1/nobusy/groups").status_code == 401  # admin only
    member = httpx.get(f"{process.url}/v1/nobusy/keys/g1", headers=admin).json()
    assert (member["group"], member["budget"]) == ("eng", None)
    group = httpx.get(f"{process.url}/v1/nobusy/groups/eng", headers=admin).json()
    assert group["budget_spent"] == f"{total / 1_000_000:.6f}" and group["keys"] == 2
    assert 6600 <= total <= 6600 + COST
    by_group = httpx.get(
        f"{process.url}/v1/nobusy/usage", params={"by": "group"}, headers=admin
    ).json()
    assert {g["label"]: g["cost_micros"] for g in by_group["groups"]}["eng"] == total
    topped = httpx.post(
        f"{process.url}/v1/nobusy/groups/eng/topup", json={"money": "1"}, headers=admin
    )
    assert topped.status_code == 200 and topped.json()["budget"] == "1.006600"
    assert ask(process, keys["g1"], "quick")[0] == 200


def test_a_client_that_leaves_mid_stream_settles_its_hold(
    held: tuple[Process, dict[str, str]],
) -> None:
    process, keys = held
    sdk = openai.OpenAI(base_url=f"{process.url}/v1", api_key=keys["gone"], max_retries=0)
    with sdk:
        stream = sdk.chat.completions.create(
            model="drip", messages=HELLO, stream=True, max_tokens=12
        )
        next(iter(stream))
        _, _, reserved = key_row(process, "gone")
        assert reserved > 0  # held while it streams
        stream.close()
    settled(process)
    key_id, spent, reserved = key_row(process, "gone")
    total, _ = rows_cost(process, key_id)
    assert reserved == 0 and spent == total  # what the upstream produced until then


def test_a_hold_left_by_a_dead_worker_expires(held: tuple[Process, dict[str, str]]) -> None:
    process, keys = held
    key_id, _, _ = key_row(process, "dead")
    with closing(db(process)) as conn, conn:  # a worker killed holding the whole budget
        conn.execute("UPDATE keys SET reserved_micros = 6600 WHERE id = ?", (key_id,))
        conn.execute(
            "INSERT INTO money_holds VALUES ('h-dead', ?, NULL, 6600, ?)",
            (key_id, time.time() - 1),
        )
    assert ask(process, keys["dead"], "quick")[0] == 200  # released by the sweep first
    settled(process)
    _, spent, reserved = key_row(process, "dead")
    assert (spent, reserved) == (COST, 0)


def test_with_redis_state_holds_decided_in_redis_stay_within_one_request(
    fake_upstream: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    nobusy(data, "keys", "groups", "create", "--name", "ops", "--budget", BUDGET)
    team = make_key(data, "--name", "team", "--budget", BUDGET)
    member = make_key(data, "--name", "member", "--group", "ops")
    fake = f"{fake_upstream.url}/v1"
    config = f"""
state: "{redis_server.url}"
on_state_failure: refuse  # a hold Redis did not answer for is refused (503), never unheld
pricing: {{currency: CNY, rates: {{USD: 7}}}}
upstreams:
  dear: {{kind: openai, base_url: "{fake}", price: {{currency: USD, input: 3, output: 15}}}}
models:
  dear: ["dear/ok:delay=0.5"]
"""
    process = serve(tmp_path, config, "--workers", "2")
    try:
        for key, name, whose in (
            (team, "team", "Key 'team'"),
            (member, "member", "Key group 'ops'"),
        ):
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: ask(process, key), range(20)))  # noqa: B023
            refused = [message for status, message in answers if status == 429]
            assert refused and all(m.startswith(f"{whose} has spent") for m in refused)
            while ask(process, key)[0] != 429:  # 503: Redis did not answer in time (a busy host)
                pass
            settled(process)
            key_id, spent, reserved = key_row(process, name)
            total, answered = rows_cost(process, key_id)
            assert reserved == 0 and spent == total == answered * COST
            # Not below: a hold whose answer timed out stays in Redis until it expires.
            assert spent <= 6600 + COST
    finally:
        process.stop()
    with closing(db(process)) as conn:
        group = conn.execute("SELECT spent_micros, reserved_micros FROM key_groups").fetchone()
    assert group == (total, 0)
