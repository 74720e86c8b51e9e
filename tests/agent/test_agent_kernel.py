"""The agent end to end on the real kernel: real execs, files, sockets; events as the issue promises."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ringfence.agent import Agent, Console
from ringfence.broker import AuthPolicy, ThreadedSubscriber
from ringfence.events import (
    AuthAnswer,
    EventKind,
    FileActivity,
    FileActivityId,
    NetworkActivity,
    ProcessActivity,
    ProcessActivityId,
    Verdict,
)
from tests.agent.helpers import Collector, scoped_config
from tests.kernel import fanotify_fds

ALL = frozenset({EventKind.PROCESS, EventKind.FILE, EventKind.NETWORK})


@pytest.fixture
def agent_with(tmpfs: Path, tmp_path: Path) -> Iterator:
    agents: list[Agent] = []

    def start(collector: Collector, *, auth: AuthPolicy | None = None, deadline_ms: int = 250) -> Agent:
        agent = Agent(
            scoped_config(tmpfs, tmp_path / "state", deadline_ms=deadline_ms), console=Console(io.StringIO())
        )
        kinds = ALL | ({EventKind.AUTH_EXEC} if auth else set())
        sub = ThreadedSubscriber("test", collector, frozenset(kinds), auth_policy=auth).start()
        agent.broker.subscribe(sub)
        agents.append(agent)
        agent.start()
        assert agent.unavailable == {}, agent.unavailable
        return agent

    yield start
    for agent in agents:
        agent.stop()


def test_exec_of_short_process_has_exact_argv_cwd_and_parent(agent_with, tmp_path: Path) -> None:
    c = Collector()
    agent_with(c)
    marker = f"MARKER-{uuid.uuid4().hex}"
    argv = ["/bin/sh", "-c", "exit 0", marker]
    subprocess.run(argv, cwd=tmp_path, check=True)
    e = c.wait_for(
        lambda e: (
            isinstance(e, ProcessActivity)
            and e.activity is ProcessActivityId.LAUNCH
            and marker in e.process.cmdline
        )
    )
    assert isinstance(e, ProcessActivity)
    assert list(e.process.cmdline) == argv
    assert e.process.cwd == str(tmp_path)
    assert e.process.ppid == os.getpid()
    assert e.process.exe is not None and e.process.exe.endswith(("sh", "dash", "bash"))


def test_file_create_write_rename_delete_arrive_with_paths(agent_with, tmpfs: Path) -> None:
    c = Collector()
    agent_with(c)
    a, b = tmpfs / "a.txt", tmpfs / "b.txt"
    a.write_text("hello")
    a.rename(b)
    b.unlink()

    def file_event(activity: FileActivityId, path: Path):
        return lambda e: isinstance(e, FileActivity) and e.activity is activity and e.path == str(path)

    c.wait_for(file_event(FileActivityId.CREATE, a))
    c.wait_for(file_event(FileActivityId.CLOSE_WRITE, a))
    renamed = c.wait_for(file_event(FileActivityId.RENAME, a))
    assert isinstance(renamed, FileActivity) and renamed.new_path == str(b)
    c.wait_for(file_event(FileActivityId.DELETE, b))


def test_loopback_connect_gives_network_event_with_addresses_and_pid(agent_with) -> None:
    c = Collector()
    agent_with(c)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        child = subprocess.Popen(
            ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"]
        )
        conn, _ = srv.accept()
        conn.close()
        child.wait(timeout=30)
    e = c.wait_for(
        lambda e: (
            isinstance(e, NetworkActivity)
            and e.syscall == "connect"
            and e.remote is not None
            and e.remote.port == port
        )
    )
    assert isinstance(e, NetworkActivity)
    assert e.remote is not None and e.remote.ip == "127.0.0.1"
    assert e.process is not None and e.process.pid == child.pid
    assert e.success


def test_auth_subscriber_denies_one_path_others_run(agent_with, true_copy: Path) -> None:
    bad = true_copy.parent / "bad"
    shutil.copy2(true_copy, bad)

    def decide(ticket):
        if ticket.request.path == str(bad):
            return AuthAnswer(Verdict.DENY, reason="test")
        return AuthAnswer(Verdict.ALLOW)

    c = Collector(decide)
    agent_with(c, auth=AuthPolicy())
    with pytest.raises(PermissionError):
        subprocess.run([str(bad)], check=True)
    assert subprocess.run([str(true_copy)], check=False).returncode == 0


def test_silent_auth_subscriber_exec_completes_at_deadline_and_miss_counted(
    agent_with, true_copy: Path
) -> None:
    c = Collector(decide=None)  # never answers
    agent = agent_with(c, auth=AuthPolicy(deadline_ms=100), deadline_ms=100)
    assert subprocess.run([str(true_copy)], check=False, timeout=30).returncode == 0
    stats = agent.broker.statistics().auth
    assert stats.subscribers["test"].deadline_misses >= 1
    assert stats.unanswered_at_deadline >= 1
    assert str(true_copy) in c.asked


def test_stop_leaves_no_fanotify_fd_audit_rule_or_child(tmpfs: Path, tmp_path: Path) -> None:
    from ringfence.sensors.audit import list_rule_keys

    config = scoped_config(tmpfs, tmp_path / "state")
    before = fanotify_fds()
    threads_before = threading.active_count()
    agent = Agent(config, console=Console(io.StringIO()))
    agent.start()
    assert fanotify_fds() > before
    assert config.sensors.audit_key in list_rule_keys()
    agent.stop()
    assert fanotify_fds() == before
    assert config.sensors.audit_key not in list_rule_keys()
    assert threading.active_count() == threads_before, threading.enumerate()
    assert psutil.Process().children() == []
