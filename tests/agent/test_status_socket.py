"""The status socket: root-only from the moment it exists, without touching the process umask."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.agent._status import SOCKET_NAME, STAGING_DIR, StatusServer, read_status
from ringfence.events import Event, FileActivity
from ringfence.sensors.fanotify import FileSensor
from tests.sensors.fanotify.support import PidResolver, wait_until


@pytest.fixture
def server(shared_dir: Path) -> Iterator[StatusServer]:
    """In a directory others may pass through (0711, like the state dir): only the socket's own mode
    keeps them out."""
    shared_dir.chmod(0o711)
    srv = StatusServer(str(shared_dir), lambda: b'{"ok": true}')
    yield srv
    srv.stop()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_socket_is_0600_and_the_umask_is_left_alone(tmp_path: Path, umask: int) -> None:
    tmp_path.chmod(0o711)
    old = os.umask(umask)
    try:
        srv = StatusServer(str(tmp_path), lambda: b'{"ok": true}')
        srv.start()
        try:
            assert os.umask(umask) == umask, "start() changed the process umask"
            sock = tmp_path / SOCKET_NAME
            assert stat.S_ISSOCK(sock.lstat().st_mode)
            assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
            assert read_status(str(tmp_path)) == b'{"ok": true}'
            assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING_DIR, SOCKET_NAME]
            staging = tmp_path / STAGING_DIR
            assert stat.S_IMODE(staging.lstat().st_mode) == 0o700 and not list(staging.iterdir())
        finally:
            srv.stop()
    finally:
        os.umask(old)


def test_another_user_cannot_connect(server: StatusServer, shared_dir: Path) -> None:
    server.start()
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(3)\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", probe,
         str(shared_dir / SOCKET_NAME)],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr


def test_status_answers_when_the_agent_holds_more_than_1024_descriptors(
    shared_dir: Path, descriptors_past_1024: int
) -> None:
    """A few thousand freshly written programs, each run once, fill the verdict cache with a descriptor
    each: the status socket's connections are then numbered past 1024, where select(2) raised and every
    status request was closed unanswered (found by the fresh-binary storm of bench/cost_bench.py)."""
    shared_dir.chmod(0o711)
    srv = StatusServer(str(shared_dir), lambda: b'{"ok": true}')
    srv.start()
    try:
        assert read_status(str(shared_dir)) == b'{"ok": true}'
        assert read_status(str(shared_dir), request=b'{"command": "x"}') == (
            b'{"ok":false,"error":"this agent takes no commands"}'
        )
    finally:
        srv.stop()


@pytest.mark.parametrize("planted", ["symlink", "open dir"])
def test_a_staging_path_not_private_refuses_start(tmp_path: Path, planted: str) -> None:
    staging = tmp_path / STAGING_DIR
    if planted == "symlink":
        staging.symlink_to(tmp_path)
    else:
        staging.mkdir(mode=0o755)
        staging.chmod(0o755)
    srv = StatusServer(str(tmp_path), lambda: b"{}")
    try:
        with pytest.raises(OSError, match=r"not a private directory.*\.status-staging"):
            srv.start()
        assert not (tmp_path / SOCKET_NAME).exists()
    finally:
        srv.stop()


@pytest.mark.kernel
def test_the_file_sensor_resolves_the_sockets_staging_even_when_it_reads_late(tmpfs: Path) -> None:
    """The socket is bound in a staging directory inside the state dir and renamed into place. The state
    dir's ignore mark covers its children only, so the bind comes through: when it was read after a
    staging directory made and removed per start had gone, its path could not be found, and every start
    counted a drop (which makes status degraded). The file sensor is made to read late here: its sink
    holds the first event until the server has started and stopped."""
    state = tmpfs / "state"
    state.mkdir(mode=0o711)
    held, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def sink(event: Event) -> None:
        assert isinstance(event, FileActivity)
        seen.append(event.path)
        if not held.is_set():
            held.set()
            release.wait(10)

    sensor = FileSensor(sink, PidResolver(), "h", [str(tmpfs)], exclude_prefixes=(str(state),))
    sensor.start()
    try:
        (tmpfs / "first").write_text("x")
        assert held.wait(10), "the file sensor saw nothing"
        for _ in range(3):  # a restart finds the staging of the run before
            srv = StatusServer(str(state), lambda: b'{"ok": true}')
            srv.start()
            srv.stop()
        release.set()
        (tmpfs / "last").write_text("x")
        wait_until(lambda: str(tmpfs / "last") in seen, what="the event after the server's")
        detail = sensor.statistics().detail
        assert (detail["unresolved"], sensor.statistics().dropped) == (0, 0)
        assert not any(p.startswith(str(state)) for p in seen), "the agent's own files were reported"
    finally:
        release.set()
        sensor.stop()
