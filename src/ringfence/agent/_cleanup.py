"""After a crash, clean up what the crashed run left: its cgroups (and the processes still in them), its
audit rules, and the audit settings it changed. Run at every start, before any sensor, and by
`ringfence cleanup` (systemd's ExecStopPost), which refuses while an agent holds the state dir.

Cgroups are found under every controller's `ringfence/` directory, whoever made them (see
extensions/_sandbox_cgroup.py for how one still in use is told apart). Audit rules are found by key:
`cleanup.json` lists every audit key run from the state dir (written before it is used), beside the
config's; `audit-settings.json` keeps the audit settings found before the first run changed them
(written by the audit sensor). Each kind cleaned is one line for the console,
and goes to the log.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator

import msgspec

from ringfence._linux import write_atomic
from ringfence.agent._config import Config
from ringfence.extensions import _sandbox_cgroup as cgroups
from ringfence.extensions._sandbox_errors import SandboxError
from ringfence.sensors import SensorError
from ringfence.sensors.audit import sweep_audit

log = logging.getLogger(__name__)

SETTLE_S = cgroups.SETTLE_S

LEDGER = "cleanup.json"
AUDIT_SETTINGS = "audit-settings.json"
LOCK = "agent.lock"


class CleanupError(Exception):
    """Cleanup cannot run (an agent holds the state dir, the ledger is unreadable); says which file."""


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """What runs from one state dir may have left behind that cannot be found without it."""

    audit_keys: tuple[str, ...] = ()


def sweep(config: Config, *, settle_s: float = cgroups.SETTLE_S) -> list[str]:
    """Cleans up after every earlier run from this state dir; returns one line per kind cleaned (also
    logged). Never raises for what it cannot clean: that is a line too. `settle_s`: how old an empty
    cgroup must be to go (0 when nothing else can be setting one up: systemd's ExecStopPost)."""
    state_dir = config.agent.state_dir
    ledger = read_ledger(state_dir)
    lines = _sweep_cgroups(settle_s=settle_s)
    lines += _sweep_audit({*ledger.audit_keys, config.sensors.audit_key}, state_dir)
    for line in lines:
        log.info("%s", line)
    return lines


def record_run(config: Config) -> None:
    """Adds, before anything is started, what this run may leave: a crash from now on is covered. The
    keys of earlier runs stay (a few names): rules a sweep could not remove are tried again next time."""
    state_dir = config.agent.state_dir
    before = read_ledger(state_dir)
    ledger = Ledger(audit_keys=tuple(sorted({*before.audit_keys, config.sensors.audit_key})))
    if ledger != before:
        write_atomic(os.path.join(state_dir, LEDGER), msgspec.json.encode(ledger))


def read_ledger(state_dir: str) -> Ledger:
    path = os.path.join(state_dir, LEDGER)
    try:
        with open(path, "rb") as f:
            return msgspec.json.decode(f.read(), type=Ledger)
    except FileNotFoundError:
        return Ledger()
    except (OSError, msgspec.DecodeError) as e:
        log.warning("%s: unreadable, sweeping without it: %s", path, e)
        return Ledger()


def _sweep_cgroups(only: set[str] | None = None, *, settle_s: float = cgroups.SETTLE_S) -> list[str]:
    try:
        found = cgroups.sweep(only, settle_s=settle_s)
    except SandboxError as e:
        return [f"cleanup: could not sweep extension cgroups: {e}"]
    lines = []
    if found.removed:
        ids = ", ".join(sorted({os.path.basename(path) for path in found.removed}))
        killed = f", killed {len(found.killed)} process(es) left in them ({_pids(found.killed)})"
        lines.append(
            f"cleanup: removed {len(found.removed)} extension cgroup(s) of earlier runs ({ids})"
            + (killed if found.killed else "")
        )
    if found.left:
        lines.append(f"cleanup: left the cgroups of {len(found.left)} extension(s): {'; '.join(found.left)}")
    return lines


def _pids(pids: tuple[int, ...]) -> str:
    shown = ", ".join(str(p) for p in pids[:10])
    return f"pid {shown}" + (f" and {len(pids) - 10} more" if len(pids) > 10 else "")


def _sweep_audit(keys: set[str], state_dir: str) -> list[str]:
    try:
        swept = sweep_audit(keys, os.path.join(state_dir, AUDIT_SETTINGS))
    except SensorError as e:
        return [f"cleanup: could not check audit: {e}"]
    lines = []
    if swept.rules_removed:
        counts = ", ".join(f"{n} with key {key!r}" for key, n in swept.rules_removed.items())
        lines.append(
            f"cleanup: removed {sum(swept.rules_removed.values())} audit rule(s) of earlier runs ({counts})"
        )
    if swept.restored is not None:
        lines.append(
            f"cleanup: restored the audit settings found before the first run ({swept.restored.describe()})"
        )
    if swept.not_restored:
        lines.append(f"cleanup: left the audit settings found before the first run: {swept.not_restored}")
    return lines


@contextlib.contextmanager
def holding_state_dir(state_dir: str) -> Iterator[None]:
    """The agent's lock on `state_dir`, for `ringfence cleanup`. Raises CleanupError while an agent
    holds it. A missing state dir has nothing recorded and no agent: nothing to hold."""
    path = os.path.join(state_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    except OSError as e:
        raise CleanupError(f"{path}: {os.strerror(e.errno or errno.EIO)}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CleanupError(
                f"an agent (pid {holder}) holds {path}: cleanup runs only when no agent does"
            ) from e
        yield
    finally:
        os.close(fd)
