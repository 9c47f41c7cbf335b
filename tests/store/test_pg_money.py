"""Money over PostgreSQL: the cost columns migrated and summed exactly, a key's budget
charged through the copy and sent."""

from __future__ import annotations

from pathlib import Path

from nobusy.store.pg_keys import PgKeyStore
from nobusy.store.pg_usage import PgUsageLog
from nobusy.store.postgres import Qmark, connect
from nobusy.store.usage import UsageRecord, summarize


def _record(i: int, key_id: str) -> UsageRecord:
    return UsageRecord(
        f"req-{i}", "chat", False, key_id=key_id, upstream="up", prompt_tokens=10,
        completion_tokens=5, cached_tokens=4, usage_source="upstream", currency="USD",
        cost_micros=100 + i, report_currency="CNY", report_cost_micros=(100 + i) * 7,
        first_choice="cheap", first_choice_cost_micros=3,
    )  # fmt: skip


async def test_cost_columns_round_trip_and_sum_exactly(pg_url: str, tmp_path: Path) -> None:
    keys = PgKeyStore(pg_url)
    key, _ = keys.create("dana", budget="2.5", budget_period="monthly")
    log = PgUsageLog(pg_url, tmp_path)
    for i in range(10):
        log.record(_record(i, key.id))
    await log.committed("req-9")
    log.close()
    with Qmark(connect(pg_url)).conn as conn:
        [day] = summarize(Qmark(conn), "day", None)
        assert day.cost_micros == sum((100 + i) * 7 for i in range(10))
        assert (day.first_choice_cost_micros, day.cached_tokens, day.counted) == (30, 40, 0)
        currency = conn.execute("SELECT DISTINCT currency FROM usage").fetchall()
        assert currency == [("USD",)]
    charged = keys.charge(key.id, 15, 700)
    assert (charged.budget_micros, charged.spent_micros) == (2_500_000, 700)
    keys.close()  # sends the charge
    again = PgKeyStore(pg_url)
    stored = again.get("dana")
    assert (stored.spent_micros, stored.budget_period) == (700, "monthly")
    assert stored.budget_since is not None and stored.budget_since.day == 1
    assert again.topup_money("dana", "0.5").budget_micros == 3_000_000
    again.close()
