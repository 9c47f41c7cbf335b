"""The ``replicas`` suite's faults, each under load through nginx: Redis stopped, one replica
killed with SIGKILL while it holds every slot of a key and of an upstream, PostgreSQL stopped,
and a rolling restart (SIGTERM, drain, start, one replica at a time)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from bench import procs
from bench.loadgen import LoadSpec, run_open
from bench.suites import replicas_fleet
from bench.suites.base import Context, Result
from bench.suites.replicas_fleet import REPLICAS, UPSTREAM_SLOTS, Fleet, request_spec
from bench.suites.replicas_report import count, outcome

__all__ = ["LEASE_SLOTS", "kill", "postgres_down", "redis_down", "rolling"]


class Background:
    """An open-loop load in a thread, so that this thread can stop and start processes (a
    child started from another thread would die with it: PR_SET_PDEATHSIG)."""

    def __init__(self, requests: list[tuple[float, LoadSpec, float]]) -> None:
        self.requests, self.sents = requests, []
        self.t0 = 0.0
        self.thread = threading.Thread(target=self._run, name="replicas-load", daemon=True)

    def _run(self) -> None:
        self.sents = run_open(self.requests, on_start=self._mark)

    def _mark(self) -> None:
        self.t0 = time.monotonic()

    def __enter__(self) -> Background:
        self.thread.start()
        while not self.t0:
            time.sleep(0.01)
        return self

    def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the load began."""
        time.sleep(max(0.0, self.t0 + seconds - time.monotonic()))

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:  # on an error or Ctrl-C the (daemon) thread is left to the exit
            self.thread.join()

    def outcomes(self) -> list[tuple[float, Result]]:
        return [(x.sent_at, outcome(x)) for x in self.sents]


def _steady(spec: LoadSpec, rate: float, seconds: float) -> list[tuple[float, LoadSpec, float]]:
    return [(i / rate, spec, 30.0) for i in range(int(rate * seconds))]


def _shared_again(fleet: Fleet, limit: float = 30.0) -> float | None:
    """Seconds until every replica says its key limits are shared again."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        texts = []
        for proc in fleet.procs[:REPLICAS]:
            if proc is not None:
                status, body = procs.http_call(proc.port, "GET", "/metrics", timeout=2)
                texts.append(body.decode() if status == 200 else "")
        if all("nobusy_state_shared 1.0" in t for t in texts):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def redis_down(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    lead, down = s["fault_lead_s"], s["redis_down_s"]
    spec = request_spec(lb.port, secret, "fast", False)
    with Background(_steady(spec, 20.0, 2 * lead + down)) as load:
        load.at(lead)
        fleet.stop_redis()
        load.at(lead + down)
        fleet.start_redis()
        back = _shared_again(fleet)
    outs = load.outcomes()
    during = count([o for t, o in outs if lead <= t < lead + down])
    ctx.log(f"[replicas] Redis down {down:g}s: {count([o for _, o in outs])['kinds']}")
    return {"down_s": down, "all": count([o for _, o in outs]), "during": during,
            "shared_again_s": back, "ids": _ids(outs)}  # fmt: skip


def _ids(outs: list[tuple[float, Result]]) -> list[str]:
    return [o["id"] for _, o in outs if o["kind"] == "answered" and o["id"]]


def _until_free(
    probes: dict[str, Callable[[], int]], since: float, limit: float
) -> tuple[dict[str, float | None], dict[str, list[int]]]:
    """Each probe every 0.25 s until it answers 200: seconds from ``since`` to that 200 (None:
    not within ``limit``), and the statuses each saw."""
    back: dict[str, float | None] = {name: None for name in probes}
    seen: dict[str, list[int]] = {name: [] for name in probes}
    while time.monotonic() - since < limit and any(v is None for v in back.values()):
        for name, probe in probes.items():
            if back[name] is None:
                status = probe()
                seen[name].append(status)
                if status == 200:
                    back[name] = time.monotonic() - since
        time.sleep(0.25)
    return back, seen


def kill(ctx: Context, fleet: Fleet, lb: procs.Proc, keys: dict[str, str], s: Result) -> Result:
    """Load through nginx; replica 2 holds every slot of the lease key (and of the narrow
    upstream) when it gets SIGKILL; probes on replica 1 time the slots' return."""
    lead, tail = s["fault_lead_s"], s["kill_tail_s"]
    victim, survivor = fleet.replica(1), fleet.replica(0)
    load_spec = request_spec(lb.port, keys["open"], "long", True)
    holders = [(0.0, request_spec(victim.port, keys["lease"], "hold", False), 60.0)] * LEASE_SLOTS
    holders += [
        (0.0, request_spec(victim.port, keys["open"], "narrow-hold", False), 60.0)
    ] * UPSTREAM_SLOTS
    with Background(_steady(load_spec, 6.0, lead + tail)) as load:
        held = threading.Thread(target=run_open, args=(holders,), daemon=True)
        load.at(lead - 1.0)
        held.start()
        lease_spec = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
        narrow = {**lease_spec, "model": "narrow"}
        probes = {
            "key": lambda: procs.http_json(
                survivor.port, lease_spec, {"Authorization": f"Bearer {keys['lease']}"}
            )[0],
            "upstream": lambda: procs.http_json(
                survivor.port,
                narrow,
                {"Authorization": f"Bearer {keys['open']}", "x-nobusy-max-wait": "0.2"},
            )[0],
        }
        load.at(lead - 0.2)
        # Every slot is held on the victim: the survivor refuses the key (429), and the
        # upstream too where its slots are shared (else it answers from slots of its own).
        held_before = {name: probe() for name, probe in probes.items()}
        load.at(lead)
        victim.popen.kill()
        back, seen = _until_free(probes, time.monotonic(), 30.0)
    held.join(60)
    outs = load.outcomes()
    after = count([o for t, o in outs if t >= lead + 0.5])
    fleet.start(1)  # back, same port and data dir, for what follows
    ctx.log(f"[replicas] kill -9: after it {after['kinds']}; held {held_before}, back {back}")
    return {"all": count([o for _, o in outs]), "after_kill": after,
            "held_before": held_before, "slots_back_s": back,
            "probe_statuses": {k: v[:40] for k, v in seen.items()}, "ids": _ids(outs)}  # fmt: skip


LEASE_SLOTS = 4  # the lease key's max_concurrency: all held by the replica that is killed


def postgres_down(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    lead, down = s["fault_lead_s"], s["pg_down_s"]
    spec = request_spec(lb.port, secret, "fast", False)
    with Background(_steady(spec, 20.0, 2 * lead + down)) as load:
        load.at(lead)
        fleet.stop_postgres()
        load.at(lead + down)
        fleet.start_postgres_again()
    outs = load.outcomes()
    ctx.log(f"[replicas] PostgreSQL down {down:g}s: {count([o for _, o in outs])['kinds']}")
    return {"down_s": down, "all": count([o for _, o in outs]), "ids": _ids(outs)}


def rolling(ctx: Context, fleet: Fleet, lb: procs.Proc, secret: str, s: Result) -> Result:
    """SIGTERM one replica, wait for its drain and exit, start it again; then the next."""
    spec = request_spec(lb.port, secret, "long", True)
    steps: list[Result] = []
    with Background(_steady(spec, 6.0, s["restart_load_s"])) as load:
        load.at(3.0)
        for index in range(REPLICAS):
            proc = fleet.replica(index)
            began = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.wait(replicas_fleet.DRAIN_TIMEOUT + 10)
            drained = time.monotonic() - began
            fleet.ctx.procs.stop(proc)
            fleet.start(index)
            steps.append({"replica": index + 1, "drain_s": drained,
                          "exit_code": proc.popen.returncode,
                          "back_s": time.monotonic() - began})  # fmt: skip
        finished = time.monotonic() - load.t0
    if finished > s["restart_load_s"]:
        ctx.log(f"[replicas] the restarts outlasted the load ({finished:.0f} s): lengthen it")
    outs = [(t, o) for t, o in load.outcomes() if t < finished]
    result = count([o for _, o in outs])
    ctx.log(f"[replicas] rolling restart in {finished:.0f}s: {result['kinds']}")
    return {"steps": steps, "during": result, "restart_s": finished, "ids": _ids(outs)}
