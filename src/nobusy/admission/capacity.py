"""Slots on upstreams for the router: take one now, overflow, or wait in the fair queue.

Every attempt holds a slot on its upstream for as long as it runs; the number of slots is the
upstream's adaptive limit. A freed slot goes straight to the next waiter that can use it, so
the queue drains at the speed the upstreams really answer, and nobody pushes an upstream past
the limit it has shown.

Within a priority class, a key asking for more than its max-min fair share (a *heavy* key,
``fairness.py``) takes a slot only while the slots left free still cover what the light keys
of the class needed at their busiest lately: no request is pre-empted once running, so free
slots are what keep a flooding key from making the others wait at all. Across classes there
is no such reserve: higher classes are simply served first.

With ``state`` set, slots are leases in Redis (``store.redis_leases``, taken by ``take``) and
the limit is the fleet's; each replica keeps its own queue, served by ``pump`` as leases free
up anywhere. Who is heavy is decided on the fleet's numbers (``others``, ``routing.reports``),
and a heavy key's take asks Redis to leave the light keys' reserve free across the fleet. A
key's requests are served in the order they came across the fleet: each take tells Redis the
place of this replica's first waiter of the key (``queue.place``), and Redis refuses it while
another replica has an earlier one (else a replica that frees a slot would take it straight
back for its own queue, and another replica's waiters would wait for ever).

An upstream's ``rpm`` and ``tpm`` (``rates.py``) are one more condition of a slot: none is
taken on an upstream whose window has no room for the request's estimated tokens (with leases,
Redis decides both in the take's one round trip). Windows free up with time, not with answers:
waiters are offered them again by their tickets each second, and by the pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping

from nobusy.admission.adaptive import AIMDLimit, Load
from nobusy.admission.fairness import Fairness
from nobusy.admission.queue import PRIORITIES, FairQueue, Waiter, place
from nobusy.admission.rates import Rates, UpstreamRates
from nobusy.admission.shared import SharedSlots
from nobusy.errors import QueueFull, QueueTimeout
from nobusy.store.interfaces import FleetLeases

__all__ = ["Capacity", "Ticket"]

_ALPHA = 0.2  # smoothing of each upstream's answer time, for wait estimates
_ACTIVE = 5.0  # seconds since a key's last request during which it counts as active
# A new waiter is refused when its estimate, padded by _MARGIN, exceeds its patience; a waiter
# already queued only once the estimate exceeds what is left of it by _HOPELESS (and a second).
_MARGIN = 1.03
_HOPELESS = 1.15
_RATE_WINDOW = 10.0  # seconds of grants that measure how fast the queue drains
_MIN_SPAN = 1.0  # below this much backlog, Little's law over the limits is the better guess
_MIN_GRANTS = 5
_PUMP_EVERY = 0.02  # seconds: how soon a slot another worker freed reaches this one's queue
_NEED = 2.0  # what a take needs in a tpm window: this many times an answer's usage lately
_PUMP_FIRST = 0.005  # ... when this replica's first waiter is the fleet's


class Capacity:
    """Per-upstream adaptive limits and the one queue of requests waiting for any of them."""

    def __init__(
        self,
        max_concurrency: Mapping[str, int | None],
        initial: int = 32,
        clock: Callable[[], float] = time.monotonic,
        rates: Mapping[str, Rates] | None = None,
    ) -> None:
        self.clock = clock
        self.rates = UpstreamRates(rates or {}, clock)  # upstreams' rpm and tpm, here
        self.fair = Fairness(clock)
        self.limits = {
            name: AIMDLimit.for_upstream(ceiling, initial)
            for name, ceiling in max_concurrency.items()
        }
        self.queue = FairQueue(clock)
        self.service: dict[str, float] = dict.fromkeys(max_concurrency, 1.0)
        self._held: dict[str, dict[str, int]] = {name: {} for name in max_concurrency}
        self._seen: dict[str, tuple[float, str]] = {}  # key -> (last request, priority)
        # (time, priority index) of every slot handed out lately, oldest first.
        self._grants: dict[str, deque[tuple[float, int]]] = {
            name: deque() for name in max_concurrency
        }
        # When answers ended well lately: how fast an upstream really drains its slots.
        self._answered: dict[str, deque[float]] = {name: deque() for name in max_concurrency}
        self.shared: SharedSlots | None = None
        self._used: dict[str, float] = {}  # tokens an answer used lately, by upstream
        self.leases: FleetLeases | None = None  # with ``state``: leases in Redis
        self._wake = asyncio.Event()  # a lease was given back: the pump tries at once
        # The other replicas' active keys: key -> (priority, requests waiting there), and
        # upstream -> key -> slots they hold there (``routing.reports``).
        self.others: dict[str, tuple[str, int]] = {}
        self.others_held: dict[str, dict[str, int]] = {}
        # Seconds until an upstream may be sent anything (its circuit is open, or a probe is
        # out): the router's view. Slots on it are not handed to waiters meanwhile.
        self.pause: Callable[[str], float] = lambda _: 0.0

    def adopt(
        self, name: str, ceiling: int | None, rates: Rates = (None, None), initial: int = 32
    ) -> None:
        """Slots for an upstream added by a reload, or new ceilings for one redefined (its
        slots in use and what its limit learned stay: attempts running release them here)."""
        fresh = AIMDLimit.for_upstream(ceiling, initial)
        fresh.name = name
        limit = self.limits.setdefault(name, fresh)
        if limit is not fresh:
            limit.ceiling = fresh.ceiling
            limit.limit = min(limit.limit, fresh.ceiling)
        self.rates.adopt(name, rates)
        self.service.setdefault(name, 1.0)
        self._held.setdefault(name, {})
        self._grants.setdefault(name, deque())
        self._answered.setdefault(name, deque())

    def forget(self, name: str) -> None:
        """Drop a removed upstream's slots, once no attempt holds one."""
        self.limits.pop(name, None)
        self.service.pop(name, None)
        self._held.pop(name, None)
        self._grants.pop(name, None)
        self._answered.pop(name, None)
        self._used.pop(name, None)
        self.rates.adopt(name, (None, None))

    def share(self, shared: SharedSlots) -> None:
        """Count slots on ``shared.ceilings``' upstreams with the other worker processes."""
        self.shared = shared

    def lease(self, leases: FleetLeases) -> None:
        """Take every slot as a lease from ``leases``, under the fleet's shared limit."""
        self.leases = leases
        for name, limit in self.limits.items():
            limit.limit = leases.limit[name]

    async def pump(self) -> None:
        """With shared ceilings: hand slots freed by other workers (or replicas) to this one's
        waiters."""
        while True:
            if self.leases is None:
                await asyncio.sleep(_PUMP_EVERY)
                if self.shared is not None and self.queue.size:
                    self.dispatch(self.shared.ceilings)
                continue
            # This replica's first waiter is the fleet's: the next slot freed anywhere is its,
            # and asking soon is what keeps that slot from idling.
            first = self.queue.size and any(self.leases.first(u) for u in self.leases.ceilings)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _PUMP_FIRST if first else _PUMP_EVERY)
            self._wake.clear()
            for upstream in self.leases.ceilings:
                if self.queue.size:
                    await self._serve(upstream, self.leases)

    async def _serve(self, upstream: str, leases: FleetLeases) -> None:
        """Hand leases on ``upstream`` to waiters: light keys first, a heavy key while the
        light keys' reserve stays free in the fleet."""
        limit = self.limits[upstream]
        while self.queue.size and limit.has_room() and self.pause(upstream) <= 0:
            if leases.resting(upstream) > 0:
                return  # its window was full a moment ago: no round trip until it may not be
            waiter = self.queue.pop_for(upstream, lambda k: not self._reserve(upstream, k)[0])
            waiter = waiter or self.queue.pop_for(upstream)
            if waiter is None:
                return
            who = waiter.key
            peak, light = self._reserve(upstream, who)
            after = self.queue.first(who)
            turn = (waiter.place if after is None else min(waiter.place, after), after)
            need = self._need(upstream, waiter.tokens)
            taken = await leases.take(upstream, who, peak, light, waiter.tokens, turn, need)
            self._follow(upstream)
            if waiter.future.done():  # it left while Redis was asked
                if taken:
                    leases.give_back(upstream, who)
                continue
            if not taken:
                self.queue.push(waiter, front=True)
                return
            self._grant(upstream, waiter.key, waiter.priority)
            waiter.future.set_result(upstream)

    async def take(self, upstream: str, who: str = "", tokens: int = 0) -> bool:
        """``try_take``, as a lease from the fleet's when ``state`` is set (one round trip)."""
        leases = self.leases
        if leases is None or upstream not in leases.ceilings:
            return self.try_take(upstream, who, tokens)
        if not self.limits[upstream].has_room() or leases.resting(upstream) > 0:
            return False
        if self.queue.first(who) is not None:
            self._wake.set()  # its key's waiters here come first: the pump serves them
            return False
        peak, light = self._reserve(upstream, who)
        # A request arriving now comes after its key's requests waiting in the fleet.
        turn = (place(self._priority(who), time.time()), None)
        need = self._need(upstream, tokens)
        taken = await leases.take(upstream, who, peak, light, tokens, turn, need)
        self._follow(upstream)
        if taken:
            self._grant(upstream, who, self._priority(who))
        return taken

    def _need(self, upstream: str, tokens: int) -> int:
        """The room a take needs in ``upstream``'s tpm window: the request's estimate, or
        twice what its answers used lately when that is less. An estimate without the
        client's ``max_tokens`` allows 256 answer tokens: the window would refuse the last
        requests of a minute that had room for what they really use (1.3% of a 20,000 tpm
        left unused, measured). The estimate is still what is counted, until the answer."""
        used = self._used.get(upstream)
        return tokens if used is None else min(tokens, math.ceil(_NEED * used))

    def _follow(self, upstream: str) -> None:
        """The fleet's limit and load, as Redis last said, become this replica's view."""
        assert self.leases is not None
        limit = self.limits[upstream]
        limit.limit = self.leases.limit[upstream]
        limit.epoch = self.leases.epoch[upstream]
        limit.fleet = self.leases.held(upstream)

    def _reserve(self, upstream: str, who: str) -> tuple[int, frozenset[str]]:
        """What a take by ``who`` must leave free in the fleet: when ``who`` is heavy, the
        light keys' recent peak less what they hold (Redis counts that exactly), else none."""
        light: frozenset[str] = frozenset()
        if not who:
            return 0, light
        peers = self._peers(who)
        if not peers:
            return 0, light
        light, _, peak = self._light(upstream, who, peers)
        return (0, frozenset()) if who in light else (peak, light)

    def _shared_take(self, upstream: str) -> bool:
        shared = self.shared
        return shared is None or upstream not in shared.ceilings or shared.take(upstream)

    def _shared_give_back(self, upstream: str) -> None:
        shared = self.shared
        if shared is not None and upstream in shared.ceilings:
            shared.give_back(upstream)

    # --- who is asking ---------------------------------------------------------------------

    def note(self, who: str, priority: str = "normal", arrival: bool = True) -> None:
        """``who`` (a key, or a client address) is asking now, in class ``priority``;
        ``arrival``: this is a new request (its rate makes a key's demand)."""
        if not who:
            return
        now = self.clock()
        self._seen[who] = (now, priority)
        if arrival:
            self.fair.arrived(who)
        if len(self._seen) > 4096:  # forget keys idle for long; bounded memory
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < _ACTIVE}
            self.fair.forget(self._seen)

    def active(self) -> list[tuple[str, str]]:
        """The keys (with their class) that asked this replica for something lately."""
        now = self.clock()
        return [(k, p) for k, (t, p) in self._seen.items() if now - t < _ACTIVE]

    def holding(self) -> dict[str, dict[str, int]]:
        """Slots this replica holds on each upstream, by key."""
        return {name: dict(held) for name, held in self._held.items()}

    def _priority(self, who: str) -> str:
        seen = self._seen.get(who)
        if seen is not None:
            return seen[1]
        other = self.others.get(who)
        return other[0] if other is not None else "normal"

    def _peers(self, who: str) -> list[str]:
        """Other keys of ``who``'s class that asked for something lately."""
        seen = self._seen.get(who)
        if seen is None:
            return []
        now, priority = self.clock(), seen[1]
        peers = [
            k
            for k, (t, p) in self._seen.items()
            if k != who and p == priority and now - t < _ACTIVE
        ]
        if self.others:  # with state: the keys active on the other replicas too
            mine = set(peers)
            peers += [
                k
                for k, (p, _) in self.others.items()
                if k != who and p == priority and k not in mine
            ]
        return peers

    def _light(self, upstream: str, who: str, peers: list[str]) -> tuple[frozenset[str], int, int]:
        """The light keys of ``who``'s class on ``upstream``, the slots they hold there now,
        and the most they held and wanted at once lately (this moment included)."""
        priority = self._priority(who)
        limit, service = self.limits[upstream], self.service[upstream]
        light = self.fair.light(upstream, priority, [who, *peers], limit.current, service)
        held, theirs = self._held[upstream], self.others_held.get(upstream, {})
        holding = sum(held.get(k, 0) + theirs.get(k, 0) for k in light)
        waiting = sum(self.queue.waiting(k, priority) for k in light)
        waiting += sum(self.others[k][1] for k in light if k in self.others)
        return light, holding, self.fair.peak(upstream, holding + waiting, service)

    def _within_share(self, upstream: str, who: str) -> bool:
        """May ``who`` take one more slot on ``upstream`` without making a peer wait?"""
        if not who:
            return True
        peers = self._peers(who)
        if not peers:
            return True
        light, holding, peak = self._light(upstream, who, peers)
        if who in light:
            return True
        limit = self.limits[upstream]
        return limit.current - limit.in_flight - 1 >= peak - holding

    # --- slots -----------------------------------------------------------------------------

    def try_take(self, upstream: str, who: str = "", tokens: int = 0) -> bool:
        """Take a slot if the upstream has room, its window room for ``tokens`` more, and
        ``who`` (noted by the caller) is within its share. (A lease from the fleet needs a
        round trip: ``take``.)"""
        limit = self.limits[upstream]
        if self._leased(upstream):
            return False
        if not limit.has_room() or not self.rates.room(upstream, tokens):
            return False
        if not self._within_share(upstream, who) or not self._shared_take(upstream):
            return False
        self.rates.count(upstream, tokens)
        self._grant(upstream, who, self._priority(who))
        return True

    def first_token(self, upstream: str, seconds: float, sent: Load) -> None:
        """An attempt's first token came after ``seconds``: the limit watches for a queue."""
        limit = self.limits[upstream]
        before = limit.limit
        if limit.first_token(seconds, sent) and self._leased(upstream):
            assert self.leases is not None
            self.leases.adjust(upstream, "scale", limit.limit / before)

    def load(self, upstream: str) -> Load:
        """Read when a request is sent on a slot, handed back on release (with leases, the
        fleet's load as the last take saw it)."""
        limit = self.limits[upstream]
        in_flight, epoch = limit.load()
        return max(in_flight, limit.fleet), epoch

    def _leased(self, upstream: str) -> bool:
        return self.leases is not None and upstream in self.leases.ceilings

    def _grant(self, upstream: str, who: str, priority: str) -> None:
        self.limits[upstream].acquire()
        held = self._held[upstream]
        held[who] = held.get(who, 0) + 1
        if who:
            self._light(upstream, who, self._peers(who))  # the light keys' peak may be now
        grants = self._grants[upstream]
        now = self.clock()
        grants.append((now, PRIORITIES.index(priority)))
        # Timestamps arrive in order: dropping the old ones from the left is O(1) amortised.
        while grants and grants[0][0] < now - _RATE_WINDOW:
            grants.popleft()

    def release(
        self,
        upstream: str,
        outcome: str,
        seconds: float,
        who: str = "",
        sent: Load | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> None:
        """Free a slot (``ok``, ``overload`` or ``ignore``) and hand it to a waiter;
        ``tokens``: the attempt's estimate and the tokens it used, for the rate window."""
        limit = self.limits[upstream]
        if outcome == "ok" and tokens[1] > 0:
            before = self._used.get(upstream, float(tokens[1]))
            self._used[upstream] = before + _ALPHA * (tokens[1] - before)
        if tokens[0] != tokens[1]:
            if self._leased(upstream):
                assert self.leases is not None
                self.leases.correct(upstream, tokens[1] - tokens[0])
            else:
                self.rates.done(upstream, *tokens)
        before, epoch = limit.limit, limit.epoch
        limit.release(outcome, sent)
        if self._leased(upstream):
            # The fleet's limit learns what this answer taught, in Redis (off the hot path).
            assert self.leases is not None
            if limit.epoch != epoch and sent is not None:
                self.leases.adjust(upstream, "drop", *sent)
            elif limit.limit != before:
                self.leases.adjust(upstream, "add", limit.limit - before)
            self.leases.give_back(upstream, who)
        self._shared_give_back(upstream)
        held = self._held[upstream]
        if held.get(who, 0) > 1:
            held[who] -= 1
        else:
            held.pop(who, None)
        if outcome == "ok":
            self.service[upstream] += _ALPHA * (seconds - self.service[upstream])
            if who:
                self.fair.answered(who, seconds)
            answered = self._answered[upstream]
            now = self.clock()
            answered.append(now)
            while answered and answered[0] < now - _RATE_WINDOW:
                answered.popleft()
        self._hand_over(upstream)

    def dispatch(self, upstreams: Iterable[str]) -> None:
        """Hand free slots to waiters allowed them now (a key's peers may have gone quiet)."""
        for upstream in upstreams:
            self._hand_over(upstream)

    def _hand_over(self, upstream: str) -> None:
        if self._leased(upstream):
            self._wake.set()  # leases are taken by the pump, a round trip each
            return
        limit = self.limits[upstream]
        if self.queue.size and self.pause(upstream) > 0:
            return  # a waiter's ticket dispatches again within a second
        while self.queue.size and limit.has_room():
            if not self.rates.room(upstream):
                return  # its window is full: the waiters' tickets dispatch again each second
            if not self._shared_take(upstream):
                return  # other workers hold the rest: the pump retries
            waiter = self.queue.pop_for(upstream, lambda k: self._within_share(upstream, k))
            if waiter is None:
                self._shared_give_back(upstream)
                return
            if not self.rates.room(upstream, waiter.tokens):
                self._shared_give_back(upstream)
                self.queue.push(waiter, front=True)
                return
            self.rates.count(upstream, waiter.tokens)
            self._grant(upstream, waiter.key, waiter.priority)
            waiter.future.set_result(upstream)

    # --- waiting ---------------------------------------------------------------------------

    def _drain(self, upstreams: Iterable[str], rank: int) -> tuple[float, float]:
        """Slots freed per second on ``upstreams`` by answers, and slots handed to classes
        above ``rank``.

        While the queue has been backlogged for a while, the answers since the backlog began
        are the truth about the drain rate (grants would understate it while the limit comes
        down, and count attempts refused "busy"); before that, Little's law over the limits
        and answer times is the better guess."""
        names = list(upstreams)
        now = self.clock()
        backlog = min(_RATE_WINDOW, now - self.queue.since) if self.queue.size else 0.0
        span = backlog if backlog >= _MIN_SPAN else _RATE_WINDOW
        done = higher = 0
        for name in names:
            for t in reversed(self._answered[name]):
                if t < now - span:
                    break
                done += 1
            for t, cls in reversed(self._grants[name]):
                if t < now - span:
                    break
                higher += cls < rank
        if backlog >= _MIN_SPAN and done >= _MIN_GRANTS:
            return done / span, higher / span
        little = sum(self.limits[n].current / max(self.service[n], 1e-3) for n in names)
        return little, higher / span

    def estimate(self, waiter: Waiter, position: int) -> float:
        """Seconds until ``waiter`` at ``position`` is served.

        Its class drains at the total rate less what higher classes take; a heavy key drains
        at the pace of the slots the light keys leave it, split among the heavy ones."""
        total, higher = self._drain(waiter.upstreams, PRIORITIES.index(waiter.priority))
        rate = max(total - higher, total * 0.05, 1e-3)
        eta = position / rate
        peers = self._peers(waiter.key)
        if peers:
            slots = sum(self.limits[n].current for n in waiter.upstreams) or 1
            left, heavy = 0, 1
            for name in waiter.upstreams:
                light, holding, peak = self._light(name, waiter.key, peers)
                left += max(0, self.limits[name].current - peak)
                heavy = max(heavy, len(peers) + 1 - len(light))
            # At least one slot among the heavy keys: the light keys' peak is forgotten after
            # a while, and a flood told "never" would only come back sooner.
            share = max(1, left) / heavy
            eta = max(eta, (self.queue.rank(waiter) + 1) / (rate * share / slots))
        return max(eta, min(max(self.pause(u), self.resting(u)) for u in waiter.upstreams))

    def resting(self, upstream: str) -> float:
        """Seconds until ``upstream``'s rpm/tpm window has room again (0: it has now)."""
        if self._leased(upstream):
            assert self.leases is not None
            return self.leases.window_wait(upstream)
        return self.rates.wait(upstream)

    def enqueue(
        self,
        upstreams: frozenset[str],
        key: str,
        priority: str,
        patience: float,
        front: bool = False,
        tokens: int = 0,
    ) -> Ticket:
        """Join the queue (``front``: see ``FairQueue.push``), or raise QueueFull at once if
        the wait would exceed ``patience``; ``tokens``: the request's estimate."""
        self.note(key, priority, arrival=False)  # the router counted this request already
        waiter = Waiter(key, priority, upstreams, tokens=tokens)
        self.queue.push(waiter, front)
        peers = self._peers(key)
        for name in upstreams if key else ():
            self._light(name, key, peers)  # the light keys' peak may be now
        ticket = Ticket(self, waiter, patience)
        position, eta = ticket.status()
        if eta * _MARGIN > patience:
            self.queue.remove(waiter)
            raise QueueFull(eta * _MARGIN, patience, position)
        return ticket

    def snapshot(self) -> dict[str, dict[str, float]]:
        views: dict[str, dict[str, float]] = {}
        for name, limit in self.limits.items():
            view = {
                "limit": limit.current,
                "in_flight": limit.in_flight,
                "drops": limit.drops,
                "slowdowns": limit.slowdowns,
                "ceiling": limit.ceiling,
            }
            if self.shared is not None and name in self.shared.ceilings:
                view["in_flight_all_workers"] = self.shared.held(name)
            if self.leases is not None and name in self.leases.ceilings:
                view["leases_held"] = self.leases.held(name)
            if name in self.rates.ceilings:
                used = self.rates.used(name)
                if self._leased(name):
                    assert self.leases is not None
                    used = self.leases.window.get(name, used)
                view["window_requests"], view["window_tokens"] = used
            views[name] = view
        return views


class Ticket:
    """A place in the queue: reports its position while waiting, then names the upstream."""

    def __init__(self, capacity: Capacity, waiter: Waiter, patience: float) -> None:
        self.capacity = capacity
        self.waiter = waiter
        self.patience = patience
        self.clock = capacity.clock
        self.deadline = self.clock() + patience
        self.enqueued = self.clock()
        self.left = False

    def status(self) -> tuple[int, float]:
        position = self.capacity.queue.position(self.waiter)
        return position, self.capacity.estimate(self.waiter, position)

    async def updates(self) -> AsyncGenerator[tuple[int, float], None]:
        """(position, estimated seconds) now and every second until a slot is granted."""
        future = self.waiter.future
        try:
            while not future.done():
                position, eta = self.status()
                yield position, eta
                left = self.deadline - self.clock()
                if left <= 0:
                    raise QueueTimeout(self.patience, position)
                if eta > left * _HOPELESS + 1.0:
                    # The queue moves clearly slower than first estimated: say so now, not at
                    # the end of the patience. (Only clearly: an estimate wobbles by a few
                    # percent, and a waiter admitted near the edge of its patience would be
                    # refused for the wobble, seconds after it was admitted.)
                    raise QueueFull(eta, left, position)
                await asyncio.wait({future}, timeout=min(1.0, left))
                if not future.done():
                    self.capacity.dispatch(self.waiter.upstreams)
        except BaseException:
            self.abandon()
            raise

    async def wait(self) -> str:
        async for _ in self.updates():
            pass
        return self.upstream

    @property
    def upstream(self) -> str:
        return self.waiter.future.result()

    @property
    def waited(self) -> float:
        return self.clock() - self.enqueued

    def abandon(self) -> None:
        """Leave the queue; a slot handed over in the meantime is given back (once: both the
        waiting loop and the request's own books may call this)."""
        if self.left:
            return
        self.left = True
        future = self.waiter.future
        self.capacity.queue.remove(self.waiter)
        if future.done() and not future.cancelled():
            self.capacity.release(future.result(), "ignore", 0.0, self.waiter.key)
        else:
            future.cancel()
