"""The supervisor: one process per extension; restart with backoff; quarantine a crash loop; budgets.

Threads: one monitor thread for all extensions (it waits in `select` on every process's pidfd plus a
wake-up pipe, with a timeout at the next restart or resource check: process exits are events, not
polls); per extension a reader thread (handshake, then frames) and a writer thread (see _connection.py);
one action worker that runs `action_handler` off the reader threads, fed by a bounded queue. Per
extension threads rather than one selector for all: each extension's socket I/O is isolated by
construction, a frame decode or a slow findings sink for one never delays another, and the count stays
small (a handful of extensions).

Why an extension is restarted (each counted by category in `restart_reasons`): "crash" (it exited or a
signal not ours killed it), "handshake" (no usable HelloAck in time), "protocol-error" (malformed,
oversized or out-of-place frame), "auth-misses" (`auth_miss_limit` AUTH deadlines missed in a row),
"memory" (RSS over `memory_mb`, or killed by the kernel's OOM killer in its cgroup), "cpu" (over
`cpu_percent` for `cpu_over_budget_checks` checks), "launch" (the process could not be started). Every
one of them counts toward the crash-loop window; a crash loop, a version mismatch or a changed manifest
quarantines the extension and raises a DetectionFinding from source "ringfence.supervisor"; a
quarantined extension leaves the broker (`on_gone`). The host and the other extensions go on.

What an operator sees of a failure: one WARNING line whose message is the reason in the extension's own
terms (`setup failed: <its exception>`, `killed: out of memory (limit N MiB)`, `exited with status S:
<the last exception line of its stderr>`, our reason for ending it); the process's stderr (its last
16 KiB, captured through a pipe this monitor drains) rides on that record as `detail`, which only the
log file shows. The same reason is `last_error` in its statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import subprocess
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ringfence.broker import BoundedChannel, ChannelClosed
from ringfence.events import (
    ActionRequest,
    ActionResult,
    Clock,
    DetectionFinding,
    ExtensionStatistics,
    HeaderStamper,
    Severity,
    SystemClock,
)
from ringfence.extensions._connection import Connection
from ringfence.extensions._policy import ExtensionState
from ringfence.extensions._process import (
    LaunchError,
    StderrTail,
    cpu_seconds,
    exit_reason,
    kill,
    oom_killed,
    own_error,
    release,
    rss_bytes,
    spawn,
)
from ringfence.extensions._proxy import HANDSHAKE_EXIT, ExtensionProxy
from ringfence.extensions._spec import ExtensionSpec, SupervisorConfig
from ringfence.sdk._protocol import ActionCall, Shutdown

log = logging.getLogger(__name__)

SUPERVISOR_SOURCE = "ringfence.supervisor"
ActionHandler = Callable[[ActionRequest], ActionResult]


class Supervisor:
    """Runs `specs`. Findings (the extensions' and the supervisor's own) go to `findings_sink`.

    `action_handler` carries out ActionRequests (None: every request is refused). `on_auth_ready(id)`
    runs each time an AUTH extension (re)connects, or says its verdicts went stale (new content): flush
    the verdict cache. `on_first_ready(proxy)` runs
    once per extension, when its manifest is first known: subscribe the proxy to the broker then (its
    `kinds` and `auth_policy` come from the manifest). `on_action_refused(request, why)` runs for each
    request refused before it reaches `action_handler` (no `response` permission, queue full), so that it
    is logged too. `on_gone(id, reason)` runs once when an extension leaves for good (quarantined, or
    stopped with the supervisor): withdraw it from the broker, so that its AUTH failure policy applies
    once rather than on every request. Callbacks run on the extension's reader thread (on_gone: the
    monitor thread, or the caller of `stop`).
    """

    def __init__(
        self,
        specs: Iterable[ExtensionSpec],
        *,
        findings_sink: Callable[[DetectionFinding], None],
        action_handler: ActionHandler | None = None,
        on_auth_ready: Callable[[str], None] | None = None,
        on_first_ready: Callable[[ExtensionProxy], None] | None = None,
        on_gone: Callable[[str, str], None] | None = None,
        on_action_refused: Callable[[ActionRequest, str], object] | None = None,
        config: SupervisorConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config or SupervisorConfig()
        self._clock = clock or SystemClock()
        self._sink = findings_sink
        self._action_handler = action_handler
        self._on_auth_ready = on_auth_ready
        self._on_first_ready = on_first_ready
        self._on_gone = on_gone
        self._on_verdicts_stale = on_auth_ready
        self._on_action_refused = on_action_refused
        # Keyed by instance id. Replaced whole on add and retire (never changed in place), so that every
        # thread iterating it sees one consistent set.
        self._proxies: dict[str, ExtensionProxy] = {}
        for spec in specs:
            if spec.instance_id in self._proxies:
                raise ValueError(f"extension {spec.instance_id} is configured twice")
            self._proxies[spec.instance_id] = self._proxy(spec)
        self._ops_lock = threading.Lock()
        self._adding: list[ExtensionProxy] = []  # added at run time: launched by the monitor thread
        self._retiring: dict[str, int] = {}  # instance id -> when it is SIGKILLed if still there (ns)
        self._stamper = HeaderStamper(SUPERVISOR_SOURCE, self.config.host, self._clock)
        self._actions: BoundedChannel[tuple[ExtensionProxy, int, ActionCall]] = BoundedChannel(
            self.config.action_queue
        )
        self._changed = threading.Condition()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._quarantine_reported: set[str] = set()
        self._rejoin: set[str] = set()  # released from quarantine: subscribe again once ready
        self._monitor = threading.Thread(target=self._run, name="ringfence-supervisor", daemon=True)
        self._action_worker = threading.Thread(
            target=self._run_actions, name="ringfence-actions", daemon=True
        )
        self._next_check_ns = 0

    def _proxy(self, spec: ExtensionSpec) -> ExtensionProxy:
        return ExtensionProxy(
            spec,
            config=self.config,
            clock=self._clock,
            findings_sink=self._sink,
            submit_action=self._submit_action,
            on_ready=self._ready,
            on_verdicts_stale=self._on_verdicts_stale,
            on_action_refused=self._on_action_refused,
        )

    # -- public ------------------------------------------------------------------------------------------

    def add(self, spec: ExtensionSpec) -> None:
        """Run one more instance (a shadow on candidate content) from now on; it joins the broker when it is
        ready, like the others. Raises ValueError if that instance id runs already."""
        with self._ops_lock:
            if self._stopping:
                raise ValueError(f"extension {spec.instance_id}: the supervisor is stopping")
            if spec.instance_id in self._proxies:
                raise ValueError(f"extension {spec.instance_id} runs already")
            proxy = self._proxy(spec)
            self._proxies = {**self._proxies, spec.instance_id: proxy}
            self._adding.append(proxy)
        self._wake()

    def retire(self, instance_id: str, reason: str) -> bool:
        """Stop one instance for good (a shadow whose bake is over): it leaves the broker now, gets
        Shutdown, and SIGKILL after `stop_grace_s`; the monitor reaps it and forgets it. False: unknown."""
        with self._ops_lock:
            proxy = self._proxies.get(instance_id)
            if proxy is None or instance_id in self._retiring or self._stopping:
                return False
            self._retiring[instance_id] = self._clock.monotonic_ns() + int(self.config.stop_grace_s * 1e9)
        with proxy.lock:
            proxy.lifecycle.stopped()
            conn = proxy.conn
        self._gone(proxy.name, reason)
        if conn is not None and not conn.reaped:
            conn.put_control(Shutdown(reason))
        log.info("extension %s retiring: %s", instance_id, reason)
        self._wake()
        return True

    def proxies(self) -> list[ExtensionProxy]:
        return list(self._proxies.values())

    def pids(self) -> frozenset[int]:
        """The pids of the extension processes running now (they change as extensions restart)."""
        return frozenset(
            conn.pid for p in self._proxies.values() if (conn := p.conn) is not None and not conn.reaped
        )

    def start(self) -> None:
        """Spawn every extension and start supervising. Returns at once; see `wait_ready`."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for proxy in self._proxies.values():
            self._launch(proxy, first=True)
        self._monitor.start()
        self._action_worker.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until no extension is still starting (each runs, backs off or is quarantined)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(p.lifecycle.state is not ExtensionState.STARTING for p in self._proxies.values()),
                timeout_s,
            )

    def statistics(self) -> list[ExtensionStatistics]:
        """Per extension (for the status socket, metrics and heartbeats)."""
        return [p.statistics() for p in self._proxies.values()]

    def running(self, instance_id: str) -> bool:
        """Whether that instance is known and not retiring."""
        return instance_id in self._proxies and instance_id not in self._retiring

    def spec(self, instance_id: str) -> ExtensionSpec | None:
        proxy = self._proxies.get(instance_id)
        return proxy.spec if proxy is not None else None

    def release(self, extension_id: str, reason: str) -> bool:
        """Take a quarantined extension out of quarantine and restart it (the agent put its last-known-good
        content back). It rejoins the broker when it is ready. False: unknown, or not quarantined."""
        proxy = self._proxies.get(extension_id)
        if proxy is None or self._stopping or extension_id in self._retiring:
            return False
        with proxy.lock:
            if proxy.lifecycle.state is not ExtensionState.QUARANTINED:
                return False
            proxy.lifecycle.release(self._clock.monotonic_ns())
        self._quarantine_reported.discard(extension_id)
        self._rejoin.add(extension_id)
        log.warning("extension %s out of quarantine, restarting: %s", extension_id, reason)
        self._wake()
        return True

    def stop(self) -> None:
        """Shutdown to each, `stop_grace_s` to exit, then SIGKILL; reap, release sandboxes. Idempotent."""
        if self._stopping:
            return
        with self._ops_lock:
            self._stopping = True
        self._wake()
        if self._monitor.is_alive():
            self._monitor.join(timeout=10)
        live = [p for p in self._proxies.values() if p.conn is not None and not p.conn.reaped]
        for proxy in self._proxies.values():
            with proxy.lock:
                proxy.lifecycle.stopped()
            if proxy.name not in self._quarantine_reported and proxy.name not in self._retiring:
                self._gone(proxy.name, "stopped")
        for proxy in live:
            assert proxy.conn is not None
            proxy.conn.put_control(Shutdown("agent stopping"))
        deadline = self._clock.monotonic_ns() + int(self.config.stop_grace_s * 1e9)
        for proxy in live:
            assert proxy.conn is not None
            self._stop_one(proxy, proxy.conn, deadline)
        self._actions.close()
        if self._action_worker.is_alive():
            self._action_worker.join(timeout=5)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _stop_one(self, proxy: ExtensionProxy, conn: Connection, deadline_ns: int) -> None:
        remaining = max(0.0, (deadline_ns - self._clock.monotonic_ns()) / 1e9)
        try:
            conn.spawned.proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            with proxy.lock:
                kill(conn.spawned)
            conn.spawned.proc.wait()
        self._finish(proxy, conn)

    # -- the monitor thread ------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: the monitor is due to wake anyway
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._tick()
            except Exception:  # supervision boundary: one bad turn must not end all supervision
                log.exception("supervisor loop failed; going on")

    def _tick(self) -> None:
        for key, _ in self._selector.select(self._timeout_s()):
            if key.data is None:
                self._drain_wake()
            elif isinstance(key.data, StderrTail):
                if not key.data.read_available():
                    self._selector.unregister(key.fd)  # EOF: the rest is read when it is reaped
            else:
                self._reap(key.data)
        if self._stopping:
            return
        with self._ops_lock:
            adding, self._adding = self._adding, []
        for proxy in adding:
            self._launch(proxy, first=True)
        now = self._clock.monotonic_ns()
        self._retire_due(now)
        for proxy in self._proxies.values():
            if proxy.name in self._retiring:
                continue
            with proxy.lock:
                due = proxy.lifecycle.restart_due(now)
            if due:
                self._launch(proxy, first=False)
        if now >= self._next_check_ns:
            self._next_check_ns = now + int(self.config.resource_check_interval_s * 1e9)
            self._check_resources(now)

    def _retire_due(self, now_ns: int) -> None:
        """Retiring instances: SIGKILL past their grace; forgotten once reaped (or never started)."""
        for instance_id, kill_at in list(self._retiring.items()):
            proxy = self._proxies[instance_id]
            conn = proxy.conn
            if conn is not None and not conn.reaped:
                if now_ns >= kill_at:
                    with proxy.lock:
                        kill(conn.spawned)
                continue
            with self._ops_lock:
                self._proxies = {k: v for k, v in self._proxies.items() if k != instance_id}
                del self._retiring[instance_id]
                self._adding = [p for p in self._adding if p is not proxy]
            self._quarantine_reported.discard(instance_id)
            log.info("extension %s retired", instance_id)

    def _timeout_s(self) -> float:
        now = self._clock.monotonic_ns()
        due = [self._next_check_ns, *self._retiring.values()]
        due += [
            p.lifecycle.restart_at_ns for p in self._proxies.values() if p.lifecycle.restart_at_ns is not None
        ]
        return max(0.0, (min(due) - now) / 1e9)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            return

    def _launch(self, proxy: ExtensionProxy, *, first: bool) -> None:
        now = self._clock.monotonic_ns()
        with proxy.lock:
            if not first and proxy.lifecycle.state is not ExtensionState.BACKOFF:
                return
            proxy.lifecycle.starting(now)
            generation = proxy.next_generation()
        try:
            spawned = spawn(proxy.spec, self.config, capture_stderr=True)
        except LaunchError as e:
            log.exception("launching %s failed", proxy.name)
            self._failed(proxy, "launch", str(e), crashed=False)
            return
        conn = Connection(proxy.spec, self.config, spawned, generation, now)
        with proxy.lock:
            proxy.attach(conn)
            if not first:
                proxy.stats.add(restarts=1)
        self._selector.register(spawned.pidfd, selectors.EVENT_READ, proxy)
        if spawned.stderr is not None:
            self._selector.register(spawned.stderr.fd, selectors.EVENT_READ, spawned.stderr)
        self._notify()

    def _reap(self, proxy: ExtensionProxy) -> None:
        """One line on the terminal per failure; the extension's stderr (its traceback) once, in the log."""
        conn = proxy.conn
        assert conn is not None
        returncode = conn.spawned.proc.wait()
        stderr = conn.spawned.stderr
        if stderr is not None:
            stderr.read_available()
        tail = stderr.text() if stderr is not None else ""
        oom = oom_killed(conn.spawned.prepared)
        self._finish(proxy, conn)
        if proxy.name in self._retiring:  # it was asked to go: forgotten at the next turn
            self._retire_due(self._clock.monotonic_ns())
            return
        category, reason, crashed = self._why_it_ended(proxy, conn, returncode, oom=oom, stderr=tail)
        detail = {"detail": tail} if tail.strip() else None
        log.warning("extension %s (pid %d) ended: %s", proxy.name, conn.pid, reason, extra=detail)
        self._failed(proxy, category, reason, crashed=crashed)

    @staticmethod
    def _why_it_ended(
        proxy: ExtensionProxy, conn: Connection, returncode: int, *, oom: bool, stderr: str
    ) -> tuple[str, str, bool]:
        """(category, one-line reason, whether it ended by itself). The reason is the extension's own
        error where there is one: its setup exception, a memory kill, our reason for ending it."""
        ended = conn.kill_reason
        if ended is not None and ended[0] != HANDSHAKE_EXIT:
            return ended[0], ended[1], False
        if oom:
            return "memory", f"killed: out of memory (limit {proxy.spec.memory_mb} MiB)", True
        said = proxy.take_error()  # its SetupFailed frame
        if said is not None:
            return "handshake", f"setup failed: {said}", True
        how = exit_reason(returncode) + (" before the handshake" if ended is not None else "")
        own = own_error(stderr)
        return ("handshake" if ended is not None else "crash"), f"{how}: {own}" if own else how, True

    def _finish(self, proxy: ExtensionProxy, conn: Connection) -> None:
        """After the process is reaped: close its connection, pidfd and sandbox."""
        with proxy.lock:
            conn.reaped = True
        with contextlib.suppress(KeyError, ValueError):  # not registered yet, or the selector is closed
            self._selector.unregister(conn.spawned.pidfd)
        os.close(conn.spawned.pidfd)
        if conn.spawned.stderr is not None:
            with contextlib.suppress(KeyError, ValueError):  # unregistered at EOF already
                self._selector.unregister(conn.spawned.stderr.fd)
            conn.spawned.stderr.close()
        conn.close()
        proxy.fold_connection(conn)
        release(proxy.spec, conn.spawned.policy, conn.spawned.prepared)

    def _failed(self, proxy: ExtensionProxy, category: str, reason: str, *, crashed: bool) -> None:
        if self._stopping:
            return
        proxy.count_exit(category, reason, crashed=crashed)
        with proxy.lock:
            state = proxy.lifecycle.failed(self._clock.monotonic_ns(), reason)
            why = proxy.lifecycle.quarantine_reason
        if state is ExtensionState.QUARANTINED and proxy.name not in self._quarantine_reported:
            self._quarantine_reported.add(proxy.name)
            self._gone(proxy.name, "quarantined")
            self._report_quarantine(proxy.name, why or reason)
        self._notify()

    def _gone(self, extension_id: str, reason: str) -> None:
        on_gone = self._on_gone
        if on_gone is not None:
            self._guard(f"on_gone({extension_id})", lambda name: on_gone(name, reason), extension_id)

    def _report_quarantine(self, extension_id: str, reason: str) -> None:
        log.error("extension %s quarantined: %s", extension_id, reason)
        finding = DetectionFinding(
            header=self._stamper.stamp(),
            title=f"extension {extension_id} quarantined",
            severity=Severity.HIGH,
            source=SUPERVISOR_SOURCE,
            rule="extension-quarantined",
            description=f"{extension_id} is stopped until the agent restarts: {reason}",
        )
        try:
            self._sink(finding)
        except Exception:  # supervision boundary: the quarantine stands; the report is logged above
            log.exception("findings sink failed on the quarantine of %s", extension_id)

    def _check_resources(self, now_ns: int) -> None:
        for proxy in self._proxies.values():
            conn = proxy.conn
            if conn is None or conn.reaped or not conn.ready:
                continue
            limit = proxy.spec.memory_mb << 20
            rss = rss_bytes(conn.pid)
            if rss is not None and rss > limit:
                proxy.end(conn, "memory", f"RSS {rss >> 20} MiB over the {proxy.spec.memory_mb} MiB budget")
                continue
            cpu = cpu_seconds(conn.pid)
            over = conn.cpu.sample(now_ns, cpu) if cpu is not None else None
            with proxy.lock:
                proxy.stats.set(cpu_percent=conn.cpu.last_percent)
            if over is not None:
                proxy.end(conn, "cpu", f"CPU {over:.0f} % over the {proxy.spec.cpu_percent} % budget")

    # -- callbacks from reader threads -------------------------------------------------------------------

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _ready(self, proxy: ExtensionProxy, first: bool) -> None:
        if proxy.name in self._retiring:
            return  # it left the broker when it was retired, and stays out
        if proxy.name in self._rejoin:
            self._rejoin.discard(proxy.name)
            first = True  # withdrawn from the broker at its quarantine: subscribed again, as at first
        if first and self._on_first_ready is not None:
            self._guard(f"on_first_ready({proxy.name})", self._on_first_ready, proxy)
        if proxy.auth_policy is not None and self._on_auth_ready is not None:
            self._guard(f"on_auth_ready({proxy.name})", self._on_auth_ready, proxy.name)
        proxy.mark_running()
        self._notify()

    @staticmethod
    def _guard(what: str, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:  # supervision boundary: the agent's callback; logged, the extension runs on
            log.exception("%s failed", what)

    def _submit_action(self, proxy: ExtensionProxy, generation: int, call: ActionCall) -> bool:
        if self._action_handler is None:
            return False
        return self._actions.put((proxy, generation, call))

    def _run_actions(self) -> None:
        handler = self._action_handler
        while True:
            try:
                item = self._actions.get(timeout=None)
            except ChannelClosed:
                return
            if item is None or handler is None:
                continue
            proxy, generation, call = item
            try:
                result = handler(call.request)
            except Exception as e:  # supervision boundary: the extension hears that it failed, and why
                log.exception("action %s for %s failed", call.request.kind, proxy.name)
                result = ActionResult(kind=call.request.kind, ok=False, message=f"failed: {e}")
            proxy.send_result(generation, call.token, result)
