"""The circuit breaker as a pure policy, on a clock the test moves."""

from __future__ import annotations

from nobusy.routing.circuit import Circuit, State
from nobusy.upstreams.base import CircuitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def circuit(**kwargs: float) -> tuple[Circuit, Clock]:
    clock = Clock()
    return Circuit(CircuitSettings(**kwargs), clock=clock), clock  # type: ignore[arg-type]


def test_consecutive_failures_open_then_half_open_probe_closes() -> None:
    c, clock = circuit(consecutive_failures=3, ejection=10)
    for _ in range(2):
        c.failure("boom")
    assert c.state is State.CLOSED
    c.failure("boom")
    assert c.state is State.OPEN and not c.available()
    assert c.retry_in() == 10
    clock.now += 10
    assert c.state is State.HALF_OPEN and c.available()
    c.begin()
    assert not c.available()  # one probe at a time
    c.success()
    assert c.state is State.CLOSED and c.available()


def test_failed_probe_ejects_for_longer_capped() -> None:
    c, clock = circuit(consecutive_failures=1, ejection=10, max_ejection=25)
    c.failure("a")
    assert c.retry_in() == 10
    for expected in (20, 25, 25):
        clock.now += 100
        c.begin()
        c.failure("again")
        assert c.retry_in() == expected


def test_failure_rate_over_window_opens() -> None:
    c, clock = circuit(consecutive_failures=100, failure_rate=0.5, min_requests=10, window=30)
    for i in range(9):  # 5 failures in 9: not enough requests yet to judge the rate
        clock.now += 1
        c.success() if i % 2 else c.failure("flaky")
    assert c.state is State.CLOSED
    c.failure("flaky")  # the tenth: 6 of 10 failed
    assert c.state is State.OPEN


def test_old_failures_leave_the_window() -> None:
    c, clock = circuit(consecutive_failures=100, failure_rate=0.5, min_requests=4, window=5)
    c.failure("x")
    c.failure("x")
    clock.now += 10
    c.success()
    c.success()
    c.success()
    assert c.state is State.CLOSED


def test_retry_after_pauses_without_counting_an_ejection() -> None:
    c, clock = circuit()
    c.failure("429", retry_after=7)
    assert c.state is State.OPEN and c.retry_in() == 7 and c.ejections == 0
    clock.now += 7
    assert c.available()


def test_misconfigured_opens_at_once_and_reset_closes() -> None:
    c, _ = circuit()
    c.failure("401", misconfigured=True)
    assert c.state is State.OPEN
    c.reset()
    assert c.state is State.CLOSED and c.ejections == 0


def test_cancelled_probe_frees_the_slot() -> None:
    c, clock = circuit(consecutive_failures=1)
    c.failure("x")
    clock.now += 60
    c.begin()
    c.cancelled()
    assert c.available()


def test_a_success_still_in_flight_does_not_reopen_an_ejected_upstream() -> None:
    # An upstream failing every other request: successes of requests already under way
    # must not close the circuit while the ejection lasts (found by the failover benchmark).
    c, clock = circuit(consecutive_failures=100, failure_rate=0.5, min_requests=10, ejection=30)
    for i in range(20):
        clock.now += 0.1
        c.success() if i % 2 else c.failure("flaky")
    assert c.state is State.OPEN
    c.success()
    assert c.state is State.OPEN and c.retry_in() > 25
    clock.now += 30
    c.begin()
    c.success()  # the probe
    assert c.state is State.CLOSED


def test_verdicts_are_told_and_another_replicas_are_followed_without_telling() -> None:
    told: list[tuple[str, float, str, int]] = []
    c, clock = circuit(consecutive_failures=1, ejection=10)
    c.told = lambda *verdict: told.append(verdict)
    c.failure("boom")  # an ejection
    c.failure("HTTP 429", retry_after=30)  # a pause: the longer end
    assert told == [("open", 10.0, "boom", 1), ("open", 30.0, "HTTP 429", 1)]
    clock.now += 30
    c.begin()
    c.success()  # the probe closed it
    assert told[-1] == ("close", 0.0, "", 0)

    other, clock = circuit()
    other.told = lambda *verdict: told.append(verdict)
    count = len(told)
    other.follow("open", 30.0, "HTTP 429", 2)
    assert other.state is State.OPEN and other.retry_in() == 30 and other.ejections == 2
    other.follow("open", 5.0, "later, shorter", 2)
    assert other.retry_in() == 30  # never shorter than what it knows
    other.follow("close", 0.0, "", 0)
    assert other.state is State.CLOSED and other.available()
    assert len(told) == count  # following is not telling: no echo between replicas
