"""file.written notices in the SDK runtime: each comes with exactly one descriptor, reaches `on_file`,
and is closed afterwards whatever the handler does; a full inbox drops and closes; the manifest needs the
file-contents permission for the kind."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence._counters import Counters
from ringfence.events import EventKind, FileWritten, HeaderStamper
from ringfence.sdk import AuthFile, Extension, Manifest, ManifestError, Permission
from ringfence.sdk._protocol import ExtensionFrame, FileCall, Hello, HelloAck, Shutdown, StatsReport, Wire
from ringfence.sdk._runtime import INBOX_FILES, _Inbox, run_extension

STAMP = HeaderStamper("t", "h")


class Reader(Extension):
    manifest = Manifest(
        id="t.reader",
        vendor="tests",
        version="1",
        subscribes=frozenset({EventKind.FILE_WRITTEN}),
        permissions=frozenset({Permission.FILE_CONTENTS}),
    )
    seen: list[tuple[str, bytes]] = []  # noqa: RUF012 - the test reads what the handler saw

    def on_file(self, notice: FileWritten, file: AuthFile) -> None:
        Reader.seen.append((notice.path, b"".join(file.chunks())))
        if notice.path.endswith("raise"):
            raise RuntimeError("handler bug")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Host:
    def __init__(self) -> None:
        host_sock, self.ext_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host_sock.settimeout(10)
        self.wire: Wire[ExtensionFrame] = Wire(host_sock, ExtensionFrame)
        self.status: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.status.append(run_extension(Reader, self.ext_sock))
        )
        self.thread.start()
        self.wire.send(
            Hello(protocols=(1,), agent_version="t", extension_id="t.reader", stats_interval_ms=50)
        )
        self.until(HelloAck)

    def until(self, kind: type, pred: object = None) -> object:
        while True:
            frame, _ = self.wire.recv()
            if isinstance(frame, kind) and (pred is None or pred(frame)):  # type: ignore[operator]
                return frame

    def send_file(self, path: Path, *, with_fd: bool = True) -> None:
        call = FileCall(FileWritten(header=STAMP.stamp(), path=str(path)))
        if not with_fd:
            self.wire.send(call)
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.wire.send(call, fd)
        finally:
            os.close(fd)  # the agent closes its copy once sent, as the connection does

    def close(self) -> None:
        self.thread.join(10)
        self.wire.sock.close()
        self.ext_sock.close()


@pytest.fixture
def host() -> Iterator[Host]:
    Reader.seen = []
    h = Host()
    try:
        yield h
    finally:
        h.close()


def test_each_written_file_reaches_on_file_and_its_descriptor_is_closed_after(
    host: Host, tmp_path: Path
) -> None:
    before = open_fds()
    for name, data in (("a", b"first"), ("b-raise", b"second"), ("c", b"third")):
        (tmp_path / name).write_bytes(data)
        host.send_file(tmp_path / name)
    stats = host.until(StatsReport, lambda f: f.counters.get("files_handled") == 3)
    assert isinstance(stats, StatsReport)
    assert stats.counters["file_errors"] == 1 and stats.counters["files_received"] == 3
    assert Reader.seen == [
        (str(tmp_path / "a"), b"first"),
        (str(tmp_path / "b-raise"), b"second"),
        (str(tmp_path / "c"), b"third"),
    ]
    assert open_fds() == before  # every descriptor the runtime received is closed again
    host.wire.send(Shutdown())
    host.thread.join(10)
    assert host.status == [0]


def test_written_file_notice_without_its_descriptor_ends_the_extension(host: Host, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    host.send_file(tmp_path / "a", with_fd=False)
    host.thread.join(10)
    assert host.status == [3]
    assert Reader.seen == []


def test_full_file_inbox_drops_the_newest_and_closes_its_descriptor(tmp_path: Path) -> None:
    counters = Counters()
    inbox = _Inbox(counters)
    path = tmp_path / "f"
    path.write_bytes(b"x")
    before = open_fds()
    for _ in range(INBOX_FILES + 3):
        inbox.add_file(
            FileCall(FileWritten(header=STAMP.stamp(), path=str(path))), os.open(path, os.O_RDONLY)
        )
    assert counters.snapshot()["files_dropped"] == 3
    assert open_fds() == before + INBOX_FILES
    inbox.drain_fds()
    assert open_fds() == before


def test_subscribing_to_written_files_needs_the_file_contents_permission() -> None:
    with pytest.raises(ManifestError, match=r"file\.written needs the file-contents permission"):
        Manifest(id="t.nope", vendor="t", version="1", subscribes=frozenset({EventKind.FILE_WRITTEN}))
