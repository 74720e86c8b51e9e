"""The audit sensor on the real kernel: fresh processes spawned after start() (processes created before
audit was first enabled are never audited), real sockets on loopback, and a clean kernel afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ringfence.events import Endpoint, NetworkActivityId, ProcessRef
from ringfence.sensors import Sensor
from ringfence.sensors.audit import AuditSensor, Mode
from ringfence.sensors.audit import _netlink as nl
from ringfence.sensors.audit._client import AuditClient
from ringfence.sensors.audit._netlink import AUDIT_ARCH_X86_64, AuditStatus
from ringfence.sensors.audit._rules import EXEC_SYSCALLS, build_rules, keyed_rules

from .conftest import Running, settings

pytestmark = pytest.mark.kernel

CLIENT = """
import socket, sys
family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}[sys.argv[1]]
s = socket.socket(family)
address = sys.argv[2] if family == socket.AF_UNIX else (sys.argv[2], int(sys.argv[3]))
err = s.connect_ex(address)
print(err, flush=True)
s.settimeout(20)
if err == 0:
    s.recv(1)  # hold the socket open until the test has seen the event
"""

SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
s.settimeout(20)
c, _ = s.accept()
c.recv(1)
"""


@contextmanager
def spawn(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def listener(family: socket.AddressFamily, address: object) -> Iterator[socket.socket]:
    server = socket.socket(family)
    try:
        server.bind(address)
        server.listen()
        server.settimeout(20)
        yield server
    finally:
        server.close()


def is_syscall(pid: int, name: str) -> Callable[[object], bool]:
    return lambda e: getattr(e, "syscall", None) == name and e.process.pid == pid  # type: ignore[attr-defined]


def test_exec_arrives_with_full_argv_and_cwd(running: Running, tmp_path: Path) -> None:
    marker = f"MARKER-{uuid.uuid4()}"
    proc = subprocess.run(["sh", "-c", f"true {marker}"], cwd=tmp_path, check=True)
    del proc
    event = running.wait_exec(lambda e: marker in " ".join(e.argv), marker)
    assert event.argv == ("sh", "-c", f"true {marker}")
    assert event.cwd == str(tmp_path)
    assert event.success
    assert event.exe is not None
    assert event.exe.endswith(("sh", "dash", "bash"))


def test_short_lived_process_keeps_long_and_odd_arguments(running: Running) -> None:
    marker = f"MARKER-{uuid.uuid4()}"
    long_arg = "y" * 20_000
    argv = ("/bin/true", marker, "with space", 'naïve "quoted"', long_arg)
    subprocess.run(argv, check=True)
    event = running.wait_exec(lambda e: marker in e.argv, marker)
    assert event.argv == argv


def test_failed_exec_is_reported_as_failure(running: Running, tmp_path: Path) -> None:
    missing = tmp_path / f"missing-{uuid.uuid4().hex}"
    shell = subprocess.Popen(["sh", "-c", f"{missing} 2>/dev/null; true"])
    assert shell.wait(20) == 0
    event = running.wait_exec(lambda e: e.ppid == shell.pid, "the shell's child exec")
    assert not event.success
    assert event.argv == ()  # no EXECVE record for an exec that failed


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_connect_reports_both_addresses_and_pid(
    running: Running, family: socket.AddressFamily, host: str
) -> None:
    with listener(family, (host, 0)) as server:
        port = server.getsockname()[1]
        name = "inet" if family == socket.AF_INET else "inet6"
        with spawn("-c", CLIENT, name, host, str(port)) as client:
            conn, peer = server.accept()
            with conn:
                event = running.wait_network(is_syscall(client.pid, "connect"), "connect")
        assert event.activity is NetworkActivityId.OPEN
        assert event.success
        assert event.errno is None
        assert event.remote == Endpoint(family=name, ip=host, port=port)
        assert event.local == Endpoint(family=name, ip=host, port=peer[1])
        assert event.process is not None
        assert event.process.exe is not None  # from the SYSCALL record: the resolver knew nothing


def test_unix_connect_reports_the_socket_path(running: Running, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with listener(socket.AF_UNIX, path) as server, spawn("-c", CLIENT, "unix", path) as client:
        conn, _ = server.accept()
        with conn:
            event = running.wait_network(is_syscall(client.pid, "connect"), "unix connect")
    assert event.success
    assert event.remote == Endpoint(family="unix", path=path)


def test_refused_connect_reports_errno(running: Running) -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        port = reserved.getsockname()[1]
        with spawn("-c", CLIENT, "inet", "127.0.0.1", str(port)) as client:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "111"
            event = running.wait_network(is_syscall(client.pid, "connect"), "refused connect")
    assert not event.success
    assert event.errno == 111
    assert event.remote == Endpoint(family="inet", ip="127.0.0.1", port=port)


def test_server_bind_listen_accept_are_reported(running: Running) -> None:
    with spawn("-c", SERVER) as server:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            mine = client.getsockname()
            bound = running.wait_network(is_syscall(server.pid, "bind"), "bind")
            listened = running.wait_network(is_syscall(server.pid, "listen"), "listen")
            accepted = running.wait_network(is_syscall(server.pid, "accept4"), "accept")
    assert bound.activity is NetworkActivityId.BIND
    assert bound.local == Endpoint(family="inet", ip="127.0.0.1", port=0)
    assert listened.activity is NetworkActivityId.LISTEN
    assert accepted.activity is NetworkActivityId.OPEN
    assert accepted.remote == Endpoint(family="inet", ip="127.0.0.1", port=mine[1])
    assert accepted.local == Endpoint(family="inet", ip="127.0.0.1", port=port)


def test_resolver_answer_is_preferred_over_the_record(make_sensor: Callable[..., Running]) -> None:
    class Known:
        def resolve(self, pid: int) -> ProcessRef:
            return ProcessRef(pid=pid, exe="/resolved/exe", ppid=1)

    run = make_sensor(resolver=Known())
    run.sensor.start()
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        with spawn("-c", CLIENT, "inet", "127.0.0.1", str(reserved.getsockname()[1])) as client:
            event = run.wait_network(is_syscall(client.pid, "connect"), "connect")
    assert event.process == ProcessRef(pid=client.pid, exe="/resolved/exe", ppid=1)


def test_statistics_count_events_and_name_the_mode(running: Running) -> None:
    marker = f"MARKER-{uuid.uuid4()}"
    subprocess.run(["/bin/true", marker], check=True)
    running.wait_exec(lambda e: marker in e.argv, marker)
    stats = running.sensor.statistics()
    assert stats.running
    assert stats.emitted >= 1
    assert stats.received >= 1
    assert stats.detail["mode_daemon"] + stats.detail["mode_multicast"] == 1


def test_stop_removes_every_rule_and_restores_settings(
    make_sensor: Callable[..., Running], control: AuditClient, key: str
) -> None:
    before = settings(control.status())
    run = make_sensor()
    run.sensor.start()
    assert len(keyed_rules(control, key)) == 2  # x86_64 and i386
    if run.sensor.mode is Mode.DAEMON:
        during = control.status()
        assert during.enabled == 1
        assert during.backlog_limit >= 8192
    run.sensor.stop()
    run.sensor.stop()  # idempotent
    assert keyed_rules(control, key) == []
    assert settings(control.status()) == before
    assert not run.sensor.statistics().running
    assert not [t for t in threading.enumerate() if t.name.startswith("ringfence-audit")]


def test_stale_rules_of_a_crashed_run_are_removed_on_start(
    make_sensor: Callable[..., Running], control: AuditClient, key: str
) -> None:
    for rule in build_rules(key, EXEC_SYSCALLS, archs=[AUDIT_ARCH_X86_64], exclude_pid=1):
        control.add_rule(rule)
    run = make_sensor()
    run.sensor.start()
    rules = keyed_rules(control, key)
    assert len(rules) == 2
    assert all(f.value != 1 for r in rules for f in r.fields if f.field == 0)  # not the stale pid-1 rule


UNPRIVILEGED = """
import os
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.audit import AuditSensor
os.setgid(65534)
os.setuid(65534)
sensor = AuditSensor(print, print, resolver=None, host="h", key=%r)
try:
    sensor.start()
except SensorUnavailable as e:
    print(e)
"""


def test_start_refused_by_the_kernel_raises_unavailable_with_its_reason(
    control: AuditClient, key: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED % key], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("audit: ")
    assert "EPERM" in out.stdout
    assert keyed_rules(control, key) == []


DAEMON = """
import os, select, sys
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit import _netlink as nl
sock = open_audit_socket(rcvbuf_bytes=16 << 20)
daemon, control = AuditClient(sock), AuditClient(open_audit_socket())
found = control.status()
daemon.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_PID, pid=os.getpid()))
control.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_ENABLED, enabled=1))
print("ready", flush=True)
while True:
    ready, _, _ = select.select([sock, sys.stdin], [], [])
    if sock in ready:
        sock.recv(65536)
    if sys.stdin in ready and not sys.stdin.readline():
        break
daemon.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_PID, pid=0))
control.set_status(nl.AuditStatus(mask=nl.AUDIT_STATUS_ENABLED, enabled=found.enabled))
"""


def test_another_live_daemon_is_left_alone_and_shared_by_multicast(
    make_sensor: Callable[..., Running], control: AuditClient
) -> None:
    if control.status().pid:
        pytest.skip("a real audit daemon runs here")
    other = subprocess.Popen(
        [sys.executable, "-c", DAEMON], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready"
        theirs = settings(control.status())
        run = make_sensor()
        run.sensor.start()
        assert run.sensor.mode is Mode.MULTICAST
        marker = f"MARKER-{uuid.uuid4()}"
        subprocess.run(["/bin/true", marker], check=True)
        assert run.wait_exec(lambda e: marker in e.argv, marker).argv == ("/bin/true", marker)
        run.sensor.stop()
        assert settings(control.status()) == theirs
        other.stdin.close()
        assert other.wait(20) == 0
    finally:
        other.kill()
        other.wait(10)


def test_audit_sensor_satisfies_the_sensor_protocol() -> None:
    sensor: Sensor = AuditSensor(lambda e: None, lambda e: None, resolver=None, host="h")  # type: ignore[arg-type]
    assert sensor.name == "audit"
    sensor.stop()


CRASHING = """
import os, signal
from ringfence.events import ProcessRef
from ringfence.sensors.audit import AuditSensor
class Unknown:
    def resolve(self, pid):
        return ProcessRef(pid=pid)
AuditSensor(print, print, Unknown(), host="h", key=%r).start()
print("started", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_start_after_a_killed_run_removes_its_rules_and_takes_over(
    make_sensor: Callable[..., Running], control: AuditClient, key: str
) -> None:
    before = control.status()
    if before.pid:
        pytest.skip("a real audit daemon runs here")
    try:
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING % key], check=False, capture_output=True, text=True
        )
        assert crashed.stdout.strip() == "started"
        assert len(keyed_rules(control, key)) == 2  # left behind by the killed run
        run = make_sensor()
        run.sensor.start()
        assert run.sensor.mode is Mode.DAEMON
        assert len(keyed_rules(control, key)) == 2
        marker = f"MARKER-{uuid.uuid4()}"
        subprocess.run(["/bin/true", marker], check=True)
        run.wait_exec(lambda e: marker in e.argv, marker)
        run.sensor.stop()
        assert keyed_rules(control, key) == []
    finally:  # the killed run could not restore what it changed: put back what this test saw
        fields = ("enabled", "backlog_limit", "backlog_wait_time")
        control.set_status(
            AuditStatus(
                mask=nl.AUDIT_STATUS_ENABLED
                | nl.AUDIT_STATUS_BACKLOG_LIMIT
                | nl.AUDIT_STATUS_BACKLOG_WAIT_TIME,
                **{f: getattr(before, f) for f in fields},
            )
        )


def test_exec_matched_first_by_another_daemons_rule_is_still_reported(
    make_sensor: Callable[..., Running], control: AuditClient
) -> None:
    """The kernel records only the key of the first matching rule: beside an auditd whose execve rule
    was loaded first, every exec carries its key, and Ringfence must report them all the same."""
    foreign = f"rf-foreign-{uuid.uuid4().hex[:8]}"
    for rule in build_rules(foreign, EXEC_SYSCALLS, archs=(AUDIT_ARCH_X86_64,)):
        control.add_rule(rule)
    try:
        run = make_sensor()
        run.sensor.start()
        marker = f"MARKER-{uuid.uuid4()}"
        subprocess.run(["/bin/true", marker], check=True)
        assert run.wait_exec(lambda e: marker in e.argv, marker).argv == ("/bin/true", marker)
        assert run.sensor.statistics().detail["foreign_key"] >= 1
    finally:
        for rule in keyed_rules(control, foreign):
            control.delete_rule(rule.raw)
