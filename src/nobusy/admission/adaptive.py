"""An upstream's concurrency limit, found by AIMD as in Netflix's concurrency-limits.

The limit grows by about one for every ``limit`` successful answers while the upstream is
actually used (at least half full), and shrinks when it answers 429/503/529 or times out before
its first token. ``max_concurrency`` from the config is the ceiling; without one nobusy starts
at ``initial`` and climbs. For LLMs, whole-request latency depends on answer length, so only
overload answers and first-token timeouts count as drops: a long answer is slow without the
upstream being full.

Two refinements over plain AIMD, both found by the admission benchmark:

* A refusal says more than "too many": the upstream refused while ``n`` of our requests were
  in flight (counting the refused one), so it holds at most ``n - 1`` of ours. The limit drops
  to that at once (or ×0.9 if that is lower), instead of ×0.9 per refusal while a burst keeps
  hitting the wall. Refusals of requests sent before the last decrease are counted but do not
  decrease again: they were sent under the old limit (TCP's once-per-window rule).
* Probing above the level that was refused gets exponentially slower each time it is refused
  again, so a stable upstream stops paying a refused request every few dozen answers.

Local servers (vLLM, llama.cpp, Ollama) do not refuse: they queue, and the queue shows as a
longer time to first token. As in Netflix's Gradient2, a short average of first-token times is
compared with a long one; when the short one is more than twice the long one (and 100 ms above
it, below which it is noise), the limit moves a fifth of the way towards itself times twice the
long average over the short one (×0.9 at most per answer), for answers to requests sent within
the current limit (later ones met a queue that an earlier, higher limit built). Prompt lengths
vary, but they vary in both averages alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["AIMDLimit", "Load"]

log = logging.getLogger("nobusy.limits")

Load = tuple[int, int]  # (our requests in flight when one was sent, including it; epoch then)

_MAX_PROBE_BACKOFF = 6  # at most 2**6 times slower probing near a refused level
_SHORT = 0.1  # smoothing of the recent time to first token (about the last ten answers)
_LONG = 0.002  # and of the long-run one (about the last five hundred)
_TOLERANCE = 2.0  # short over long beyond which the upstream is queueing
_SLACK = 0.1  # seconds: a smaller rise is noise, not a queue
_SMOOTHING = 0.2


@dataclass
class AIMDLimit:
    """Additive increase, multiplicative decrease; ``limit`` is a float, used as its floor."""

    ceiling: float
    limit: float
    floor: float = 1.0
    backoff: float = 0.9
    in_flight: int = 0
    drops: int = 0
    last_drop: float = float("inf")  # in flight (ours) when the upstream last said "busy"
    epoch: int = 0  # decreases so far: a refusal of a request sent before one is old news
    refused_probes: int = 0  # refusals in a row at the level of ``last_drop``
    ttft_short: float = 0.0  # recent time to first token, seconds (0: none seen yet)
    ttft_long: float = 0.0  # long-run time to first token
    slowdowns: int = 0  # decreases for a queue seen in the time to first token
    name: str = ""  # the upstream's, for the log
    reported: int = 0  # the whole limit last logged
    fleet: int = 0  # with state: slots the whole fleet held, as last seen (else 0)

    def __post_init__(self) -> None:
        self.reported = self.current

    @classmethod
    def for_upstream(cls, max_concurrency: int | None, initial: int = 32) -> AIMDLimit:
        ceiling = float(max_concurrency) if max_concurrency is not None else 4096.0
        return cls(ceiling=ceiling, limit=min(ceiling, float(initial)))

    @property
    def current(self) -> int:
        return max(int(self.floor), int(self.limit))

    def has_room(self) -> bool:
        return self.in_flight < self.current

    def acquire(self) -> None:
        self.in_flight += 1

    def load(self) -> Load:
        """What a request sent now should report back on release."""
        return self.in_flight, self.epoch

    def first_token(self, seconds: float, sent: Load) -> bool:
        """A first token came ``seconds`` after a request sent under ``sent``; True when the
        times show a queue at the upstream and the limit came down for it."""
        if not self.ttft_long:
            self.ttft_short = self.ttft_long = seconds
            return False
        self.ttft_short += _SHORT * (seconds - self.ttft_short)
        self.ttft_long += _LONG * (seconds - self.ttft_long)
        if self.ttft_long > _TOLERANCE * self.ttft_short:
            self.ttft_long *= 0.95  # faster than it was: let the long run follow sooner
        short, long = self.ttft_short, self.ttft_long
        if short <= _TOLERANCE * long or short - long <= _SLACK:
            return False
        if sent[0] > self.current:
            # Sent while more were in flight than the limit allows now: the queue it met was
            # built under an earlier, higher limit, and says nothing about this one.
            return False
        self.slowdowns += 1
        gradient = max(0.5, _TOLERANCE * long / short)
        # Smoothed as in Gradient2: a step of at most ×0.9, since one answer is one sample.
        self.limit = max(self.floor, self.limit * (1 - _SMOOTHING * (1 - gradient)))
        self._log_change("first tokens slowing: the upstream is queueing")
        return True

    def release(self, outcome: str, sent: Load | None = None) -> None:
        """``ok``, ``overload`` (429/503/529, first-token timeout) or ``ignore``; ``sent`` is
        the ``load()`` read when the request was sent."""
        in_flight, epoch = sent if sent is not None else (self.in_flight, self.epoch)
        self.in_flight -= 1
        if outcome == "overload":
            self.drops += 1
            if epoch < self.epoch:
                return
            self.epoch += 1
            repeated = in_flight >= self.last_drop
            self.refused_probes = self.refused_probes + 1 if repeated else 1
            self.last_drop = float(in_flight)
            self.limit = max(self.floor, min(self.limit * self.backoff, in_flight - 1.0))
            self._log_change(f"busy with {in_flight} of ours in flight")
        elif outcome == "ok" and max(self.in_flight + 1, self.fleet) >= self.current / 2:
            step = 1.0
            if self.limit >= self.last_drop + 1:
                # The refused level has held a while: the upstream has grown.
                self.last_drop, self.refused_probes = float("inf"), 0
            elif self.limit + 1 >= self.last_drop:
                # Each step past the real capacity costs a request a "busy" answer: near the
                # refused level, probe more slowly each time the probe was refused. (An answer
                # at that level proves little: by our count it had company that the upstream
                # may already have finished.)
                step = 0.5 ** min(self.refused_probes, _MAX_PROBE_BACKOFF)
            self.limit = min(self.ceiling, self.limit + step / self.limit)
            self._log_change("answering at full load")

    def _log_change(self, why: str) -> None:
        """Log each change of the whole limit: down as a warning, up as information."""
        current, before = self.current, self.reported
        self.reported = current
        if current != before:
            level = logging.WARNING if current < before else logging.INFO
            log.log(level, "concurrency limit of %s %d -> %d: %s", self.name, before, current, why)
