"""A real agent's events.jsonl and findings.jsonl, line by line, against the OCSF 1.8.0 schema.

The agent runs on the real kernel (marks on the test's tmpfs, a unique audit key) with the reputation
engine; the test execs programs, creates/renames/deletes files (and a name and an argv that are not
UTF-8), makes a loopback server bind, listen and
accept a client's connect, and runs a blocklisted binary. Whatever else the machine does meanwhile is
recorded too, and every line must be valid.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._extensions import make_supervisor
from tests.agent.helpers import scoped_config
from tests.ocsf.validator import problems

REPO = str(Path(__file__).resolve().parents[2])
SERVER = """
import socket, sys
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    conn, _ = s.accept()
    conn.close()
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A state dir the unprivileged extension user can reach (pytest's tmp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="rf-ocsf-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def agent(tmpfs: Path, shared_dir: Path) -> Iterator[tuple[Agent, Path]]:
    """The agent with the reputation engine, whose blocklist holds the hash of tmpfs/evil."""
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text(f"{hashlib.sha256(evil.read_bytes()).hexdigest()}  ocsf-evil\n")
    config = scoped_config(
        tmpfs, shared_dir / "state", extensions=("ringfence.reputation",), import_paths=(REPO,)
    )
    content = {"ringfence.reputation": {"blocklist.txt": str(blocklist)}}
    config = msgspec.structs.replace(
        config, extensions=msgspec.structs.replace(config.extensions, content=content)
    )
    a = Agent(config, console=Console(io.StringIO()), extensions=make_supervisor)
    a.start()
    try:
        assert a.unavailable == {}, a.unavailable
        states = {e.id: (e.state, e.last_error) for e in a.health().extensions}
        assert states["ringfence.reputation"][0] == "running", states
        yield a, evil
    finally:
        a.stop()


def _lines(state: Path, name: str) -> list[dict[str, Any]]:
    """The complete lines of a log and its rotated files (a line being written is not complete yet)."""
    lines: list[str] = []
    for path in sorted(state.glob(f"{name}*")):
        lines += path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


def _wait_until(check: Callable[[], list[str]], timeout_s: float = 20) -> None:
    """Until `check` names nothing missing; fails naming what was still missing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while missing := check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not recorded within {timeout_s} s: {missing}")
        time.sleep(0.1)


def _loopback_connection() -> tuple[int, int]:
    """A child binds, listens and accepts; another connects (children: audit sees only new tasks).
    The pids of the server and the client."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    code = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
    client = subprocess.Popen([sys.executable, "-c", code])
    assert client.wait(timeout=30) == 0
    assert server.wait(timeout=30) == 0
    return server.pid, client.pid


def _expected(tmpfs: Path, marker: str, pids: tuple[int, int]) -> dict[str, Callable[[dict[str, Any]], bool]]:
    a, b = str(tmpfs / "a.txt"), str(tmpfs / "b.txt")

    def net(syscall: str, pid: int) -> Callable[[dict[str, Any]], bool]:
        return lambda d: (
            d["class_uid"] == 4001
            and d["unmapped"]["syscall"].startswith(syscall)
            and d.get("actor", {}).get("process", {}).get("pid") == pid
        )

    return {
        "launch": lambda d: d["class_uid"] == 1007 and marker in d["process"].get("cmd_line", ""),
        "odd argv": lambda d: d["class_uid"] == 1007 and f"{marker}\\xff" in d["process"].get("cmd_line", ""),
        "odd name": lambda d: d["class_uid"] == 1001 and d["file"]["path"] == f"{tmpfs}/\\xff-odd",
        "create": lambda d: d["class_uid"] == 1001 and d["activity_id"] == 1 and d["file"]["path"] == a,
        "rename": lambda d: d["type_uid"] == 100105 and d.get("file_result", {}).get("path") == b,
        "delete": lambda d: d["class_uid"] == 1001 and d["activity_id"] == 4 and d["file"]["path"] == b,
        **{s: net(s, pids[0]) for s in ("bind", "listen", "accept")},
        "connect": net("connect", pids[1]),
        "finding": lambda d: d["class_uid"] == 2004 and "ocsf-evil" in d["finding_info"]["title"],
    }


def test_every_line_a_real_agent_writes_is_valid_ocsf_1_8_0(agent, tmpfs: Path) -> None:
    running, evil = agent
    state = Path(running.state_dir)
    marker = f"MARKER-{uuid.uuid4().hex}"
    subprocess.run(["/bin/sh", "-c", "exit 0", marker], check=True)
    subprocess.run([b"/bin/sh", b"-c", b"exit 0", marker.encode() + b"\xff"], check=True)  # not UTF-8
    os.close(os.open(bytes(tmpfs) + b"/\xff-odd", os.O_CREAT | os.O_WRONLY, 0o600))
    (tmpfs / "a.txt").write_text("hello")
    (tmpfs / "a.txt").rename(tmpfs / "b.txt")
    (tmpfs / "b.txt").unlink()
    pids = _loopback_connection()
    with pytest.raises(PermissionError):
        subprocess.run([str(evil)], check=False)
    expected = _expected(tmpfs, marker, pids)

    def missing() -> list[str]:
        lines = _lines(state, "events.jsonl") + _lines(state, "findings.jsonl")
        return [name for name, match in expected.items() if not any(match(d) for d in lines)]

    _wait_until(missing)
    running.stop()  # flushes the sinks: every line written is in the files now

    events, findings = _lines(state, "events.jsonl"), _lines(state, "findings.jsonl")
    assert {d["class_uid"] for d in events} >= {1001, 1007, 4001, 2004}
    assert findings and {d["class_uid"] for d in findings} == {2004}
    bad = {f"{d['type_uid']} {p}" for d in events + findings for p in problems(d)}
    assert not bad, f"{len(bad)} kinds of problems in {len(events) + len(findings)} lines:\n" + "\n".join(
        sorted(bad)[:40]
    )
