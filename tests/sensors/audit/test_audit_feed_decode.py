"""The audit feed decodes an event's records only when it publishes something of them (issue 10): an exec
already turned into a process event costs no second decoding, while raw events and identity records
are published as before. Pure logic on recorded kernel text; no kernel needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringfence.events import AuditEvent as AuditEventRecord
from ringfence.events import Authentication, Event, HeaderStamper, ProcessRef
from ringfence.sensors.audit import _feed
from ringfence.sensors.audit._feed import AuditFeed, FeedPublisher
from ringfence.sensors.audit._parse import AuditEvent, EventAssembler

CAPTURED = json.loads((Path(__file__).parent / "captured_records.json").read_text())
USER_LOGIN = (
    'audit(1700000001.000:900): pid=4242 uid=0 auid=1000 ses=3 msg=\'op=login acct="alice" '
    'exe="/usr/sbin/sshd" hostname=? addr=192.0.2.7 terminal=ssh res=failed\''
)


class _Table:
    def resolve(self, pid: int) -> ProcessRef:
        return ProcessRef(pid=pid)


def _events(records: list[list[object]]) -> list[AuditEvent]:
    assembler = EventAssembler()
    done: list[AuditEvent] = []
    for record_type, text in records:
        done.extend(assembler.feed(int(str(record_type)), str(text), now_ns=0))
    return done


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = _feed.decode_record

    def counting(record_type: int, body: str) -> object:
        calls.append(record_type)
        return real(record_type, body)

    monkeypatch.setattr(_feed, "decode_record", counting)
    return calls


def _publisher(feed: AuditFeed) -> tuple[FeedPublisher, list[Event]]:
    out: list[Event] = []
    return FeedPublisher(feed, out.append, HeaderStamper("audit", "h"), _Table(), own_pid=-1), out


def test_an_exec_already_converted_is_not_decoded_again(decodes: list[int]) -> None:
    (event,) = _events(CAPTURED["exec_chunked_arg"])
    publisher, out = _publisher(AuditFeed(audit_events=True, identity=True))
    assert publisher.publish(event, event.syscall, converted=True) is False
    assert out == []
    assert decodes == []


def test_with_all_events_a_converted_exec_is_still_published_with_every_record(decodes: list[int]) -> None:
    (event,) = _events(CAPTURED["exec_chunked_arg"])
    publisher, out = _publisher(AuditFeed(audit_events=True, all_events=True))
    assert publisher.publish(event, event.syscall, converted=True) is True
    (raw,) = out
    assert isinstance(raw, AuditEventRecord)
    assert [r.type for r in raw.records][:3] == ["SYSCALL", "BPRM_FCAPS", "EXECVE"]
    assert len(decodes) == len(event.records)


def test_an_event_not_converted_is_published_as_a_raw_audit_event(decodes: list[int]) -> None:
    (event,) = _events(CAPTURED["bind_unix_abstract"])
    publisher, out = _publisher(AuditFeed(audit_events=True))
    assert publisher.publish(event, event.syscall, converted=False) is True
    assert isinstance(out[0], AuditEventRecord)
    assert decodes


def test_an_identity_record_is_decoded_and_published_without_the_raw_feed(decodes: list[int]) -> None:
    (event,) = _events([[1112, USER_LOGIN]])
    publisher, out = _publisher(AuditFeed(identity=True))
    assert publisher.publish(event, None, converted=False) is True
    (login,) = out
    assert isinstance(login, Authentication)
    assert decodes == [1112]
