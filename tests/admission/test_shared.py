"""Upstream ceilings shared by worker processes through a memory-mapped file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from nobusy.admission.shared import SharedSlots

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from nobusy.admission.shared import SharedSlots
    slots = SharedSlots(Path(sys.argv[1]), {"u": 4, "v": 1})
    print(sum(slots.take("u") for _ in range(int(sys.argv[2]))), flush=True)
    time.sleep(60)
    """
)


def _holder(data: Path, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == str(count)
    return proc


def test_the_ceiling_holds_across_processes_and_a_dead_one_frees_its_slots(
    tmp_path: Path,
) -> None:
    other = _holder(tmp_path, 3)  # another worker holds three of four
    mine = SharedSlots(tmp_path, {"u": 4, "v": 1})
    try:
        assert mine.take("u")
        assert not mine.take("u")  # four in all
        assert mine.held("u") == 4
        assert mine.take("v") and not mine.take("v")
        mine.give_back("u")
        assert mine.take("u")
        other.kill()  # killed holding its slots
        other.wait()
        mine._swept = 0.0  # the next sweep is due now, not in a second
        assert [mine.take("u") for _ in range(3)] == [True] * 3
        assert mine.held("u") == 4
    finally:
        other.kill()
        other.wait()
        assert other.stdout is not None
        other.stdout.close()
        mine.close()


def test_a_process_that_closes_leaves_nothing_held(tmp_path: Path) -> None:
    first = SharedSlots(tmp_path, {"u": 2})
    assert first.take("u") and first.take("u")
    first.close()
    second = SharedSlots(tmp_path, {"u": 2})
    try:
        assert second.take("u") and second.take("u") and not second.take("u")
    finally:
        second.close()
