"""An engine's own verdict on its content reaches the agent: a failed setup as one line (SetupFailed), a
rejected new version while running (Problem). SDK runtime in a thread, the agent's real handshake code."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ringfence.extensions._process import HandshakeFailed, host_handshake
from ringfence.sdk import Context, EventKind, Extension, Manifest
from ringfence.sdk._manifest import PROTOCOL_VERSION
from ringfence.sdk._protocol import ExtensionFrame, Hello, HelloAck, Problem, Shutdown, Wire
from ringfence.sdk._runtime import EXIT_OK, EXIT_SETUP, run_extension, setup_failure_message

MANIFEST = Manifest(id="t.content", vendor="tests", version="0", subscribes=frozenset({EventKind.PROCESS}))


class BadContent(Exception):
    pass


class FailsSetup(Extension):
    manifest = MANIFEST

    def setup(self, ctx: Context) -> None:
        raise BadContent("/c/active/bl.txt:2: error: 'zz' is not a sha256\n  /c/active/bl.txt:5: error: x")


class ReportsProblems(Extension):
    """Reports a problem on its first tick and clears it on the second."""

    manifest = MANIFEST

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.ticks = 0

    def on_tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            self.ctx.report_problem("new list rejected:\n/c/active/bl.txt:1: error: bad")
        elif self.ticks == 2:
            self.ctx.report_problem(None)


class Pair:
    def __init__(self, ext: type[Extension]) -> None:
        self.host, ext_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.wire: Wire[ExtensionFrame] = Wire(self.host, ExtensionFrame)
        self.status: list[int] = []
        self.thread = threading.Thread(target=lambda: self.status.append(run_extension(ext, ext_sock)))
        self.thread.start()
        self.hello = Hello(
            protocols=(PROTOCOL_VERSION,), agent_version="t", extension_id=MANIFEST.id, stats_interval_ms=50
        )

    def close(self) -> None:
        if self.thread.is_alive():
            self.wire.send(Shutdown("test over"))
        self.thread.join(timeout=10)
        self.host.close()


@pytest.fixture
def pair_of() -> Iterator[list[Pair]]:
    pairs: list[Pair] = []
    yield pairs
    for p in pairs:
        p.close()


def test_failed_setup_reaches_the_agent_as_its_one_line_message(pair_of: list[Pair]) -> None:
    pair = Pair(FailsSetup)
    pair_of.append(pair)
    with pytest.raises(HandshakeFailed) as raised:
        host_handshake(pair.wire, pair.hello, timeout_s=10)
    own = raised.value.own_error
    assert own == (
        "BadContent: /c/active/bl.txt:2: error: 'zz' is not a sha256; /c/active/bl.txt:5: error: x"
    )
    assert raised.value.exited and not raised.value.refused
    pair.thread.join(timeout=10)
    assert pair.status == [EXIT_SETUP]


def test_setup_failure_without_a_message_is_named_by_its_type() -> None:
    assert setup_failure_message(KeyError()) == "KeyError"
    assert len(setup_failure_message(ValueError("x" * 20_000))) == 8192


def test_problem_reported_while_running_then_cleared(pair_of: list[Pair]) -> None:
    pair = Pair(ReportsProblems)
    pair_of.append(pair)
    assert host_handshake(pair.wire, pair.hello, timeout_s=10).id == MANIFEST.id
    problems: list[str | None] = []
    deadline = time.monotonic() + 10
    pair.host.settimeout(1)
    while len(problems) < 2 and time.monotonic() < deadline:
        frame, _ = pair.wire.recv()
        assert not isinstance(frame, HelloAck)
        if isinstance(frame, Problem):
            problems.append(frame.message)
    assert problems == ["new list rejected:; /c/active/bl.txt:1: error: bad", None]
    pair.wire.send(Shutdown("done"))
    pair.thread.join(timeout=10)
    assert pair.status == [EXIT_OK]
