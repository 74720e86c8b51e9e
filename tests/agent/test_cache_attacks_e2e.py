"""The verdict cache and the reputation engine's memo attacked together, through the real agent.

A harmless binary runs (and is cached by the kernel, and memoized by the engine), then becomes a
blocklisted one through a shared mapping on tmpfs, which changes neither its size nor its times. Both
caches must let go: the kernel's through the lease break, the engine's through the agent's own hash."""

from __future__ import annotations

import hashlib
import mmap
import subprocess
import time
from pathlib import Path

from tests.agent.test_extensions_e2e import start_agent  # noqa: F401

_TRAILER = 64


def runs(path: Path) -> bool:
    try:
        return subprocess.run([str(path)], check=False, timeout=30).returncode == 0
    except PermissionError:
        return False


def test_mapped_write_after_the_allow_is_caught_by_kernel_cache_and_engine_memo(
    start_agent,  # noqa: F811
    tmpfs: Path,
    shared_dir: Path,
) -> None:
    base = Path("/bin/true").read_bytes()
    good, bad = base + b"\0" * _TRAILER, base + b"\1" * _TRAILER
    tool = tmpfs / "tool"
    tool.write_bytes(good)
    tool.chmod(0o755)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text(f"{hashlib.sha256(bad).hexdigest()}  mapped-in\n")
    agent = start_agent(("ringfence.reputation",), {"ringfence.reputation": {"blocklist": str(blocklist)}})

    for _ in range(50):
        with tool.open("r+b") as f:
            f.write(good)
        assert runs(tool)
        deadline = time.monotonic() + 10
        while agent.sensors_by_name()["exec-auth"].statistics().detail["cached_files"] == 0:
            assert time.monotonic() < deadline, "the harmless binary was never cached"
            time.sleep(0.01)
        with tool.open("r+b") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED) as m:
            assert m[len(bad) - 1] == 0  # read first: tmpfs then maps the page writable and the write
            m[len(bad) - _TRAILER :] = bad[-_TRAILER:]  # never faults, so the times do not change
        assert not runs(tool), "the blocklisted content ran from a cache"
