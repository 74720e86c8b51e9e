"""ExecAuthSensor on the real kernel: real execs of binaries on the test's tmpfs, marks on that tmpfs only."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringfence.broker import AuthPolicy, AuthTicket, Broker, DeadlineRunner, ThreadedSubscriber
from ringfence.events import AuthAnswer, AuthKind, AuthRequest, Event, EventKind, Verdict
from ringfence.sensors import SensorUnavailable
from ringfence.sensors.fanotify import ExecAuthSensor

from .support import (
    PidResolver,
    PolicySink,
    RaisingResolver,
    fanotify_fds,
    run,
    wait_until,
)

pytestmark = pytest.mark.kernel

MakeSensor = Callable[..., ExecAuthSensor]


@pytest.fixture
def make_sensor(tmpfs: Path) -> Iterator[MakeSensor]:
    """Starts ExecAuthSensors marked on the test's tmpfs; stops them all afterwards."""
    started: list[ExecAuthSensor] = []

    def make(sink: Any, resolver: Any = None, **kw: Any) -> ExecAuthSensor:
        kw.setdefault("mounts", [str(tmpfs)])
        sensor = ExecAuthSensor(sink, resolver or PidResolver(), "test-host", **kw)
        sensor.start()
        started.append(sensor)
        return sensor

    try:
        yield make
    finally:
        for sensor in started:
            sensor.stop()


def _detail(sensor: ExecAuthSensor, key: str) -> int:
    return sensor.statistics().detail[key]


def test_denied_exec_fails_with_eperm_while_another_runs(
    make_sensor: MakeSensor, binaries: dict[str, Path]
) -> None:
    denied, allowed = binaries["true-a"], binaries["true-b"]
    sink = PolicySink(deny=(str(denied),))
    sensor = make_sensor(sink)

    with pytest.raises(PermissionError) as info:
        run(denied)
    assert info.value.errno == errno.EPERM
    assert run(allowed).returncode == 0

    assert sink.paths() == [str(denied), str(allowed)]
    request = sink.requests[1]
    st = allowed.stat()
    assert request.kind is AuthKind.EXEC
    assert (request.dev, request.ino, request.size) == (st.st_dev, st.st_ino, st.st_size)
    assert request.process.pid != os.getpid()
    assert request.header.sensor == "exec-auth"
    assert request.deadline_ns == request.header.mono_ns + 250_000_000
    stats = sensor.statistics()
    assert (stats.detail["denied"], stats.detail["allowed"], stats.emitted) == (1, 1, 2)


def test_script_exec_is_asked_about_the_script(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    sink = PolicySink(deny=(str(binaries["script"]),))
    make_sensor(sink)
    with pytest.raises(PermissionError):
        run(binaries["script"])
    assert sink.paths() == [str(binaries["script"])]


def test_open_of_watched_file_by_another_process_is_denied(make_sensor: MakeSensor, tmpfs: Path) -> None:
    data = tmpfs / "data"
    data.mkdir()
    secret, plain = data / "secret.txt", data / "plain.txt"
    secret.write_text("s\n")
    plain.write_text("p\n")
    sink = PolicySink(deny=(str(secret),))
    make_sensor(sink, open_paths=[str(data)])

    denied = run("/bin/cat", str(secret))
    assert denied.returncode != 0
    assert b"Operation not permitted" in denied.stderr
    assert run("/bin/cat", str(plain)).stdout == b"p\n"
    opens = [r for r in sink.requests if r.kind is AuthKind.OPEN]
    assert [r.path for r in opens] == [str(secret), str(plain)]


def test_agents_own_opens_are_allowed_without_asking(make_sensor: MakeSensor, tmpfs: Path) -> None:
    data = tmpfs / "data"
    data.mkdir()
    (data / "own.txt").write_text("mine\n")
    sink = PolicySink(deny=(str(data / "own.txt"),))
    sensor = make_sensor(sink, open_paths=[str(data)])

    assert (data / "own.txt").read_text() == "mine\n"
    assert sink.requests == []
    assert _detail(sensor, "own_pid_allowed") >= 1


def test_cached_allow_is_not_asked_again(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    target = binaries["true-a"]
    sink = PolicySink(cacheable=True)
    sensor = make_sensor(sink)

    assert run(target).returncode == 0
    wait_until(lambda: _detail(sensor, "cached") == 1, what="the ignore mark")
    assert run(target).returncode == 0
    assert run(target).returncode == 0
    assert sink.paths() == [str(target)]


def test_write_to_cached_binary_asks_again(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    target = binaries["true-a"]
    sink = PolicySink(cacheable=True)
    sensor = make_sensor(sink)
    assert run(target).returncode == 0
    wait_until(lambda: _detail(sensor, "cached") == 1, what="the ignore mark")

    with target.open("ab") as f:
        f.write(b"\0")  # trailing bytes after an ELF image do not stop it running
    assert run(target).returncode == 0
    assert sink.paths() == [str(target), str(target)]


def test_binary_open_for_writing_is_not_cached(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    target = binaries["true-b"]
    sink = PolicySink(cacheable=True)
    sensor = make_sensor(sink)

    with target.open("r+b"), pytest.raises(PermissionError):  # denied, and nothing offered to the cache
        run(target)
    assert _detail(sensor, "cached") == 0
    assert run(target).returncode == 0
    assert sink.paths() == [str(target), str(target)]
    wait_until(lambda: _detail(sensor, "cached") == 1, what="caching once no writer is left")


def test_flush_cache_makes_requests_come_again(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    target = binaries["true-a"]
    sink = PolicySink(cacheable=True)
    sensor = make_sensor(sink)
    assert run(target).returncode == 0
    wait_until(lambda: _detail(sensor, "cached") == 1, what="the ignore mark")

    sensor.flush_cache()
    assert run(target).returncode == 0
    assert sink.paths() == [str(target), str(target)]
    assert _detail(sensor, "cache_flushes") == 1


def test_flush_cache_keeps_open_path_marks(make_sensor: MakeSensor, tmpfs: Path) -> None:
    data = tmpfs / "data"
    data.mkdir()
    (data / "secret.txt").write_text("s\n")
    sink = PolicySink(deny=(str(data / "secret.txt"),))
    sensor = make_sensor(sink, open_paths=[str(data)])

    sensor.flush_cache()
    assert run("/bin/cat", str(data / "secret.txt")).returncode != 0


def test_undecodable_event_is_allowed_and_counted(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    sink = PolicySink(deny=(str(binaries["true-a"]),))
    sensor = make_sensor(sink, resolver=RaisingResolver())

    assert run(binaries["true-a"]).returncode == 0
    assert sink.requests == []
    stats = sensor.statistics()
    assert stats.detail["decode_errors"] == 1
    assert stats.errors == 1


def test_sink_that_raises_does_not_hold_the_exec(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    def broken(request: AuthRequest, fd: int, respond: Callable[[AuthAnswer], None]) -> None:
        raise RuntimeError("sink broken")

    sensor = make_sensor(broken)
    assert run(binaries["true-a"]).returncode == 0
    assert _detail(sensor, "sink_errors") == 1


def test_second_answer_is_ignored_and_counted(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    sink = PolicySink()
    sensor = make_sensor(sink)
    assert run(binaries["true-a"]).returncode == 0

    sink.responders[0](AuthAnswer(Verdict.DENY))
    assert _detail(sensor, "double_answers") == 1
    assert _detail(sensor, "denied") == 0


def test_stop_allows_pending_events(make_sensor: MakeSensor, binaries: dict[str, Path]) -> None:
    sink = PolicySink(answer=False)
    sensor = make_sensor(sink)
    results: list[int] = []
    # Popen returns only once the exec went through, so the exec waits on a thread of its own
    waiter = threading.Thread(target=lambda: results.append(run(binaries["true-a"]).returncode))
    waiter.start()
    try:
        wait_until(lambda: len(sink.requests) == 1, what="the request")
    finally:
        sensor.stop()
        waiter.join(timeout=30)
    assert results == [0]
    assert _detail(sensor, "allowed_at_stop") == 1
    sink.responders[0](AuthAnswer(Verdict.DENY))  # too late: ignored, not an error
    assert _detail(sensor, "double_answers") == 1


def test_stop_leaves_no_fanotify_fd(tmpfs: Path) -> None:
    before = fanotify_fds()
    sensor = ExecAuthSensor(PolicySink(), PidResolver(), "test-host", mounts=[str(tmpfs)])
    sensor.start()
    try:
        assert fanotify_fds() == before + 1
    finally:
        sensor.stop()
    sensor.stop()
    assert fanotify_fds() == before
    assert not sensor.statistics().running


def test_refused_mark_raises_sensor_unavailable_with_errno(tmpfs: Path) -> None:
    before = fanotify_fds()
    sensor = ExecAuthSensor(PolicySink(), PidResolver(), "test-host", mounts=[str(tmpfs / "missing")])
    with pytest.raises(SensorUnavailable) as info:
        sensor.start()
    assert info.value.interface == "fanotify exec permission"
    assert "ENOENT" in str(info.value)
    assert fanotify_fds() == before


# -- with the real broker ---------------------------------------------------------------------------------


class _Decider:
    def __init__(self, decide: Callable[[AuthTicket], AuthAnswer | None]) -> None:
        self.decide = decide

    def on_event(self, event: Event) -> None:
        pass

    def on_auth(self, ticket: AuthTicket) -> AuthAnswer | None:
        return self.decide(ticket)


@pytest.fixture
def broker_with(make_sensor: MakeSensor) -> Iterator[Callable[..., tuple[Broker, ExecAuthSensor]]]:
    """A Broker with a deadline runner, one in-process AUTH subscriber, and the sensor feeding it."""
    cleanups: list[Callable[[], None]] = []

    def build(decide: Callable[[AuthTicket], AuthAnswer | None]) -> tuple[Broker, ExecAuthSensor]:
        broker = Broker(auth_deadline_ms=200)
        runner = DeadlineRunner(broker.arbiter)
        runner.start()
        cleanups.append(runner.stop)
        kinds = frozenset({EventKind.AUTH_EXEC})
        sub = ThreadedSubscriber("policy", _Decider(decide), kinds, auth_policy=AuthPolicy(deadline_ms=200))
        sub.start()
        cleanups.append(sub.stop)
        broker.subscribe(sub)
        sensor = make_sensor(broker.authorize, deadline_ms=200)
        broker.on_invalidate(sensor.flush_cache)
        return broker, sensor

    try:
        yield build
    finally:
        for cleanup in cleanups:
            cleanup()


def test_broker_deny_stops_the_exec(
    broker_with: Callable[..., tuple[Broker, ExecAuthSensor]], binaries: dict[str, Path]
) -> None:
    denied = str(binaries["true-a"])

    def decide(ticket: AuthTicket) -> AuthAnswer:
        assert ticket.fd >= 0
        if ticket.request.path == denied:
            return AuthAnswer(Verdict.DENY, reason="test")
        return AuthAnswer(Verdict.ALLOW)

    broker, _ = broker_with(decide)
    with pytest.raises(PermissionError):
        run(denied)
    assert run(binaries["true-b"]).returncode == 0
    auth = broker.statistics().auth
    assert (auth.denied, auth.allowed) == (1, 1)


def test_subscriber_that_never_answers_is_allowed_at_the_deadline(
    broker_with: Callable[..., tuple[Broker, ExecAuthSensor]], binaries: dict[str, Path]
) -> None:
    broker, sensor = broker_with(lambda ticket: None)

    assert run(binaries["true-a"]).returncode == 0
    auth = broker.statistics().auth
    assert auth.subscribers["policy"].deadline_misses == 1
    assert auth.unanswered_at_deadline == 1
    assert _detail(sensor, "cached") == 0  # a missed deadline is never cacheable


def test_new_auth_subscriber_flushes_the_kernel_cache(
    broker_with: Callable[..., tuple[Broker, ExecAuthSensor]], binaries: dict[str, Path]
) -> None:
    broker, sensor = broker_with(lambda ticket: AuthAnswer(Verdict.ALLOW, cacheable=True))
    assert run(binaries["true-a"]).returncode == 0
    wait_until(lambda: _detail(sensor, "cached") == 1, what="the ignore mark")

    allow = _Decider(lambda t: AuthAnswer(Verdict.ALLOW))
    late = ThreadedSubscriber("late", allow, frozenset({EventKind.AUTH_EXEC}), auth_policy=AuthPolicy())
    late.start()
    try:
        broker.subscribe(late)
        assert run(binaries["true-a"]).returncode == 0
    finally:
        late.stop()
    assert broker.statistics().auth.subscribers["late"].asked == 1


def test_exec_of_a_file_open_for_writing_is_denied(
    make_sensor: MakeSensor, binaries: dict[str, Path]
) -> None:
    """The writer could change it between the verdict and the kernel's load: never allowed."""
    target = binaries["true-a"]
    sensor = make_sensor(PolicySink(cacheable=True))
    with target.open("r+b"), pytest.raises(PermissionError):
        run(target)
    assert _detail(sensor, "denied_written_while_judged") == 1
    assert run(target).returncode == 0


def test_file_rewritten_while_it_is_judged_does_not_run(make_sensor: MakeSensor, tmpfs: Path) -> None:
    """The time-of-check race of the gate itself: the engine reads B, a writer swaps in M before the kernel
    loads the file. The writer's open waits on the sensor's lease and counts as a writer, so the answer
    becomes DENY: neither B's verdict nor M runs."""
    target = tmpfs / "tool"
    good = Path("/bin/true").read_bytes()
    target.write_bytes(good)
    target.chmod(0o755)
    marker = tmpfs / "m-ran"
    evil = f"#!/bin/sh\ntouch {marker}\n".encode()
    writers: list[threading.Thread] = []
    sensor: list[ExecAuthSensor] = []

    def swap_in_evil() -> None:
        with target.open("r+b") as f:  # waits for the lease break to be answered
            f.write(evil)
            f.truncate()

    def judge_then_swap(fd: int, respond: Callable[[AuthAnswer], None]) -> None:
        assert os.pread(fd, len(good), 0) == good  # judged: harmless
        writer = threading.Thread(target=swap_in_evil)
        writer.start()
        writers.append(writer)
        wait_until(lambda: _detail(sensor[0], "written_while_judged") == 1, what="the writer's open")
        respond(AuthAnswer(Verdict.ALLOW, cacheable=True))

    class JudgeThenSwap:  # an engine that answers from its own thread, as the broker's subscribers do
        def __call__(self, request: AuthRequest, fd: int, respond: Callable[[AuthAnswer], None]) -> None:
            judge = threading.Thread(target=judge_then_swap, args=(fd, respond))
            judge.start()
            writers.append(judge)

    sensor.append(make_sensor(JudgeThenSwap()))
    with pytest.raises(PermissionError):
        run(target)
    for writer in writers:
        writer.join(timeout=30)
    assert target.read_bytes() == evil  # the writer was let through, after the answer
    assert not marker.exists()
    assert _detail(sensor[0], "denied_written_while_judged") == 1


def _mount_tmpfs(at: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "rf-test", str(at)], check=True)


def test_mount_made_again_at_the_same_path_is_gated_again(make_sensor: MakeSensor, tmpfs: Path) -> None:
    """Unmount a gated mount and mount a new one at the same path: the new one has no mark. It was
    skipped as "already marked", and a denied binary copied there ran."""
    sub = tmpfs / "sub"
    sub.mkdir()
    sink = PolicySink(deny=(str(sub / "evil"),))
    sensor = make_sensor(sink, mounts=[f"{tmpfs}/*"])
    marked = _detail(sensor, "mounts_marked")
    try:
        for round_ in range(2):
            _mount_tmpfs(sub)
            wait_until(lambda r=round_: _detail(sensor, "mounts_marked") == marked + r + 1, what="the mark")
            shutil.copy2("/bin/true", sub / "evil")
            with pytest.raises(PermissionError):
                run(sub / "evil")
            subprocess.run(["umount", str(sub)], check=True)
    finally:
        subprocess.run(["umount", "-q", str(sub)], check=False)
    assert sensor.statistics().problem == ""


def test_mount_whose_execs_cannot_be_gated_degrades_status(
    make_sensor: MakeSensor, tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmpfs / "sub"
    sub.mkdir()
    sensor = make_sensor(PolicySink(), mounts=[f"{tmpfs}/*"])
    real = sensor._mark_mount

    def refuse_sub(fd: int, mount: str) -> None:
        if mount == str(sub):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, mount)

    monkeypatch.setattr(sensor, "_mark_mount", refuse_sub)
    try:
        _mount_tmpfs(sub)
        wait_until(lambda: _detail(sensor, "mounts_unmarked") == 1, what="the refused mark")
        assert sensor.statistics().problem == f"execs on 1 mount(s) are not gated: {sub} (Invalid argument)"
        subprocess.run(["umount", str(sub)], check=True)
        wait_until(lambda: sensor.statistics().problem == "", what="the problem to clear with the mount")
    finally:
        subprocess.run(["umount", "-q", str(sub)], check=False)
