"""The audit baseline: the watches and syscall rules that Sigma's auditd rules (and our own pack) were
written against, each tagged `<key>:<category>` so it is removed with the sensor's own rules.

Watches (writes and attribute changes, `-p wa`): a directory that exists is watched as a tree
(`-F dir=`, every file below it), anything else as one path (`-F path=`; the kernel watches its
parent for it to appear; a path whose parent does not exist is skipped). Syscalls: success and failure,
both architectures. `categories` turns groups off, by name.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Sequence

from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._names import SYSCALLS_I386, SYSCALLS_X86_64

PERM_EXEC, PERM_WRITE, PERM_READ, PERM_ATTR = 1, 2, 4, 8
_PERMS = {"x": PERM_EXEC, "w": PERM_WRITE, "r": PERM_READ, "a": PERM_ATTR}
# A watch's syscalls: those its `perm` field can match, never all of them (as `auditctl -w` asks). The
# kernel checks a rule's syscall mask before its fields, so a watch with every bit set is evaluated on
# every syscall of every process: every baseline watch on made `dd bs=512` 2.72x slower than no agent,
# against 1.78x with this mask (bench/RESULTS.md). The mask is what the kernel's perm check
# (audit_match_perm) reads: a bit near the top of the mask stands for a class of syscalls
# (AUDIT_CLASS_*; the kernel expands it into the same tables the check consults, both ABIs), and the
# syscalls it classifies apart by their flags (the opens, execve, i386 socketcall for bind) are named.
_CLASS_BIT = nl.AUDIT_BITMASK_SIZE * 32 - 1  # class N is bit _CLASS_BIT - N
_CLASSES = {PERM_WRITE: (6, 7), PERM_READ: (4, 5), PERM_ATTR: (2, 3)}  # native and 32-bit
_APART = {
    PERM_READ: ("open", "openat", "openat2"),
    PERM_WRITE: ("open", "openat", "openat2", "socketcall"),
    PERM_EXEC: ("execve", "execveat"),
}
SYSCALLS_BY_ARCH = {nl.AUDIT_ARCH_X86_64: SYSCALLS_X86_64, nl.AUDIT_ARCH_I386: SYSCALLS_I386}


@dataclasses.dataclass(frozen=True)
class Watch:
    category: str
    paths: tuple[str, ...]  # absolute; a `*` is expanded once, at start (home directories)
    perms: str = "wa"


@dataclasses.dataclass(frozen=True)
class SyscallGroup:
    category: str
    names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Baseline:
    watches: tuple[Watch, ...] = ()
    syscalls: tuple[SyscallGroup, ...] = ()

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(w.category for w in self.watches) | {g.category for g in self.syscalls}

    def without(self, categories: Iterable[str]) -> Baseline:
        off = frozenset(categories)
        return Baseline(
            watches=tuple(w for w in self.watches if w.category not in off),
            syscalls=tuple(g for g in self.syscalls if g.category not in off),
        )


DEFAULT_BASELINE = Baseline(
    watches=(
        Watch(
            "identity", ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/security/opasswd")
        ),
        # reads too: a password hash dumper is any program that opens these (the pack names the
        # authentication tools that may)
        Watch("credentials-read", ("/etc/shadow", "/etc/gshadow", "/etc/security/opasswd"), perms="r"),
        Watch("sudoers", ("/etc/sudoers", "/etc/sudoers.d")),
        Watch(
            "cron",
            (
                "/etc/crontab",
                "/etc/anacrontab",
                "/etc/cron.d",
                "/etc/cron.hourly",
                "/etc/cron.daily",
                "/etc/cron.weekly",
                "/etc/cron.monthly",
                "/var/spool/cron",
                "/var/spool/at",
            ),
        ),
        Watch(
            "systemd",
            (
                "/etc/systemd/system",
                "/etc/systemd/user",
                "/usr/lib/systemd/system",
                "/lib/systemd/system",
                "/usr/lib/systemd/user",
                "/root/.config/systemd",
                "/home/*/.config/systemd",
            ),
        ),
        Watch("preload", ("/etc/ld.so.preload", "/etc/ld.so.conf", "/etc/ld.so.conf.d")),
        Watch("ssh", ("/root/.ssh", "/home/*/.ssh", "/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d")),
        Watch("pam", ("/etc/pam.d", "/etc/security/pam_env.conf")),
        Watch(
            "shell-profile",
            (
                "/etc/profile",
                "/etc/profile.d",
                "/etc/bash.bashrc",
                "/etc/shells",
                "/etc/environment",
                "/root/.bashrc",
                "/root/.profile",
                "/root/.bash_profile",
            ),
        ),
        Watch(
            "boot",
            (
                "/etc/rc.local",
                "/etc/init.d",
                "/etc/udev/rules.d",
                "/etc/modprobe.d",
                "/etc/modules-load.d",
                "/etc/update-motd.d",
            ),
        ),
        Watch(
            "audit-config",
            (
                "/etc/audit",
                "/etc/libaudit.conf",
                "/etc/rsyslog.conf",
                "/etc/rsyslog.d",
                "/etc/syslog.conf",
                "/etc/sysctl.conf",
                "/etc/sysctl.d",
            ),
        ),
    ),
    syscalls=(
        SyscallGroup(
            "module", ("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load")
        ),
        SyscallGroup("ptrace", ("ptrace", "process_vm_writev")),
        SyscallGroup(
            "xattr", ("setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr")
        ),
        SyscallGroup("memfd", ("memfd_create",)),
        SyscallGroup("bpf", ("bpf",)),
        SyscallGroup("mknod", ("mknod", "mknodat")),
    ),
)


DEFAULT_OFF: tuple[str, ...] = (
    "identity", "sudoers", "cron", "systemd", "preload", "ssh", "pam", "shell-profile", "boot",
    "audit-config",
)  # fmt: skip
"""The categories left out unless the operator asks for them (`sensors.audit_baseline_off = []`): the
write watches, for SigmaHQ's auditd PATH rules. A watch is checked on every syscall its mask names (the
classes its permissions can match, see _CLASS_BIT), and these 24-odd directory trees still make a
syscall-bound loop (dd bs=512) 1.78x slower than nothing against 1.33x for the defaults (2.72x when
their masks named every syscall; bench/RESULTS.md). The default pack reads those writes from the file
sensor (fanotify) instead."""


def rule_key(key: str, category: str) -> str:
    return f"{key}:{category}"


def is_ours(rule_keys: Sequence[str], key: str) -> bool:
    """Whether a rule is the sensor's: it carries `key` itself or a baseline `key:category`."""
    prefix = f"{key}:"
    return any(k == key or k.startswith(prefix) for k in rule_keys)


def expand(paths: Iterable[str]) -> list[str]:
    """The paths with `*` patterns replaced by what exists now (sorted); the others as they are."""
    out: list[str] = []
    for path in paths:
        out.extend(sorted(glob.glob(path)) if "*" in path else [path])
    return out


def watch_rule(path: str, perms: str, key: str, exclude_pid: int | None) -> bytes | None:
    """An exit-filter watch on `path`, or None when its parent directory does not exist."""
    path = path.rstrip("/") or "/"
    if not os.path.isdir(os.path.dirname(path)):
        return None
    field = nl.AUDIT_DIR if os.path.isdir(path) else nl.AUDIT_WATCH
    fields = [
        nl.RuleField(field, nl.AUDIT_EQUAL, text=path),
        nl.RuleField(nl.AUDIT_PERM, nl.AUDIT_EQUAL, _perm_bits(perms)),
    ]
    if exclude_pid is not None:
        fields.append(nl.RuleField(nl.AUDIT_PID, nl.AUDIT_NOT_EQUAL, exclude_pid))
    fields.append(nl.RuleField(nl.AUDIT_FILTERKEY, nl.AUDIT_EQUAL, text=key))
    return nl.pack_rule(nl.AUDIT_FILTER_EXIT, nl.AUDIT_ALWAYS, perm_syscalls(_perm_bits(perms)), fields)


def perm_syscalls(perm: int) -> list[int]:
    """The syscall mask bits of a watch with these `perm` bits (see _CLASS_BIT). No arch field: a bit
    stands for that number in either ABI, and the perm check refuses the other ABI's syscall."""
    bits = {_CLASS_BIT - c for p, classes in _CLASSES.items() if perm & p for c in classes}
    names = {name for p, apart in _APART.items() if perm & p for name in apart}
    for table in SYSCALLS_BY_ARCH.values():
        bits |= {nr for nr, name in table.items() if name in names}
    return sorted(bits)


def _perm_bits(perms: str) -> int:
    try:
        return sum(_PERMS[p] for p in set(perms))
    except KeyError as e:
        raise ValueError(f"audit watch permissions are of 'rwxa', got {perms!r}") from e


def syscall_rules(
    group: SyscallGroup, key: str, archs: Sequence[int], exclude_pid: int | None
) -> list[bytes]:
    """One rule per architecture with the group's syscalls that the architecture has."""
    rules = []
    for arch in archs:
        table = {name: nr for nr, name in SYSCALLS_BY_ARCH[arch].items()}
        numbers = [table[name] for name in group.names if name in table]
        if not numbers:
            continue
        fields = [nl.RuleField(nl.AUDIT_ARCH, nl.AUDIT_EQUAL, arch)]
        if exclude_pid is not None:
            fields.append(nl.RuleField(nl.AUDIT_PID, nl.AUDIT_NOT_EQUAL, exclude_pid))
        fields.append(nl.RuleField(nl.AUDIT_FILTERKEY, nl.AUDIT_EQUAL, text=key))
        rules.append(nl.pack_rule(nl.AUDIT_FILTER_EXIT, nl.AUDIT_ALWAYS, numbers, fields))
    return rules
