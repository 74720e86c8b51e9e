"""The status socket: a unix socket in the state dir that only root may open, serving health as JSON.

The agent's side (`StatusServer`) answers each connection with one JSON document and closes it; the
CLI's side (`read_status`) connects, reads to EOF with a deadline, and decodes.

Errors (an AgentError, see agent/_errors.py):
    StatusUnavailable   no agent answers at that socket (not running, wrong state dir, not root)
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable

from ringfence.agent._errors import AgentError

log = logging.getLogger(__name__)

SOCKET_NAME = "status.sock"
MAX_STATUS_BYTES = 4 << 20


class StatusUnavailable(AgentError):
    """No healthy answer from the status socket; the message says why."""


class StatusServer:
    def __init__(self, state_dir: str, render: Callable[[], bytes]) -> None:
        self.path = os.path.join(state_dir, SOCKET_NAME)
        self._render = render
        self._sock: socket.socket | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="ringfence-status", daemon=True)
        self.served = 0
        self.refused = 0

    def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket of a previous run; the caller holds the pid lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bound in a private directory, made 0600 there, then renamed into place: so no umask (not
        # os.umask, which is the whole process's and would make a content thread's files unreadable
        # to the sandbox) ever exposes it. connect() finds a socket by its inode, which rename keeps.
        private = tempfile.mkdtemp(prefix=".status-", dir=os.path.dirname(self.path))  # 0700
        try:
            staged = os.path.join(private, SOCKET_NAME)
            sock.bind(staged)
            os.chmod(staged, 0o600)
            os.rename(staged, self.path)
        except BaseException:
            sock.close()
            raise
        finally:
            shutil.rmtree(private, ignore_errors=True)
        sock.listen(16)
        self._sock = sock
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if os.path.exists(self.path):
                os.unlink(self.path)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        assert self._sock is not None
        while True:
            ready, _, _ = select.select([self._sock.fileno(), self._stop_r], [], [])
            if self._stop_r in ready:
                return
            conn, _ = self._sock.accept()
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0:
            self.refused += 1
            return
        conn.settimeout(2.0)
        try:
            conn.sendall(self._render())
            self.served += 1
        except OSError as e:
            log.debug("status client went away: %s", e)
        except Exception:  # supervision boundary: a failed render must not end the status thread
            log.exception("rendering status failed")


def read_status(state_dir: str, timeout_s: float = 5.0) -> bytes:
    """The running agent's health document (JSON bytes)."""
    path = os.path.join(state_dir, SOCKET_NAME)
    if not os.path.exists(path):
        raise StatusUnavailable(f"no agent is running with state dir {state_dir} (no {path})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        chunks: list[bytes] = []
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_STATUS_BYTES:
                raise StatusUnavailable(f"{path}: status larger than {MAX_STATUS_BYTES} bytes")
    except PermissionError as e:
        raise StatusUnavailable(f"{path}: permission denied (status needs root)") from e
    except (ConnectionRefusedError, FileNotFoundError) as e:
        raise StatusUnavailable(f"{path}: no agent is listening (stale socket?)") from e
    except TimeoutError as e:
        raise StatusUnavailable(f"{path}: the agent did not answer within {timeout_s:g} s") from e
    finally:
        sock.close()
    if not chunks:
        raise StatusUnavailable(f"{path}: the agent closed the connection without an answer (not root?)")
    return b"".join(chunks)
