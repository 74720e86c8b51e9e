"""The audit rules we add, and their removal by key. Every rule carries our key (the baseline's
`key:category`); nothing else is touched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._baseline import is_ours
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._parse import SYSCALLS

log = logging.getLogger(__name__)

EXEC_SYSCALLS = ("execve", "execveat")
NETWORK_SYSCALLS = ("connect", "accept", "accept4", "bind", "listen")


def build_rules(
    key: str, names: Sequence[str], *, archs: Sequence[int], exclude_pid: int | None = None
) -> list[bytes]:
    """One exit-filter rule per architecture: the named syscalls (those the arch has), success and
    failure both, optionally not for `exclude_pid` (our own process), tagged with `key`."""
    if not key or len(key.encode()) > nl.AUDIT_MAX_KEY_LEN:
        raise ValueError(f"audit key must be 1..{nl.AUDIT_MAX_KEY_LEN} bytes, got {key!r}")
    rules = []
    for arch in archs:
        table = {name: nr for nr, name in SYSCALLS[arch].items()}
        numbers = [table[name] for name in names if name in table]
        if not numbers:
            continue
        fields = [nl.RuleField(nl.AUDIT_ARCH, nl.AUDIT_EQUAL, arch)]
        if exclude_pid is not None:
            fields.append(nl.RuleField(nl.AUDIT_PID, nl.AUDIT_NOT_EQUAL, exclude_pid))
        fields.append(nl.RuleField(nl.AUDIT_FILTERKEY, nl.AUDIT_EQUAL, text=key))
        rules.append(nl.pack_rule(nl.AUDIT_FILTER_EXIT, nl.AUDIT_ALWAYS, numbers, fields))
    return rules


def keyed_rules(client: AuditClient, key: str) -> list[nl.AuditRule]:
    """The rules in the kernel that carry `key`, or a baseline rule's `key:category`."""
    return [rule for rule in client.list_rules() if is_ours(rule.keys, key)]


def remove_keyed_rules(
    client: AuditClient, key: str, *, before: Callable[[nl.AuditRule], None] | None = None
) -> int:
    """Delete every rule that carries `key` (ours, or a crashed run's), calling `before` with each one
    first. Returns how many."""
    removed = 0
    for rule in keyed_rules(client, key):
        if before is not None:
            before(rule)
        client.delete_rule(rule.raw)
        removed += 1
    if removed:
        log.debug("removed %d audit rules with key %r", removed, key)
    return removed


def list_rule_keys() -> set[str]:
    """Every key carried by an audit rule now in the kernel (for checks that nothing was left behind);
    a baseline rule's `key:category` counts as `key` too."""
    with open_audit_socket() as sock:
        client = AuditClient(sock)
        keys = {key for rule in client.list_rules() for key in rule.keys}
    return keys | {key.partition(":")[0] for key in keys}
