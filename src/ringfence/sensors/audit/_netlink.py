"""The audit netlink wire format: constants, struct packing and reply splitting. Pure: no I/O.
The netlink header itself is `ringfence._linux.NLMSG_HEADER`.

No Python library speaks NETLINK_AUDIT (libaudit's bindings need auditctl's userland), so the few
structs we need are packed here by hand, after <linux/netlink.h> and <linux/audit.h>.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import msgspec

from ringfence._linux import NLMSG_HEADER

NETLINK_AUDIT = 9
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
AUDIT_NLGRP_READLOG = 1

# nlmsghdr
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4

# message types (requests and control replies)
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
AUDIT_FIRST_EVENT = 1100  # record types from here on are audit events, not control replies

# audit_status.mask bits
AUDIT_STATUS_ENABLED = 0x01
AUDIT_STATUS_PID = 0x04
AUDIT_STATUS_BACKLOG_LIMIT = 0x10
AUDIT_STATUS_BACKLOG_WAIT_TIME = 0x20

# rule lists, actions, fields, operators
AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_PID = 0
AUDIT_ARCH = 11
AUDIT_WATCH = 105  # a path (string field)
AUDIT_PERM = 106  # with a watch: 1 exec, 2 write, 4 read, 8 attribute change
AUDIT_DIR = 107  # a directory tree (string field)
AUDIT_FILTERKEY = 210
AUDIT_NOT_EQUAL = 0x30000000
AUDIT_EQUAL = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64
AUDIT_MAX_KEY_LEN = 256

# Fields whose value is a length into the rule's string buffer (LSM labels, watch, dir, exe, key).
_STRING_FIELDS = frozenset(
    {13, 14, 15, 16, 17, 19, 20, 21, 22, 23, AUDIT_WATCH, AUDIT_DIR, 112, AUDIT_FILTERKEY}
)
_KEY_SEPARATOR = "\x01"  # the kernel joins several keys of one rule with \x01

_STATUS_FIELDS = (
    "mask",
    "enabled",
    "failure",
    "pid",
    "rate_limit",
    "backlog_limit",
    "lost",
    "backlog",
    "feature_bitmap",
    "backlog_wait_time",
    "backlog_wait_time_actual",
)
_STATUS = struct.Struct(f"={len(_STATUS_FIELDS)}I")
_RULE_HEAD = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I{3 * AUDIT_MAX_FIELDS}II")


class AuditStatus(msgspec.Struct, frozen=True, kw_only=True):
    """struct audit_status. Fields a short reply lacks read as 0."""

    mask: int = 0
    enabled: int = 0
    failure: int = 0
    pid: int = 0
    rate_limit: int = 0
    backlog_limit: int = 0
    lost: int = 0
    backlog: int = 0
    feature_bitmap: int = 0
    backlog_wait_time: int = 0
    backlog_wait_time_actual: int = 0


class RuleField(msgspec.Struct, frozen=True):
    field: int
    op: int
    value: int = 0
    text: str | None = None  # for string fields (the key): the value is its length


class AuditRule(msgspec.Struct, frozen=True, kw_only=True):
    """struct audit_rule_data, decoded. `raw` is the kernel's bytes, which AUDIT_DEL_RULE takes back."""

    flags: int
    action: int
    syscalls: frozenset[int]
    fields: tuple[RuleField, ...]
    raw: bytes = b""

    @property
    def keys(self) -> tuple[str, ...]:
        found: list[str] = []
        for f in self.fields:
            if f.field == AUDIT_FILTERKEY and f.text is not None:
                found.extend(f.text.split(_KEY_SEPARATOR))
        return tuple(found)


class Message(msgspec.Struct, frozen=True):
    type: int
    flags: int
    seq: int
    payload: bytes


def pack_message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(payload), msg_type, flags, seq, 0) + payload


def split_datagram(data: bytes) -> Iterator[Message]:
    """The messages of one datagram. An audit event record fills the rest of its datagram: the kernel's
    nlmsg_len for records can be shorter than the text it sent (KERNEL-FACTS.md), so we trust the
    datagram length there and nlmsg_len only for control replies, clamped to what arrived."""
    offset = 0
    while len(data) - offset >= NLMSG_HEADER.size:
        length, msg_type, flags, seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        remaining = len(data) - offset
        if msg_type >= AUDIT_FIRST_EVENT or length < NLMSG_HEADER.size or length > remaining:
            length = remaining
        yield Message(msg_type, flags, seq, data[offset + NLMSG_HEADER.size : offset + length])
        offset += (length + 3) & ~3


def unpack_error(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR (0 is an ACK)."""
    (error,) = struct.unpack_from("=i", payload.ljust(4, b"\0"))
    return -int(error)


def pack_status(status: AuditStatus) -> bytes:
    return _STATUS.pack(*(getattr(status, name) for name in _STATUS_FIELDS))


def unpack_status(payload: bytes) -> AuditStatus:
    values = _STATUS.unpack(payload[: _STATUS.size].ljust(_STATUS.size, b"\0"))
    return AuditStatus(**dict(zip(_STATUS_FIELDS, values, strict=True)))


def syscall_mask(syscalls: Sequence[int]) -> list[int]:
    mask = [0] * AUDIT_BITMASK_SIZE
    for nr in syscalls:
        mask[nr // 32] |= 1 << (nr % 32)
    return mask


def pack_rule(flags: int, action: int, syscalls: Sequence[int], fields: Sequence[RuleField]) -> bytes:
    """struct audit_rule_data for AUDIT_ADD_RULE / AUDIT_DEL_RULE."""
    if len(fields) > AUDIT_MAX_FIELDS:
        raise ValueError(f"audit rule has {len(fields)} fields, the kernel takes {AUDIT_MAX_FIELDS}")
    ids, values, ops = [0] * AUDIT_MAX_FIELDS, [0] * AUDIT_MAX_FIELDS, [0] * AUDIT_MAX_FIELDS
    buf = b""
    for i, f in enumerate(fields):
        ids[i], ops[i] = f.field, f.op
        if f.text is not None:
            text = f.text.encode()
            values[i] = len(text)
            buf += text
        else:
            values[i] = f.value
    head = _RULE_HEAD.pack(flags, action, len(fields), *syscall_mask(syscalls), *ids, *values, *ops, len(buf))
    return head + buf


def unpack_rule(payload: bytes) -> AuditRule:
    """Decode one AUDIT_LIST_RULES reply. Raises ValueError when it is too short to be a rule."""
    if len(payload) < _RULE_HEAD.size:
        raise ValueError(f"audit rule reply of {len(payload)} bytes, need at least {_RULE_HEAD.size}")
    head = _RULE_HEAD.unpack_from(payload)
    flags, action, count = head[0], head[1], min(head[2], AUDIT_MAX_FIELDS)
    mask = head[3 : 3 + AUDIT_BITMASK_SIZE]
    base = 3 + AUDIT_BITMASK_SIZE
    ids, values = (
        head[base : base + AUDIT_MAX_FIELDS],
        head[base + AUDIT_MAX_FIELDS : base + 2 * AUDIT_MAX_FIELDS],
    )
    ops = head[base + 2 * AUDIT_MAX_FIELDS : base + 3 * AUDIT_MAX_FIELDS]
    buflen = head[-1]
    buf = payload[_RULE_HEAD.size : _RULE_HEAD.size + buflen]
    fields, offset = [], 0
    for i in range(count):
        if ids[i] in _STRING_FIELDS:
            text = buf[offset : offset + values[i]].decode(errors="replace")
            offset += values[i]
            fields.append(RuleField(ids[i], ops[i], values[i], text))
        else:
            fields.append(RuleField(ids[i], ops[i], values[i]))
    syscalls = frozenset(w * 32 + b for w, word in enumerate(mask) for b in range(32) if word & (1 << b))
    raw = payload[: _RULE_HEAD.size + buflen]
    return AuditRule(flags=flags, action=action, syscalls=syscalls, fields=tuple(fields), raw=raw)
