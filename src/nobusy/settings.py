"""The one frozen settings object, built at the edge from defaults < YAML file < NOBUSY_* env < CLI.

Every setting is declared here as data with a description; ``docs/configuration.md`` lists them
and a test fails when one is undocumented. The fields are the only list of names: a top-level
setting that one value sets (``SCALARS``) is a key of the file, a ``NOBUSY_*`` variable
(``env_name``) and a flag of ``nobusy serve`` (generated in ``nobusy.cli.options``), as in
uvicorn: ``data_dir`` is ``NOBUSY_DATA_DIR`` and ``--data-dir``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nobusy import overlay
from nobusy.cache.policy import CacheSettings
from nobusy.crosscheck.settings import CrossCheckSettings
from nobusy.errors import ConfigError
from nobusy.guard import GuardSettings
from nobusy.guard.pii import PiiSettings
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.money.prices import PricingSettings
from nobusy.upstreams import settings_class
from nobusy.upstreams.base import UpstreamSettings

__all__ = [
    "MIN_SECRET_LENGTH",
    "SCALARS",
    "AliasKnowledge",
    "AuditSettings",
    "ConsoleSettings",
    "HedgeSettings",
    "ModelAlias",
    "Route",
    "Settings",
    "check_secret",
    "env_name",
    "load_settings",
]

DEFAULT_ALIAS = "local"
# Shortest secret nobusy accepts for what guards it (the admin key).
MIN_SECRET_LENGTH = 16


def env_name(field: str) -> str:
    """The environment variable of a top-level setting: ``data_dir`` is ``NOBUSY_DATA_DIR``."""
    return f"NOBUSY_{field.upper()}"


def check_secret(name: str, secret: str) -> None:
    """Refuse an empty, blank or short secret with a message saying what to do instead."""
    if not secret.strip():
        raise ValueError(
            f"{name} is set but empty (an empty {env_name(name)}= or a ${{VAR:-}} that "
            "expanded to nothing?): remove it, or set a random secret of at least "
            f"{MIN_SECRET_LENGTH} characters (openssl rand -hex 16)"
        )
    if len(secret) < MIN_SECRET_LENGTH or secret != secret.strip():
        raise ValueError(
            f"{name} must be at least {MIN_SECRET_LENGTH} characters without surrounding "
            "spaces (openssl rand -hex 16 makes one)"
        )


@dataclass(frozen=True, slots=True)
class Route:
    """One place an alias can be served from: an upstream, its model, and where it ranks."""

    upstream: str
    model: str | None = None
    tier: int = 0
    weight: float = 1.0
    # What this route's model takes, where it differs from its upstream's settings
    # (routing.capabilities); None: as the upstream says.
    vision: bool | None = None
    completions: bool | None = None
    fim: bool | None = None

    @classmethod
    def parse(cls, text: str, tier: int = 0, weight: float = 1.0) -> Route:
        # Split on the first slash only: hosted model names often contain slashes
        # (SiliconFlow's "deepseek-ai/DeepSeek-V3").
        upstream, _, model = text.partition("/")
        return cls(upstream, model or None, tier, weight)

    def __str__(self) -> str:
        return f"{self.upstream}/{self.model}" if self.model else self.upstream


class AuditSettings(BaseModel):
    """Every request and answer in a hash chain, content encrypted at rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Write the audit log (data_dir/audit.db).")
    store: Literal["full", "hash"] = Field(
        "full", description="full: contents encrypted; hash: only their keyed hashes."
    )
    retention_days: PositiveInt = Field(180, description="Days rows are kept before pruning.")


class ConsoleSettings(BaseModel):
    """The operator console: its sign-in session and what its request log may show."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    session_hours: PositiveFloat = Field(
        8.0, description="Hours a console sign-in (the admin key exchanged for a cookie) lasts."
    )
    show_content: bool = Field(
        True,
        description="The request log's detail view shows the request and answer text the "
        "audit log keeps (audit.store: full) to the signed-in admin; false: metadata only.",
    )


class HedgeSettings(BaseModel):
    """Start the next route in parallel when the first is slow to say anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    after: Literal["p95"] | PositiveFloat = Field(
        "p95", description="Seconds without a first token before hedging, or the route's p95."
    )
    budget: float = Field(0.05, gt=0, le=1, description="Largest share of requests hedged.")


class AliasKnowledge(BaseModel):
    """Vector stores whose passages ground an alias's answers, cited as [n]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stores: tuple[str, ...] = Field(
        min_length=1, description="Vector store ids (`vs_...`) searched for every request."
    )
    top_k: PositiveInt = Field(
        6, le=50, description="Passages put into the prompt, best first, numbered [1]..[k]."
    )


class ModelAlias(BaseModel):
    """The routes that serve one model name, in order of preference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: tuple[Route, ...] = Field(
        description="Routes `UPSTREAM/MODEL` in order; a nested list is one tier."
    )
    overflow: tuple[Route, ...] = Field(
        (), description="Routes used only when the main routes are saturated."
    )
    spill_after: PositiveFloat | None = Field(
        None,
        description="Seconds a request may expect to wait for a cheaper tier before it spills "
        "to the next one (waiting requests over the tier's observed service rate); none: "
        "spill as soon as the cheaper tier has no free slot.",
    )
    hedge: HedgeSettings | None = Field(
        None, description="Hedge slow first tokens on the next route (off when unset)."
    )
    pii: PiiSettings = Field(
        default_factory=lambda: PiiSettings(),
        description="Mask personal data before it leaves for an upstream; restore it after.",
    )
    check_ads: bool = Field(
        False,
        description="Run the ad detector on every answer, as `x-nobusy-check: ads` asks.",
    )
    cache: CacheSettings = Field(
        default_factory=lambda: CacheSettings(),
        description="Answer identical requests from kept answers; serve them stale when no "
        "upstream can answer.",
    )
    knowledge: AliasKnowledge | None = Field(
        None, description="Ground answers in these vector stores' passages, with citations."
    )
    enabled: bool = Field(
        True, description="false: kept in the config, but neither served nor listed (404)."
    )


class Settings(BaseModel):
    """Everything nobusy is configured with. Frozen: build a new one to change anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind; non-loopback needs --insecure.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    workers: PositiveInt = Field(1, description="Number of server processes.")
    insecure: bool = Field(
        False, description="Allow binding a non-loopback address without API keys."
    )
    data_dir: Path = Field(Path("data"), description="Directory for every file nobusy writes.")
    managed_file: Path | None = Field(
        None,
        description="The overlay the console and the admin API write upstreams and aliases "
        "to, merged over the config file (default: nobusy.managed.yaml beside it, else in "
        "data_dir); shared by every replica that reads the same config.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level: debug, info, warning or error."
    )
    max_body_bytes: PositiveInt = Field(
        10 * 1024 * 1024, description="Largest request body accepted, chunked bodies included."
    )
    header_timeout: PositiveFloat = Field(
        10.0, description="Seconds a client may take to send its request headers."
    )
    body_timeout: PositiveFloat = Field(
        30.0, description="Longest pause, in seconds, while a client sends its request body."
    )
    body_deadline: PositiveFloat = Field(
        120.0, description="Seconds a client may take to send its whole request body (408)."
    )
    max_header_bytes: PositiveInt = Field(
        64 * 1024, description="Largest request line plus headers, in bytes (431 beyond)."
    )
    max_headers: PositiveInt = Field(100, description="Most request headers accepted (431).")
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Host names served besides IP addresses and localhost (`*`: any); "
        "a comma-separated list in NOBUSY_ALLOWED_HOSTS.",
    )
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Browser origins (`https://app.example`) allowed besides the console's "
        "own (`*`: any).",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="Proxy addresses whose X-Forwarded-For is believed (`*`: any); none "
        "by default.",
    )
    max_attempts: PositiveInt = Field(
        3, description="Upstream attempts per request at most, continuations included."
    )
    retry_budget: float = Field(
        0.1, ge=0, le=1, description="Failovers per upstream at most this share of its attempts."
    )
    retry_budget_min: int = Field(
        10, ge=0, description="Failovers per upstream always allowed within the window."
    )
    retry_window: PositiveFloat = Field(
        10.0, description="Seconds over which the retry and hedge budgets are counted."
    )
    initial_concurrency: PositiveInt = Field(
        32, description="Starting concurrency limit of an upstream before it adapts."
    )
    default_max_wait: PositiveFloat = Field(
        60.0, description="Seconds a request may wait in the queue unless it or its key says."
    )
    admin_key: SecretStr | None = Field(
        None,
        description=f"Bearer key for /v1/nobusy/*, at least {MIN_SECRET_LENGTH} characters; "
        "without it only loopback clients.",
    )
    readiness: Literal["routes", "process"] = Field(
        "routes",
        description="/readyz: routes: 503 when no route of any alias can answer; process: up.",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM or SIGINT: seconds running requests may take to finish, new "
        "ones refused (503) and /readyz 503, before the rest are cut and the process exits.",
    )
    responses_ttl: float = Field(
        30 * 86400.0,
        ge=0,
        description="Seconds a Responses API answer is kept (per key, in nobusy.db) for "
        "previous_response_id and GET /v1/responses/{id}; 0 keeps none.",
    )
    cache_entries: PositiveInt = Field(
        10_000,
        description="Response-cache entries each process keeps in memory (least recently used "
        "go first), in front of data_dir/cache.db or Redis (state).",
    )
    cache_memory_mb: PositiveInt = Field(
        64,
        description="Megabytes of response-cache entries each process keeps in memory at most "
        "(least recently used go first).",
    )
    crypto: Literal["gm", "standard"] = Field(
        "gm",
        description="gm: SM3, SM4-GCM, SM2 (国密); standard: SHA-256, AES-GCM, Ed25519.",
    )
    state: SecretStr | None = Field(
        None,
        description="Redis shared by every replica for key limits, upstream slots and circuits "
        "(`redis://[:PASSWORD@]HOST"
        "[:PORT][/DB]`, `rediss://` for TLS); none: this host only.",
    )
    replica_id: str | None = Field(
        None, description="This replica's name in logs and metrics (default: HOSTNAME-PID)."
    )
    on_state_failure: Literal["local", "refuse"] = Field(
        "local",
        description="When Redis does not answer: local: key limits divided among the replicas "
        "last seen; refuse: 503 for keys with limits.",
    )
    replicas_hint: PositiveInt = Field(
        1, description="Replicas to divide key limits by if Redis is down before any were seen."
    )
    lease_ttl: float = Field(
        5.0,
        gt=0.5,
        le=300,
        description="With state: seconds after a replica's last heartbeat (every 0.2 s) that "
        "its upstream slots still count; a replica killed holding slots frees them then.",
    )
    store: SecretStr | None = Field(
        None,
        description="PostgreSQL shared by every replica for keys, usage, audit and the "
        "knowledge base (needs pgvector) (`postgresql://USER:PASSWORD@HOST[:PORT]/DB`); "
        "none: SQLite in data_dir.",
    )
    audit: AuditSettings = Field(
        default_factory=lambda: AuditSettings(), description="The tamper-evident audit log."
    )
    console: ConsoleSettings = Field(
        default_factory=lambda: ConsoleSettings(),
        description="The operator console: sign-in sessions, the request log's content.",
    )
    guard: GuardSettings = Field(
        default_factory=GuardSettings, description="Sensitive-word lexicons and their actions."
    )
    knowledge: KnowledgeSettings = Field(
        default_factory=lambda: KnowledgeSettings(),
        description="The knowledge base: chunking, the embedding model, Chinese words.",
    )
    crosscheck: CrossCheckSettings = Field(
        default_factory=lambda: CrossCheckSettings(),
        description="Cross-checks of several answers and the ad detector.",
    )
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=dict, description="Model sources by name; see docs/configuration.md."
    )
    models: dict[str, ModelAlias] = Field(
        default_factory=dict, description="Model aliases clients ask for, each a list of routes."
    )
    pricing: PricingSettings = Field(
        default_factory=lambda: PricingSettings(),
        description="The currency spend is totalled and budgeted in, and exchange rates.",
    )

    @model_validator(mode="after")
    def _rates_for_prices(self) -> Settings:
        # A price in a currency with no rate into the reporting one could not be totalled.
        for name, upstream in self.upstreams.items():
            price = upstream.price
            if price is not None and self.pricing.rate(price.currency) is None:
                raise ValueError(
                    f"upstreams.{name}.price.currency is {price.currency}: set "
                    f"pricing.rates.{price.currency} (how many {self.pricing.currency} one "
                    f"{price.currency} is worth)"
                )
        return self

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key once matched an empty Authorization header: refuse it at start rather
        # than guess whether `NOBUSY_ADMIN_KEY=` or `${X:-}` meant "no key" or "forgot it".
        if value is not None:
            check_secret("admin_key", value.get_secret_value())
        return value

    @field_validator("state")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Said at load time, without echoing the value: it may hold a password.
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("store")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Said at load time, without echoing the value: it holds a password.
        if value is None:
            return value
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        try:
            urlsplit(url).port  # noqa: B018  # raises on a bad port or IPv6 address
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        return value

    @field_validator("allowed_hosts", "allowed_origins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # From NOBUSY_* variables these come as one comma-separated string.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


def _one_value(annotation: Any) -> bool:
    """Whether one value sets a field; nested settings (a model, a mapping) live in the file."""
    if get_origin(annotation) is dict:
        return False
    return not (isinstance(annotation, type) and issubclass(annotation, BaseModel))


# The top-level settings one value sets, in declaration order: each is also a NOBUSY_* variable
# and, secrets aside, a flag of `nobusy serve`.
SCALARS: tuple[str, ...] = tuple(
    name for name, field in Settings.model_fields.items() if _one_value(field.annotation)
)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MARK = re.compile(r"__nobusy_env_(\d+)__")


def read_config_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Parse the YAML file, then replace ``${NAME}`` / ``${NAME:-default}`` in its values.

    References are swapped for plain placeholder words before parsing, because the issue's
    own form (``{api_key: ${KEY}}``) is not valid YAML as written, and resolved after it, so a
    reference in a comment is ignored and a secret's characters cannot break the YAML.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    refs: list[tuple[str, str | None]] = []

    def mark(match: re.Match[str]) -> str:
        refs.append((match.group(1), match.group(2)))
        return f"__nobusy_env_{len(refs) - 1}__"

    try:
        data = yaml.safe_load(_ENV_REF.sub(mark, text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")

    def resolve(match: re.Match[str]) -> str:
        name, default = refs[int(match.group(1))]
        value = env.get(name)
        if value or (value is not None and default is None):
            return value
        if default is not None:  # as in the shell, `:-` also replaces an empty value
            return default
        raise ConfigError(f"environment variable {name} is referenced in the config but not set")

    result: dict[str, Any] = _map_strings(data, lambda s: _MARK.sub(resolve, s))
    return result


def read_overlay(path: Path, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The managed overlay's sections (``nobusy.overlay``); none while the file is absent."""
    return overlay.sections(read_config_file(path, env), path) if path.exists() else {}


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _env_settings(env: Mapping[str, str]) -> dict[str, str]:
    return {name: env[env_name(name)] for name in SCALARS if env_name(name) in env}


def _parse_upstreams(raw: Any) -> dict[str, UpstreamSettings]:
    if not isinstance(raw, dict):
        raise ConfigError("upstreams: must be a mapping of name to settings")
    out: dict[str, UpstreamSettings] = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"upstreams.{name}: must be a mapping with at least `kind`")
        kind = spec.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(
                f"upstreams.{name}.kind: required (for example `openai` or `embedded`)"
            )
        try:
            out[str(name)] = settings_class(kind).model_validate(spec)
        except KeyError as exc:
            raise ConfigError(f"upstreams.{name}.kind: {exc.args[0]}") from None
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=f"upstreams.{name}")) from None
    return out


def _parse_models(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ConfigError("models: must be a mapping of alias to a list of routes")
    out: dict[str, dict[str, Any]] = {}
    for alias, spec in raw.items():
        # The short form (a list) is the foundation's; the long form adds overflow routes.
        spec = {"routes": spec} if isinstance(spec, list | str) else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"models.{alias}: must be a list of routes or {{routes: [...]}}")
        parsed = dict(spec)
        for key in ("routes", "overflow"):
            value = parsed.get(key, [])
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list):
                raise ConfigError(
                    f"models.{alias}.{key}: must be a list of `UPSTREAM/MODEL` routes"
                )
            parsed[key] = tuple(_parse_tiers(value, f"models.{alias}.{key}"))
        out[str(alias)] = parsed
    return out


def _parse_tiers(items: list[Any], where: str) -> list[Route]:
    """Each item is a tier of its own; a nested list is one tier of several routes."""
    routes = []
    for tier, item in enumerate(items):
        for i, entry in enumerate(item if isinstance(item, list) else [item]):
            here = f"{where}[{tier}]" + (f"[{i}]" if isinstance(item, list) else "")
            routes.append(_parse_route(entry, tier, here))
    return routes


# What a route may say of its own model (nobusy.routing.capabilities).
_ROUTE_FLAGS = ("vision", "completions", "fim")


def _parse_route(entry: Any, tier: int, where: str) -> Route:
    if isinstance(entry, str) and entry:
        return Route.parse(entry, tier)
    if isinstance(entry, dict) and isinstance(entry.get("route"), str):
        weight = entry.get("weight", 1.0)
        flags = {k: v for k, v in entry.items() if k in _ROUTE_FLAGS}
        if (
            set(entry) - {"route", "weight", *_ROUTE_FLAGS}
            or not isinstance(weight, int | float)
            or weight <= 0
            or not all(isinstance(v, bool) for v in flags.values())
        ):
            raise ConfigError(
                f"{where}: a weighted route is {{route: UPSTREAM/MODEL, weight: N > 0}}, "
                "optionally with vision, completions, fim: true/false"
            )
        route = Route.parse(entry["route"], tier, float(weight))
        return dataclasses.replace(route, **flags) if flags else route
    raise ConfigError(f"{where}: must be `UPSTREAM/MODEL`, a list of them, or {{route, weight}}")


def _check_enabled_route(
    alias: str, spec: Mapping[str, Any], upstreams: Mapping[str, UpstreamSettings]
) -> None:
    """An enabled alias whose every upstream is disabled could answer nothing: say so."""
    names = {r.upstream for key in ("routes", "overflow") for r in spec.get(key, ())}
    if names and not any(upstreams[n].enabled for n in names):
        raise ConfigError(
            f"models.{alias}: every upstream of its routes is disabled "
            f"({', '.join(sorted(names))}); enable one, or disable the alias too"
        )


ENCRYPTED_PREFIX = "enc:"
# Authenticated as config values: a token lifted from the audit log will not decrypt here.
CONFIG_AAD = b"nobusy-config"


def _has_encrypted(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(ENCRYPTED_PREFIX)
    if isinstance(value, dict):
        return any(_has_encrypted(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_encrypted(v) for v in value)
    return False


def _decrypt_values(merged: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Values written ``enc:...`` (``nobusy secret encrypt``) are decrypted with the data key,
    so upstream API keys can sit in the YAML file encrypted (SM4-GCM under ``crypto: gm``)."""
    import base64

    from nobusy.crypto import CryptoError, load_suite

    crypto = str(merged.get("crypto", "gm"))
    data_dir = Path(str(merged.get("data_dir", "data")))
    try:
        suite = load_suite(crypto, data_dir, env, create_key=False)  # type: ignore[arg-type]
    except CryptoError as exc:
        raise ConfigError(f"cannot decrypt enc: values: {exc}") from None

    def decrypt(text: str) -> str:
        if not text.startswith(ENCRYPTED_PREFIX):
            return text
        try:
            token = base64.b64decode(text[len(ENCRYPTED_PREFIX) :], validate=True)
            return suite.decrypt(token, CONFIG_AAD).decode("utf-8")
        except (ValueError, CryptoError) as exc:
            raise ConfigError(f"an enc: value does not decrypt with this data key: {exc}") from None

    result: dict[str, Any] = _map_strings(merged, decrypt)
    return result


def _check_data_key(given: str, merged: dict[str, Any]) -> None:
    # At start, with the other settings, rather than at the first encryption.
    from nobusy.crypto import CryptoError, check_data_key

    crypto = merged.get("crypto", "gm")
    try:
        check_data_key(given, crypto if crypto in ("gm", "standard") else "gm")
    except CryptoError as exc:
        raise ConfigError(str(exc)) from None


def _anchor_lexicons(guard: dict[str, Any], base: Path) -> None:
    # Lexicon paths in a config file are relative to that file, not to the working directory.
    for lexicon in guard.get("lexicons") or ():
        if isinstance(lexicon, dict) and isinstance(lexicon.get("path"), str):
            if not Path(lexicon["path"]).is_absolute():
                lexicon["path"] = str(base / lexicon["path"])


def _describe(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _check_top_level(raw: Mapping[str, Any], path: object) -> None:
    """Refuse unknown top-level keys first, with a suggestion: a misspelt ``upstream:`` would
    otherwise surface later as a route naming an undefined upstream."""
    import difflib

    known = list(Settings.model_fields)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = (
                f" (did you mean '{close[0]}'?)" if close else f"; the keys are {', '.join(known)}"
            )
            raise ConfigError(f"{path}: unknown top-level key '{key}'{hint}")


def load_settings(
    config_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    managed: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from defaults < config file < managed overlay < ``NOBUSY_*`` env <
    ``overrides`` (CLI flags).

    The config file is ``config_file``, else ``$NOBUSY_CONFIG``, else none; the overlay
    (``nobusy.overlay``) is read from ``managed_file`` unless ``managed`` gives its contents
    (an edit checked before it is written). With no upstreams configured, nobusy serves the
    embedded model alone as alias ``local``.
    """
    env = os.environ if env is None else env
    path = config_file or env.get("NOBUSY_CONFIG")
    merged: dict[str, Any] = read_config_file(Path(path), env) if path else {}
    _check_top_level(merged, path)
    merged.update(_env_settings(env))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    managed_path = overlay.overlay_path(path, merged)
    overlay.merge_overlay(merged, read_overlay(managed_path, env) if managed is None else managed)
    merged["managed_file"] = managed_path

    if "NOBUSY_SECRET_KEY" in env:
        _check_data_key(env["NOBUSY_SECRET_KEY"], merged)
    if _has_encrypted(merged):
        merged = _decrypt_values(merged, env)
    if path and isinstance(merged.get("guard"), dict):
        _anchor_lexicons(merged["guard"], Path(path).resolve().parent)
    upstreams = _parse_upstreams(merged.pop("upstreams", None) or {})
    models = _parse_models(merged.pop("models", None) or {})
    if not upstreams:
        upstreams = {DEFAULT_ALIAS: settings_class("embedded").model_validate({"kind": "embedded"})}
    if not models:
        # No aliases: each upstream that has a default model is served under its own name.
        models = {
            name: {"routes": (Route(name, None),)}
            for name, spec in upstreams.items()
            if spec.has_default_model()
        }
        if not models:
            raise ConfigError("models: no aliases configured, and no upstream has a default model")
    for alias, spec in models.items():
        for key in ("routes", "overflow"):
            for i, route in enumerate(spec.get(key, ())):
                if route.upstream not in upstreams:
                    known = ", ".join(sorted(upstreams))
                    raise ConfigError(
                        f"models.{alias}.{key}[{i}]: upstream '{route.upstream}' is not defined "
                        f"under upstreams (defined: {known})"
                    )
                if route.model is None and not upstreams[route.upstream].has_default_model():
                    raise ConfigError(
                        f"models.{alias}.{key}[{i}]: upstream '{route.upstream}' has no "
                        f"default_model; write the route as {route.upstream}/MODEL"
                    )
        if not spec.get("routes"):
            raise ConfigError(f"models.{alias}.routes: needs at least one route")
        if spec.get("enabled", True) is not False:
            _check_enabled_route(alias, spec, upstreams)
    try:
        return Settings.model_validate({**merged, "upstreams": upstreams, "models": models})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
