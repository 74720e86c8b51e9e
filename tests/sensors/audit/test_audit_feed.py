"""The audit feed on the real kernel: raw audit events from baseline watches and syscall rules, PAM and
shadow records as Authentication and Account Change events, and every rule gone afterwards.

Each test uses its own key (the conftest checks no `key` or `key:category` rule is left); watches go on
the test's tmpfs, except where the default baseline itself is under test. Processes are spawned after
start() (processes created before audit was first enabled are never audited).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringfence.events import (
    AccountChange,
    AccountChangeActivityId,
    AuditEvent,
    Authentication,
    AuthenticationActivityId,
    Event,
)
from ringfence.sensors.audit import DEFAULT_BASELINE, AuditFeed, Baseline, SyscallGroup, Watch
from ringfence.sensors.audit._baseline import PERM_ATTR, PERM_EXEC, PERM_READ, PERM_WRITE
from ringfence.sensors.audit._client import AuditClient
from ringfence.sensors.audit._rules import keyed_rules

from .conftest import Running

pytestmark = pytest.mark.kernel

# What libaudit's audit_log_acct_message does: one AUDIT_USER_* netlink request with the text as its body.
SEND_USER_RECORD = """
import socket, struct, sys
record_type, text = int(sys.argv[1]), sys.argv[2].encode() + b"\\0"
with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9) as s:
    s.sendto(struct.pack("=IHHII", 16 + len(text), record_type, 0x1 | 0x4, 1, 0) + text, (0, 0))
    reply = s.recv(4096)
    (error,) = struct.unpack_from("=i", reply, 16)
    sys.exit(-error)
"""
MEMFD = "import os; os.close(os.memfd_create(__import__('sys').argv[1]))"


def send_user_record(record_type: int, text: str) -> None:
    subprocess.run([sys.executable, "-c", SEND_USER_RECORD, str(record_type), text], check=True, timeout=30)


def records_of(event: Event, record_type: str) -> list[dict[str, str]]:
    if not isinstance(event, AuditEvent):
        return []
    return [r.fields for r in event.records if r.type == record_type]


def touches(path: Path, key: str) -> Callable[[Event], bool]:
    """An audit event whose SYSCALL carries `key` and whose PATH records name `path`."""

    def match(event: Event) -> bool:
        keyed = any(f.get("key") == key for f in records_of(event, "SYSCALL"))
        return keyed and any(f.get("name") == str(path) for f in records_of(event, "PATH"))

    return match


def start(make_sensor: Callable[..., Running], baseline: Baseline | None = None, **feed: bool) -> Running:
    options = {"audit_events": True, "identity": True, **feed}
    run = make_sensor(want_exec=False, want_network=False, feed=AuditFeed(baseline=baseline, **options))
    run.sensor.start()
    return run


def test_write_to_a_watched_file_is_an_audit_event_with_its_syscall_path_and_key(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    target = tmpfs / "shadow"
    target.write_text("root:x:0\n")
    run = start(make_sensor, Baseline(watches=(Watch("identity", (str(target),)),)))
    marker = uuid.uuid4().hex
    # /bin/sh by its path: after a failed exec (a PATH search) in subprocess's vfork child, the kernel's
    # PROCTITLE keeps the parent's command line (KERNEL-FACTS.md)
    subprocess.run(["/bin/sh", "-c", f"echo {marker} >> {target}"], check=True)
    event = run.wait_event(touches(target, f"{key}:identity"), f"a write to {target}")
    assert isinstance(event, AuditEvent)
    syscall = records_of(event, "SYSCALL")[0]
    assert syscall["SYSCALL"] in ("openat", "open") and syscall["ARCH"] == "x86_64"
    assert syscall["success"] == "yes" and syscall["exe"].endswith(("sh", "dash", "bash"))
    assert [r.type for r in event.records][-1] == "PROCTITLE"
    assert records_of(event, "PROCTITLE")[0]["proctitle"] == f"/bin/sh -c echo {marker} >> {target}"
    assert event.process is not None and event.process.pid == int(syscall["pid"]) and event.complete
    assert run.sensor.statistics().detail["baseline_rules"] == 1


def test_replacing_a_watched_file_by_rename_is_recorded_too(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    """The usual way to plant /etc/ld.so.preload or a sudoers file unseen: write elsewhere, rename over."""
    target = tmpfs / "ld.so.preload"
    run = start(make_sensor, Baseline(watches=(Watch("preload", (str(target),)),)))
    staged = tmpfs / "staged"
    script = f"echo /tmp/evil.so > {staged} && mv {staged} {target}"
    subprocess.run(["sh", "-c", script], check=True)
    event = run.wait_event(touches(target, f"{key}:preload"), f"the rename onto {target}")
    assert records_of(event, "SYSCALL")[0]["SYSCALL"] in ("rename", "renameat", "renameat2")
    assert "CREATE" in {f.get("nametype") for f in records_of(event, "PATH") if f.get("name") == str(target)}


def test_a_watched_directory_covers_files_created_below_it(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    cron = tmpfs / "cron.d"
    (cron / "deep").mkdir(parents=True)
    run = start(make_sensor, Baseline(watches=(Watch("cron", (str(cron),)),)))
    job = cron / "deep" / "backdoor"
    subprocess.run(["sh", "-c", f"echo '* * * * * root id' > {job}"], check=True)
    event = run.wait_event(
        lambda e: (
            any(f.get("key") == f"{key}:cron" for f in records_of(e, "SYSCALL"))
            and any(f.get("name", "").endswith("backdoor") for f in records_of(e, "PATH"))
        ),
        f"the file created in {cron}",
    )
    assert {f.get("nametype") for f in records_of(event, "PATH")} >= {"CREATE"}


def test_memfd_create_is_recorded_by_the_baseline_syscall_rule(
    make_sensor: Callable[..., Running], key: str
) -> None:
    run = start(make_sensor, Baseline(syscalls=(SyscallGroup("memfd", ("memfd_create",)),)))
    name = f"rf-{uuid.uuid4().hex[:8]}"
    child = subprocess.run([sys.executable, "-c", MEMFD, name], check=True)
    del child
    event = run.wait_event(
        lambda e: any(f.get("key") == f"{key}:memfd" for f in records_of(e, "SYSCALL")), "memfd_create"
    )
    syscall = records_of(event, "SYSCALL")[0]
    assert syscall["SYSCALL"] == "memfd_create" and syscall["exe"] == os.path.realpath(sys.executable)


def test_the_default_baseline_is_accepted_by_the_kernel_and_removed_on_stop(
    make_sensor: Callable[..., Running], control: AuditClient, key: str
) -> None:
    run = start(make_sensor, DEFAULT_BASELINE)
    detail = run.sensor.statistics().detail
    assert detail["baseline_refused"] == 0, "the kernel refused a baseline rule (see the log)"
    rules = keyed_rules(control, key)
    assert len(rules) == detail["baseline_rules"] > 0
    categories = {k.partition(":")[2] for rule in rules for k in rule.keys}
    syscall_groups = {g.category for g in DEFAULT_BASELINE.syscalls}
    assert syscall_groups | {"identity", "pam", "shell-profile"} <= categories <= DEFAULT_BASELINE.categories
    run.sensor.stop()
    assert keyed_rules(control, key) == []


def test_su_emits_pam_records_that_become_authentication_events(make_sensor: Callable[..., Running]) -> None:
    run = start(make_sensor)
    su = subprocess.Popen(["su", "nobody", "-s", "/bin/true"], stdin=subprocess.DEVNULL)
    assert su.wait(30) == 0

    def from_su(record_type: str) -> Callable[[Event], bool]:
        return lambda e: isinstance(e, Authentication) and e.record_type == record_type and e.user == "nobody"

    auth = run.wait_event(from_su("USER_AUTH"), "su's USER_AUTH")
    assert isinstance(auth, Authentication)
    assert (auth.activity, auth.success, auth.service) == (AuthenticationActivityId.LOGON, True, "su")
    assert auth.operation == "PAM:authentication" and auth.source is None
    assert auth.process is not None and auth.process.exe is not None and auth.process.exe.endswith("/su")
    start_ = run.wait_event(from_su("USER_START"), "su's session start")
    assert start_.activity is AuthenticationActivityId.ACCOUNT_SWITCH  # type: ignore[union-attr]
    end = run.wait_event(from_su("USER_END"), "su's session end")
    assert end.activity is AuthenticationActivityId.LOGOFF  # type: ignore[union-attr]


def test_failed_remote_login_sent_as_pam_sends_it_is_a_failed_logon_with_its_source(
    make_sensor: Callable[..., Running],
) -> None:
    run = start(make_sensor)
    user = f"rf-{uuid.uuid4().hex[:8]}"
    text = (
        f'op=PAM:authentication grantors=? acct="{user}" exe="/usr/sbin/sshd" hostname=192.0.2.7 '
        "addr=192.0.2.7 terminal=ssh res=failed"
    )
    send_user_record(1100, text)  # USER_AUTH
    event = run.wait_event(lambda e: isinstance(e, Authentication) and e.user == user, "the USER_AUTH")
    assert isinstance(event, Authentication)
    assert (event.activity, event.success, event.service, event.terminal) == (
        AuthenticationActivityId.LOGON,
        False,
        "sshd",
        "ssh",
    )
    assert event.source is not None and event.source.ip == "192.0.2.7"
    raw = run.wait_event(lambda e: any(f.get("acct") == user for f in records_of(e, "USER_AUTH")), "raw")
    assert records_of(raw, "USER_AUTH")[0]["res"] == "failed"


def test_a_malformed_user_record_is_published_as_written_and_the_sensor_keeps_going(
    make_sensor: Callable[..., Running],
) -> None:
    run = start(make_sensor)
    marker = uuid.uuid4().hex
    send_user_record(1100, f"op=PAM:auth ==== 'unbalanced acct=\"x {marker} res=")
    send_user_record(1100, f'op=PAM:authentication acct="{marker}" exe="/bin/login" res=success')
    good = run.wait_event(lambda e: isinstance(e, Authentication) and e.user == marker, "the good record")
    assert isinstance(good, Authentication) and good.success
    assert run.sensor.statistics().errors == 0


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    name = f"rf{uuid.uuid4().hex[:10]}"
    yield name
    for tool in ("userdel", "groupdel"):  # whatever the test did, nothing of it stays
        subprocess.run([tool, name], capture_output=True, check=False)


def test_useradd_and_userdel_give_account_change_events(
    make_sensor: Callable[..., Running], throwaway_user: str
) -> None:
    run = start(make_sensor)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", throwaway_user], check=True)
    uid = int(subprocess.run(["id", "-u", throwaway_user], capture_output=True, text=True, check=True).stdout)
    subprocess.run(["userdel", throwaway_user], check=True)

    def change(record_type: str, **named: object) -> Callable[[Event], bool]:
        def match(e: Event) -> bool:
            if not isinstance(e, AccountChange) or e.record_type != record_type:
                return False
            return all(getattr(e, k) == v for k, v in named.items())

        return match

    # shadow names the new account by uid only (libaudit writes acct= or id=), its group by name; the
    # queue is read in order: the group comes first
    group = run.wait_event(change("ADD_GROUP", group=throwaway_user), "useradd's ADD_GROUP")
    assert group.activity is AccountChangeActivityId.CREATE  # type: ignore[union-attr]
    added = run.wait_event(change("ADD_USER", uid=uid), "useradd's ADD_USER")
    assert isinstance(added, AccountChange)
    assert (added.activity, added.success, added.operation) == (
        AccountChangeActivityId.CREATE,
        True,
        "adding user",
    )
    assert added.process is not None and added.process.exe == "/usr/sbin/useradd"
    deleted = run.wait_event(change("DEL_USER", uid=uid), "userdel's DEL_USER")
    assert deleted.activity is AccountChangeActivityId.DELETE  # type: ignore[union-attr]
    assert deleted.process is not None and deleted.process.exe == "/usr/sbin/userdel"  # type: ignore[union-attr]


def test_a_loaded_baseline_counts_as_its_key_for_nothing_left_behind_checks(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    from ringfence.sensors.audit import list_rule_keys

    run = start(make_sensor, Baseline(watches=(Watch("w", (str(tmpfs),)),)))
    assert {key, f"{key}:w"} <= list_rule_keys()
    run.sensor.stop()
    assert key not in list_rule_keys()


def test_a_write_through_a_hard_link_is_caught_by_the_key_though_the_name_differs(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    """A watch follows the inode: the record names the link, so match the key, not the path."""
    target = tmpfs / "sudoers"
    target.write_text("root ALL=(ALL) ALL\n")
    link = tmpfs / "innocent"
    os.link(target, link)
    run = start(make_sensor, Baseline(watches=(Watch("sudoers", (str(target),)),)))
    subprocess.run(["/bin/sh", "-c", f"echo 'evil ALL=(ALL) NOPASSWD: ALL' >> {link}"], check=True)
    event = run.wait_event(touches(link, f"{key}:sudoers"), f"the write through {link}")
    assert str(target) not in {f.get("name") for f in records_of(event, "PATH")}


REMOVER = """
import sys
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._rules import remove_keyed_rules
with open_audit_socket() as sock:
    print(remove_keyed_rules(AuditClient(sock), sys.argv[1]))
"""


def test_removing_the_baseline_rules_is_itself_recorded(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    """An intruder who deletes the rules (auditctl -D, or the netlink request) leaves CONFIG_CHANGE."""
    run = start(make_sensor, Baseline(watches=(Watch("cron", (str(tmpfs),)),)))
    removed = subprocess.run([sys.executable, "-c", REMOVER, key], capture_output=True, text=True, check=True)
    assert removed.stdout.strip() == "1"
    event = run.wait_event(
        lambda e: any(
            f.get("op") == "remove_rule" and f.get("key") == f"{key}:cron"
            for f in records_of(e, "CONFIG_CHANGE")
        ),
        "the CONFIG_CHANGE of the removal",
    )
    assert records_of(event, "CONFIG_CHANGE")[0]["res"] == "1"


def test_the_sensors_own_rule_changes_are_not_published_but_an_intruders_are(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    """At stop the removal's records can be cut from their SYSCALL record (which names our pid) by the
    reader stopping: they would be a 'rules removed' alarm at every stop."""
    run = start(make_sensor, Baseline(watches=(Watch("cron", (str(tmpfs / "crontab"),), "wa"),)))
    intruder = subprocess.run(
        [sys.executable, "-c", REMOVER, key], capture_output=True, text=True, check=True
    )
    assert intruder.stdout.strip() == "1"
    run.wait_event(
        lambda e: any(f.get("op") == "remove_rule" for f in records_of(e, "CONFIG_CHANGE")), "the intruder's"
    )
    for _ in range(3):  # ours: add the rules again and remove them at stop
        run.sensor.stop()
        run.sensor.start()
    run.sensor.stop()  # the processor has handed over everything it will
    changes = [f for e in list(run.events.queue) for f in records_of(e, "CONFIG_CHANGE")]
    assert [f for f in changes if f.get("key", "").startswith(key)] == []


# Every way a child writes, changes or reads under the watches: each op by its own syscall, openat2 too
# (the opens are classified apart from the kernel's syscall classes, by their flags). Not utimensat: no
# perm watch sees it, with every syscall in its mask either (measured); the file sensor reports it.
WRITE_PATHS = """
import ctypes, os, struct, sys
d, secret = sys.argv[1], sys.argv[2]
f = os.path.join(d, "f")
def openat2(path, flags):
    how = struct.pack("=QQQ", flags, 0, 0)
    fd = ctypes.CDLL(None, use_errno=True).syscall(437, -100, path.encode(), how, len(how))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    os.close(fd)
os.close(os.open(f, os.O_WRONLY | os.O_APPEND))
openat2(f, os.O_WRONLY)
os.truncate(f, 0)
os.chmod(f, 0o600)
os.chown(f, 1, 1)
os.setxattr(f, "user.rf", b"1")
os.link(f, os.path.join(d, "hard"))
os.symlink("f", os.path.join(d, "soft"))
os.mkdir(os.path.join(d, "sub"))
os.mkfifo(os.path.join(d, "fifo"))
os.rename(os.path.join(d, "hard"), os.path.join(d, "moved"))
os.unlink(os.path.join(d, "moved"))
os.close(os.open(secret, os.O_RDONLY))
openat2(secret, os.O_RDONLY)
"""
EXPECTED = {  # op: the syscall names it may be made of
    "open for writing": {"open", "openat"},
    "openat2": {"openat2"},
    "truncate": {"truncate"},
    "chmod": {"chmod", "fchmodat", "fchmodat2"},
    "chown": {"chown", "fchownat", "lchown"},
    "setxattr": {"setxattr"},
    "link": {"link", "linkat"},
    "symlink": {"symlink", "symlinkat"},
    "mkdir": {"mkdir", "mkdirat"},
    "mkfifo": {"mknod", "mknodat"},
    "rename": {"rename", "renameat", "renameat2"},
    "unlink": {"unlink", "unlinkat"},
}


def test_a_watch_sees_every_write_path_and_every_read_though_it_is_not_on_every_syscall(
    make_sensor: Callable[..., Running], key: str, tmpfs: Path
) -> None:
    """The watches' syscall masks name only what their permissions can match (not every syscall, which
    cost every process on the machine): each way to write, change or read a watched file must still be
    recorded, by its own syscall."""
    watched, secret = tmpfs / "watched", tmpfs / "secret"
    watched.mkdir()
    (watched / "f").write_text("x")
    secret.write_text("hash")
    baseline = Baseline(watches=(Watch("cron", (str(watched),)), Watch("creds", (str(secret),), perms="r")))
    run = start(make_sensor, baseline)
    subprocess.run([sys.executable, "-c", WRITE_PATHS, str(watched), str(secret)], check=True, timeout=60)
    seen: dict[str, set[str]] = {f"{key}:cron": set(), f"{key}:creds": set()}

    def record(event: Event) -> bool:
        for f in records_of(event, "SYSCALL"):
            if f.get("key") in seen:
                seen[f["key"]].add(f["SYSCALL"])
        writes = all(seen[f"{key}:cron"] & names for names in EXPECTED.values())
        return writes and {"openat", "openat2"} <= seen[f"{key}:creds"]

    try:
        run.wait_event(record, "a record of every write path and of both reads")
    except BaseException:
        missing = [op for op, names in EXPECTED.items() if not seen[f"{key}:cron"] & names]
        pytest.fail(f"not recorded: {missing}; seen {seen}")
    assert {"openat", "openat2"} <= seen[f"{key}:creds"]


def test_a_watch_names_the_syscalls_its_permissions_can_match() -> None:
    """Not all 2,048 bits: the read, write and attribute classes as the kernel's class bits, the opens,
    execve and i386 socketcall (bind) by number."""
    from ringfence.sensors.audit._baseline import perm_syscalls

    wa = perm_syscalls(PERM_WRITE | PERM_ATTR)
    assert {2047 - 6, 2047 - 7, 2047 - 2, 2047 - 3} <= set(wa)  # write and chattr, both ABIs
    assert {2, 257, 437, 5, 295, 102} <= set(wa)  # open, openat, openat2 (x86_64, i386), socketcall
    assert 0 not in wa and 1 not in wa  # read(2) and write(2) of x86_64: not a watch's business
    assert 59 not in wa  # execve only for x
    assert {59, 322, 11, 358} <= set(perm_syscalls(PERM_EXEC))
    r = perm_syscalls(PERM_READ)
    assert {2047 - 4, 2047 - 5, 2, 257, 437} <= set(r) and 102 not in r
    assert len(wa) < 20
