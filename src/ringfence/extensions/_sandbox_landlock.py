"""Landlock through its three raw syscalls: filesystem rules, TCP bind/connect, signal and socket scoping.

The PyPI `landlock` package builds rulesets that handle filesystem access only, so it cannot deny TCP
(ABI 4) or scope signals and abstract unix sockets (ABI 6); this module calls landlock_create_ruleset,
landlock_add_rule and landlock_restrict_self itself, asking for what the running kernel's ABI offers.

A ruleset handles every filesystem right the ABI knows; anything not granted by a rule is denied.
Read-only paths get READ_FILE (and READ_DIR for directories); writable paths get every right except
EXECUTE and device creation; EXECUTE is granted nowhere, so the child cannot exec a program.

Errors: SandboxUnavailable when the kernel has no Landlock; SandboxError for a refused syscall.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import stat
from collections.abc import Callable

import msgspec

from ringfence._linux import libc
from ringfence.extensions._sandbox_errors import (
    SandboxError,
    SandboxUnavailable,
    errno_text,
    os_error_text,
)

log = logging.getLogger(__name__)

_SYS_CREATE_RULESET = 444  # same number on every architecture
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1

# filesystem access rights, and the ABI that introduced each
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_ABI1 = (1 << 13) - 1
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_READ_FILE | FS_READ_DIR
WRITE_RIGHTS = (
    READ_RIGHTS
    | FS_WRITE_FILE
    | FS_TRUNCATE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
)
DEVICE_RW_RIGHTS = FS_READ_FILE | FS_WRITE_FILE


class LandlockRules(msgspec.Struct, frozen=True, kw_only=True):
    """What the child may touch. Paths that do not exist are an error: the caller filters optional ones."""

    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]
    device_paths: tuple[str, ...]  # character devices opened read-write (/dev/null, /dev/urandom)
    deny_tcp: bool


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


@functools.cache
def _syscall() -> Callable[..., int]:
    fn: Callable[..., int] = libc().syscall
    fn.restype = ctypes.c_long  # type: ignore[attr-defined]
    return fn


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when Landlock is absent or disabled at boot."""
    result = int(_syscall()(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION)))  # fmt: skip
    return max(result, 0)


def handled_fs(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def ruleset_attr_values(abi: int, deny_tcp: bool) -> tuple[int, int, int]:
    """(handled_access_fs, handled_access_net, scoped) for this ABI."""
    net = NET_BIND_TCP | NET_CONNECT_TCP if deny_tcp and abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return handled_fs(abi), net, scoped


def restrict_self(rules: LandlockRules) -> int:
    """Apply `rules` to the calling thread (which must be the only one) and its future children.

    Needs no_new_privs already set. Returns the ABI used.
    """
    abi = abi_version()
    if abi < 1:
        raise SandboxUnavailable("landlock", "the kernel offers no Landlock ABI (not built, or not in lsm=)")
    if rules.deny_tcp and abi < 4:
        log.warning("landlock ABI %d cannot deny TCP (needs 4); seccomp socket rules still apply", abi)
    fs, net, scoped = ruleset_attr_values(abi, rules.deny_tcp)
    attr = _RulesetAttr(fs, net, scoped)
    ruleset_fd = _call("landlock_create_ruleset", _SYS_CREATE_RULESET, ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))  # fmt: skip
    try:
        for path in rules.read_paths:
            _allow(ruleset_fd, path, READ_RIGHTS & fs)
        for path in rules.write_paths:
            _allow(ruleset_fd, path, WRITE_RIGHTS & fs)
        for path in rules.device_paths:
            _allow(ruleset_fd, path, DEVICE_RW_RIGHTS)
        _call("landlock_restrict_self", _SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    return abi


def _allow(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"landlock rule for {path}: cannot open: {os_error_text(e)}") from e
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS  # directory rights on a file rule are EINVAL
        attr = _PathBeneathAttr(rights, fd)
        _call(f"landlock_add_rule({path})", _SYS_ADD_RULE, ctypes.c_int(ruleset_fd),
              ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(attr), ctypes.c_uint32(0))  # fmt: skip
    finally:
        os.close(fd)


def _call(what: str, number: int, *args: object) -> int:
    result = int(_syscall()(ctypes.c_long(number), *args))
    if result < 0:
        raise SandboxError(f"{what} failed: {errno_text(ctypes.get_errno())}")
    return result
