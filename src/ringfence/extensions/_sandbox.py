"""The extension sandbox: an unprivileged user, no capabilities, cgroups, rlimits, Landlock and seccomp.

Host side, as root: `prepare_sandbox` makes sure the user exists, creates the extension's cgroups with
their limits and hands the writable directories to the user; it returns a `PreparedSandbox` (msgspec,
so it crosses to the child as msgpack or JSON). In the child, first thing and while it has a single
thread, `enter_sandbox` applies everything, in this order: join the cgroups, set rlimits, empty the
capability bounding and ambient sets, setgroups/setgid/setuid (real, effective, saved), clear the
inheritable set, verify every capability set is 0, set no_new_privs, apply Landlock, load seccomp.
Once the child is gone, `release_sandbox` kills anything left in its cgroups and removes them.

Already-open descriptors stay usable (Landlock and seccomp check opening and socket creation, not use),
so the child's socketpair to the agent keeps working.

Errors (the tree):
    SandboxError                anything the sandbox raises; the message says what failed, where, and
      |                         the kernel's errno text
      SandboxUnavailable        a mechanism the sandbox needs is missing on this kernel (Landlock,
                                seccomp): fail closed rather than run an extension unconfined
"""

from __future__ import annotations

import logging
import os
import re
import sys
import sysconfig
from pathlib import Path

import msgspec

import ringfence
from ringfence.extensions import _sandbox_cgroup as cgroup
from ringfence.extensions import _sandbox_creds as creds
from ringfence.extensions import _sandbox_landlock as landlock
from ringfence.extensions import _sandbox_seccomp as seccomp
from ringfence.extensions._sandbox_cgroup import CgroupDir
from ringfence.extensions._sandbox_errors import SandboxError, SandboxUnavailable, os_error_text

__all__ = [
    "CgroupDir",
    "PreparedSandbox",
    "SandboxError",
    "SandboxPolicy",
    "SandboxUnavailable",
    "cgroup_memory_peak",
    "cgroup_oom_killed",
    "enter_sandbox",
    "policy_issues",
    "prepare_sandbox",
    "release_sandbox",
    "sandbox_features",
]

log = logging.getLogger(__name__)

ADDRESS_SPACE_HEADROOM_MB = 512  # RLIMIT_AS covers virtual memory: thread stacks, malloc arenas, mmaps
USER_TASKS_BACKSTOP = 4096  # RLIMIT_NPROC counts every task of the (shared) user; pids.max is per extension
_EXTENSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@shadow)?")  # an instance id: cgroup names
_RUNTIME_FILES = ("/etc/localtime", "/etc/ld.so.cache")
_RUNTIME_DIRS = ("/usr/lib", "/lib", "/lib64", "/usr/lib64")
_NETWORK_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl",
    "/usr/share/ca-certificates",
)
_DEVICES = ("/dev/null", "/dev/urandom")


class SandboxPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What one extension may do. Paths are absolute; limits are per extension."""

    extension_id: str
    user: str = "ringfence-ext"  # unprivileged user; created (no home, nologin shell) if missing
    readable_paths: tuple[str, ...] = ()  # read-only: code, content; Python's own dirs are added
    writable_paths: tuple[str, ...] = ()  # e.g. the extension's scratch dir; handed to `user`
    allow_network: bool = False
    memory_mb: int = 256
    cpu_percent: int = 50  # of one CPU
    max_open_files: int = 256
    max_processes: int = 32


class PreparedSandbox(msgspec.Struct, frozen=True):
    """What `prepare_sandbox` made, for the child (`enter_sandbox`) and for `release_sandbox`."""

    uid: int
    gid: int
    cgroup_procs: tuple[str, ...]  # cgroup.procs files the child writes its pid to
    cgroups: tuple[CgroupDir, ...] = ()


def policy_issues(policy: SandboxPolicy) -> list[str]:
    """Every problem with `policy`, not just the first; empty when it can be applied."""
    issues: list[str] = []
    if not _EXTENSION_ID.fullmatch(policy.extension_id):
        issues.append(f"extension_id {policy.extension_id!r} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    for name, value, low in (
        ("memory_mb", policy.memory_mb, 16),
        ("cpu_percent", policy.cpu_percent, 1),
        ("max_open_files", policy.max_open_files, 16),
        ("max_processes", policy.max_processes, 1),
    ):
        if value < low:
            issues.append(f"{name} is {value}, must be at least {low}")
    for kind, paths in (("readable", policy.readable_paths), ("writable", policy.writable_paths)):
        for path in paths:
            if not Path(path).is_absolute():
                issues.append(f"{kind} path {path!r} is not absolute")
            elif not Path(path).exists():
                issues.append(f"{kind} path {path} does not exist")
    issues += [f"writable path {p} is not a directory" for p in policy.writable_paths if Path(p).is_file()]
    return issues


def prepare_sandbox(policy: SandboxPolicy) -> PreparedSandbox:
    """Host side, as root, before spawning: user, cgroups with limits, writable dirs owned by the user."""
    issues = policy_issues(policy)
    if issues:
        raise SandboxError(f"sandbox policy for {policy.extension_id!r}: " + "; ".join(issues))
    uid, gid = creds.ensure_user(policy.user)
    for path in policy.writable_paths:
        _hand_over(path, uid, gid)
    dirs = cgroup.plan(cgroup.discover_here(), policy.extension_id)
    limits = cgroup.CgroupLimits(
        memory_bytes=policy.memory_mb << 20,
        cpu_percent=policy.cpu_percent,
        max_pids=policy.max_processes,
    )
    try:
        cgroup.create(dirs, limits)
    except SandboxError:
        _remove_all(dirs)
        raise
    procs = tuple(str(Path(cg.path) / "cgroup.procs") for cg in dirs)
    log.debug("sandbox for %s: uid %d, cgroups %s", policy.extension_id, uid, [cg.path for cg in dirs])
    return PreparedSandbox(uid=uid, gid=gid, cgroup_procs=procs, cgroups=dirs)


def _hand_over(path: str, uid: int, gid: int) -> None:
    """The top directory only: its contents keep their owners (a policy may point at shared data)."""
    try:
        os.chown(path, uid, gid)
        Path(path).chmod(0o700)
    except OSError as e:
        raise SandboxError(f"cannot hand writable path {path} to uid {uid}: {os_error_text(e)}") from e


def enter_sandbox(policy: SandboxPolicy, prepared: PreparedSandbox) -> None:
    """In the child, first thing, single-threaded, as root. Irreversible; raises SandboxError on any step."""
    _require_single_thread()
    rules = landlock_rules(policy)
    syscall_filter = seccomp.Filter(policy.allow_network)
    cgroup.join(prepared.cgroup_procs, os.getpid())
    creds.set_rlimits(_rlimits(policy, prepared))
    creds.drop_bounding_and_ambient()
    creds.switch_user(prepared.uid, prepared.gid)
    creds.clear_inheritable()
    creds.verify_no_capabilities()
    creds.set_no_new_privs()
    abi = landlock.restrict_self(rules)
    syscall_filter.load()
    log.debug("sandbox entered: %s, landlock ABI %d, %d seccomp rules", policy.extension_id, abi,
              syscall_filter.rule_count)  # fmt: skip


def _require_single_thread() -> None:
    """Landlock and seccomp apply to the calling thread only; another thread would stay unconfined."""
    threads = len(list(Path("/proc/self/task").iterdir()))
    if threads != 1:
        raise SandboxError(f"enter_sandbox needs a single-threaded process, pid {os.getpid()} has {threads}")


def _rlimits(policy: SandboxPolicy, prepared: PreparedSandbox) -> creds.Rlimits:
    has_pids_cgroup = any("pids" in cg.controllers for cg in prepared.cgroups)
    return creds.Rlimits(
        address_space_bytes=(policy.memory_mb + ADDRESS_SPACE_HEADROOM_MB) << 20,
        open_files=policy.max_open_files,
        processes=max(policy.max_processes, USER_TASKS_BACKSTOP) if has_pids_cgroup else policy.max_processes,
    )


def landlock_rules(policy: SandboxPolicy) -> landlock.LandlockRules:
    """The policy's paths plus what this interpreter needs (runtime paths that are absent are left out)."""
    runtime = [*_RUNTIME_DIRS, *_RUNTIME_FILES, *_python_dirs()]
    if policy.allow_network:
        runtime += _NETWORK_FILES
    read = _unique([*policy.readable_paths, *(p for p in runtime if Path(p).exists())])
    return landlock.LandlockRules(
        read_paths=read,
        write_paths=policy.writable_paths,
        device_paths=tuple(p for p in _DEVICES if Path(p).exists()),
        deny_tcp=not policy.allow_network,
    )


def _python_dirs() -> list[str]:
    """Stdlib and site-packages of this interpreter and its base, the venv, and ringfence's own package."""
    dirs = [str(Path(ringfence.__file__).resolve().parent)]
    if sys.prefix != sys.base_prefix:
        dirs.append(sys.prefix)
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars)
        dirs += [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    return dirs


def _unique(paths: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))


def release_sandbox(policy: SandboxPolicy, prepared: PreparedSandbox) -> None:
    """Host side, after the child is gone: kill anything left in its cgroups, then remove them."""
    log.debug("releasing sandbox of %s", policy.extension_id)
    _remove_all(prepared.cgroups)


def _remove_all(dirs: tuple[CgroupDir, ...]) -> None:
    failures: list[str] = []
    for cg in dirs:
        try:
            cgroup.remove(cg)
        except SandboxError as e:
            failures.append(str(e))
    if failures:
        raise SandboxError("; ".join(failures))


def cgroup_memory_peak(prepared: PreparedSandbox) -> int | None:
    """Peak memory of the extension's cgroup in bytes (read before `release_sandbox`); None if unknown."""
    cg = _memory_cgroup(prepared)
    return None if cg is None else cgroup.memory_peak(cg)


def cgroup_oom_killed(prepared: PreparedSandbox) -> bool:
    """Whether the OOM killer killed something in the extension's cgroup (read before `release_sandbox`)."""
    cg = _memory_cgroup(prepared)
    return cg is not None and cgroup.oom_killed(cg)


def _memory_cgroup(prepared: PreparedSandbox) -> CgroupDir | None:
    return next((cg for cg in prepared.cgroups if "memory" in cg.controllers), None)


def sandbox_features() -> dict[str, str]:
    """What this machine offers, for `ringfence status`: Landlock ABI, seccomp, cgroup per controller."""
    abi = landlock.abi_version()
    features = {
        "landlock": f"ABI {abi} ({_landlock_scope(abi)})" if abi else "unavailable: no Landlock ABI",
        "seccomp": seccomp.describe(),
        "rlimits": "RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE",
    }
    try:
        found = cgroup.discover_here()
    except SandboxError as e:
        found = {}
        log.warning("cgroup discovery failed: %s", e)
    for name in cgroup.CONTROLLERS:
        h = found.get(name)
        features[f"cgroup.{name}"] = f"v{h.version} at {h.mount}" if h else "unavailable: rlimits only"
    return features


def _landlock_scope(abi: int) -> str:
    parts = ["files"]
    if abi >= 4:
        parts.append("tcp bind/connect")
    if abi >= 6:
        parts.append("signal and abstract unix socket scoping")
    return ", ".join(parts)
