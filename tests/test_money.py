"""Prices, windows and costs as pure functions; the config errors that name the key; budgets
and their periods on the key store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest

from nobusy.errors import BudgetExhausted, ConfigError, InvalidRequest
from nobusy.money.budgets import budget_warning, next_reset, period_start, spent
from nobusy.money.prices import Price, PricingSettings
from nobusy.money.spend import Pricer
from nobusy.settings import load_settings
from nobusy.store.key_groups import KeyGroups
from nobusy.store.keys import KeyStore
from nobusy.store.money_holds import Hold, MoneyHolds
from nobusy.store.usage import UsageRecord

DEEPSEEK = {
    "currency": "CNY",
    "input": 2,
    "cached_input": 0.5,
    "output": 8,
    "windows": [
        {"start": "00:30", "end": "08:30", "tz": "Asia/Shanghai", "input": 1,
         "cached_input": 0.25, "output": 2},
    ],
}  # fmt: skip


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_cost_is_tokens_times_price_with_cache_hits_apart() -> None:
    price = Price.model_validate(DEEPSEEK)
    # 1000 prompt tokens of which 400 cached, 500 output, at peak (12:00 Beijing):
    # 600 * 2 + 400 * 0.5 + 500 * 8 = 5400 micro-yuan.
    rates = price.at(datetime.fromisoformat("2026-12-07T12:00:00+08:00"))
    assert rates.cost(1000, 400, 500) == 5400
    # Cached tokens never exceed the prompt; without a cached price they cost the input price.
    assert Price.model_validate({"input": 3}).cost(10, 50, 0) == 30


@pytest.mark.parametrize(
    ("moment", "off_peak"),
    [
        ("2026-12-07T00:29:59+08:00", False),
        ("2026-12-07T00:30:00+08:00", True),  # the window opens at 00:30 Beijing time
        ("2026-12-07T08:29:59+08:00", True),
        ("2026-12-07T08:30:00+08:00", False),  # and closes at 08:30 (exclusive)
        ("2026-12-06T16:30:00+00:00", True),  # the same instant as 00:30 Beijing, in UTC
    ],
)
def test_the_window_is_chosen_by_the_start_time(moment: str, off_peak: bool) -> None:
    rates = Price.model_validate(DEEPSEEK).at(datetime.fromisoformat(moment))
    assert rates.cost(1000, 0, 1000) == (3000 if off_peak else 10000)


def test_a_window_past_midnight_wraps() -> None:
    price = Price.model_validate(
        {"input": 1, "windows": [{"start": "22:00", "end": "06:00", "input": 0}]}
    )
    assert price.at(datetime(2026, 1, 1, 23, tzinfo=UTC)).cost(10, 0, 0) == 0
    assert price.at(datetime(2026, 1, 1, 5, tzinfo=UTC)).cost(10, 0, 0) == 0
    assert price.at(datetime(2026, 1, 1, 6, tzinfo=UTC)).cost(10, 0, 0) == 10


def test_fractional_prices_round_each_row_half_even_and_convert_exactly() -> None:
    price = Price.model_validate({"currency": "USD", "input": 0.075, "output": 0.3})
    assert price.cost(3, 0, 1) == 1  # 0.225 + 0.3 = 0.525 micro-dollars -> 1
    pricing = PricingSettings.model_validate({"currency": "CNY", "rates": {"USD": 7.1}})
    assert pricing.convert(1_000_000, "USD") == 7_100_000
    assert pricing.rate("USD") == Decimal("7.1")  # the YAML text, not a binary float


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nobusy.yaml"
    path.write_text(text)
    return path


BASE = """
upstreams:
  ds:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    price: {price}
models:
  chat: [ds/m]
{pricing}
"""


@pytest.mark.parametrize(
    ("price", "pricing", "message"),
    [
        ("{input: -1}", "", "upstreams.ds.price.input: Input should be greater than or equal"),
        ("{input: lots}", "", "upstreams.ds.price.input"),
        ("{output: .nan}", "", "upstreams.ds.price.output"),
        ("{input: true}", "", "upstreams.ds.price.input"),
        ("{currency: EUR}", "", "upstreams.ds.price.currency: Input should be 'CNY' or 'USD'"),
        ("{currency: USD, input: 1}", "", "set pricing.rates.USD"),
        ("{input: 1}", "pricing: {rates: {USD: -2}}", "pricing.rates"),
        (
            '{windows: [{start: "00:30", end: "08:30", tz: Asia/Shanghai}, '
            '{start: "08:00", end: "09:00", tz: Asia/Shanghai}]}',
            "",
            "upstreams.ds.price: Value error, windows 0 (00:30-08:30 Asia/Shanghai) and 1 "
            "(08:00-09:00 Asia/Shanghai) overlap",
        ),
        (
            # The same hours written in two zones overlap too.
            '{windows: [{start: "00:30", end: "08:30", tz: Asia/Shanghai}, '
            '{start: "00:00", end: "01:00", tz: UTC}]}',
            "",
            "overlap",
        ),
        ('{windows: [{start: "01:00", end: "02:00", tz: Mars/Base}]}', "", "unknown time zone"),
        ("{models: {m: {input: -3}}}", "", "upstreams.ds.price.models.m.input"),
    ],
)
def test_bad_prices_are_config_errors_naming_the_key(
    tmp_path: Path, price: str, pricing: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, BASE.format(price=price, pricing=pricing)), env={})
    assert message in str(caught.value)


def test_the_pricer_prices_the_answering_route_and_the_first_choice(tmp_path: Path) -> None:
    config = """
pricing: {currency: CNY, rates: {USD: 7}}
upstreams:
  cheap: {kind: openai, base_url: "http://127.0.0.1:9/v1", price: {input: 1, output: 2}}
  dear:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    price: {currency: USD, input: 1, output: 1, models: {big: {input: 10, output: 10}}}
  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  chat: [cheap/m, dear/big]
"""
    pricer = Pricer(load_settings(write(tmp_path, config), env={}))
    record = UsageRecord("r", "chat", False, started=at("2026-12-07T12:00:00+00:00"))
    record.upstream, record.prompt_tokens, record.completion_tokens = "dear/big", 100, 10
    pricer.price(record)
    assert (record.currency, record.cost_micros) == ("USD", 1100)
    assert (record.report_currency, record.report_cost_micros) == ("CNY", 7700)
    assert (record.first_choice, record.first_choice_cost_micros) == ("cheap/m", 120)
    record.upstream = "local/x (overflow)"  # no price: free
    pricer.price(record)
    assert (record.cost_micros, record.report_cost_micros) == (0, 0)
    # What a request may cost at most: on the dearest route its alias may take.
    assert pricer.worst("chat", 100, 10, at("2026-12-07T12:00:00+00:00")) == 7700
    assert pricer.worst("cheap/m", 100, 10, at("2026-12-07T12:00:00+00:00")) == 120
    assert pricer.worst("local/x", 100, 10, at("2026-12-07T12:00:00+00:00")) == 0


def test_budget_periods_reset_in_utc() -> None:
    now = datetime(2026, 12, 9, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period_start("daily", now) == datetime(2026, 12, 9, tzinfo=UTC)
    assert period_start("weekly", now) == datetime(2026, 12, 7, tzinfo=UTC)
    assert period_start("monthly", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_reset("monthly", now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_reset("weekly", now) == datetime(2026, 12, 14, tzinfo=UTC)


def test_budget_spend_warning_limit_topup_and_reset(tmp_path: Path) -> None:
    moment = [datetime(2026, 12, 9, 15, 30, tzinfo=UTC)]
    store = KeyStore(tmp_path, clock=lambda: moment[0], refresh_interval=0)
    holds = MoneyHolds(tmp_path, "CNY", ttl=60, clock=lambda: moment[0].timestamp())
    key, _ = store.create("team-a", budget="1.5", budget_period="daily")
    assert key.budget_micros == 1_500_000 and key.held

    def spend(cost: int) -> Hold:
        hold = asyncio.run(holds.reserve(store.get("team-a"), 400_000))
        holds.settle(hold, cost)
        holds.flush()
        return hold

    spend(1_000_000)
    assert spent(store.get("team-a"), moment[0]) == 1_000_000
    hold = spend(200_000)
    assert budget_warning(hold.budgets, "CNY", moment[0]) is None  # as it was before: 67%
    hold = spend(300_000)  # 1.2 of 1.5 spent before it: the soft limit
    warning = budget_warning(hold.budgets, "CNY", moment[0])
    assert warning is not None and warning.startswith("80% of the daily budget spent")
    with pytest.raises(BudgetExhausted) as caught:
        spend(1)
    assert caught.value.code == "insufficient_quota" and caught.value.status_code == 429
    assert "Key 'team-a' has spent its daily budget of 1.50 CNY" in caught.value.message
    assert "resets at 2026-12-10 00:00 UTC" in caught.value.message
    store.topup_money("team-a", "1")
    spend(0)  # 1.5 spent of 2.5
    moment[0] = datetime(2026, 12, 10, 0, 1, tzinfo=UTC)  # the next day: spend starts again
    assert spent(store.get("team-a"), moment[0]) == 0
    spend(5)
    key = store.get("team-a")
    assert (key.spent_micros, key.budget_since, key.reserved_micros) == (
        5,
        datetime(2026, 12, 10, tzinfo=UTC),
        0,
    )
    holds.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_group_budget_is_held_with_its_keys_and_the_tighter_one_refuses(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    moment = [datetime(2026, 12, 9, 15, 30, tzinfo=UTC)]
    store: KeyStore
    holds: MoneyHolds
    if backend == "sqlite":
        store = KeyStore(tmp_path, clock=lambda: moment[0], refresh_interval=0)
        holds = MoneyHolds(tmp_path, "CNY", ttl=60, clock=lambda: moment[0].timestamp())
    else:  # one statement per step there (nobusy.store.pg_money_holds)
        from nobusy.store.pg_keys import PgKeyStore
        from nobusy.store.pg_money_holds import PgMoneyHolds

        url = request.getfixturevalue("pg_url")
        store = PgKeyStore(url, clock=lambda: moment[0])
        holds = PgMoneyHolds(url, "CNY", ttl=60, clock=lambda: moment[0].timestamp())
    groups = KeyGroups(store)
    groups.create("eng", budget="1", budget_period="weekly")
    a, _ = store.create("a", group="eng")
    b, _ = store.create("b", group="eng", budget="0.5")
    assert a.held and b.held and a.group_id == b.group_id

    def reserve(name: str, micros: int) -> Hold:
        return asyncio.run(holds.reserve(store.get(name), micros))

    first = reserve("a", 600_000)
    second = reserve("b", 400_000)  # 0.6 held of the group's 1: room left
    assert [(x.owner, x.held) for x in second.budgets] == [("key", 0), ("group", 600_000)]
    with pytest.raises(BudgetExhausted) as caught:
        reserve("a", 1)  # all of it held: the group refuses, naming itself and what is held
    assert caught.value.message.startswith(
        "Key group 'eng' has spent its weekly budget of 1.00 CNY (0.00 spent, 1.00 held by "
        "requests in flight); it resets at 2026-12-14 00:00 UTC"
    )
    holds.settle(first, 50_000)
    holds.settle(second, 500_000)
    holds.flush()
    eng = groups.get("eng")
    assert (eng.spent(moment[0]), eng.reserved_micros) == (550_000, 0)
    with pytest.raises(BudgetExhausted, match="^Key 'b' has spent its daily budget"):
        reserve("b", 1)  # the key's own budget is the tighter one now
    hold = reserve("a", 100_000)  # the group has room: 0.55 of 1
    assert budget_warning(hold.budgets, "CNY", moment[0]) is None
    holds.settle(hold, 400_000)
    hold = reserve("a", 10)
    warning = budget_warning(hold.budgets, "CNY", moment[0])
    assert warning is not None and warning.startswith("95% of the group eng's weekly budget")
    holds.settle(hold, 0)
    # A hold whose process died expires: the next reservation releases it first.
    reserve("a", 40_000)
    moment[0] = moment[0].replace(minute=32)
    late = reserve("a", 30_000)
    assert late.budgets[0].held == 0 and groups.get("eng").reserved_micros == 30_000
    holds.settle(late, 60_000)
    with pytest.raises(BudgetExhausted):
        reserve("a", 1)  # 1.01 spent of 1
    groups.topup("eng", "1")
    reserve("a", 1)
    holds.close()
    store.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"budget": "-1"}, "budget: must be at least 0"),
        ({"budget": "ten"}, "budget: must be an amount of money"),
        ({"budget_period": "yearly"}, "budget_period: must be daily, weekly or monthly"),
    ],
)
def test_bad_budgets_are_named(tmp_path: Path, fields: dict[str, str], message: str) -> None:
    store = KeyStore(tmp_path)
    with pytest.raises(InvalidRequest, match=message):
        store.create("k", **fields)  # type: ignore[arg-type]
    key, _ = store.create("k2")
    with pytest.raises(InvalidRequest, match="has no money budget"):
        store.topup_money(key.id, "5")


def test_cache_hits_are_read_from_each_wire_format() -> None:
    from nobusy.routing.answer import cached_tokens
    from nobusy.upstreams.anthropic_wire import message_chunks

    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": 7}}) == 7  # OpenAI
    assert cached_tokens({"prompt_cache_hit_tokens": 5, "prompt_tokens": 9}) == 5  # DeepSeek
    assert cached_tokens({"prompt_tokens": 9}) == 0
    message = {
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 40, "output_tokens": 2},
    }
    usage = [c["usage"] for c in message_chunks(message, "claude") if c.get("usage")]
    assert usage == [
        {"prompt_tokens": 43, "completion_tokens": 2, "total_tokens": 45,
         "prompt_tokens_details": {"cached_tokens": 40}},
    ]  # fmt: skip


@pytest.mark.parametrize("on_failure", ["local", "refuse"])
def test_redis_not_answering_holds_in_the_key_database_or_refuses(
    tmp_path: Path, on_failure: Literal["local", "refuse"]
) -> None:
    from nobusy.errors import StorageUnavailable
    from nobusy.store.redis_money_holds import RedisMoneyHolds
    from tests.conftest import free_port

    store = KeyStore(tmp_path)
    key, _ = store.create("k", budget="1")
    holds = RedisMoneyHolds(
        f"redis://127.0.0.1:{free_port()}/0", MoneyHolds(tmp_path, "CNY", ttl=60), on_failure
    )

    async def use() -> None:
        try:
            hold = await holds.reserve(key, 1000)
        except StorageUnavailable:
            assert on_failure == "refuse"
            return
        finally:
            await holds.aclose()
        assert on_failure == "local" and not hold.mirrored
        assert store.get("k").reserved_micros == 1000  # held in nobusy.db
        holds.settle(hold, 10)

    asyncio.run(use())
    holds.flush()
    assert (store.get("k").reserved_micros, store.get("k").spent_micros) == (
        0,
        0 if on_failure == "refuse" else 10,
    )
    holds.close()
    store.close()
