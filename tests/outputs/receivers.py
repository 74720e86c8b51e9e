"""Syslog receivers on loopback for the tests: a TCP one that reads octet-counted frames, or never reads."""

from __future__ import annotations

import socket
import threading

from tests.outputs.rfc5424_strict import Message, parse, unframe


class TcpReceiver:
    """Accepts connections and reads octet-counted frames (or, with `read=False`, never reads)."""

    def __init__(self, port: int = 0, *, read: bool = True, rcvbuf: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.read = read
        self.messages: list[Message] = []
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            if self.read:
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            frames, buf = unframe(buf + data)
            self.messages += [parse(f) for f in frames]

    def close(self) -> None:
        """The listener first: a connect after it is refused, never left in a backlog nobody accepts."""
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        for conn in self.connections:
            conn.close()
