"""Pure parts of the sandbox: cgroup discovery and limits, capability parsing, policy checks, Landlock
ABI masks, and the public names. No kernel state is touched."""

from __future__ import annotations

import msgspec

from ringfence.extensions import _sandbox
from ringfence.extensions import _sandbox_cgroup as cgroup
from ringfence.extensions import _sandbox_creds as creds
from ringfence.extensions import _sandbox_landlock as landlock
from ringfence.extensions._sandbox import CgroupDir, PreparedSandbox, SandboxPolicy, policy_issues

V1_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def test_v1_controllers_missed_when_cgroup2_offers_none() -> None:
    found = cgroup.discover(V1_MOUNTS, {"/sys/fs/cgroup/unified": "hugetlb\n"})
    assert found == {
        "cpu": cgroup.Hierarchy(version=1, mount="/sys/fs/cgroup/cpu,cpuacct"),
        "memory": cgroup.Hierarchy(version=1, mount="/sys/fs/cgroup/memory"),
        "pids": cgroup.Hierarchy(version=1, mount="/sys/fs/cgroup/pids"),
    }


def test_v2_not_preferred_when_it_offers_the_controller() -> None:
    found = cgroup.discover(V1_MOUNTS, {"/sys/fs/cgroup/unified": "pids hugetlb"})
    assert found["pids"] == cgroup.Hierarchy(version=2, mount="/sys/fs/cgroup/unified")
    assert found["memory"].version == 1


def test_pure_v2_host_gets_one_directory_for_all_controllers() -> None:
    found = cgroup.discover(V2_MOUNTS, {"/sys/fs/cgroup": "cpuset cpu io memory pids"})
    dirs = cgroup.plan(found, "ext1")
    assert dirs == (
        CgroupDir(version=2, path="/sys/fs/cgroup/ringfence/ext1", controllers=("memory", "cpu", "pids")),
    )


def test_no_cgroup_mounts_leave_rlimits_alone() -> None:
    assert cgroup.plan(cgroup.discover("proc /proc proc rw 0 0\n", {}), "ext1") == ()


def test_limits_written_in_wrong_files_or_units() -> None:
    limits = cgroup.CgroupLimits(memory_bytes=64 << 20, cpu_percent=20, max_pids=9)
    v1 = CgroupDir(version=1, path="/x", controllers=("memory", "cpu", "pids"))
    v2 = CgroupDir(version=2, path="/x", controllers=("memory", "cpu", "pids"))
    assert cgroup.limit_writes(v1, limits) == [
        ("memory.limit_in_bytes", str(64 << 20), True),
        ("memory.memsw.limit_in_bytes", str(64 << 20), False),
        ("cpu.cfs_period_us", "100000", True),
        ("cpu.cfs_quota_us", "20000", True),
        ("pids.max", "9", True),
    ]
    assert cgroup.limit_writes(v2, limits) == [
        ("memory.max", str(64 << 20), True),
        ("memory.swap.max", "0", False),
        ("cpu.max", "20000 100000", True),
        ("pids.max", "9", True),
    ]


def test_capability_sets_misparsed_from_status() -> None:
    text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n"
    text += "CapEff:\t0\nCapBnd:\t10\nCapAmb:\t0\n"
    assert creds.capability_sets(text) == {
        "CapInh": 0,
        "CapPrm": 0x1FFFFFFFFFF,
        "CapEff": 0,
        "CapBnd": 0x10,
        "CapAmb": 0,
    }


def test_bad_policy_reports_only_its_first_issue() -> None:
    policy = SandboxPolicy(
        extension_id="../escape",
        memory_mb=1,
        max_processes=0,
        readable_paths=("relative/path", "/no/such/dir"),
        writable_paths=("/etc/hostname",),
    )
    issues = policy_issues(policy)
    assert len(issues) == 6, issues
    assert any("extension_id" in issue for issue in issues)
    assert any("/etc/hostname is not a directory" in issue for issue in issues)


def test_prepared_sandbox_lost_in_transit_to_child() -> None:
    prepared = PreparedSandbox(
        uid=999,
        gid=995,
        cgroup_procs=("/sys/fs/cgroup/pids/ringfence/e/cgroup.procs",),
        cgroups=(CgroupDir(version=1, path="/sys/fs/cgroup/pids/ringfence/e", controllers=("pids",)),),
    )
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(prepared), type=PreparedSandbox) == prepared


def test_landlock_asks_kernel_for_rights_its_abi_lacks() -> None:
    assert landlock.ruleset_attr_values(1, deny_tcp=True) == ((1 << 13) - 1, 0, 0)
    fs3, net3, scoped3 = landlock.ruleset_attr_values(3, deny_tcp=True)
    assert fs3 & landlock.FS_TRUNCATE and not fs3 & landlock.FS_IOCTL_DEV
    assert (net3, scoped3) == (0, 0)
    fs7, net7, scoped7 = landlock.ruleset_attr_values(7, deny_tcp=True)
    assert fs7 & landlock.FS_IOCTL_DEV
    assert net7 == landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP
    assert scoped7 == landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    assert landlock.ruleset_attr_values(7, deny_tcp=False)[1] == 0


def test_landlock_grants_execute_anywhere() -> None:
    assert not landlock.READ_RIGHTS & landlock.FS_EXECUTE
    assert not landlock.WRITE_RIGHTS & landlock.FS_EXECUTE


def test_public_names_drift_from_what_the_supervisor_calls() -> None:
    assert set(_sandbox.__all__) == {
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
    }
