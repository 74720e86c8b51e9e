"""The wire protocol between the agent and an extension process.

Transport: one `AF_UNIX`/`SOCK_SEQPACKET` socketpair per extension. SEQPACKET keeps message boundaries,
so a descriptor passed with `SCM_RIGHTS` arrives with exactly the frame it was sent with (on a stream
socket ancillary data attaches to a byte range, and a read may straddle two frames), and a send is all or
nothing (a timed-out write never leaves half a frame behind to desynchronise the peer).

Frame: a 4-byte big-endian length, then that many bytes of msgpack of one of the Structs below (a tagged
union, tag field `t`). The length must equal the rest of the message and be at most `max_frame_bytes`.

Handshake: the agent sends `Hello` (the protocol versions it supports); the extension runs its `setup`
and answers `HelloAck` (the version it speaks, and its manifest), `Refusal`, or `SetupFailed` (setup
raised: the exception's one-line message; then it exits). Either side refuses a version it does not
speak, naming both. Then:
    agent -> extension: EventBatch, AuthCall (+ one fd when `has_file`), FileCall (+ exactly one fd),
                        ActionReply, Shutdown
    extension -> agent: AuthReply, FindingReport, ActionCall, StatsReport, LogLine, VerdictsStale,
                        Problem
Each side decodes only the frames the other side may send: anything else is a protocol error.

Errors (the tree):
    ProtocolError           a frame that breaks the protocol; the peer cannot be trusted to continue
      FrameTooLarge         over `max_frame_bytes` (either direction)
      FrameUndecodable      not a frame: bad length, bad msgpack, wrong type, a field out of range
    PeerClosed              the other end went away (EOF, reset); not the peer's fault by itself
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from ringfence.events import (
    ActionRequest,
    ActionResult,
    AuthAnswer,
    AuthRequest,
    Event,
    FileWritten,
    ProcessRef,
    Severity,
    valid_text,
)
from ringfence.sdk._manifest import Manifest

DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_TEXT = 8192
_LEN = struct.Struct(">I")
_MAX_FDS = 1

Short = Annotated[str, msgspec.Meta(max_length=512)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Id = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class ProtocolError(Exception):
    """A frame that breaks the protocol. The message says what was wrong."""


class FrameTooLarge(ProtocolError):
    pass


class FrameUndecodable(ProtocolError):
    pass


class PeerClosed(ConnectionError):
    """The peer closed the socket or died."""


# -- agent -> extension -----------------------------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag="hello", tag_field="t"):
    protocols: tuple[int, ...]
    agent_version: str
    extension_id: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    content_dir: str | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    stats_interval_ms: int = 1000


class EventBatch(msgspec.Struct, frozen=True, tag="events", tag_field="t"):
    events: list[Event]


class AuthCall(msgspec.Struct, frozen=True, kw_only=True, tag="auth", tag_field="t"):
    ticket: Id
    request: AuthRequest
    has_file: bool = False  # one read-only descriptor rides with this frame


class FileCall(msgspec.Struct, frozen=True, tag="file", tag_field="t"):
    """A file written under a close-write scan path; its read-only descriptor rides with this frame (only
    to an extension that subscribes to `file.written` and holds the `file-contents` permission)."""

    notice: FileWritten


class ActionReply(msgspec.Struct, frozen=True, tag="action-result", tag_field="t"):
    token: Id
    result: ActionResult


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown", tag_field="t"):
    reason: Short = ""


class Refusal(msgspec.Struct, frozen=True, tag="refusal", tag_field="t"):
    """Either side, at the handshake only: why it will not go on."""

    reason: Text


# -- extension -> agent -----------------------------------------------------------------------------------


class HelloAck(msgspec.Struct, frozen=True, tag="hello-ack", tag_field="t"):
    protocol: int
    manifest: Manifest


class AuthReply(msgspec.Struct, frozen=True, tag="verdict", tag_field="t"):
    ticket: Id
    answer: AuthAnswer


AttackId = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
"""An ATT&CK technique id (T1059.004) or tactic short name (defense-evasion), as Sigma tags carry them."""


class FindingReport(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="finding", tag_field="t"
):
    """A DetectionFinding without header and source: the agent sets those, never the extension."""

    title: Short
    severity: Severity
    rule: Short | None = None
    description: Text | None = None
    process: ProcessRef | None = None
    file_path: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    file_sha256: Sha256 | None = None
    action: Short | None = None
    related_event: Short | None = None
    techniques: Annotated[tuple[AttackId, ...], msgspec.Meta(max_length=32)] = ()  # "T1059", "T1059.004"
    tactics: Annotated[tuple[AttackId, ...], msgspec.Meta(max_length=16)] = ()  # "execution", ...


class ActionCall(msgspec.Struct, frozen=True, tag="action", tag_field="t"):
    token: Id
    request: ActionRequest


class StatsReport(msgspec.Struct, frozen=True, tag="stats", tag_field="t"):
    counters: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Id], msgspec.Meta(max_length=64)]


class VerdictsStale(msgspec.Struct, frozen=True, tag="verdicts-stale", tag_field="t"):
    """The extension's verdicts changed (new content): the agent forgets every cached ALLOW."""

    reason: Short


class LogLine(msgspec.Struct, frozen=True, tag="log", tag_field="t"):
    level: Annotated[int, msgspec.Meta(ge=0, le=50)]
    message: Text


class SetupFailed(msgspec.Struct, frozen=True, tag="setup-failed", tag_field="t"):
    """At the handshake, instead of HelloAck: `setup` raised. One line: the exception's type and message."""

    message: Text


class Problem(msgspec.Struct, frozen=True, tag="problem", tag_field="t"):
    """What is wrong now while the extension runs on (e.g. new content rejected), None once fixed."""

    message: Text | None


HostFrame = Hello | EventBatch | AuthCall | FileCall | ActionReply | Shutdown | Refusal
ExtensionFrame = (
    HelloAck
    | AuthReply
    | FindingReport
    | ActionCall
    | StatsReport
    | LogLine
    | VerdictsStale
    | Problem
    | SetupFailed
    | Refusal
)

F = TypeVar("F")


class Wire(Generic[F]):
    """One end of the socketpair: encodes what this side sends, decodes (only) what the peer may send.

    `send` and `recv` may be called from different threads (SEQPACKET sends are atomic). Both honour the
    socket's timeout and raise `TimeoutError` when it passes.
    """

    def __init__(self, sock: socket.socket, incoming: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[F] = msgspec.msgpack.Decoder(incoming)
        self._buf = bytearray(max_frame_bytes + _LEN.size + 1)
        self._anc = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)

    def encode(self, frame: msgspec.Struct) -> bytes:
        try:
            payload = self._encoder.encode(frame)
        except UnicodeEncodeError:
            # A path or argv that was not UTF-8 (the sensors keep its bytes as lone surrogates) cannot
            # go into msgpack as it is: send it as the same text the event log shows (\xNN). Rare, so
            # only then. Without this the sender's thread died and every later AUTH missed its deadline.
            payload = self._encoder.encode(valid_text(msgspec.to_builtins(frame)))
        if len(payload) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"{type(frame).__name__} frame of {len(payload)} bytes > {self.max_frame_bytes}"
            )
        return _LEN.pack(len(payload)) + payload

    def send(self, frame: msgspec.Struct, fd: int | None = None) -> None:
        """Send one frame, with `fd` attached when given. Raises FrameTooLarge, TimeoutError, OSError."""
        data = self.encode(frame)
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def recv(self) -> tuple[F, list[int]]:
        """The next frame and the descriptors that came with it (the caller owns them).

        Raises PeerClosed, TimeoutError, or a ProtocolError (after closing any descriptors received)."""
        try:
            n, anc, flags, _ = self.sock.recvmsg_into([self._buf], self._anc)
        except ConnectionResetError as e:
            raise PeerClosed("the peer reset the connection") from e
        fds = _fds_of(anc)
        if n == 0 and not fds:
            raise PeerClosed("the peer closed the socket")
        try:
            return self._decode(n, flags), fds
        except ProtocolError:
            close_fds(fds)
            raise

    def _decode(self, n: int, flags: int) -> F:
        if flags & socket.MSG_TRUNC or n > self.max_frame_bytes + _LEN.size:
            raise FrameTooLarge(f"frame larger than {self.max_frame_bytes} bytes")
        if flags & socket.MSG_CTRUNC:
            raise FrameUndecodable("more descriptors than a frame may carry")
        if n < _LEN.size:
            raise FrameUndecodable(f"frame of {n} bytes has no length prefix")
        (length,) = _LEN.unpack_from(self._buf)
        if length != n - _LEN.size:
            raise FrameUndecodable(f"length prefix says {length} bytes, the frame has {n - _LEN.size}")
        try:
            return self._decoder.decode(memoryview(self._buf)[_LEN.size : n])
        except msgspec.DecodeError as e:
            raise FrameUndecodable(f"undecodable frame: {e}") from e


def _fds_of(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    """`text` on one line (its lines joined by '; '), at most `limit` characters."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
