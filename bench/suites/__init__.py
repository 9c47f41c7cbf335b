"""The suites, by name, in the order ``python -m bench`` runs them.

To add one: write a module with a ``SUITE = Suite(...)`` (see ``bench/suites/base.py``), list
it here and add its line to bench/README.md (a test checks).
"""

from __future__ import annotations

from bench.suites import (
    admission,
    answers,
    audit,
    bigbody,
    cache,
    console,
    crosscheck,
    embedded,
    failover,
    failover_continuation,
    guard,
    knowledge,
    knowledge_pg,
    memory,
    money,
    overhead,
    pool,
    protocols,
    reload,
    replicas,
    sigkill,
    workers,
)
from bench.suites.base import Suite

__all__ = ["SUITES"]

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        overhead.SUITE,
        memory.SUITE,
        embedded.SUITE,
        workers.SUITE,
        failover.SUITE,
        failover_continuation.SUITE,
        guard.SUITE,
        knowledge.SUITE,
        knowledge_pg.SUITE,
        answers.SUITE,
        bigbody.SUITE,
        audit.SUITE,
        admission.SUITE,
        sigkill.SUITE,
        replicas.SUITE,
        crosscheck.SUITE,
        protocols.SUITE,
        cache.SUITE,
        pool.SUITE,
        reload.SUITE,
        console.SUITE,
        money.SUITE,
    )
}
