"""``transaction``: one BEGIN IMMEDIATE / COMMIT / ROLLBACK for every write in the store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nobusy.store.sqlite import connect, transaction


@pytest.fixture(params=[False, True], ids=["implicit", "autocommit"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "t.db", autocommit=request.param)
    conn.execute("CREATE TABLE t (n INTEGER NOT NULL)")
    conn.commit()
    yield conn
    conn.close()


def rows(conn: sqlite3.Connection) -> list[int]:
    return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")]


def test_a_block_that_ends_commits(conn: sqlite3.Connection) -> None:
    with transaction(conn) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        tx.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction
    assert rows(conn) == [1, 2]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_block_that_raises_rolls_back_everything(
    conn: sqlite3.Connection, error: type[BaseException]
) -> None:
    with pytest.raises(error), transaction(conn) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        raise error
    assert not conn.in_transaction  # the next BEGIN IMMEDIATE finds none still open
    assert rows(conn) == []
    with transaction(conn) as tx:
        tx.execute("INSERT INTO t VALUES (3)")
    assert rows(conn) == [3]


def test_a_failing_statement_rolls_back_the_earlier_ones(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError), transaction(conn) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        tx.execute("INSERT INTO t VALUES (NULL)")
    assert rows(conn) == []


def test_the_write_lock_is_taken_at_begin(conn: sqlite3.Connection, tmp_path: Path) -> None:
    other = connect(tmp_path / "t.db", busy_timeout_ms=0)
    try:
        with transaction(conn):
            # Another writer waits at its BEGIN (here: gives up at once), not midway.
            with pytest.raises(sqlite3.OperationalError, match="locked"), transaction(other):
                pytest.fail("the second writer got in")
            assert not other.in_transaction
        with transaction(other) as tx:  # free again once the first committed
            tx.execute("INSERT INTO t VALUES (4)")
    finally:
        other.close()
    assert rows(conn) == [4]
