"""``BatchWriter``: the one writer thread of the usage and audit logs."""

from __future__ import annotations

import threading

from nobusy.store.writer import BatchWriter


def test_items_are_written_in_batches_and_flush_waits_for_them() -> None:
    batches: list[list[int]] = []
    writer = BatchWriter[int]("nobusy-test", batches.append, queue_size=100, batch_size=4)
    for i in range(10):
        assert writer.put(i, timeout=1)
    assert writer.flush(timeout=5)
    assert [i for batch in batches for i in batch] == list(range(10))
    assert all(len(batch) <= 4 for batch in batches)
    assert writer.close(timeout=5) == []
    assert not writer.put(10, timeout=1)  # closed


def test_no_thread_until_the_first_put() -> None:
    writer = BatchWriter[int]("nobusy-idle", lambda batch: None, queue_size=10, batch_size=4)
    assert writer.flush(timeout=1)
    assert "nobusy-idle" not in {t.name for t in threading.enumerate()}
    assert writer.close() == []


def test_a_batch_that_raises_is_counted_and_the_thread_goes_on() -> None:
    written: list[int] = []

    def write(batch: list[int]) -> None:
        if 0 in batch:
            raise RuntimeError("refused")
        written.extend(batch)

    writer = BatchWriter[int]("nobusy-test", write, queue_size=10, batch_size=1)
    writer.put(0, timeout=1)
    writer.put(1, timeout=1)
    assert writer.flush(timeout=5)
    assert (writer.lost, written) == (1, [1])
    writer.close(timeout=5)


def test_close_writes_what_is_queued_and_returns_what_came_too_late() -> None:
    gate = threading.Event()
    written: list[int] = []

    def slow(batch: list[int]) -> None:
        gate.wait(5)
        written.extend(batch)

    writer = BatchWriter[int]("nobusy-test", slow, queue_size=10, batch_size=2)
    for i in range(5):
        writer.put(i, timeout=1)
    closing = threading.Thread(target=lambda: late.extend(writer.close(timeout=5)))
    late: list[int] = []
    closing.start()
    gate.set()
    closing.join(10)
    assert written == list(range(5)) and late == []
    assert not any(t.name == "nobusy-test" and t.is_alive() for t in threading.enumerate())
