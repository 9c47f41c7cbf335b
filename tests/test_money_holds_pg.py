"""Money holds across replicas: two `nobusy serve` on one PostgreSQL, a key group's budget spent
by keys on both at once; the spend ends within one request's cost of the budget, refusals name
the group, and the group's spend equals the sum of the rows' costs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from tests.conftest import Process, serve
from tests.postgres_server import PostgresServer
from tests.test_money_holds import COST, HELLO
from tests.test_postgres_replicas import DATA_KEY, knows_keys, nobusy

CONFIG = """
pricing: {{currency: CNY, rates: {{USD: 7}}}}
upstreams:
  dear: {{kind: openai, base_url: "{fake}/v1", price: {{currency: USD, input: 3, output: 15}}}}
models:
  dear: ["dear/ok:delay=0.5"]
"""


def test_a_group_budget_holds_across_two_replicas(
    fake_upstream: Process, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database("money_holds")
    made = nobusy(tmp_path, url, "keys", "groups", "create", "--name", "eng", "--budget", "0.0066")
    assert made.returncode == 0, made.stderr
    secrets = []
    for name in ("a", "b"):
        made = nobusy(tmp_path, url, "keys", "create", "--name", name, "--group", "eng")
        assert made.returncode == 0, made.stderr
        secrets.append(made.stdout.strip())
    replicas: list[Process] = []
    try:
        for name in ("r1", "r2"):
            (tmp_path / name).mkdir()
            env = {"NOBUSY_STORE": url, "NOBUSY_SECRET_KEY": DATA_KEY, "NOBUSY_REPLICA_ID": name}
            config = CONFIG.format(fake=fake_upstream.url)
            replicas.append(serve(tmp_path / name, config, env=env))
        for replica in replicas:
            knows_keys(replica)

        def ask(i: int) -> tuple[int, str]:
            replica, secret = replicas[i % 2], secrets[(i // 2) % 2]
            answer = httpx.post(
                f"{replica.url}/v1/chat/completions",
                headers={"authorization": f"Bearer {secret}"},
                json={"model": "dear", "messages": HELLO, "max_tokens": 12},
                timeout=60,
            )
            message = "" if answer.status_code == 200 else answer.json()["error"]["message"]
            return answer.status_code, message

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, range(20)))
        refused = [m for status, m in answers if status == 429]
        assert refused and all(m.startswith("Key group 'eng' has spent") for m in refused)
        while ask(0)[0] == 200:  # until the budget is spent
            pass
    finally:
        for replica in replicas:
            replica.stop()  # the usage rows are written by then
    with psycopg.connect(url) as conn:
        for _ in range(100):
            holds = conn.execute("SELECT count(*) FROM money_holds").fetchone()
            if holds is not None and holds[0] == 0:
                break
            time.sleep(0.05)
        group = conn.execute("SELECT spent_micros, reserved_micros FROM key_groups").fetchone()
        rows = conn.execute(
            "SELECT COALESCE(SUM(report_cost_micros), 0), count(*) FROM usage WHERE outcome = 'ok'"
        ).fetchone()
    assert group is not None and rows is not None
    spent, reserved = group
    assert reserved == 0 and spent == rows[0] == rows[1] * COST
    assert 6600 <= spent <= 6600 + COST
