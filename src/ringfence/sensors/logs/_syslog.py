"""Syslog headers of one log line: RFC 3164 (BSD: `Mmm dd hh:mm:ss host prog[pid]: msg`), the RFC 3339
timestamp that rsyslog writes by default since Debian 12 (`2026-12-02T05:28:40.123456+00:00 host ...`), and
RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`). Pure: no I/O.

A line with no header we recognise is all message (`time_ns` None: the reader stamps the read time).
RFC 3164 carries no year and no zone: the year is the latest that does not put the line more than a day
after `now_ns` (a December line read in January is last year's), the zone is the host's local one.
"""

from __future__ import annotations

import datetime
import re

import msgspec

_PRI = re.compile(r"<(\d{1,3})>")
_BSD_TIME = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? ")
_ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) ")
_TAG = re.compile(r"([^\s\[\]:]{1,128})(?:\[(\d{1,10})\])?: ?")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_NIL = "-"
_CLOCK_SKEW_NS = 86400 * 10**9  # a line up to a day ahead of the reader is this year's, not last year's


class SyslogLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a header said. Absent parts are None; `message` is the rest of the line (the whole line when
    no header was recognised)."""

    message: str
    time_ns: int | None = None
    host: str | None = None
    program: str | None = None
    pid: int | None = None
    facility: int | None = None
    severity: int | None = None


def parse_syslog(line: str, now_ns: int) -> SyslogLine:
    """The header fields of `line` (one line, no newline). Never raises: what is not a header is message."""
    rest, facility, severity = line, None, None
    pri = _PRI.match(rest)
    if pri and int(pri.group(1)) <= 191:
        facility, severity = divmod(int(pri.group(1)), 8)
        rest = rest[pri.end() :]
        if rest.startswith("1 "):
            parsed = _rfc5424(rest[2:], facility, severity)
            if parsed is not None:
                return parsed
    time_ns, after_time = _timestamp(rest, now_ns)
    if time_ns is None:
        return SyslogLine(message=line, facility=facility, severity=severity)
    host, _, after_host = after_time.partition(" ")
    tag = _TAG.match(after_host)
    if not host or tag is None:  # "time host message" with no tag, or only a time
        return SyslogLine(
            message=after_host if host else after_time,
            time_ns=time_ns,
            host=host or None,
            facility=facility,
            severity=severity,
        )
    return SyslogLine(
        message=after_host[tag.end() :],
        time_ns=time_ns,
        host=host,
        program=tag.group(1),
        pid=int(tag.group(2)) if tag.group(2) else None,
        facility=facility,
        severity=severity,
    )


def _timestamp(text: str, now_ns: int) -> tuple[int | None, str]:
    iso = _ISO_TIME.match(text)
    if iso:
        return _iso_ns(iso.group(1)), text[iso.end() :]
    bsd = _BSD_TIME.match(text)
    if bsd and bsd.group(1) in _MONTHS:
        return _bsd_ns(bsd, now_ns), text[bsd.end() :]
    return None, text


def _iso_ns(stamp: str) -> int | None:
    """RFC 3339 to ns since the epoch; None for a date that does not exist (Feb 30)."""
    head, _, frac = stamp.partition(".")
    zone = ""
    if frac:
        digits = re.match(r"\d+", frac)
        assert digits is not None  # the regex matched digits after the dot
        zone, frac = frac[digits.end() :], digits.group(0)
    else:
        zone, head = head[19:], head[:19]
    try:
        moment = datetime.datetime.fromisoformat(head[:19] + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return _epoch_ns(moment) + int(frac.ljust(9, "0")[:9] or 0)


def _bsd_ns(match: re.Match[str], now_ns: int) -> int | None:
    month, day = _MONTHS[match.group(1)], int(match.group(2))
    hour, minute, second = (int(match.group(i)) for i in (3, 4, 5))
    frac = int((match.group(6) or "").ljust(9, "0"))
    this_year = datetime.datetime.fromtimestamp(now_ns / 1e9).year
    for year in range(this_year + 1, this_year - 4, -1):  # back to the last Feb 29
        try:
            moment = datetime.datetime(year, month, day, hour, minute, second).astimezone()  # local time
        except ValueError:
            continue  # Feb 29 of a year that has none
        ns = _epoch_ns(moment) + frac
        if ns <= now_ns + _CLOCK_SKEW_NS:
            return ns
    return None


def _epoch_ns(moment: datetime.datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _rfc5424(text: str, facility: int, severity: int) -> SyslogLine | None:
    """`TIMESTAMP HOST APP PROCID MSGID [SD] MSG` after `<PRI>1 `; None when the fields are not there."""
    parts = text.split(" ", 5)
    if len(parts) < 5:
        return None
    stamp, host, app, procid, _msgid = parts[:5]
    rest = parts[5] if len(parts) == 6 else ""
    time_ns = None if stamp == _NIL else _iso_ns(stamp)
    if stamp != _NIL and time_ns is None:
        return None
    return SyslogLine(
        message=_skip_structured_data(rest),
        time_ns=time_ns,
        host=None if host == _NIL else host,
        program=None if app == _NIL else app,
        pid=int(procid) if procid.isdigit() and len(procid) <= 10 else None,
        facility=facility,
        severity=severity,
    )


def _skip_structured_data(text: str) -> str:
    """The MSG after STRUCTURED-DATA (`-` or `[id k="v" ...]...`, with `\\]` and `\\"` escapes)."""
    if text.startswith(_NIL):
        return text[2:] if text.startswith("- ") else text[1:]
    i, depth, quoted = 0, 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "[":
            depth += 1
        elif not quoted and c == "]":
            depth -= 1
            if depth == 0 and not text.startswith("[", i + 1):
                return text[i + 1 :].removeprefix(" ").removeprefix("\ufeff")
        elif depth == 0:
            return text[i:]  # no structured data at all: the message begins here
        i += 1
    return ""
