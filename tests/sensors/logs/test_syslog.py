"""Syslog headers: RFC 3164, rsyslog's RFC 3339 default, RFC 5424; and junk, which is all message."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from ringfence.sensors.logs import parse_syslog


def _local_ns(*args: int) -> int:
    return int(datetime.datetime(*args).astimezone().timestamp()) * 10**9  # local time


NOW = _local_ns(2026, 12, 2, 5, 30, 0)


def test_bsd_line_gives_time_host_program_pid_and_message() -> None:
    p = parse_syslog("Dec  2 05:28:40 web1 sshd[4242]: Accepted publickey for root from 10.0.0.5", NOW)
    assert p.time_ns == _local_ns(2026, 12, 2, 5, 28, 40)
    assert (p.host, p.program, p.pid) == ("web1", "sshd", 4242)
    assert p.message == "Accepted publickey for root from 10.0.0.5"


def test_bsd_line_without_pid_and_with_colons_in_the_message() -> None:
    p = parse_syslog("Dec  2 05:28:40 web1 sudo:     alice : TTY=pts/0 ; COMMAND=/bin/id", NOW)
    assert (p.program, p.pid) == ("sudo", None)
    assert p.message == "    alice : TTY=pts/0 ; COMMAND=/bin/id"


def test_bsd_year_is_last_years_for_a_december_line_read_in_january() -> None:
    january = _local_ns(2027, 1, 1, 0, 5, 0)
    p = parse_syslog("Dec 31 23:59:59 h cron[1]: x", january)
    assert p.time_ns == _local_ns(2026, 12, 31, 23, 59, 59)


def test_bsd_line_a_few_hours_ahead_is_this_years() -> None:
    p = parse_syslog("Dec  2 09:00:00 h app: skewed clock", NOW)
    assert p.time_ns == _local_ns(2026, 12, 2, 9, 0, 0)


def test_bsd_feb_29_takes_the_last_year_that_has_one() -> None:
    p = parse_syslog("Feb 29 12:00:00 h app: leap", NOW)
    assert p.time_ns == _local_ns(2024, 2, 29, 12, 0, 0)


def test_rsyslog_rfc3339_timestamp_with_fraction_and_zone() -> None:
    p = parse_syslog("2026-12-02T05:28:40.123456+01:00 web1 sudo: pam_unix(sudo:session): opened", NOW)
    expected = datetime.datetime(2026, 12, 2, 4, 28, 40, tzinfo=datetime.UTC).timestamp()
    assert p.time_ns == int(expected) * 10**9 + 123_456_000
    assert (p.host, p.program, p.message) == ("web1", "sudo", "pam_unix(sudo:session): opened")


def test_rfc5424_with_structured_data_and_escapes() -> None:
    line = (
        '<165>1 2003-10-11T22:14:15.003Z host.example evntslog 77 ID47 [ex@32473 a="x\\]y" b="2"][z@1] hello'
    )
    p = parse_syslog(line, NOW)
    assert (p.facility, p.severity) == (20, 5)
    assert (p.host, p.program, p.pid) == ("host.example", "evntslog", 77)
    assert p.message == "hello"
    assert p.time_ns == 1065910455003000000


def test_rfc5424_nil_values_are_absent() -> None:
    p = parse_syslog("<34>1 - - - - - - only a message", NOW)
    assert (p.time_ns, p.host, p.program, p.pid) == (None, None, None, None)
    assert p.message == "only a message"
    assert (p.facility, p.severity) == (4, 2)


def test_priority_before_a_bsd_header() -> None:
    p = parse_syslog("<13>Dec  2 05:28:40 10.0.0.99 Use the BFG!", NOW)
    assert (p.facility, p.severity, p.host, p.program) == (1, 5, "10.0.0.99", None)
    assert p.message == "Use the BFG!"


def test_lines_without_a_header_are_all_message() -> None:
    for line in ("", "garbage", "<999>x", "Dec 32 00:00:00 h p: bad day", "2026-02-30T00:00:00Z h p: no"):
        p = parse_syslog(line, NOW)
        assert p.message == line
        assert p.time_ns is None


@given(st.text(max_size=300))
def test_any_text_parses_without_raising(text: str) -> None:
    p = parse_syslog(text, NOW)
    assert isinstance(p.message, str)
    assert p.pid is None or 0 <= p.pid < 10**10
