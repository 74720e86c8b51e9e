"""The status socket: root-only from the moment it exists, without touching the process umask."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.agent._status import SOCKET_NAME, StatusServer, read_status


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
            assert sorted(p.name for p in tmp_path.iterdir()) == [SOCKET_NAME], "a staging dir was left"
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
