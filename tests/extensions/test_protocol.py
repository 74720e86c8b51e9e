"""The wire protocol over a real SEQPACKET socketpair: limits, garbage, direction, descriptors."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.events import AuthAnswer, AuthKind, AuthRequest, HeaderStamper, ProcessRef, Verdict
from ringfence.extensions import HandshakeFailed
from ringfence.extensions._process import host_handshake
from ringfence.sdk import Manifest
from ringfence.sdk._protocol import (
    AuthCall,
    AuthReply,
    EventBatch,
    ExtensionFrame,
    FrameTooLarge,
    FrameUndecodable,
    Hello,
    HelloAck,
    HostFrame,
    LogLine,
    Refusal,
    Shutdown,
    Wire,
)

MANIFEST = Manifest(id="t.ext", vendor="tests", version="1")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _request() -> AuthRequest:
    return AuthRequest(
        header=HeaderStamper("t", "h").stamp(),
        kind=AuthKind.EXEC,
        path="/bin/true",
        process=ProcessRef(pid=1),
    )


def test_descriptor_travels_with_its_own_frame(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    host: Wire[ExtensionFrame] = Wire(pair[0], ExtensionFrame)
    ext: Wire[HostFrame] = Wire(pair[1], HostFrame)
    target = tmp_path / "f"
    target.write_bytes(b"contents")
    fd = os.open(target, os.O_RDONLY)
    host.send(EventBatch([]))
    host.send(AuthCall(ticket=7, request=_request(), has_file=True), fd)
    host.send(Shutdown())
    os.close(fd)
    assert ext.recv() == (EventBatch([]), [])
    frame, fds = ext.recv()
    assert isinstance(frame, AuthCall)
    assert frame.ticket == 7
    assert len(fds) == 1
    assert os.pread(fds[0], 100, 0) == b"contents"
    os.close(fds[0])
    assert ext.recv() == (Shutdown(), [])


def test_oversized_frame_is_refused_on_both_sides(pair: tuple[socket.socket, socket.socket]) -> None:
    small: Wire[HostFrame] = Wire(pair[1], HostFrame, max_frame_bytes=4096)
    with pytest.raises(FrameTooLarge):
        small.encode(Refusal("x" * 5000))
    big: Wire[ExtensionFrame] = Wire(pair[0], ExtensionFrame)
    big.send(Refusal("x" * 8000))
    with pytest.raises(FrameTooLarge):
        small.recv()


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x00", b"\x00\x00\x00\x09short", b"\x00\x00\x00\x02\xc1\xc1", b"\x00\x00\x00\x01\x90"],
    ids=["empty-prefix", "short-prefix", "length-mismatch", "not-msgpack", "not-a-frame"],
)
def test_garbage_is_undecodable(pair: tuple[socket.socket, socket.socket], raw: bytes) -> None:
    pair[0].send(raw or b"\x00")
    with pytest.raises(FrameUndecodable):
        Wire(pair[1], HostFrame).recv()


def test_a_frame_only_the_other_side_may_send_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    Wire(pair[1], HostFrame).send(AuthReply(1, AuthAnswer(Verdict.ALLOW)))  # an extension-side frame ...
    with pytest.raises(FrameUndecodable):
        Wire(pair[0], HostFrame).recv()  # ... sent to an extension


def test_finding_fields_out_of_range_are_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    Wire(pair[1], HostFrame).send(LogLine(99, "level out of range"))
    with pytest.raises(FrameUndecodable, match="level"):
        Wire(pair[0], ExtensionFrame).recv()


def test_agent_refuses_an_extension_speaking_another_protocol_version(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    heard: list[object] = []
    ext: Wire[HostFrame] = Wire(pair[1], HostFrame)

    def fake_extension() -> None:
        heard.append(ext.recv()[0])
        ext.sock.send(Wire(pair[1], ExtensionFrame).encode(HelloAck(99, MANIFEST)))
        heard.append(ext.recv()[0])

    t = threading.Thread(target=fake_extension)
    t.start()
    hello = Hello(protocols=(1,), agent_version="test", extension_id="t.ext")
    with pytest.raises(HandshakeFailed) as err:
        host_handshake(Wire(pair[0], ExtensionFrame), hello, 5)
    t.join(5)
    assert err.value.refused
    assert "the agent speaks [1], t.ext speaks 99" in str(err.value)
    assert isinstance(heard[1], Refusal)
    assert "speaks 99" in heard[1].reason


def test_handshake_deadline_passes_when_the_extension_says_nothing(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    hello = Hello(protocols=(1,), agent_version="test", extension_id="t.ext")
    with pytest.raises(HandshakeFailed, match="no handshake within"):
        host_handshake(Wire(pair[0], ExtensionFrame), hello, 0.2)
