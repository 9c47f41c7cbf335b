"""Prices as the operator configures them: per upstream (and per model it serves), per million
tokens, in CNY or USD, with optional time-of-day windows (DeepSeek's off-peak hours).

Prices are ``Decimal`` from the YAML text, never floats, and costs are whole micro-units (a
millionth of a yuan or dollar): a row's cost is an integer, so totals are exact sums of rows.
nobusy never fetches prices from the network; the operator owns them.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CURRENCIES",
    "Currency",
    "ModelPrice",
    "Price",
    "PriceWindow",
    "PricingSettings",
    "Rates",
    "micros",
]

Currency = Literal["CNY", "USD"]
CURRENCIES: tuple[Currency, ...] = ("CNY", "USD")
_MINUTES_A_DAY = 24 * 60


class Rates(BaseModel):
    """Input, cached-input and output prices per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal = Field(
        Decimal(0), ge=0, allow_inf_nan=False, description="Price per million input tokens."
    )
    cached_input: Decimal | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Price per million input tokens read from the upstream's cache (none: input).",
    )
    output: Decimal = Field(
        Decimal(0), ge=0, allow_inf_nan=False, description="Price per million output tokens."
    )

    @field_validator("input", "cached_input", "output", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # YAML `1.5` arrives as a float: its text is the operator's number, not 1.5000000001.
        if isinstance(value, bool):
            raise ValueError("must be a number")
        return str(value) if isinstance(value, float) else value

    def cost(self, prompt: int, cached: int, completion: int) -> int:
        """Micro-units for these tokens: a price per million tokens is micro-units per token."""
        cached = min(max(cached, 0), prompt)
        cached_price = self.input if self.cached_input is None else self.cached_input
        exact = (prompt - cached) * self.input + cached * cached_price + completion * self.output
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class PriceWindow(Rates):
    """Other prices from ``start`` to ``end`` (local time in ``tz``; past midnight wraps)."""

    start: time = Field(description="When the window opens, HH:MM local time.")
    end: time = Field(description="When it closes, HH:MM local time (exclusive).")
    tz: str = Field("UTC", description="The window's time zone, e.g. Asia/Shanghai.")

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai, UTC)") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> PriceWindow:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        return self

    def contains(self, moment: datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.tz)).time()
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def minutes_utc(self, on: datetime) -> set[int]:
        """The minutes of the UTC day ``on`` this window covers (for the overlap check)."""
        zone = ZoneInfo(self.tz)
        day = on.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=UTC)
        return {
            m
            for m in range(_MINUTES_A_DAY)
            if self.contains(day.replace(hour=m // 60, minute=m % 60).astimezone(zone))
        }


def _check_windows(windows: tuple[PriceWindow, ...]) -> None:
    # Compared in UTC on a summer and a winter day: windows in different zones may overlap
    # in one season only.
    for day in (datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC)):
        covered = [w.minutes_utc(day) for w in windows]
        for i, first in enumerate(covered):
            for j in range(i + 1, len(covered)):
                if first & covered[j]:
                    raise ValueError(
                        f"windows {i} ({_span(windows[i])}) and {j} ({_span(windows[j])}) "
                        "overlap: a request could be priced by either"
                    )


def _span(window: PriceWindow) -> str:
    return f"{window.start:%H:%M}-{window.end:%H:%M} {window.tz}"


class ModelPrice(Rates):
    """The prices of one model an upstream serves, when they differ from the upstream's."""

    windows: tuple[PriceWindow, ...] = Field(
        (), description="Time-of-day windows with their own prices (must not overlap)."
    )

    @model_validator(mode="after")
    def _windows_apart(self) -> ModelPrice:
        _check_windows(self.windows)
        return self

    def at(self, moment: datetime) -> Rates:
        """The rates in force at ``moment`` (the window it falls in, else the base prices)."""
        for window in self.windows:
            if window.contains(moment):
                return window
        return self


class Price(ModelPrice):
    """What an upstream's tokens cost: currency, base prices, windows, prices per model."""

    currency: Currency = Field("CNY", description="CNY or USD.")
    models: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Prices of the models that differ, by model name."
    )

    def for_model(self, model: str | None) -> ModelPrice:
        if model is not None and model in self.models:
            return self.models[model]
        return self


class PricingSettings(BaseModel):
    """How spend is totalled: the reporting currency and exchange rates into it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: Currency = Field("CNY", description="Currency of totals and budgets: CNY or USD.")
    rates: dict[Currency, Decimal] = Field(
        default_factory=dict,
        description="Units of `currency` one unit of another currency is worth (USD: 7.1).",
    )
    holds: bool = Field(
        True,
        description="Hold each budgeted request's worst-case cost until it ends, so budgets "
        "hold exactly across workers and replicas (a database round trip at its start and end); "
        "false: check each process's copy of the key, and overspend by up to the requests in "
        "flight (group budgets are not enforced then).",
    )
    hold_output_tokens: int = Field(
        4096,
        ge=1,
        description="Output tokens a request without max_tokens is held for against a money "
        "budget while it runs (its worst case: overspend stays within one request's cost when "
        "answers are no longer).",
    )
    hold_ttl: float = Field(
        900.0,
        gt=0,
        description="Seconds a request's money hold lasts when its process dies before "
        "settling it; longer than any answer takes.",
    )

    @field_validator("rates", mode="before")
    @classmethod
    def _rates_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, float) else v for k, v in value.items()}
        return value

    @field_validator("rates")
    @classmethod
    def _positive(cls, value: dict[Currency, Decimal]) -> dict[Currency, Decimal]:
        for currency, rate in value.items():
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"{currency}: must be a number above 0, got {rate}")
        return value

    def rate(self, currency: Currency) -> Decimal | None:
        """How many reporting units one unit of ``currency`` is; None when not configured."""
        if currency == self.currency:
            return Decimal(1)
        return self.rates.get(currency)

    def convert(self, amount_micros: int, currency: Currency) -> int:
        rate = self.rate(currency)
        if rate is None:
            raise ValueError(f"pricing.rates.{currency} is not set")
        exact = amount_micros * rate
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def micros(amount: Decimal | int | float | str) -> int:
    """A money amount (yuan, dollars) as whole micro-units."""
    exact = Decimal(str(amount)) * 1_000_000
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
