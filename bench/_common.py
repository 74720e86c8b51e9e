"""Shared bench plumbing: start/stop the agent as a real process, read its status, print tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def write_config(state: Path, extra: str = "") -> Path:
    path = state.parent / "bench.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\nlog_level = "warning"\n[output]\nconsole_interval_s = 0\n{extra}'
    )
    return path


def status(state: Path) -> dict:
    r = subprocess.run(
        [*RINGFENCE, "status", "--json", "--state-dir", str(state)], capture_output=True, check=False
    )
    if not r.stdout:
        raise RuntimeError(f"status: {r.stderr.decode().strip()}")
    return json.loads(r.stdout)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout_s: float = 60) -> None:
    """End a process this bench started: `sig` (SIGINT: the agent's clean stop), SIGKILL after
    `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_agent(
    extra_config: str = "", args: tuple[str, ...] = (), src: str | None = None
) -> Iterator[tuple[psutil.Process, Path]]:
    """The agent as `ringfence run`, ready (status answers), stopped with SIGINT afterwards. `src`: run
    the Ringfence of another checkout's src/ (a before/after comparison in one run), with that
    checkout's own .venv where it has one: extension processes run the interpreter the agent runs (`-I`,
    no PYTHONPATH), so only then do they run that checkout's SDK too."""
    env = os.environ | {"PYTHONPATH": src} if src else None
    other = Path(src).parent / ".venv" / "bin" / "python" if src else None
    ringfence = [str(other), *RINGFENCE[1:]] if other is not None and other.exists() else RINGFENCE
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp:
        os.chmod(tmp, 0o711)  # sandboxed extensions reach their content under the state dir (o+x)
        state = Path(tmp) / "state"
        config = write_config(state, extra_config)
        proc = subprocess.Popen(
            [*ringfence, "run", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}")
                try:
                    doc = status(state)
                    if not doc["extensions"] or all(e.get("state") == "running" for e in doc["extensions"]):
                        break
                except RuntimeError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("agent did not become ready in 60 s")
                time.sleep(0.2)
            time.sleep(1.0)  # let start-up work (seeding, first execs) settle before measuring
            yield psutil.Process(proc.pid), state
        finally:
            stop(proc)


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(out)


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    total = t.user + t.system
    for child in p.children(recursive=True):
        try:
            ct = child.cpu_times()
            total += ct.user + ct.system
        except psutil.NoSuchProcess:
            continue
    return total


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the agent needs it): sudo .venv/bin/python bench/run.py")
