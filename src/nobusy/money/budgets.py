"""Money budgets, a key's or its group's: how much may be spent per period (daily, weekly,
monthly, in UTC), what is spent in the current one and held by requests in flight, the soft
warning at 80% and the hard limit.

Spend lives on the key and on its group (``spent_micros`` since ``budget_since``, the start of
the period it was charged in); a charge in a later period starts the count again, so a reset
needs no timer. A request is admitted while spent + held is below the budget, and holds its
worst-case cost until it ends (``nobusy.store.money_holds``): the overspend is at most one
request's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from nobusy.errors import BudgetExhausted
from nobusy.keys import Key

__all__ = [
    "PERIODS",
    "WARN_AT",
    "Budget",
    "Period",
    "budget_warning",
    "check_copy",
    "money",
    "key_budget",
    "next_reset",
    "period_start",
    "refusal",
    "spent",
]

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")
WARN_AT = Decimal("0.8")  # the soft limit: a warning header from 80% of the budget


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget as a reservation found it: whose (a key's or a group's), how large, spent in
    its current period and held by requests in flight (this one's not included)."""

    owner: Literal["key", "group"]
    name: str
    micros: int
    period: str | None
    spent: int
    held: int = 0

    @property
    def left(self) -> int:
        return self.micros - self.spent - self.held


def period_start(period: str | None, now: datetime) -> datetime:
    """The start (UTC) of the period ``now`` falls in: today, this Monday, the 1st."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    return day


def next_reset(period: str | None, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "weekly":
        return start + timedelta(days=7)
    if period == "monthly":
        return (start + timedelta(days=32)).replace(day=1)
    return start + timedelta(days=1)


def spent(key: Key, now: datetime) -> int:
    """Micro-units spent in the current period (0 when the last charge was in an earlier one)."""
    if key.budget_since is None or key.budget_since < period_start(key.budget_period, now):
        return 0
    return key.spent_micros


def money(micros: int, places: int | None = None) -> str:
    """Micro-units as an amount: with ``places`` decimals, or cents unless that would hide a
    smaller part (then up to six decimals)."""
    if places is None:
        places = 2
        while places < 6 and micros % 10 ** (6 - places):
            places += 1
    return f"{Decimal(micros) / 1_000_000:,.{places}f}"


def refusal(budget: Budget, currency: str, now: datetime) -> BudgetExhausted:
    """The 429 for a request ``budget`` has no room for: whose budget, what is spent and held,
    when it resets."""
    reset = next_reset(budget.period, now)
    who = "Key" if budget.owner == "key" else "Key group"
    held = f", {money(budget.held)} held by requests in flight" if budget.held else ""
    how = "nobusy keys topup --money" if budget.owner == "key" else "nobusy keys groups topup"
    return BudgetExhausted(
        f"{who} '{budget.name}' has spent its {budget.period or 'daily'} budget of "
        f"{money(budget.micros)} {currency} ({money(budget.spent)} spent{held}); it resets at "
        f"{reset:%Y-%m-%d %H:%M} UTC, or top it up ({how}).",
        retry_after=max(1.0, (reset - now).total_seconds()),
    )


def key_budget(key: Key, now: datetime) -> tuple[Budget, ...]:
    """The key's own budget as its in-memory copy knows it (none: empty)."""
    if key.budget_micros is None:
        return ()
    return (Budget("key", key.name, key.budget_micros, key.budget_period, spent(key, now)),)


def check_copy(key: Key, currency: str, now: datetime) -> None:
    """Without holds (``pricing.holds: false``): refuse a key whose copy says its budget is
    spent. Requests in flight are not counted, in this process or another: each may overspend."""
    for budget in key_budget(key, now):
        if budget.left <= 0:
            raise refusal(budget, currency, now)


def budget_warning(budgets: tuple[Budget, ...], currency: str, now: datetime) -> str | None:
    """The ``x-nobusy-budget-warning`` value from 80% of a budget on (the fullest one's);
    None below."""
    full = [b for b in budgets if b.spent + b.held >= b.micros * WARN_AT]
    if not full:
        return None
    budget = max(full, key=lambda b: (b.spent + b.held) / b.micros if b.micros else 1.0)
    used = budget.spent + budget.held
    share = used * 100 // budget.micros if budget.micros else 100
    reset = next_reset(budget.period, now)
    whose = "" if budget.owner == "key" else f"group {budget.name}'s "
    held = f", {money(budget.held)} held" if budget.held else ""
    return (
        f"{share}% of the {whose}{budget.period or 'daily'} budget spent "
        f"({money(budget.spent)}{held} of {money(budget.micros)} {currency}); resets "
        f"{reset:%Y-%m-%dT%H:%MZ}"
    )
