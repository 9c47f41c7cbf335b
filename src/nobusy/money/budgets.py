"""A key's money budget: how much it may spend per period (daily, weekly, monthly, in UTC),
what it has spent in the current one, the soft warning at 80% and the hard limit.

Spend lives on the key (``spent_micros`` since ``budget_since``, the start of the period it was
charged in); a charge in a later period starts the count again, so a reset needs no timer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from nobusy.errors import BudgetExhausted
from nobusy.keys import Key

__all__ = [
    "PERIODS",
    "WARN_AT",
    "Period",
    "budget_warning",
    "check_budget",
    "money",
    "period_start",
    "spent",
]

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")
WARN_AT = Decimal("0.8")  # the soft limit: a warning header from 80% of the budget


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


def check_budget(key: Key, currency: str, now: datetime) -> None:
    """Raise BudgetExhausted when the key has spent its budget for this period."""
    if key.budget_micros is None:
        return
    used = spent(key, now)
    if used >= key.budget_micros:
        reset = next_reset(key.budget_period, now)
        raise BudgetExhausted(
            f"Key '{key.name}' has spent its {key.budget_period or 'daily'} budget of "
            f"{money(key.budget_micros)} {currency} ({money(used)} spent); it resets at "
            f"{reset:%Y-%m-%d %H:%M} UTC, or top it up (nobusy keys topup --money).",
            retry_after=max(1.0, (reset - now).total_seconds()),
        )


def budget_warning(key: Key, currency: str, now: datetime) -> str | None:
    """The ``x-nobusy-budget-warning`` value from 80% of the budget on; None below."""
    if key.budget_micros is None:
        return None
    used = spent(key, now)
    if used < key.budget_micros * WARN_AT:
        return None
    share = used * 100 // key.budget_micros if key.budget_micros else 100
    reset = next_reset(key.budget_period, now)
    return (
        f"{share}% of the {key.budget_period or 'daily'} budget spent "
        f"({money(used)} of {money(key.budget_micros)} {currency}); resets "
        f"{reset:%Y-%m-%dT%H:%MZ}"
    )
