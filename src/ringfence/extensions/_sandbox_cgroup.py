"""Per-extension cgroups for memory, CPU and pids, on cgroup v2 where its controllers are enabled, else v1.

Each controller is placed on its own: v2 if the cgroup2 mount offers it, else the v1 hierarchy that
mounts it, else nowhere (the rlimits set in the child then carry the limit alone). Directories are
`<mount>/ringfence/<extension id>`. The host creates them and writes the limits; the child joins by
writing its pid to each `cgroup.procs`; the host removes them after the child is gone.

After a crash (the agent killed with SIGKILL), `sweep` finds every cgroup under `<mount>/ringfence/` that
no live process launched any more: what is in it was reparented (to pid 1) when its launcher died. It
kills what is left there (double-forked grandchildren too: they stay in the cgroup) and removes it. A
cgroup with a member whose parent is alive outside it belongs to a running launcher (another agent, a
test) and is left alone; so is an empty one made less than `SETTLE_S` ago, since a launcher makes the
cgroup before its child joins it (the extension id tells nothing: another agent may run the same one).

Errors: every failure is a SandboxError naming the file and the errno text.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Collection, Iterable
from pathlib import Path

import msgspec

from ringfence._linux import read_proc_stat
from ringfence.extensions._sandbox_errors import SandboxError, os_error_text

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
PARENT_DIR = "ringfence"
_RMDIR_ATTEMPTS = 20  # a reaped child leaves the cgroup a moment later; 20 x 25 ms bounds the wait
_RMDIR_PAUSE_S = 0.025
SETTLE_S = 30.0  # an empty cgroup younger than this may be one a running launcher is setting up


class Hierarchy(msgspec.Struct, frozen=True):
    """Where one controller lives: cgroup version and mount point."""

    version: int  # 1 or 2
    mount: str


class CgroupDir(msgspec.Struct, frozen=True):
    """One cgroup directory made for an extension, and the controllers it limits."""

    version: int
    path: str
    controllers: tuple[str, ...]


class CgroupLimits(msgspec.Struct, frozen=True, kw_only=True):
    memory_bytes: int
    cpu_percent: int
    max_pids: int


def discover(mounts_text: str, read_controllers: dict[str, str] | None = None) -> dict[str, Hierarchy]:
    """Map each of memory/cpu/pids to the hierarchy that offers it, from /proc/self/mounts text.

    `read_controllers` maps a cgroup2 mount point to its `cgroup.controllers` text; when None the
    file is read from disk. v2 wins for a controller it offers.
    """
    found: dict[str, Hierarchy] = {}
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            text = _controllers_text(mount, read_controllers)
            for name in set(text.split()) & set(CONTROLLERS):
                found[name] = Hierarchy(version=2, mount=mount)
        elif fstype == "cgroup":
            for name in set(options) & set(CONTROLLERS):
                found.setdefault(name, Hierarchy(version=1, mount=mount))
    return found


def discover_here() -> dict[str, Hierarchy]:
    """`discover` on this machine's mount table."""
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError as e:
        raise SandboxError(f"cannot read /proc/self/mounts: {os_error_text(e)}") from e
    return discover(text)


def _controllers_text(mount: str, given: dict[str, str] | None) -> str:
    if given is not None:
        return given.get(mount, "")
    try:
        return (Path(mount) / "cgroup.controllers").read_text()
    except OSError as e:
        log.debug("cgroup2 at %s: cannot read cgroup.controllers: %s", mount, os_error_text(e))
        return ""


def plan(hierarchies: dict[str, Hierarchy], extension_id: str) -> tuple[CgroupDir, ...]:
    """The directories to make: one per hierarchy (v1 mounts can hold several controllers)."""
    by_mount: dict[Hierarchy, list[str]] = {}
    for name in CONTROLLERS:
        if name in hierarchies:
            by_mount.setdefault(hierarchies[name], []).append(name)
    return tuple(
        CgroupDir(
            version=h.version,
            path=str(Path(h.mount) / PARENT_DIR / extension_id),
            controllers=tuple(names),
        )
        for h, names in by_mount.items()
    )


def limit_writes(cg: CgroupDir, limits: CgroupLimits) -> list[tuple[str, str, bool]]:
    """(file, value, required) to write into `cg`, in order. Optional files may be absent."""
    quota = CPU_PERIOD_US * limits.cpu_percent // 100
    writes: list[tuple[str, str, bool]] = []
    for name in cg.controllers:
        if name == "memory" and cg.version == 1:
            writes.append(("memory.limit_in_bytes", str(limits.memory_bytes), True))
            writes.append(("memory.memsw.limit_in_bytes", str(limits.memory_bytes), False))
        elif name == "memory":
            writes.append(("memory.max", str(limits.memory_bytes), True))
            writes.append(("memory.swap.max", "0", False))
        elif name == "cpu" and cg.version == 1:
            writes.append(("cpu.cfs_period_us", str(CPU_PERIOD_US), True))
            writes.append(("cpu.cfs_quota_us", str(quota), True))
        elif name == "cpu":
            writes.append(("cpu.max", f"{quota} {CPU_PERIOD_US}", True))
        elif name == "pids":
            writes.append(("pids.max", str(limits.max_pids), True))
    return writes


def create(dirs: Iterable[CgroupDir], limits: CgroupLimits) -> None:
    """Make each directory fresh (a stale one from a crashed run is emptied and removed first)."""
    for cg in dirs:
        path = Path(cg.path)
        if path.exists():
            log.info("removing stale cgroup %s before reuse", path)
            remove(cg)
        if cg.version == 2:
            _enable_v2_controllers(path.parent, cg.controllers)
        _mkdir(path)
        for filename, value, required in limit_writes(cg, limits):
            _write(path / filename, value, required=required)


def _enable_v2_controllers(parent: Path, controllers: tuple[str, ...]) -> None:
    """v2 needs each controller enabled in every ancestor's subtree_control, down to our parent."""
    wanted = " ".join(f"+{c}" for c in controllers)
    _write(parent.parent / "cgroup.subtree_control", wanted, required=True)
    _mkdir(parent, exist_ok=True)
    _write(parent / "cgroup.subtree_control", wanted, required=True)


def _mkdir(path: Path, *, exist_ok: bool = False) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as e:
        raise SandboxError(f"cannot create cgroup {path}: {os_error_text(e)}") from e


def _write(path: Path, value: str, *, required: bool) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        if required:
            raise SandboxError(f"cgroup file {path} is missing") from None
        log.debug("optional cgroup file %s is absent", path)
    except OSError as e:
        raise SandboxError(f"cannot write {value!r} to {path}: {os_error_text(e)}") from e


def join(procs_files: Iterable[str], pid: int) -> None:
    """Move `pid` (the caller, in the child) into each cgroup."""
    for procs in procs_files:
        try:
            Path(procs).write_text(str(pid))
        except OSError as e:
            raise SandboxError(f"cannot join cgroup {procs} with pid {pid}: {os_error_text(e)}") from e


def remove(cg: CgroupDir) -> None:
    """Kill what is still inside (the extension's leftover children), then rmdir, retrying while busy."""
    path = Path(cg.path)
    for attempt in range(_RMDIR_ATTEMPTS):
        _kill_members(path)
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == _RMDIR_ATTEMPTS - 1:
                raise SandboxError(f"cannot remove cgroup {path}: {os_error_text(e)}") from e
            time.sleep(_RMDIR_PAUSE_S)
        else:
            return


def _members(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SandboxError(f"cannot list {path}/cgroup.procs: {os_error_text(e)}") from e


def _kill_members(path: Path) -> list[int]:
    """SIGKILL every process still in the cgroup: only the extension and its descendants join it. Through
    a pidfd, checked to be in the cgroup still, so that a pid reused meanwhile is never hit."""
    killed = []
    for pid in _members(path):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if pid in _members(path):
                log.info("killing pid %d left in cgroup %s", pid, path)
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    killed.append(pid)
        finally:
            os.close(pidfd)
    return killed


class Leftovers(msgspec.Struct, frozen=True, kw_only=True):
    """What `sweep` did: cgroup directories removed, pids killed in them, and the extension ids whose
    cgroups were left (`id: why`)."""

    removed: tuple[str, ...] = ()
    killed: tuple[int, ...] = ()
    left: tuple[str, ...] = ()


def sweep(
    only: Collection[str] | None = None,
    *,
    settle_s: float = SETTLE_S,
    hierarchies: dict[str, Hierarchy] | None = None,
) -> Leftovers:
    """Kills what is in, and removes, every Ringfence cgroup that no live launcher owns (see the module
    docstring); `only`: just the cgroups of these extension ids (None: all). An extension's directories
    in every hierarchy are judged together, before anything in them is killed."""
    found = discover_here() if hierarchies is None else hierarchies
    by_id: dict[str, list[CgroupDir]] = {}
    for hierarchy in sorted(set(found.values()), key=lambda h: h.mount):
        for path in _children(Path(hierarchy.mount) / PARENT_DIR):
            if only is None or path.name in only:
                by_id.setdefault(path.name, []).append(CgroupDir(hierarchy.version, str(path), ()))
    removed: list[str] = []
    killed: list[int] = []
    left: list[str] = []
    for ext_id, dirs in sorted(by_id.items()):
        why = _in_use([Path(cg.path) for cg in dirs], settle_s)
        if why is not None:
            left.append(f"{ext_id}: {why}")
            continue
        for cg in dirs:
            killed += _kill_members(Path(cg.path))
            try:
                remove(cg)
            except SandboxError as e:
                left.append(f"{ext_id}: {e}")
                continue
            removed.append(cg.path)
    return Leftovers(removed=tuple(removed), killed=tuple(sorted(set(killed))), left=tuple(left))


def _children(parent: Path) -> list[Path]:
    try:
        return sorted(p for p in parent.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SandboxError(f"cannot list {parent}: {os_error_text(e)}") from e


def _in_use(paths: list[Path], settle_s: float) -> str | None:
    """Why one extension's cgroups belong to a live launcher (or may), or None if they are leftovers."""
    members = {pid for path in paths for pid in _members(path)}
    for pid in sorted(members):
        parent = _parent_of(pid)
        if parent is not None and parent != 1 and parent not in members:
            return f"in use: pid {pid} in it is a child of the live pid {parent}"
    if members:
        return None
    ages = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            ages.append(time.time() - path.stat().st_ctime)
    if ages and min(ages) < settle_s:
        return f"empty, made {min(ages):.0f} s ago: it may be a running launcher's, being set up"
    return None


def _parent_of(pid: int) -> int | None:
    """The parent pid, or None if the process is gone."""
    stat = read_proc_stat(pid)
    return None if stat is None else stat.ppid


def memory_peak(cg: CgroupDir) -> int | None:
    """Highest memory use the cgroup saw, in bytes; None if the kernel does not record it."""
    name = "memory.max_usage_in_bytes" if cg.version == 1 else "memory.peak"
    try:
        return int((Path(cg.path) / name).read_text().split()[0])
    except (OSError, ValueError, IndexError) as e:
        log.debug("no memory peak in %s: %s", cg.path, e)
        return None


def oom_killed(cg: CgroupDir) -> bool:
    """Whether the kernel's OOM killer killed a process of this cgroup."""
    name = "memory.oom_control" if cg.version == 1 else "memory.events"
    try:
        text = (Path(cg.path) / name).read_text()
    except OSError as e:
        log.debug("cannot read %s/%s: %s", cg.path, name, e)
        return False
    counters = dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)
    return int(counters.get("oom_kill", "0")) > 0
