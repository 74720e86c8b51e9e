"""What a crashed run leaves in the kernel's audit, and putting it back.

Audit settings outlive the process that set them: after a SIGKILL, audit stays enabled with our backlog,
and our rules stay loaded. So the settings found before the FIRST take-over are written to a record in
the state dir (atomically, once: a later run that finds the record keeps it, since what it sees then is
the crashed run's settings), restored from it on a clean stop or by the next sweep, and the record is
removed once restored. Rules are removed by key.
"""

from __future__ import annotations

import contextlib
import logging
import os

import msgspec

from ringfence._linux import write_atomic
from ringfence.sensors._base import SensorError
from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._rules import remove_keyed_rules

log = logging.getLogger(__name__)

SETTINGS_MASK = nl.AUDIT_STATUS_ENABLED | nl.AUDIT_STATUS_BACKLOG_LIMIT | nl.AUDIT_STATUS_BACKLOG_WAIT_TIME


class SavedSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The audit settings we change, as found before the first run changed them."""

    enabled: int
    backlog_limit: int  # records
    backlog_wait_time: int  # jiffies

    def describe(self) -> str:
        return (
            f"enabled {self.enabled}, backlog_limit {self.backlog_limit}, "
            f"backlog_wait_time {self.backlog_wait_time}"
        )

    def as_status(self) -> nl.AuditStatus:
        return nl.AuditStatus(
            mask=SETTINGS_MASK,
            enabled=self.enabled,
            backlog_limit=self.backlog_limit,
            backlog_wait_time=self.backlog_wait_time,
        )


def load(path: str) -> SavedSettings | None:
    """The record, or None if there is none. Raises SensorError naming the file if it is unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SensorError(f"{path}: cannot read the saved audit settings: {e.strerror}") from e
    try:
        return msgspec.json.decode(data, type=SavedSettings)
    except msgspec.DecodeError as e:
        raise SensorError(f"{path}: the saved audit settings do not decode: {e}") from e


def record_once(path: str, found: nl.AuditStatus) -> SavedSettings:
    """The settings to restore: the record's if there is one (an earlier run crashed), else `found`,
    written first (temp file, fsync, rename) so that a crash from now on leaves it behind."""
    saved = load(path)
    if saved is not None:
        log.info("audit settings to restore come from %s (%s)", path, saved.describe())
        return saved
    saved = SavedSettings(
        enabled=found.enabled, backlog_limit=found.backlog_limit, backlog_wait_time=found.backlog_wait_time
    )
    _write_atomic(path, msgspec.json.encode(saved))
    return saved


def forget(path: str) -> None:
    """Removes the record once its settings are back in the kernel."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_atomic(path: str, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise SensorError(f"{path}: cannot record the audit settings: {e.strerror}") from e


def live_daemon(pid: int) -> bool:
    """Whether `pid` is a live audit daemon that is not us."""
    if pid == 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AuditSweep(msgspec.Struct, frozen=True, kw_only=True):
    """What `sweep` found and did."""

    rules_removed: dict[str, int]  # key -> how many
    restored: SavedSettings | None = None  # the settings put back
    not_restored: str = ""  # why a record's settings were not put back (another daemon runs, ...)


def sweep(keys: set[str], record: str | None) -> AuditSweep:
    """Removes every rule carrying one of `keys`, and restores the recorded settings unless another live
    process is the audit daemon (whose settings they now are). Raises SensorError (SensorUnavailable
    when there is no audit netlink)."""
    with open_audit_socket() as sock:
        client = AuditClient(sock)
        removed = {key: n for key in sorted(keys) if (n := remove_keyed_rules(client, key))}
        saved = load(record) if record else None
        if saved is None or record is None:
            return AuditSweep(rules_removed=removed)
        daemon = client.status().pid
        if live_daemon(daemon):
            why = f"pid {daemon} is the audit daemon now: its settings are left alone"
            return AuditSweep(rules_removed=removed, not_restored=why)
        client.set_status(saved.as_status())
    forget(record)
    return AuditSweep(rules_removed=removed, restored=saved)
