"""Audit record text to `AuditRecord`s: every field, as auditd's own reader sees it. Pure.

A record body is `key=value` pairs separated by spaces. A value is "quoted" (text), unquoted (a number,
a word, or hex where audit encodes an untrusted string: `comm`, `exe`, `name`, `proctitle`, execve's
`aN`, ...), or `(null)`. A user-space record (PAM, shadow, sudo) wraps its own fields in `msg='...'`,
and its `op` may hold spaces (`op=adding user`): a word without `=` belongs to the value before it.
Hex values of the fields audit encodes are decoded (proctitle's NULs become spaces, as `ausearch -i`
shows them); a long execve argument's chunks (`a1[0]`, `a1[1]`, ...) are kept and joined into `a1`.
SYSCALL records gain auditd's enriched `SYSCALL` (the name) and `ARCH`.
"""

from __future__ import annotations

import re
import string

from ringfence.events import AuditRecord
from ringfence.sensors.audit._names import SYSCALLS_I386, SYSCALLS_X86_64, record_type_name

SYSCALL = 1300
_ARCHS = {"c000003e": ("x86_64", SYSCALLS_X86_64), "40000003": ("i386", SYSCALLS_I386)}
EXECVE = 1309
# Fields that audit writes quoted when they are plain text and hex otherwise (audit_log_untrustedstring),
# so an unquoted hex value of one of them is encoded. Elsewhere a0..a3 and old=/new= are plain numbers.
_ENCODED = frozenset(
    {"comm", "exe", "name", "cwd", "proctitle", "key", "path", "data", "cmd", "acct", "ocomm", "watch",
     "dir", "root_dir", "cgroup"}
)  # fmt: skip
_ARG = re.compile(r"a\d+(?:\[\d+\])?$")
_CHUNK = re.compile(r"(a\d+)\[(\d+)\]$")
_HEX = frozenset(string.hexdigits)
_TOKEN = re.compile(r"""(?:[^\s"']+|"[^"]*"|'[^']*')+""")


def decode_record(record_type: int, body: str) -> AuditRecord:
    """One record (its text after `audit(...): `) with every field, decoded where audit encodes."""
    fields: dict[str, str] = {}
    args = record_type == EXECVE
    for key, value in _pairs(body):
        fields.setdefault(key, _decode(key, value, args=args))  # the first wins, as in auparse
    if record_type == SYSCALL:
        _enrich_syscall(fields)
    _join_chunks(fields)
    return AuditRecord(type=record_type_name(record_type), fields=fields)


def _pairs(body: str) -> list[tuple[str, str]]:
    """The key=value pairs in order; `msg='...'` of a user record is opened and its pairs follow."""
    pairs: list[tuple[str, str]] = []
    for token in _TOKEN.findall(body):
        key, sep, value = token.partition("=")
        if key == "msg" and value.startswith("'"):
            pairs.extend(_pairs(value.strip("'")))
        elif sep and key:
            pairs.append((key, value))
        elif pairs:  # a word of the value before: op=adding user
            last_key, last_value = pairs[-1]
            pairs[-1] = (last_key, f"{last_value} {token}")
    return pairs


def _decode(key: str, value: str, *, args: bool) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if (key in _ENCODED or (args and _ARG.match(key))) and _is_hex(value):
        raw = bytes.fromhex(value)
        if key == "proctitle":
            raw = raw.rstrip(b"\0").replace(b"\0", b" ")
        return raw.decode("utf-8", "backslashreplace")
    return value


def _is_hex(value: str) -> bool:
    return len(value) >= 2 and len(value) % 2 == 0 and _HEX.issuperset(value)


def _enrich_syscall(fields: dict[str, str]) -> None:
    arch = _ARCHS.get(fields.get("arch", ""))
    if arch is None:
        return
    fields["ARCH"] = arch[0]
    number = fields.get("syscall", "")
    if number.isdigit():
        fields["SYSCALL"] = arch[1].get(int(number), number)


def _join_chunks(fields: dict[str, str]) -> None:
    """`a1[0]`, `a1[1]` (a long argument in pieces) also as one `a1`, as the process passed it."""
    chunks: dict[str, list[tuple[int, str]]] = {}
    for key, value in fields.items():
        if (m := _CHUNK.match(key)) is not None:
            chunks.setdefault(m[1], []).append((int(m[2]), value))
    for arg, parts in chunks.items():
        fields.setdefault(arg, "".join(v for _, v in sorted(parts)))
