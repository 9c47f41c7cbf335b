"""Money end to end: a real server in front of the fake upstream, the openai SDK, SQLite.

Each usage row carries its cost (tokens x the price of the window the request started in,
cache hits priced apart), the first choice's cost after a failover; the totals of the admin
API and of ``nobusy usage`` equal the sum of the rows; a key's budget warns at 80% and
refuses with 429 ``insufficient_quota`` once spent."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from nobusy.cli.usage import usage
from nobusy.store.migrations import DB_NAME
from tests.admission.test_keys_e2e import make_key
from tests.conftest import Process, free_port, serve

ADMIN = "money-admin-key-0123456789abcdef"
HELLO: list[Any] = [{"role": "user", "content": "hello there friend"}]  # 3 prompt tokens


@pytest.fixture(scope="module")
def money(
    fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("money")
    data = tmp / "data"
    keys = {
        "free": make_key(data, "--name", "free"),
        # One `dear` request costs 1323 micro-yuan (below): 82% of this budget.
        "team": make_key(data, "--name", "team", "--budget", "0.0016"),
    }
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=1))
    fake = f"{fake_upstream.url}/v1"
    config = f"""
admin_key: {ADMIN}
pricing: {{currency: CNY, rates: {{USD: 7}}}}
upstreams:
  priced:
    kind: openai
    base_url: "{fake}"
    price:
      input: 2
      cached_input: 0.5
      output: 8
      # A window around now: the request starts in it, so its prices apply.
      windows: [{{start: "{start:%H:%M}", end: "{end:%H:%M}", tz: UTC,
                  input: 1, cached_input: 0.25, output: 2}}]
  dear: {{kind: openai, base_url: "{fake}", price: {{currency: USD, input: 3, output: 15}}}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1", default_model: ok,
          price: {{input: 1, output: 1}}}}
  local: {{kind: openai, base_url: "{fake}"}}
models:
  cheap: ["priced/ok:cached=2"]
  dear: ["dear/ok"]
  failover: [dead, "dear/ok"]
  free: ["local/ok"]
"""
    process = serve(tmp, config)
    yield process, keys
    process.stop()


def client(process: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{process.url}/v1", api_key=key, max_retries=0)


def row(process: Process, request_id: str) -> dict[str, Any]:
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    assert found is not None
    return dict(found)


def ask(process: Process, key: str, model: str, stream: bool = False) -> tuple[str, Any]:
    with client(process, key) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, stream=stream
        )
        if stream:
            for _ in raw.parse():
                pass
    return raw.headers["x-request-id"], raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_a_row_costs_its_tokens_at_the_window_price_with_cache_hits_apart(
    money: tuple[Process, dict[str, str]], stream: bool
) -> None:
    process, keys = money
    request_id, _ = ask(process, keys["free"], "cheap", stream)
    found = row(process, request_id)
    assert (found["prompt_tokens"], found["cached_tokens"], found["completion_tokens"]) == (
        3,
        2,
        12,
    )
    assert found["usage_source"] == "upstream"
    # The window's prices: 1 uncached x 1 + 2 cached x 0.25 + 12 x 2 = 25.5 -> 26 (half even)
    assert (found["currency"], found["cost_micros"]) == ("CNY", 26)
    assert (found["report_currency"], found["report_cost_micros"]) == ("CNY", 26)
    assert (found["first_choice"], found["first_choice_cost_micros"]) == ("priced/ok:cached=2", 26)


def test_a_failover_records_what_the_first_choice_would_have_cost(
    money: tuple[Process, dict[str, str]],
) -> None:
    process, keys = money
    request_id, headers = ask(process, keys["free"], "failover")
    found = row(process, request_id)
    assert found["upstream"] == "dear/ok"
    # 3 x 3 + 12 x 15 = 189 micro-dollars, 1323 micro-yuan at 7; on `dead` 3 + 12 = 15.
    assert (found["currency"], found["cost_micros"], found["report_cost_micros"]) == (
        "USD",
        189,
        1323,
    )
    assert (found["first_choice"], found["first_choice_cost_micros"]) == ("dead", 15)
    free_id, _ = ask(process, keys["free"], "free")
    assert row(process, free_id)["report_cost_micros"] == 0  # no price: free


def test_totals_equal_the_sum_of_the_rows(money: tuple[Process, dict[str, str]]) -> None:
    process, keys = money
    for model in ("cheap", "dear", "free"):
        ask(process, keys["free"], model)
    with closing(sqlite3.connect(process.data_dir / DB_NAME)) as conn:
        total, by_model = (
            conn.execute("SELECT SUM(report_cost_micros) FROM usage").fetchone()[0],
            {
                alias: cost
                for alias, cost in conn.execute(
                    "SELECT alias, SUM(report_cost_micros) FROM usage GROUP BY alias"
                )
            },
        )
    auth = {"authorization": f"Bearer {ADMIN}"}
    for by in ("key", "model", "upstream", "day"):
        report = httpx.get(f"{process.url}/v1/nobusy/usage", params={"by": by}, headers=auth)
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["currency"] == "CNY"
        assert body["total_spend_micros"] == total
        assert sum(g["cost_micros"] for g in body["groups"]) == total
        if by == "model":
            assert {g["label"]: g["cost_micros"] for g in body["groups"]} == by_model
    bad = httpx.get(f"{process.url}/v1/nobusy/usage", params={"by": "team"}, headers=auth)
    assert bad.status_code == 400 and "by: must be one of" in bad.json()["error"]["message"]
    printed = CliRunner().invoke(
        usage, ["--by", "day", "--data-dir", str(process.data_dir)], env={"COLUMNS": "200"}
    )
    assert printed.exit_code == 0, printed.output
    assert "Spend by day" in printed.output
    lines = [line.strip() for line in printed.output.splitlines()]
    total_line = next(line for line in lines if line.startswith("total"))
    assert f"{total / 1_000_000:,.4f}" in total_line


def test_a_budget_warns_at_80_percent_then_refuses(money: tuple[Process, dict[str, str]]) -> None:
    process, keys = money
    _, headers = ask(process, keys["team"], "dear")  # 1323 of 1600 spent: 82%
    assert "x-nobusy-budget-warning" not in headers
    _, headers = ask(process, keys["team"], "dear")  # admitted under the budget, with a warning
    assert headers["x-nobusy-budget-warning"].startswith("82% of the daily budget spent")
    with client(process, keys["team"]) as sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="dear", messages=HELLO)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota"
    assert (
        "Key 'team' has spent its daily budget of 0.0016 CNY (0.002646 spent)" in (error["message"])
    )
    assert "resets at" in error["message"] and caught.value.response.headers["retry-after"]
    # Topped up in money over the admin API: admitted again.
    topped = httpx.post(
        f"{process.url}/v1/nobusy/keys/team/topup",
        json={"money": "1"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert topped.status_code == 200, topped.text
    assert topped.json()["budget"] == "1.001600"
    ask(process, keys["team"], "dear")
