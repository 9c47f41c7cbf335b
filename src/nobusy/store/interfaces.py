"""What the request path needs from storage: small protocols a backend implements.

Today's backends are SQLite files in the data dir and a memory-mapped file on one host, Redis
and PostgreSQL for several hosts: modules implementing the same protocols, chosen at start-up
(``nobusy.state``, ``nobusy.store.backends``); nothing on the request path names a backend.

- ``KeyLookup``: ``store.keys.KeyStore`` (SQLite, cached in memory),
  ``store.pg_keys.PgKeyStore`` (PostgreSQL, cached in memory, refreshed by a task).
- ``LimitCounters``: ``admission.limits.KeyLimits`` (one process),
  ``store.limits.SharedKeyLimits`` (SQLite, the worker processes of one host),
  ``store.redis_limits.RedisKeyLimits`` (Redis, every replica, the token quota's reservations
  too; ``done`` reconciles in a task).
- ``Leases``: ``admission.shared.SharedSlots`` (a memory-mapped file under flock, one host;
  decided in microseconds, so taken synchronously where a slot is handed over).
- ``FleetLeases``: ``store.redis_leases.RedisLeases`` (Redis, every replica): the same slots
  over the network, so ``take`` is async (one round trip, which also carries the slots given
  back and the limit's changes); ``give_back`` and ``adjust`` never wait; the learned limit
  is the fleet's. A separate protocol, not an async ``Leases``: the one-host file needs no
  round trip, and making it async would move every hand-over of a freed slot into a task.
- ``MoneyHolder``: ``store.money_holds.MoneyHolds`` (SQLite, one host),
  ``store.pg_money_holds.PgMoneyHolds`` (PostgreSQL, every replica),
  ``store.redis_money_holds.RedisMoneyHolds`` (Redis decides, the key database keeps the spend).
- ``UsageSink``: ``store.usage.UsageLog`` (SQLite, one writer thread),
  ``store.pg_usage.PgUsageLog`` (PostgreSQL, spilling to a local file while it is down).
- ``AuditSink``: ``store.audit.AuditLog`` (SQLite, hash-chained, one writer thread),
  ``store.pg_audit.PgAuditLog`` (PostgreSQL, one chain for every replica).
- ``CacheStore``: ``store.response_cache.SqliteCache`` (SQLite, the processes of one host),
  ``store.redis_cache.RedisCache`` (Redis, every replica); behind ``cache.ResponseCache``'s
  memory. A store that fails answers "not kept": the cache never fails a request.
- ``ResponsesStore``: ``store.responses.ResponseStore`` (SQLite, this host),
  ``store.pg_responses.PgResponseStore`` (PostgreSQL, every replica).
- ``FileBytes``: ``store.blobs.Blobs`` (files in the data dir, this host),
  ``store.pg_knowledge.PgBlobs`` (PostgreSQL, every replica). The knowledge base's records
  are ``store.knowledge.KnowledgeStore`` and its subclass ``store.pg_knowledge.PgKnowledgeStore``.
- ``ChunkIndex``: ``knowledge.index.Index`` (one SQLite file, this host),
  ``knowledge.pg_index.PgIndex`` (PostgreSQL with pgvector, every replica).

Each backend is checked against its protocol by mypy (``_backends`` below).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from nobusy.keys import Key
from nobusy.store.usage import UsageRecord

__all__ = [
    "AuditSink",
    "CacheStore",
    "ChunkIndex",
    "FileBytes",
    "FleetLeases",
    "KeyLookup",
    "Leases",
    "LimitCounters",
    "MoneyHolder",
    "ResponsesStore",
    "UsageSink",
]


class KeyLookup(Protocol):
    """Who a presented API key is, and the spending of its quota (every request)."""

    def authenticate(self, secret: str) -> Key:
        """The active key whose hash matches ``secret``; raises InvalidApiKey, KeyRevoked or
        KeyExpired."""
        ...

    def any_keys(self) -> bool:
        """Whether any key exists (revoked ones too): from then on every request needs one."""
        ...

    def charge(self, key_id: str, tokens: int, cost_micros: int = 0) -> Key:
        """Take ``tokens`` off the key's balance and add ``cost_micros`` to its spend in the
        budget's period; StorageUnavailable leaves it for a retry."""
        ...

    def close(self) -> None: ...


class LimitCounters(Protocol):
    """Each key's requests and tokens per minute and requests in flight, admitted atomically."""

    async def admit(self, key: Key, alias: str, estimate: int) -> None:
        """Count the request in, or raise the error naming the limit it hits."""
        ...

    def done(self, key_id: str, estimate: int, actual: int) -> None:
        """The request ended: free its concurrency slot, replace the estimate by its usage."""
        ...

    def close(self) -> None: ...


class Leases(Protocol):
    """Concurrency slots on upstreams held by every process together, under ceilings."""

    @property
    def ceilings(self) -> Mapping[str, int]:
        """The upstreams counted, and the slots all processes together may hold on each."""
        ...

    def take(self, upstream: str) -> bool:
        """One more slot on ``upstream`` for this process, if the total is below its ceiling."""
        ...

    def give_back(self, upstream: str) -> None: ...

    def held(self, upstream: str) -> int:
        """Slots on ``upstream`` held by every process together."""
        ...

    def close(self) -> None:
        """Give back this process's slots."""
        ...


class FleetLeases(Protocol):
    """Slots on upstreams held by every replica together, under a limit they share."""

    ceilings: dict[str, int]  # the upstreams counted, and each one's ceiling
    limit: dict[str, float]  # the fleet's learned limit of each, as last seen
    epoch: dict[str, int]  # its decreases so far (a refusal sent before one is old news)

    window: dict[str, tuple[int, int]]  # requests and tokens in each rpm/tpm window, last seen

    async def take(
        self,
        upstream: str,
        who: str = "",
        peak: int = 0,
        light: Collection[str] = (),
        tokens: int = 0,
        turn: tuple[float, float | None] | None = None,
        need: int | None = None,
    ) -> bool:
        """One more slot for ``who`` if all replicas hold fewer than the limit, less ``peak``
        slots kept for the ``light`` keys (less what they hold now), the upstream's rpm/tpm
        window has room for ``need`` tokens (by default ``tokens``, counted in it), and
        (``turn``: the place of this replica's first waiter of ``who``, and of the next one
        once this take succeeds) no replica has an earlier one of ``who``."""
        ...

    def first(self, upstream: str) -> bool:
        """Whether this replica's first waiter (of the key last taken for) was the fleet's."""
        ...

    def correct(self, upstream: str, tokens: int) -> None:
        """Add ``tokens`` (an attempt's usage less its estimate) to the window, without
        waiting."""
        ...

    def resting(self, upstream: str) -> float:
        """Seconds before a take is worth a round trip (the window was full lately)."""
        ...

    def window_wait(self, upstream: str) -> float:
        """Seconds until the window, full when last seen, has room again."""
        ...

    def give_back(self, upstream: str, who: str = "") -> None:
        """Free one of this replica's slots, without waiting for the backend."""
        ...

    def adjust(self, upstream: str, kind: str, a: float, b: float = 0.0) -> None:
        """Change the shared limit (``add``, ``drop``, ``scale``), without waiting."""
        ...

    def held(self, upstream: str) -> int:
        """Slots on ``upstream`` held by every replica together, as last seen."""
        ...

    async def aclose(self) -> None:
        """Give back this replica's slots at once."""
        ...


class MoneyHolder(Protocol):
    """Money held against budgets by requests in flight, settled to their cost."""

    async def reserve(self, key: Key, micros: int) -> Hold:
        """Hold ``micros`` against the key's budget and its group's, or raise
        BudgetExhausted naming the one without room."""
        ...

    def settle(self, hold: Hold, cost: int) -> None:
        """Replace ``hold`` by the request's real ``cost``, without waiting."""
        ...

    def close(self) -> None: ...


class UsageSink(Protocol):
    """Where usage records go: queued without waiting, committed soon, safe once committed."""

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks the event loop for long, drops when it must."""
        ...

    async def committed(self, request_id: str) -> None:
        """Return once the record of ``request_id`` is durable (or given up, or never made)."""
        ...

    def flush(self, timeout: float = 10.0) -> bool: ...

    def close(self, timeout: float = 10.0) -> None: ...


class AuditSink(Protocol):
    """Where audit events go: appended in order to a tamper-evident log."""

    def append(
        self,
        event: str,
        request_id: str,
        content: Any = None,
        *,
        key_id: str | None = None,
        alias: str | None = None,
        upstream: str | None = None,
    ) -> bool:
        """Queue one event; False when it was dropped."""
        ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


class CacheStore(Protocol):
    """Kept answers shared by processes: bytes by key, expiring; never raises."""

    async def get(self, key: str) -> bytes | None:
        """The entry kept under ``key``, or None (none, expired, or the store is away)."""
        ...

    def put(self, key: str, value: bytes, keep: float) -> None:
        """Keep ``value`` for ``keep`` seconds, in the background (dropped if it fails)."""
        ...

    async def aclose(self) -> None: ...


class ResponsesStore(Protocol):
    """The Responses API's kept responses, per key and expiring."""

    def put(
        self, response_id: str, key_id: str | None, items: list[Any], response: dict[str, Any]
    ) -> None: ...

    def items(self, response_id: str, key_id: str | None) -> list[Any] | None: ...

    def response(self, response_id: str, key_id: str | None) -> dict[str, Any] | None: ...

    def delete(self, response_id: str, key_id: str | None) -> bool: ...

    def close(self) -> None: ...


class FileBytes(Protocol):
    """Uploaded files' bytes by file id."""

    def write(self, file_id: str, source: BinaryIO) -> tuple[int, str]:
        """Store ``source`` under ``file_id``; its size and SHA-256."""
        ...

    def read(self, file_id: str) -> bytes:
        """The bytes; FileNotFoundError when there are none."""
        ...

    def delete(self, file_id: str) -> None: ...


class ChunkIndex(Protocol):
    """A knowledge base's chunks of one embedding model, searched by words and vectors."""

    embedder_name: str

    def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        attributes: Mapping[str, object],
    ) -> int: ...

    def set_attributes(
        self, store_id: str, file_id: str, attributes: Mapping[str, object]
    ) -> None: ...

    def known(self, store_id: str, chunks: Sequence[Chunk]) -> list[bool]: ...

    def store_embedder(self, store_id: str) -> str | None: ...

    def remove_file(self, store_id: str, file_id: str) -> int: ...

    def remove_store(self, store_id: str) -> None: ...

    def count(self, store_id: str) -> int: ...

    def search(
        self,
        store_ids: Sequence[str],
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        k: int,
        filters: Mapping[str, object] | None = None,
        score_threshold: float = 0.0,
        mode: str = "hybrid",
        diversity: float = 0.0,
        candidates: int = 50,
    ) -> list[Hit]: ...

    def close(self) -> None: ...


if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from nobusy.admission.limits import KeyLimits
    from nobusy.admission.shared import SharedSlots
    from nobusy.knowledge.chunking import Chunk
    from nobusy.knowledge.index import Hit, Index
    from nobusy.knowledge.pg_index import PgIndex
    from nobusy.store.audit import AuditLog
    from nobusy.store.blobs import Blobs
    from nobusy.store.keys import KeyStore
    from nobusy.store.limits import SharedKeyLimits
    from nobusy.store.money_holds import Hold, MoneyHolds
    from nobusy.store.pg_audit import PgAuditLog
    from nobusy.store.pg_keys import PgKeyStore
    from nobusy.store.pg_knowledge import PgBlobs
    from nobusy.store.pg_money_holds import PgMoneyHolds
    from nobusy.store.pg_responses import PgResponseStore
    from nobusy.store.pg_usage import PgUsageLog
    from nobusy.store.redis_cache import RedisCache
    from nobusy.store.redis_leases import RedisLeases
    from nobusy.store.redis_limits import RedisKeyLimits
    from nobusy.store.redis_money_holds import RedisMoneyHolds
    from nobusy.store.response_cache import SqliteCache
    from nobusy.store.responses import ResponseStore
    from nobusy.store.usage import UsageLog

    def _backends(
        keys: KeyStore,
        limits: KeyLimits,
        shared_limits: SharedKeyLimits,
        redis_limits: RedisKeyLimits,
        slots: SharedSlots,
        leases: RedisLeases,
        usage: UsageLog,
        audit: AuditLog,
        pg_keys: PgKeyStore,
        pg_usage: PgUsageLog,
        pg_audit: PgAuditLog,
        responses: ResponseStore,
        pg_responses: PgResponseStore,
        sqlite_cache: SqliteCache,
        redis_cache: RedisCache,
        holds: MoneyHolds,
        pg_holds: PgMoneyHolds,
        redis_holds: RedisMoneyHolds,
        blobs: Blobs,
        pg_blobs: PgBlobs,
        index: Index,
        pg_index: PgIndex,
    ) -> None:
        """Never called: mypy checks that each of today's backends satisfies its protocol."""
        _keys: KeyLookup = keys
        _limits: LimitCounters = limits
        _shared_limits: LimitCounters = shared_limits
        _redis_limits: LimitCounters = redis_limits
        _slots: Leases = slots
        _leases: FleetLeases = leases
        _usage: UsageSink = usage
        _audit: AuditSink = audit
        _pg_keys: KeyLookup = pg_keys
        _pg_usage: UsageSink = pg_usage
        _pg_audit: AuditSink = pg_audit
        _responses: ResponsesStore = responses
        _pg_responses: ResponsesStore = pg_responses
        _sqlite_cache: CacheStore = sqlite_cache
        _redis_cache: CacheStore = redis_cache
        _holds: MoneyHolder = holds
        _pg_holds: MoneyHolder = pg_holds
        _redis_holds: MoneyHolder = redis_holds
        _blobs: FileBytes = blobs
        _pg_blobs: FileBytes = pg_blobs
        _index: ChunkIndex = index
        _pg_index: ChunkIndex = pg_index
