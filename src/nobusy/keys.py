"""API keys: what a key is, its hash, and the checks every field passes before it is stored.

A key is ``nb-`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``: 256 random bits).
Its hash is stored with the algorithm's name (``sha256:<hex>``), so keys made under an earlier
hasher keep verifying after a switch. The keys themselves live in ``nobusy.store.keys``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from nobusy.errors import InvalidRequest
from nobusy.store.sqlite import timestamp

__all__ = [
    "EDITABLE",
    "LIMITS",
    "MAX_INT",
    "PRIORITIES",
    "Hasher",
    "Key",
    "BUDGET_PERIODS",
    "bad_field",
    "check_money",
    "check_period",
    "check_count",
    "to_columns",
    "parse_duration",
    "sha256_hasher",
    "show",
    "sm3_hasher",
    "utcnow",
    "validate",
]

Hasher = Callable[[bytes], str]
Priority = Literal["high", "normal", "low"]
Status = Literal["active", "revoked", "expired"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
LIMITS = ("rpm", "tpm", "max_concurrency", "quota_tokens")
EDITABLE = (
    "name", "priority", *LIMITS, "models", "expires", "max_wait", "budget", "budget_period",
    "group",
)  # fmt: skip
BUDGET_PERIODS = ("daily", "weekly", "monthly")
MAX_INT = 2**53  # exact in JSON clients and far inside SQLite's 64-bit integers
_KEY_ID = re.compile(r"key_[0-9a-f]{10}")
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- Keys --------------------------------------------------------------------------------------


def sm3_hasher(data: bytes) -> str:
    """SM3 (national cryptography, the default suite) as ``sm3:<hex>``, through OpenSSL."""
    return "sm3:" + hashlib.new("sm3", data).hexdigest()


def sha256_hasher(data: bytes) -> str:
    """SHA-256 as ``sha256:<hex>``; a 256-bit random secret needs no salt or slow hash."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Key:
    """One API key as stored: who it is for and its limits (None means no limit)."""

    id: str
    name: str
    prefix: str
    hash: str = field(repr=False)
    priority: Priority
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    quota_tokens: int | None
    balance: int | None
    models: tuple[str, ...] | None
    max_wait: float | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    # A money budget per period (nobusy.money.budgets), in micro-units of pricing.currency.
    budget_micros: int | None = None
    budget_period: str | None = None
    spent_micros: int = 0
    budget_since: datetime | None = None
    # Its key group (nobusy.store.key_groups), and the money held by its requests in flight.
    group_id: str | None = None
    reserved_micros: int = 0

    @property
    def held(self) -> bool:
        """Whether a request of this key reserves its cost first (a budget of its own or a
        group's): keys without either never wait for that round trip."""
        return self.budget_micros is not None or self.group_id is not None

    def status(self, now: datetime) -> Status:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


# --- Validation: every value checked, and named, before anything is written. ------------------


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1d12h``, as a timedelta."""
    compact = text.strip().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"expected a duration like 30d, 12h or 90m, got {show(text)}")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds <= 0:
        raise ValueError(f"the duration must be longer than zero, got {show(text)}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"too long a duration: {show(text)}") from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bad_field(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {message}", param=name)


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise bad_field("name", "must be a non-empty string without surrounding spaces")
    if len(value) > 64 or not value.isprintable() or "/" in value:
        raise bad_field("name", "at most 64 printable characters, no '/'")
    # Either would make a lookup ambiguous, or store a pasted secret in the clear.
    if _KEY_ID.fullmatch(value) or value.startswith("nb-"):
        raise bad_field("name", "must not look like a key id (key_...) or a key (nb-...)")
    return value


def check_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(name, f"must be a whole number, got {show(value)}")
    if value < 1:
        raise bad_field(name, f"must be 1 or more, got {value}")
    if value > MAX_INT:
        raise bad_field(name, f"must be at most 2**53, got {value}")
    return value


def _check_models(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise bad_field("models", f"must be a non-empty list of model names, got {show(value)}")
    if not all(isinstance(m, str) and m.strip() and m == m.strip() for m in value):
        raise bad_field("models", f"each model must be a non-empty name, got {show(value)}")
    return json.dumps(list(dict.fromkeys(value)))  # duplicates dropped, order kept


def _check_expires(value: object, now: datetime) -> str | None:
    if value is None:
        return None
    try:
        delta = parse_duration(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise bad_field("expires", str(exc)) from None
    if not isinstance(delta, timedelta) or delta <= timedelta(0):
        raise bad_field("expires", f"expected a duration like 30d, 12h or 90m, got {show(value)}")
    try:
        return timestamp(now + delta)
    except OverflowError:
        raise bad_field("expires", f"too far ahead: {show(value)}") from None


def check_money(name: str, value: object, *, positive: bool = False) -> int | None:
    """A money amount (a number, or its text) as micro-units; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise bad_field(name, f"must be an amount of money, got {show(value)}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise bad_field(name, f"must be an amount of money, got {show(value)}") from None
    if not amount.is_finite() or amount < 0 or (positive and amount == 0):
        raise bad_field(name, f"must be {'above' if positive else 'at least'} 0, got {show(value)}")
    micros = int((amount * 1_000_000).to_integral_value())
    if micros > MAX_INT:
        raise bad_field(name, "too large an amount")
    return micros


def check_period(value: object) -> str | None:
    if value is not None and value not in BUDGET_PERIODS:
        raise bad_field("budget_period", f"must be daily, weekly or monthly, got {show(value)}")
    return value


def _check_max_wait(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_field("max_wait", f"must be a number of seconds, got {show(value)}")
    if not 0 <= value <= 86400:
        raise bad_field("max_wait", f"must be from 0 to 86400 seconds, got {show(value)}")
    return float(value)


def validate(given: Mapping[str, object]) -> None:
    """Raise InvalidRequest naming the first bad field, as ``create`` and ``update`` would."""
    to_columns(given, utcnow())


def to_columns(given: Mapping[str, object], now: datetime) -> dict[str, object]:
    """Validated column values for the fields given; unknown fields are errors too."""
    out: dict[str, object] = {}
    for name, value in given.items():
        if name == "name":
            out["name"] = _check_name(value)
        elif name == "priority":
            if value not in PRIORITIES:
                raise bad_field("priority", f"must be high, normal or low, got {show(value)}")
            out["priority"] = value
        elif name in LIMITS:
            out[name] = check_count(name, value)
        elif name == "models":
            out["models"] = _check_models(value)
        elif name == "expires":
            out["expires_at"] = _check_expires(value, now)
        elif name == "max_wait":
            out["max_wait"] = _check_max_wait(value)
        elif name == "budget":
            out["budget_micros"] = check_money("budget", value)
        elif name == "budget_period":
            out["budget_period"] = check_period(value)
        elif name == "group":  # its name; the store looks up the id
            if value is not None and not isinstance(value, str):
                raise bad_field("group", f"must be a group's name, got {show(value)}")
            out["group_id"] = value
        else:
            raise bad_field(name, f"unknown field; the fields are {', '.join(EDITABLE)}")
    return out
