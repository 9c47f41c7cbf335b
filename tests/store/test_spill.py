"""The spill file: rows kept in order while PostgreSQL does not answer, replayed once it does."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nobusy.store.postgres import Link, Liveness
from nobusy.store.spill import Spill

URL = "postgresql://nobusy:spill-secret-1@db.test/nobusy"


class Table:
    """A stand-in for PostgreSQL: stores rows, or fails as one that is down."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.down = False
        self.during: Spill | None = None  # a batch spilled while the next replay runs

    def write(self, rows: Sequence[Sequence[Any]], link: Link) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        if self.during is not None:
            spill, self.during = self.during, None
            thread = threading.Thread(target=spill.write, args=([["late"]],))
            thread.start()
            thread.join()  # the writer is not held by the replay
        self.rows.extend(list(row) for row in rows)


@pytest.fixture()
def table() -> Table:
    return Table()


def spill(tmp_path: Path, table: Table) -> Spill:
    return Spill(tmp_path, "usage", table.write, Link(URL), Liveness("shown"), retry_interval=60)


def test_rows_wait_in_order_and_go_behind_what_is_spilled(tmp_path: Path, table: Table) -> None:
    s = spill(tmp_path, table)
    s.write([[1], [2]])
    table.down = True
    s.write([[3]])
    assert not s.liveness.ok and s.path.exists()
    table.down = False
    s.write([[4]])  # PostgreSQL answers again, but 3 is still spilled: 4 goes behind it
    assert table.rows == [[1], [2]]
    table.during = s
    assert s.replay()
    assert table.rows == [[1], [2], [3], [4], ["late"]]
    assert s.liveness.ok and not s.path.exists()
    s.write([[5]])  # straight to PostgreSQL again
    assert table.rows[-1] == [5]
    s.close()


def test_a_replay_that_fails_midway_keeps_the_rest(tmp_path: Path, table: Table) -> None:
    s = spill(tmp_path, table)
    table.down = True
    s.write([[i] for i in range(3)])
    assert not s.replay()
    assert s.path.read_bytes() == b"[0]\n[1]\n[2]\n"
    assert "spill-secret-1" not in s.liveness.health().detail
    table.down = False
    s.close()  # one last replay
    assert table.rows == [[0], [1], [2]] and not s.path.exists()
