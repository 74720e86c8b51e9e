"""The status socket: a unix socket in the state dir that only root may open, serving health as JSON.

The agent's side (`StatusServer`) answers each connection with one JSON document and closes it; the
CLI's side (`read_status`) connects, reads to EOF with a deadline, and decodes.

A client may send a request first: one JSON object (at most MAX_REQUEST_BYTES), then shut its writing
side down. An empty request (EOF at once, as `read_status` sends) or none within REQUEST_WAIT_S (a
client that only reads, such as `socat - UNIX:status.sock`) is a health request; any other is handed to
the server's `handle` (`{"command": ...}`: `ringfence content rollback`, `restore-blocking`), whose
answer is the JSON document sent back. Only root may connect, for either.

Errors (an AgentError, see agent/_errors.py):
    StatusUnavailable   no agent answers at that socket (not running, wrong state dir, not root)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from ringfence._linux import readable
from ringfence.agent._errors import AgentError

log = logging.getLogger(__name__)

SOCKET_NAME = "status.sock"
STAGING_DIR = ".status-staging"  # where the socket is bound before it is renamed into place
MAX_STATUS_BYTES = 4 << 20
MAX_REQUEST_BYTES = 64 << 10
REQUEST_WAIT_S = 0.5
Handle = Callable[[dict[str, Any]], dict[str, Any]]


class StatusUnavailable(AgentError):
    """No healthy answer from the status socket; the message says why."""


class StatusServer:
    def __init__(self, state_dir: str, render: Callable[[], bytes], handle: Handle | None = None) -> None:
        self.path = os.path.join(state_dir, SOCKET_NAME)
        self._render = render
        self._handle = handle
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
        try:
            staged = os.path.join(_staging_dir(os.path.dirname(self.path)), SOCKET_NAME)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)  # a crash between the bind and the rename
            sock.bind(staged)
            os.chmod(staged, 0o600)
            os.rename(staged, self.path)
        except BaseException:
            sock.close()
            raise
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
            ready = readable([self._sock.fileno(), self._stop_r], None)
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
            request = _read_request(conn)
            conn.sendall(self._render() if request is None else self._answer(request))
            self.served += 1
        except OSError as e:
            log.debug("status client went away: %s", e)
        except Exception:  # supervision boundary: a failed render must not end the status thread
            log.exception("rendering status failed")

    def _answer(self, request: bytes) -> bytes:
        try:
            body = msgspec.json.decode(request)
        except msgspec.DecodeError as e:
            return msgspec.json.encode({"ok": False, "error": f"request is not JSON: {e}"})
        if not isinstance(body, dict) or not isinstance(body.get("command"), str):
            return msgspec.json.encode({"ok": False, "error": 'request must be {"command": ...}'})
        if self._handle is None:
            return msgspec.json.encode({"ok": False, "error": "this agent takes no commands"})
        return msgspec.json.encode(self._handle(body))


def _read_request(conn: socket.socket) -> bytes | None:
    """The client's request, None for a health request (nothing sent, within REQUEST_WAIT_S)."""
    ready = readable([conn], REQUEST_WAIT_S)
    if not ready:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise OSError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    return b"".join(chunks) or None


def send_command(state_dir: str, request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one command to the running agent; its answer ({"ok": bool, "message" | "error": str})."""
    raw = read_status(state_dir, timeout_s, request=msgspec.json.encode(request))
    try:
        answer = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise StatusUnavailable(f"the agent's answer does not decode: {e}") from e
    if not isinstance(answer, dict) or "ok" not in answer:
        raise StatusUnavailable(
            "the agent did not understand the command (an older agent? restart it with this version)"
        )
    return answer


def _staging_dir(state_dir: str) -> str:
    """STATE_DIR/.status-staging: root's, 0700, and kept. Not one made and removed per start: the file
    sensor may read the bind's event after such a directory is gone, and then it cannot find its path
    (the state dir's ignore mark covers its children only), which counts as a drop."""
    path = os.path.join(state_dir, STAGING_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise OSError(errno.EEXIST, "not a private directory of this user (0700): remove it", path)
    return path


def read_status(state_dir: str, timeout_s: float = 5.0, *, request: bytes = b"") -> bytes:
    """The running agent's health document (JSON bytes), or its answer to `request`."""
    path = os.path.join(state_dir, SOCKET_NAME)
    if not os.path.exists(path):
        raise StatusUnavailable(f"no agent is running with state dir {state_dir} (no {path})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        if request:
            sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the request is complete (empty: health)
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
