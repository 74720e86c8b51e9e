"""Who the child runs as: the unprivileged user, rlimits, and a capability set proved empty.

`ensure_user` runs on the host (as root). The rest runs in the child, in `enter_sandbox`'s order:
rlimits, drop the bounding set and ambient caps, setgroups/setgid/setuid, clear inheritable caps,
verify every capability set in /proc/self/status is 0, then PR_SET_NO_NEW_PRIVS.

prctl and capset are called through ctypes: the stdlib has no wrapper for them.
Errors: SandboxError, naming the step and the errno text.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import resource
import subprocess
from pathlib import Path

import msgspec

from ringfence._linux import libc
from ringfence.extensions._sandbox_errors import SandboxError, errno_text, os_error_text

log = logging.getLogger(__name__)

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
_NOLOGIN = "/usr/sbin/nologin"


class Rlimits(msgspec.Struct, frozen=True, kw_only=True):
    """The rlimits the child sets on itself, soft = hard, so it cannot raise them again."""

    address_space_bytes: int
    open_files: int
    processes: int


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def prctl(option: int, arg2: int = 0, what: str = "prctl") -> int:
    """prctl(2) with unsigned long arguments; raises SandboxError naming `what` on failure."""
    fn = libc().prctl
    fn.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    fn.restype = ctypes.c_int
    result = int(fn(option, arg2, 0, 0, 0))
    if result < 0:
        raise SandboxError(f"{what} failed: {errno_text(ctypes.get_errno())}")
    return result


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of `name`, creating a system user with no home and no login shell if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _create_user(name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxError(f"user {name!r} still missing after useradd") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxError(
            f"sandbox user {name!r} has uid {entry.pw_uid} gid {entry.pw_gid}: must not be root"
        )
    return entry.pw_uid, entry.pw_gid


def _create_user(name: str) -> None:
    try:
        grp.getgrnam(name)
        group_args = ["--gid", name]
    except KeyError:
        group_args = ["--user-group"]
    cmd = ["useradd", "--system", "--no-create-home", "--shell", _NOLOGIN, *group_args, name]
    log.info("creating sandbox user %s", name)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    # exit status 9: the name was taken meanwhile (another prepare raced us), which is what we wanted
    if done.returncode not in (0, 9):
        raise SandboxError(f"useradd for {name!r} exited {done.returncode}: {done.stderr.strip()}")


def set_rlimits(limits: Rlimits) -> None:
    for name, which, value in (
        ("RLIMIT_AS", resource.RLIMIT_AS, limits.address_space_bytes),
        ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, limits.open_files),
        ("RLIMIT_NPROC", resource.RLIMIT_NPROC, limits.processes),
        ("RLIMIT_CORE", resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as e:
            raise SandboxError(f"setrlimit({name}, {value}) failed: {e}") from e


def drop_bounding_and_ambient() -> None:
    """Empty the bounding set (needs CAP_SETPCAP, so before setuid) and the ambient set."""
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap, what=f"prctl(PR_CAPBSET_DROP, {cap})")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def switch_user(uid: int, gid: int) -> None:
    """Supplementary groups, then gid, then uid: real, effective and saved, so none can come back."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SandboxError(f"cannot switch to uid {uid} gid {gid}: {os_error_text(e)}") from e
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SandboxError(f"ids after switch are {os.getresuid()} {os.getresgid()} {os.getgroups()}")


def clear_inheritable() -> None:
    """capset(2) with every set 0: leaving root cleared effective/permitted, not inheritable."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    fn = libc().capset
    fn.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
    fn.restype = ctypes.c_int
    if fn(ctypes.byref(header), data) < 0:
        raise SandboxError(f"capset to empty sets failed: {errno_text(ctypes.get_errno())}")


def capability_sets(status_text: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb from /proc/<pid>/status text, as integers."""
    sets: dict[str, int] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key in _CAP_FIELDS:
            sets[key] = int(value.strip(), 16)
    return sets


def verify_no_capabilities() -> None:
    sets = capability_sets(Path("/proc/self/status").read_text())
    if set(sets) != set(_CAP_FIELDS):
        raise SandboxError(f"/proc/self/status lists capability sets {sorted(sets)}, expected {_CAP_FIELDS}")
    left = {k: f"{v:#x}" for k, v in sets.items() if v}
    if left:
        raise SandboxError(f"capabilities remain after dropping privileges: {left}")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")
    if prctl(PR_GET_NO_NEW_PRIVS, what="prctl(PR_GET_NO_NEW_PRIVS)") != 1:
        raise SandboxError("no_new_privs did not stick")
