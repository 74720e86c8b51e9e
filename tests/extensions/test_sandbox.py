"""The sandbox on the real kernel: each test prepares a sandbox, runs sandbox_child.py in it, and checks
what the kernel refused. Needs root; each test removes its cgroups, scratch dirs and processes."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

import ringfence
from ringfence.extensions import _sandbox_creds as creds
from ringfence.extensions._sandbox import (
    PreparedSandbox,
    SandboxPolicy,
    cgroup_memory_peak,
    cgroup_oom_killed,
    prepare_sandbox,
    release_sandbox,
    sandbox_features,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is set up by root"),
]

CHILD = Path(__file__).resolve().with_name("sandbox_child.py")
SOURCE_DIR = str(Path(ringfence.__file__).resolve().parent.parent)
CHILD_TIMEOUT_S = 60


@pytest.fixture
def scratch() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="rf-sbx-")
    yield path
    shutil.rmtree(path)


def make_policy(scratch: str, **overrides: object) -> SandboxPolicy:
    fields: dict[str, object] = {
        "extension_id": f"test-{uuid.uuid4().hex[:12]}",
        "readable_paths": (str(CHILD.parent), SOURCE_DIR),
        "writable_paths": (scratch,),
        "memory_mb": 128,
        "max_processes": 16,
    }
    fields.update(overrides)
    return SandboxPolicy(**fields)  # type: ignore[arg-type]


@contextlib.contextmanager
def sandbox(policy: SandboxPolicy) -> Iterator[PreparedSandbox]:
    prepared = prepare_sandbox(policy)
    try:
        yield prepared
    finally:
        release_sandbox(policy, prepared)


def child_argv(policy: SandboxPolicy, prepared: PreparedSandbox, action: str, *args: str) -> list[str]:
    encode = msgspec.json.encode
    return [sys.executable, str(CHILD), action, encode(policy).decode(), encode(prepared).decode(), *args]


def run_child(
    policy: SandboxPolicy, prepared: PreparedSandbox, action: str, *args: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        child_argv(policy, prepared, action, *args),
        capture_output=True,
        text=True,
        cwd="/",
        timeout=CHILD_TIMEOUT_S,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def outcome(policy: SandboxPolicy, action: str, *args: str) -> dict[str, str]:
    with sandbox(policy) as prepared:
        done = run_child(policy, prepared, action, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status_fields(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_child_keeps_root_or_capabilities_after_enter(scratch: str) -> None:
    policy = make_policy(scratch)
    with sandbox(policy) as prepared:
        child = subprocess.Popen(
            child_argv(policy, prepared, "wait"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            status = status_fields(child.pid)
            members = [Path(p).read_text().split() for p in prepared.cgroup_procs]
        finally:
            child.communicate(input="", timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0
    assert status["Uid"].split() == [str(prepared.uid)] * 4
    assert status["Gid"].split() == [str(prepared.gid)] * 4
    assert status["Groups"].strip() == ""
    for cap_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap_set], 16) == 0, cap_set
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert all(str(child.pid) in pids for pids in members)


def test_shadow_and_world_readable_files_outside_policy_unreadable(scratch: str) -> None:
    result = outcome(make_policy(scratch), "read", "/etc/shadow", "/etc/passwd", str(CHILD))
    assert result == {"/etc/shadow": "EACCES", "/etc/passwd": "EACCES", str(CHILD): "ok"}


def test_write_outside_writable_paths_denied_even_where_mode_allows(scratch: str) -> None:
    open_dir = tempfile.mkdtemp(prefix="rf-sbx-open-")
    try:
        Path(open_dir).chmod(0o777)  # the file mode would allow it: only Landlock stands in the way
        inside, outside = f"{scratch}/ok", f"{open_dir}/denied"
        result = outcome(make_policy(scratch), "write", inside, outside)
        assert result == {inside: "ok", outside: "EACCES"}
        assert not Path(outside).exists()
    finally:
        shutil.rmtree(open_dir)


def test_non_unix_sockets_refused_without_network(scratch: str) -> None:
    families = ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX")
    result = outcome(make_policy(scratch), "sockets", *families)
    assert result == {"AF_INET": "EPERM", "AF_INET6": "EPERM", "AF_NETLINK": "EPERM", "AF_PACKET": "EPERM",
                      "AF_UNIX": "ok"}  # fmt: skip


def test_inet_socket_refused_when_network_allowed(scratch: str) -> None:
    result = outcome(make_policy(scratch, allow_network=True), "sockets", "AF_INET", "AF_UNIX")
    assert result == {"AF_INET": "ok", "AF_UNIX": "ok"}


def test_inherited_socketpair_to_agent_breaks_after_enter(scratch: str) -> None:
    policy = make_policy(scratch)
    agent_end, child_end = socket.socketpair()
    with agent_end, child_end, sandbox(policy) as prepared:
        argv = child_argv(policy, prepared, "socketpair", str(child_end.fileno()))
        child = subprocess.Popen(argv, pass_fds=(child_end.fileno(),), stdout=subprocess.PIPE, text=True)
        try:
            agent_end.settimeout(CHILD_TIMEOUT_S)
            assert agent_end.recv(16) == b"ping"
            agent_end.sendall(b"pong")
        finally:
            stdout, _ = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0
    assert json.loads(stdout) == {"reply": "pong"}


def test_ptrace_allowed_on_own_child_or_parent(scratch: str) -> None:
    assert outcome(make_policy(scratch), "ptrace") == {"own_child": "EPERM", "parent": "EPERM"}


def test_mount_or_user_namespace_allowed(scratch: str) -> None:
    assert outcome(make_policy(scratch), "mount", scratch) == {"mount": "EPERM", "unshare_user": "EPERM"}


def test_signal_reaches_same_user_process_outside_sandbox(scratch: str) -> None:
    policy = make_policy(scratch)
    with sandbox(policy) as prepared:
        # same uid as the sandboxed child, so only Landlock's signal scoping can refuse
        outsider = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            user=prepared.uid,
            group=prepared.gid,
            extra_groups=[],
        )
        try:
            done = run_child(policy, prepared, "signal", str(outsider.pid))
        finally:
            outsider.communicate(input=b"", timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"signal": "EPERM"}


def test_abstract_unix_socket_outside_sandbox_reachable(scratch: str) -> None:
    name = f"rf-sbx-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        result = outcome(make_policy(scratch), "abstract_connect", name)
    assert result == {"connect": "EPERM"}


def test_exec_of_any_program_allowed(scratch: str) -> None:
    assert outcome(make_policy(scratch), "exec", "/bin/true") == {"exec": "EACCES"}


def test_one_gib_allocation_succeeds_under_128_mib_policy(scratch: str) -> None:
    assert outcome(make_policy(scratch, memory_mb=128), "alloc_once") == {"alloc": "MemoryError"}


def test_memory_blowup_not_killed_or_not_reported_as_oom(scratch: str) -> None:
    policy = make_policy(scratch, memory_mb=128)
    with sandbox(policy) as prepared:
        if not any("memory" in cg.controllers for cg in prepared.cgroups):
            pytest.skip("no memory cgroup on this machine")
        done = run_child(policy, prepared, "alloc_touch")
        oom, peak = cgroup_oom_killed(prepared), cgroup_memory_peak(prepared)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert oom
    assert peak is not None and peak <= 128 << 20


def test_fork_bomb_not_stopped_by_pids_limit(scratch: str) -> None:
    policy = make_policy(scratch, max_processes=16)
    with sandbox(policy) as prepared:
        done = run_child(policy, prepared, "forkbomb", "300")
        pids_events = [Path(cg.path, "pids.events") for cg in prepared.cgroups if "pids" in cg.controllers]
        hits = [int(dict(line.split() for line in p.read_text().splitlines())["max"]) for p in pids_events]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failure"] == "EAGAIN"
    assert int(result["forked"]) < 16
    assert all(hit > 0 for hit in hits)  # the cgroup, not only RLIMIT_NPROC, refused the fork


def test_release_leaves_cgroups_or_leftover_processes(scratch: str) -> None:
    policy = make_policy(scratch)
    prepared = prepare_sandbox(policy)
    orphan = None
    try:
        done = run_child(policy, prepared, "orphan")
        assert done.returncode == 0, done.stderr
        orphan = int(json.loads(done.stdout)["orphan"])
        assert all(Path(cg.path).is_dir() for cg in prepared.cgroups)
    finally:
        release_sandbox(policy, prepared)
    assert not any(Path(cg.path).exists() for cg in prepared.cgroups)
    assert not _alive(orphan)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_prepare_leaves_cgroup_limits_unset(scratch: str) -> None:
    expected = {
        (1, "memory"): ("memory.limit_in_bytes", str(96 << 20)),
        (1, "cpu"): ("cpu.cfs_quota_us", "30000"),
        (1, "pids"): ("pids.max", "7"),
        (2, "memory"): ("memory.max", str(96 << 20)),
        (2, "cpu"): ("cpu.max", "30000 100000"),
        (2, "pids"): ("pids.max", "7"),
    }
    policy = make_policy(scratch, memory_mb=96, cpu_percent=30, max_processes=7)
    with sandbox(policy) as prepared:
        for cg in prepared.cgroups:
            for controller in cg.controllers:
                filename, value = expected[(cg.version, controller)]
                assert Path(cg.path, filename).read_text().strip() == value
    if not prepared.cgroups:
        pytest.skip("no cgroup controller on this machine")


def test_writable_dir_not_handed_to_sandbox_user(scratch: str) -> None:
    policy = make_policy(scratch)
    with sandbox(policy) as prepared:
        st = Path(scratch).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (prepared.uid, prepared.gid, 0o700)


def test_enter_in_multithreaded_process_not_refused(scratch: str) -> None:
    policy = make_policy(scratch)
    with sandbox(policy) as prepared:
        done = run_child(policy, prepared, "threaded_enter")
    assert done.returncode == 3
    assert "single-threaded" in done.stderr


def test_missing_user_not_created_or_created_twice() -> None:
    name = f"rf-t{uuid.uuid4().hex[:10]}"
    try:
        first = creds.ensure_user(name)
        assert creds.ensure_user(name) == first
        entry = pwd.getpwnam(name)
        assert entry.pw_shell == "/usr/sbin/nologin"
        assert not Path(entry.pw_dir).exists()
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=CHILD_TIMEOUT_S)
        subprocess.run(["groupdel", name], check=False, capture_output=True, timeout=CHILD_TIMEOUT_S)


def test_features_missing_landlock_seccomp_or_cgroups() -> None:
    features = sandbox_features()
    assert features["landlock"].startswith("ABI ")
    assert features["seccomp"].startswith("available")
    assert {"cgroup.memory", "cgroup.cpu", "cgroup.pids"} <= set(features)
