"""Circuit verdicts told to every replica through Redis pub/sub, within milliseconds.

When one replica's circuit of an upstream opens (an ejection, or a ``Retry-After`` pause) or
closes, a Lua script stores the verdict in ``nobusy:circuits`` (its end on Redis's clock) and
publishes it on ``nobusy:signals`` in the same round trip, from a task: the request that met
the failure does not wait. Every replica listens on the channel (redis-py's asyncio PubSub, no
polling) and applies the others' verdicts to its own circuits; a replica starting, or
reconnecting after Redis was away, first reads the verdicts still in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from nobusy.store.redis_client import ERRORS, LUA_CLOCK, Script, bounded, connect, redact, scrub

__all__ = ["CHANNEL", "RedisSignals", "Verdict"]

CHANNEL = "nobusy:signals"
CIRCUITS = "nobusy:circuits"
_RETRY = 0.5  # seconds between attempts to listen again after Redis failed

log = logging.getLogger("nobusy.state")

# (upstream, "open" or "close", seconds it stays open, reason, ejections so far)
Verdict = tuple[str, str, float, str, int]

# KEYS: circuits. ARGV: channel, member, upstream, event, seconds, reason, ejections.
_TELL = (
    LUA_CLOCK
    + """
if ARGV[4] == 'open' then
  local entry = cjson.encode({until_ = now + tonumber(ARGV[5]), reason = ARGV[6],
    ejections = tonumber(ARGV[7])})
  redis.call('HSET', KEYS[1], ARGV[3], entry)
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', ARGV[1], cjson.encode({from = ARGV[2], upstream = ARGV[3],
  event = ARGV[4], seconds = tonumber(ARGV[5]), reason = ARGV[6],
  ejections = tonumber(ARGV[7])}))
"""
)

# KEYS: circuits. Returns Redis's time now, then the (upstream, entry) pairs.
_READ = """
local t = redis.call('TIME')
local out = {string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
return out
"""


class RedisSignals:
    """Publishes this replica's circuit verdicts and hands the others' to ``apply``."""

    def __init__(self, url: str, member: str, apply: Callable[[Verdict], None]) -> None:
        self.url, self.shown, self.member = url, redact(url), member
        self.apply = apply
        self.listening = False
        self._redis = connect(url)
        self._tell = Script(self._redis, _TELL)
        self._read = Script(self._redis, _READ)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Listen, then read the verdicts in force (in that order: none falls in between)."""
        self._listener = asyncio.create_task(self._listen(), name="nobusy-signals")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 2.0)

    def tell(self, verdict: Verdict) -> None:
        """Publish one of this replica's verdicts, without waiting for Redis."""
        task = asyncio.get_running_loop().create_task(self._publish(verdict))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, verdict: Verdict) -> None:
        upstream, event, seconds, reason, ejections = verdict
        args: list[str | float] = [
            CHANNEL,
            self.member,
            upstream,
            event,
            seconds,
            reason,
            ejections,
        ]
        try:
            await self._tell(keys=[CIRCUITS], args=args)
        except ERRORS as exc:
            # The others find out for themselves: the upstream fails them too.
            log.debug("circuit of %s not told to the other replicas: %s", upstream, exc)

    async def _in_force(self) -> None:
        answer = await self._read(keys=[CIRCUITS])
        now = float(answer[0])
        for i in range(1, len(answer) - 1, 2):
            upstream, entry = _text(answer[i]), json.loads(answer[i + 1])
            left = float(entry["until_"]) - now
            if left > 0:
                self.apply((upstream, "open", left, entry["reason"], int(entry["ejections"])))

    async def _listen(self) -> None:
        """Subscribe, read what is in force, apply each message; after a failure, again."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await bounded(pubsub.subscribe(CHANNEL))
                await self._in_force()
                self._listening(True)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._received(message["data"])
            except ERRORS as exc:
                self._listening(False, exc)
            finally:
                with contextlib.suppress(*ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(_RETRY)

    def _received(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            if message["from"] == self.member:
                return
            verdict = (str(message["upstream"]), str(message["event"]), float(message["seconds"]))
            self.apply((*verdict, str(message["reason"]), int(message["ejections"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed message on %s: %s", CHANNEL, exc)

    def _listening(self, now: bool, exc: BaseException | None = None) -> None:
        self._subscribed.set()
        if now == self.listening:
            return
        self.listening = now
        if now:
            log.info("circuits shared through %s", self.shown)
        else:
            reason = scrub(str(exc) or type(exc).__name__, self.url)
            log.warning(
                "Redis at %s does not answer (%s): circuits are this replica's own until it "
                "answers again",
                self.shown,
                reason,
            )

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
