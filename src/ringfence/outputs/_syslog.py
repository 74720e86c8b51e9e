"""Forwarding to a syslog receiver (a SIEM, a relay, the local syslog daemon) without ever slowing the host.

A `SyslogSink` is a broker subscriber: `deliver` numbers the event and puts it in a bounded queue
(drop-oldest: when the receiver is away for long, the freshest findings are the ones kept), and one sender
thread formats (`_rfc5424.py`) and sends. Every connect and every send has a deadline; a receiver that is
away, refuses, or stops reading costs counted drops in this queue only. TCP (RFC 6587 octet counting, as
RFC 5425 frames TLS) keeps one connection, made again with exponential backoff when it fails; a message
whose send failed is sent again on the next connection (at least once: a receiver may see it twice,
never half). UDP (RFC 5426) and local datagram sockets send one message per datagram; UDP cannot tell
whether anyone listens, except through the ICMP errors the kernel reports on a later send.

Errors: `parse_address` raises SyslogAddressError (a ValueError; the config reports it as a problem of
`output.syslog`). Nothing on the event path raises.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable

import msgspec

from ringfence._linux import readable
from ringfence.broker import (
    AuthTicket,
    BoundedChannel,
    ChannelClosed,
    FixedSubscription,
    Overflow,
    Reply,
)
from ringfence.events import Event, EventKind, SyslogStatistics
from ringfence.outputs._rfc5424 import Rfc5424Formatter

log = logging.getLogger(__name__)

_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its NUL


class SyslogAddressError(ValueError):
    """`output.syslog` is not udp://HOST:PORT, tcp://HOST:PORT or unix:/PATH."""


class SyslogAddress(msgspec.Struct, frozen=True):
    transport: str  # "udp", "tcp", "unix"
    host: str = ""  # an IP address (no brackets) or a DNS name; "" for unix
    port: int = 0
    path: str = ""  # unix only

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_address(text: str) -> SyslogAddress:
    """`udp://192.0.2.1:514`, `tcp://[2001:db8::1]:6514`, `tcp://siem.example:601`, `unix:/dev/log`."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("udp", "tcp", "unix"):
        tls = " (TLS, RFC 5425, is not supported: relay through a local rsyslog)" if scheme == "tls" else ""
        raise SyslogAddressError(
            f"{text!r}: unknown scheme {scheme!r}{tls}; udp://HOST:PORT, tcp://HOST:PORT or unix:/PATH"
        )
    if scheme == "unix":
        return _unix(text, rest)
    if not rest.startswith("//"):
        raise SyslogAddressError(f"{text!r}: {scheme}://HOST:PORT")
    host, port = _host_port(text, rest[2:])
    return SyslogAddress(transport=scheme, host=host, port=port)


def _unix(text: str, path: str) -> SyslogAddress:
    if path.startswith("//"):  # unix:///dev/log, the URL form
        path = path[2:]
    if not path.startswith("/") or "\0" in path:
        raise SyslogAddressError(f"{text!r}: unix:/PATH, an absolute path (unix:/dev/log)")
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise SyslogAddressError(f"{text!r}: a socket path is at most {_SUN_PATH_MAX} bytes")
    return SyslogAddress(transport="unix", path=os.path.normpath(path))


def _host_port(text: str, authority: str) -> tuple[str, int]:
    if authority.startswith("["):
        host, close, port_text = authority[1:].partition("]")
        if not close or not port_text.startswith(":"):
            raise SyslogAddressError(f"{text!r}: an IPv6 address is written [ADDRESS]:PORT")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError as e:
            raise SyslogAddressError(f"{text!r}: {host!r} is not an IPv6 address") from e
        return str(address), _port(text, port_text[1:])
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        raise SyslogAddressError(f"{text!r}: the port is missing (HOST:PORT, for example :514)")
    if ":" in host:
        raise SyslogAddressError(f"{text!r}: an IPv6 address goes in brackets: [{host}]:{port_text}")
    try:
        return str(ipaddress.IPv4Address(host)), _port(text, port_text)
    except ipaddress.AddressValueError:
        pass
    if not _HOSTNAME.fullmatch(host) or re.fullmatch(r"[0-9.]+", host):
        raise SyslogAddressError(f"{text!r}: {host!r} is neither an IP address nor a host name")
    return host, _port(text, port_text)


def _port(text: str, port_text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SyslogAddressError(f"{text!r}: the port must be 1..65535, got {port_text!r}")
    return int(port_text)


class _Link:
    """One connected socket; `send` raises OSError (TimeoutError past the deadline)."""

    def __init__(self, sock: socket.socket, framed: bool) -> None:
        self.sock = sock
        self.framed = framed

    def send(self, message: bytes) -> None:
        if self.framed:  # RFC 6587 octet counting: "LEN SP MSG"
            self.sock.sendall(b"%d " % len(message) + message)
        else:
            self.sock.send(message)

    def peer_closed(self) -> bool:
        """A stream whose receiver has closed it (a restart, say): sent into, it would lose the message."""
        if not self.framed:
            return False
        try:
            return (
                bool(readable([self.sock], 0))
                and self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            )
        except (BlockingIOError, TimeoutError):  # nothing to read after all
            return False
        except OSError:  # reset by the peer
            return True

    def close(self) -> None:
        self.sock.close()


class SyslogSink(FixedSubscription):
    """Forwards every event of `kinds` to `address` as RFC 5424. `clock` (monotonic seconds) drives the
    backoff; every wait is also bounded by `stop`."""

    def __init__(
        self,
        address: SyslogAddress,
        formatter: Rfc5424Formatter,
        kinds: frozenset[EventKind] = frozenset({EventKind.FINDING}),
        *,
        capacity: int = 4096,
        timeout_s: float = 5.0,  # one connect, one send
        backoff_s: tuple[float, float] = (0.5, 30.0),  # first and longest wait before connecting again
        send_buffer_bytes: int = 128 << 10,  # what may sit in the kernel unsent; a datagram's limit too
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("syslog", kinds)
        self.address = address
        self._formatter = formatter
        self._channel: BoundedChannel[tuple[int, Event]] = BoundedChannel(capacity, Overflow.DROP_OLDEST)
        self._timeout_s = timeout_s
        self._backoff = backoff_s
        self._send_buffer = send_buffer_bytes
        self._clock = clock
        self._link: _Link | None = None
        self._pending: bytes | None = None
        self._delay = 0.0  # the next backoff; 0: connect at once
        self._retry_at = 0.0
        self._wake = threading.Event()  # set by stop: no more waiting
        self._drain_until: float | None = None
        self._connections = 0
        self._sent = 0
        self._truncated = 0
        self._errors = 0
        self._unsendable = 0  # refused by the transport whatever we do (EMSGSIZE): dropped
        self._last_error = ""
        self._failing_since_ns = 0
        self._last_sent_ns = 0
        self._thread = threading.Thread(target=self._run, name="out-syslog", daemon=True)

    # -- the broker's side -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> bool:
        return self._channel.put((self._formatter.next_sequence(), event))

    def request_auth(self, ticket: AuthTicket, reply: Reply) -> bool:
        return False  # never asked: auth_policy is None

    def auth_missed(self, ticket_id: int) -> None:
        return None

    def start(self) -> SyslogSink:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to `timeout` seconds, then give up on the rest (logged)."""
        self._drain_until = self._clock() + timeout
        self._channel.close()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        link = self._link
        if self._thread.is_alive() and link is not None:  # blocked in a send: wake it
            with contextlib.suppress(OSError):
                link.sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(1.0)

    # -- the sender thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            self._give_up()

    def _step(self) -> bool:
        """One turn: connect if due, take a message if none is pending, send it. False: done."""
        if self._link is None and self._drain_until is None and self._clock() >= self._retry_at:
            self._connect()  # (not while stopping: a connect may take its whole deadline)
        if self._pending is None:
            try:
                item = self._channel.get(timeout=self._idle_wait())
            except ChannelClosed:
                return False
            if item is None:
                self._check_idle_link()
                return True
            self._pending = self._format(*item)
            if self._pending is None:
                return True
        if self._drain_until is not None and (self._link is None or self._clock() >= self._drain_until):
            return False  # stopping: what is left goes out only over a link that works, and in time
        if self._link is None:
            self._wake.wait(max(0.0, self._retry_at - self._clock()))
            return True
        self._send()
        return True

    def _idle_wait(self) -> float:
        if self._link is None:
            return min(1.0, max(0.01, self._retry_at - self._clock()))
        return 1.0

    def _format(self, sequence: int, event: Event) -> bytes | None:
        try:
            message, truncated = self._formatter.format(event, sequence)
        except Exception:  # supervision boundary: one event the formatter fails on, not the sender
            self._errors += 1
            log.exception("syslog %s: cannot format a %s; not sent", self.address, type(event).__name__)
            return None
        self._truncated += truncated
        return message

    def _check_idle_link(self) -> None:
        if self._link is not None and self._link.peer_closed():
            self._fail("the receiver closed the connection")

    def _send(self) -> None:
        assert self._link is not None and self._pending is not None
        if self._link.peer_closed():
            self._fail("the receiver closed the connection")
            return
        try:
            self._link.send(self._pending)
        except TimeoutError:
            self._fail(f"send timed out after {self._timeout_s:g} s (the receiver does not read)")
            return
        except OSError as e:
            if e.errno == errno.EMSGSIZE:  # this message will never fit: the next may
                self._unsendable += 1
                self._pending = None
                self._note_error(f"message too large for the transport: {e.strerror}")
                return
            self._fail(f"send failed: {e.strerror or e}")
            return
        self._pending = None
        self._sent += 1
        self._last_sent_ns = time.time_ns()
        self._failing_since_ns = 0
        self._delay = 0.0

    def _connect(self) -> None:
        try:
            self._link = self._open()
        except OSError as e:
            self._fail(f"cannot connect: {e.strerror or e}")
            return
        self._connections += 1
        if self.address.transport != "udp":  # a handshake (or a bound socket) shows the receiver is there
            self._failing_since_ns = 0  # the backoff is reset by a message sent, not by a connect
        if self._connections > 1:
            log.info("syslog %s: connected again", self.address)

    def _open(self) -> _Link:
        a = self.address
        if a.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            target: str | tuple[object, ...] = a.path
        else:
            kind = socket.SOCK_STREAM if a.transport == "tcp" else socket.SOCK_DGRAM
            family, _, _, _, target = socket.getaddrinfo(a.host, a.port, type=kind)[0]
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return _Link(sock, framed=a.transport == "tcp")

    def _note_error(self, why: str) -> None:
        self._errors += 1
        if why != self._last_error:
            log.warning("syslog %s: %s", self.address, why)
        self._last_error = why

    def _fail(self, why: str) -> None:
        """The link is lost or never came: close it, and wait before the next connect (backoff)."""
        self._note_error(why)
        if not self._failing_since_ns:
            self._failing_since_ns = time.time_ns()
        if self._link is not None:
            self._link.close()
            self._link = None
        first, longest = self._backoff
        self._delay = min(longest, self._delay * 2) if self._delay else first
        self._retry_at = self._clock() + self._delay

    def _give_up(self) -> None:
        left = self._channel.statistics().queued + (self._pending is not None)
        if left:
            log.warning(
                "syslog %s: stopping with %d messages unsent (they are in findings.jsonl)", self.address, left
            )
        if self._link is not None:
            self._link.close()
            self._link = None

    def statistics(self) -> SyslogStatistics:
        return SyslogStatistics(
            address=str(self.address),
            connected=self._link is not None and not self._failing_since_ns,
            channel=self._channel.statistics(),
            sent=self._sent,
            truncated=self._truncated,
            errors=self._errors,
            unsendable=self._unsendable,
            connections=self._connections,
            last_error=self._last_error,
            failing_since_ns=self._failing_since_ns,
            last_sent_ns=self._last_sent_ns,
        )
