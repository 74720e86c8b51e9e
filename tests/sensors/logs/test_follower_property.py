"""Generated sequences of appends, passes (of any budget), logrotate renames, copytruncates and restarts
from the saved positions: every line written is handed on exactly once. What the sensor guarantees and
the plans keep to: it looks at the path at least once between two rotations (every second, however far
behind it reads)."""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.sensors.logs._follower import Follower
from ringfence.sensors.logs._positions import Position
from ringfence.sensors.logs._tail import Limits

from .support import Driven, S, append, copytruncate

Step = tuple[str, int]


def _create(path: Path) -> None:
    """A new empty log, its mtime a minute back: file times tick coarsely (jiffies), and a file emptied
    by copytruncate within the tick it was created in would look untouched. Real rotations are apart."""
    path.touch()
    stamp = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(stamp, stamp))


steps = st.lists(
    st.tuples(
        st.sampled_from(["append", "append", "append", "poll", "rename", "copytruncate", "restart"]),
        st.integers(1, 40),
    ),
    max_size=40,
)


def _restarted(old: Driven, log: Path, saved: list[Position]) -> Driven:
    new = Driven(log, grace_s=3600)
    new.raw, new.now, new.counts = old.raw, old.now, old.counts
    new.follower = Follower(str(log), Limits(16384, 5 * S), 3600 * S, new.counts)
    return new.start(saved, at_end_if_new=True)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_every_line_written_is_handed_on_once_across_rotations(plan: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        log = directory / "syslog"
        _create(log)
        d = Driven(log, grace_s=3600).start()
        ids = itertools.count()
        written: list[str] = []
        rotations = 0
        for op, n in plan:
            if op == "append":
                batch = [f"line {next(ids)} " + "x" * (n * 7 % 50) for _ in range(n % 5 + 1)]
                append(log, "".join(f"{line}\n" for line in batch))
                written += batch
            elif op == "poll":
                d.poll(budget=n * 100)
            elif op == "rename":
                rotations += 1
                os.rename(log, directory / f"syslog.r{rotations}")
                _create(log)
                # One pass, reading almost nothing: the sensor looks every second, so it sees each
                # rotation (two within one look would hide the middle file), however far behind it reads.
                d.one_pass(budget=1)
            elif op == "restart":
                saved = d.follower.positions()  # what the sensor saves at stop
                d.follower.close()
                d = _restarted(d, log, saved)
            else:
                copy = copytruncate(log)
                d.poll()  # logrotate's copy is replaced at its next run; the sensor has read it by then
                copy.unlink()
        d.poll()
        got = [r.data.decode() for r in d.raw]
        assert sorted(got) == sorted(written)
        assert len(set(got)) == len(got)
        d.follower.close()
