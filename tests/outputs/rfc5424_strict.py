"""A strict RFC 5424 parser for the tests, written from the ABNF of section 6 (and 6.3.3's escaping rule).

Written here because the one RFC 5424 parser on PyPI (syslog-rfc5424-parser, unchanged since 2019)
accepts what the RFC forbids (an unescaped `]` in a PARAM-VALUE, non-ASCII SD-NAMEs) and keeps escapes
undecoded; a test parser must refuse anything the RFC does not allow. Stricter than the RFC in one
place, on purpose: a backslash before anything but `"`, `\\` or `]` (which the RFC tells a receiver to
keep as a backslash) is refused, since our formatter must never write one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BOM = b"\xef\xbb\xbf"
_TIMESTAMP = re.compile(rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


class Rfc5424Error(ValueError):
    pass


@dataclass
class Message:
    pri: int
    version: int
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    sd: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    msg: bytes | None = None  # as sent, BOM and all

    @property
    def facility(self) -> int:
        return self.pri >> 3

    @property
    def severity(self) -> int:
        return self.pri & 7

    def param(self, sd_id: str, name: str) -> str | None:
        return next((v for n, v in self.sd.get(sd_id, []) if n == name), None)

    @property
    def text(self) -> str:
        """MSG-UTF8: the BOM, then valid UTF-8."""
        if self.msg is None or not self.msg.startswith(BOM):
            raise Rfc5424Error("MSG does not start with a BOM")
        return self.msg[len(BOM) :].decode("utf-8")  # strict: raises on invalid UTF-8


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def fail(self, what: str) -> Rfc5424Error:
        return Rfc5424Error(f"at octet {self.i}: {what}: {self.data[self.i : self.i + 40]!r}")

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.i):
            raise self.fail(f"expected {token!r}")
        self.i += len(token)

    def peek(self) -> int | None:
        return self.data[self.i] if self.i < len(self.data) else None

    def printusascii(self, limit: int, what: str, stop: bytes = b"") -> str | None:
        """1*limit PRINTUSASCII (%d33-126, less `stop`), or the NILVALUE (None)."""
        start = self.i
        while (c := self.peek()) is not None and 33 <= c <= 126 and c not in stop:
            self.i += 1
        token = self.data[start : self.i]
        if not token:
            raise self.fail(f"{what}: empty")
        if len(token) > limit:
            raise self.fail(f"{what}: {len(token)} octets > {limit}")
        return None if token == b"-" and not stop else token.decode("ascii")


def _pri(r: _Reader) -> int:
    r.expect(b"<")
    m = re.match(rb"\d{1,3}>", r.data[r.i :])
    if not m:
        raise r.fail("PRI")
    r.i += m.end()
    value = int(m.group()[:-1])
    if value > 191 or (len(m.group()) > 2 and m.group().startswith(b"0")):
        raise r.fail(f"PRIVAL {m.group()!r}")
    return value


def _timestamp(r: _Reader) -> str | None:
    if r.data.startswith(b"- ", r.i):
        r.i += 1
        return None
    m = _TIMESTAMP.match(r.data, r.i)
    if not m:
        raise r.fail("TIMESTAMP")
    _, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise r.fail("TIMESTAMP out of range")
    r.i = m.end()
    return m.group().decode()


def _sd_name(r: _Reader, what: str) -> str:
    name = r.printusascii(32, what, stop=b'= ]"')
    assert name is not None
    return name


def _param_value(r: _Reader) -> str:
    r.expect(b'"')
    out = bytearray()
    while True:
        c = r.peek()
        if c is None:
            raise r.fail("PARAM-VALUE not closed")
        r.i += 1
        if c == 0x22:  # "
            break
        if c == 0x5D:  # ]
            raise r.fail("unescaped ] in a PARAM-VALUE")
        if c == 0x5C:  # backslash
            nxt = r.peek()
            if nxt not in (0x22, 0x5C, 0x5D):
                raise r.fail("a backslash that escapes nothing")
            r.i += 1
            out.append(nxt)
            continue
        out.append(c)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise r.fail(f"PARAM-VALUE not UTF-8: {e}") from e


def _structured_data(r: _Reader) -> dict[str, list[tuple[str, str]]]:
    if r.peek() == ord("-"):
        r.i += 1
        return {}
    sd: dict[str, list[tuple[str, str]]] = {}
    if r.peek() != ord("["):
        raise r.fail("STRUCTURED-DATA")
    while r.peek() == ord("["):
        r.i += 1
        sd_id = _sd_name(r, "SD-ID")
        if sd_id in sd:
            raise r.fail(f"SD-ID {sd_id} twice")
        if "@" in sd_id:
            name, _, pen = sd_id.partition("@")
            if not name or "@" in pen or not re.fullmatch(r"[1-9][0-9]*(\.[0-9]+)*", pen):
                raise r.fail(f"SD-ID {sd_id}: not name@<private enterprise number>")
        params: list[tuple[str, str]] = []
        while r.peek() == ord(" "):
            r.i += 1
            name = _sd_name(r, "PARAM-NAME")
            r.expect(b"=")
            params.append((name, _param_value(r)))
        r.expect(b"]")
        sd[sd_id] = params
    return sd


def parse(data: bytes) -> Message:
    """SYSLOG-MSG = HEADER SP STRUCTURED-DATA [SP MSG]. Raises Rfc5424Error."""
    r = _Reader(data)
    pri = _pri(r)
    m = re.match(rb"[1-9]\d{0,2}", data[r.i :])
    if not m:
        raise r.fail("VERSION")
    r.i += m.end()
    r.expect(b" ")
    ts = _timestamp(r)
    r.expect(b" ")
    fields = []
    for what, limit in (("HOSTNAME", 255), ("APP-NAME", 48), ("PROCID", 128), ("MSGID", 32)):
        fields.append(r.printusascii(limit, what))
        r.expect(b" ")
    sd = _structured_data(r)
    msg = None
    if r.i < len(data):
        r.expect(b" ")
        msg = data[r.i :]
    return Message(pri, int(m.group()), ts, *fields, sd=sd, msg=msg)


def unframe(stream: bytes) -> tuple[list[bytes], bytes]:
    """RFC 6587 octet-counted frames (`MSG-LEN SP SYSLOG-MSG`) off a TCP stream: the messages, and what
    is left (a frame not complete yet). Raises Rfc5424Error for a frame that is not octet-counted."""
    out = []
    while stream:
        m = re.match(rb"([1-9][0-9]*) ", stream)
        if not m:
            if re.fullmatch(rb"[1-9][0-9]*", stream):
                break
            raise Rfc5424Error(f"not an octet-counted frame: {stream[:40]!r}")
        end = m.end() + int(m.group(1))
        if len(stream) < end:
            break
        out.append(stream[m.end() : end])
        stream = stream[end:]
    return out, stream
