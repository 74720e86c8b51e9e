"""Audit netlink requests over a raw AF_NETLINK socket: status, settings, rules.

Errors (the tree):
    SensorError                      (ringfence.sensors)
      SensorUnavailable              the audit socket cannot be opened or the kernel refused it
      AuditRequestError              the kernel answered one request with an errno; `.operation`, `.errno`
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from ringfence._linux import SO_RCVBUFFORCE
from ringfence.sensors._base import SensorError, SensorUnavailable
from ringfence.sensors.audit import _netlink as nl

log = logging.getLogger(__name__)

RecordSink = Callable[[bytes], None]
"""Takes a datagram holding an audit event record that arrived while a request waited for its reply."""

_RECV_BYTES = 65536


class AuditRequestError(SensorError):
    """The kernel refused an audit request."""

    def __init__(self, operation: str, error: int) -> None:
        super().__init__(
            f"audit {operation}: kernel said {errno_mod.errorcode.get(error, error)} ({os.strerror(error)})"
        )
        self.operation = operation
        self.errno = error


def open_audit_socket(*, rcvbuf_bytes: int | None = None, multicast: bool = False) -> socket.socket:
    """A NETLINK_AUDIT socket, optionally with a forced receive buffer and joined to the read-log group."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_AUDIT)
    except OSError as e:
        raise SensorUnavailable("audit", f"socket(AF_NETLINK, NETLINK_AUDIT): {e.strerror}") from e
    try:
        sock.bind((0, 0))
        if rcvbuf_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf_bytes)  # must take: see KERNEL-FACTS
        if multicast:
            sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_ADD_MEMBERSHIP, nl.AUDIT_NLGRP_READLOG)
    except OSError as e:
        sock.close()
        raise SensorUnavailable("audit", f"setting up the audit socket: {e.strerror}") from e
    return sock


class AuditClient:
    """Request/reply on one audit socket. Thread-safe: one request at a time.

    `records` receives event records that share the socket (the daemon socket) while we wait."""

    def __init__(
        self, sock: socket.socket, *, timeout_s: float = 2.0, records: RecordSink | None = None
    ) -> None:
        self.sock = sock
        self._timeout_s = timeout_s
        self._records = records
        self._lock = threading.Lock()
        self._seq = 0

    def status(self) -> nl.AuditStatus:
        replies = self._request("get status", nl.AUDIT_GET, b"", flags=0, until=nl.AUDIT_GET)
        return nl.unpack_status(replies[-1].payload)

    def set_status(self, status: nl.AuditStatus) -> None:
        """AUDIT_SET: only the fields named by `status.mask` change."""
        self._request("set status", nl.AUDIT_SET, nl.pack_status(status), flags=nl.NLM_F_ACK)

    def list_rules(self) -> list[nl.AuditRule]:
        replies = self._request("list rules", nl.AUDIT_LIST_RULES, b"", flags=0, until=nl.NLMSG_DONE)
        return [nl.unpack_rule(m.payload) for m in replies if m.type == nl.AUDIT_LIST_RULES]

    def add_rule(self, rule: bytes) -> None:
        self._request("add rule", nl.AUDIT_ADD_RULE, rule, flags=nl.NLM_F_ACK)

    def delete_rule(self, rule: bytes) -> None:
        self._request("delete rule", nl.AUDIT_DEL_RULE, rule, flags=nl.NLM_F_ACK)

    def _request(
        self, operation: str, msg_type: int, payload: bytes, *, flags: int, until: int = nl.NLMSG_ERROR
    ) -> list[nl.Message]:
        with self._lock:
            self._seq += 1
            seq = self._seq
            try:
                self.sock.sendto(nl.pack_message(msg_type, nl.NLM_F_REQUEST | flags, seq, payload), (0, 0))
            except OSError as e:
                raise AuditRequestError(operation, e.errno or errno_mod.EIO) from e
            return self._collect(operation, seq, until)

    def _collect(self, operation: str, seq: int, until: int) -> list[nl.Message]:
        deadline = time.monotonic() + self._timeout_s
        replies: list[nl.Message] = []
        while True:
            for msg in self._receive(operation, deadline):
                if msg.type >= nl.AUDIT_FIRST_EVENT:
                    continue  # handed to `records` by _receive
                if msg.seq != seq:
                    log.debug("audit %s: skipping a reply to request %d", operation, msg.seq)
                    continue
                if msg.type == nl.NLMSG_ERROR:
                    error = nl.unpack_error(msg.payload)
                    if error:
                        raise AuditRequestError(operation, error)
                    if until == nl.NLMSG_ERROR:
                        return replies
                    continue
                replies.append(msg)
                if msg.type == until:
                    return replies

    def _receive(self, operation: str, deadline: float) -> list[nl.Message]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AuditRequestError(operation, errno_mod.ETIMEDOUT)
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(_RECV_BYTES)
        except TimeoutError as e:
            raise AuditRequestError(operation, errno_mod.ETIMEDOUT) from e
        except OSError as e:
            if e.errno == errno_mod.ENOBUFS:
                log.warning("audit %s: the socket overflowed while waiting for the reply", operation)
                return []
            raise AuditRequestError(operation, e.errno or errno_mod.EIO) from e
        finally:
            self.sock.settimeout(None)
        messages = list(nl.split_datagram(data))
        if self._records is not None and any(m.type >= nl.AUDIT_FIRST_EVENT for m in messages):
            self._records(data)
        return messages
