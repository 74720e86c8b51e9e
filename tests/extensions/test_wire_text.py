"""Names that are not UTF-8 cross the wire: a file called b"\xff" must not silence an engine."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from ringfence.events import AuthKind, AuthRequest, FileActivity, FileActivityId, HeaderStamper, ProcessRef
from ringfence.sdk._protocol import AuthCall, EventBatch, HostFrame, Wire

ODD = os.fsdecode(b"/tmp/evil-\xff\xfe")  # as the sensors decode it: lone surrogates


@pytest.fixture
def wires() -> Iterator[tuple[Wire[HostFrame], Wire[HostFrame]]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield Wire(a, HostFrame), Wire(b, HostFrame)
    finally:
        a.close()
        b.close()


def test_auth_request_for_a_non_utf8_name_is_sent_as_escaped_text(wires) -> None:
    host, ext = wires
    stamp = HeaderStamper("exec-auth", "h").stamp()
    request = AuthRequest(
        header=stamp, kind=AuthKind.EXEC, path=ODD, process=ProcessRef(pid=1, cmdline=(ODD, "-x"))
    )
    host.send(AuthCall(ticket=7, request=request, has_file=False))
    frame, fds = ext.recv()
    assert fds == [] and isinstance(frame, AuthCall) and frame.ticket == 7
    assert frame.request.path == "/tmp/evil-\\xff\\xfe"
    assert frame.request.process.cmdline == ("/tmp/evil-\\xff\\xfe", "-x")


def test_event_batch_with_a_non_utf8_name_keeps_its_other_events(wires) -> None:
    host, ext = wires
    stamper = HeaderStamper("file", "h")
    events = [
        FileActivity(
            header=stamper.stamp(), activity=FileActivityId.CREATE, path=p, process=ProcessRef(pid=2)
        )
        for p in ("/tmp/a", ODD)
    ]
    host.send(EventBatch(events))
    frame, _ = ext.recv()
    assert isinstance(frame, EventBatch)
    assert [e.path for e in frame.events] == ["/tmp/a", "/tmp/evil-\\xff\\xfe"]


def test_a_writer_thread_that_fails_restarts_its_extension_instead_of_starving_it(rig, monkeypatch) -> None:
    """Whatever a frame does to the encoder, the extension must not go deaf while it looks alive."""
    from tests.extensions.conftest import fault_spec, wait_until

    rig.start([fault_spec("fault.good", "WellBehaved")])
    rig.wait_running("fault.good")
    real_encode = Wire.encode

    def encode(self, frame):
        if isinstance(frame, EventBatch) and any(getattr(e, "path", "") == "/boom" for e in frame.events):
            raise RuntimeError("an encoder bug")
        return real_encode(self, frame)

    monkeypatch.setattr(Wire, "encode", encode)
    rig.publish("/boom")
    wait_until("a restart after the writer failed", lambda: rig.stats("fault.good").restarts >= 1)
    monkeypatch.setattr(Wire, "encode", real_encode)
    rig.wait_running("fault.good")
