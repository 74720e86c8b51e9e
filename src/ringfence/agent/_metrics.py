"""The agent's health as Prometheus metrics, on an opt-in local HTTP listener (`[agent] metrics_listen`).

Every scrape assesses health afresh (the same `Health` that `ringfence status` prints), so the metrics and
the status never disagree. The listener binds loopback only unless `metrics_allow_remote` says otherwise:
the metrics name paths, extensions and rates an attacker would like to know.

Errors: `parse_listen` (agent/_metrics_address.py) raises MetricsAddressError (a ValueError; the config
reports it as a problem of `agent.metrics_listen`); `MetricsServer.start` raises OSError (the agent
translates both to AgentError). This module loads prometheus_client: the agent imports it only when
`metrics_listen` is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ringfence.agent._health import drop_totals
from ringfence.events import ExtensionStatistics, Health

log = logging.getLogger(__name__)

EXTENSION_STATES = ("starting", "running", "backoff", "quarantined", "stopped")


class HealthCollector(Collector):
    """Turns one `Health` per scrape into metric families."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        h = self._health()
        yield GaugeMetricFamily(
            "ringfence_healthy", "1 when the agent is healthy, 0 when degraded", h.healthy
        )
        yield GaugeMetricFamily(
            "ringfence_problems", "Problems that make the agent degraded", len(h.problems)
        )
        yield _drops(h)
        yield from _auth(h)
        yield from _extensions(h.extensions)
        yield from _sensors(h)
        yield from _syslog(h)
        yield GaugeMetricFamily(
            "ringfence_memory_rss_bytes", "Resident memory of the agent", h.memory_rss_bytes
        )
        yield CounterMetricFamily(
            "ringfence_cpu_seconds", "CPU time of the agent", h.cpu_user_s + h.cpu_system_s
        )


def _drops(h: Health) -> Metric:
    family = CounterMetricFamily("ringfence_dropped_events", "Events dropped, by stage", labels=["stage"])
    for stage, total in sorted(
        drop_totals(h.sensors, h.broker, h.outputs, h.extensions, h.syslog, fleet=h.fleet).items()
    ):
        family.add_metric([stage], total)
    return family


def _auth(h: Health) -> Iterator[Metric]:
    a = h.broker.auth
    requests = CounterMetricFamily(
        "ringfence_auth_requests", "AUTH decisions, by verdict", labels=["verdict"]
    )
    requests.add_metric(["allow"], a.allowed)
    requests.add_metric(["deny"], a.denied)
    yield requests
    yield CounterMetricFamily("ringfence_auth_cacheable", "ALLOW verdicts the kernel may cache", a.cacheable)
    yield CounterMetricFamily(
        "ringfence_auth_settled_at_deadline",
        "AUTH requests the broker settled itself",
        a.unanswered_at_deadline,
    )
    yield GaugeMetricFamily("ringfence_auth_pending", "AUTH requests waiting for an answer", a.pending)
    yield GaugeMetricFamily(
        "ringfence_auth_max_latency_seconds", "Slowest AUTH answer since the start", a.max_latency_us / 1e6
    )
    misses = CounterMetricFamily(
        "ringfence_auth_deadline_misses", "AUTH deadlines missed, by extension", labels=["extension"]
    )
    for name, s in sorted(a.subscribers.items()):
        misses.add_metric([name], s.deadline_misses)
    yield misses
    absent = GaugeMetricFamily(
        "ringfence_auth_absent",
        "AUTH extensions that left (1), by failure policy",
        labels=["extension", "failure"],
    )
    for name, gone in sorted(a.absent.items()):
        absent.add_metric([name, gone.failure], 1)
    yield absent


def _extensions(extensions: list[ExtensionStatistics]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "ringfence_extension_state", "1 for each extension's current state", labels=["extension", "state"]
    )
    info = GaugeMetricFamily(
        "ringfence_extension_info", "Engine and content version", labels=["extension", "engine", "content"]
    )
    restarts = CounterMetricFamily("ringfence_extension_restarts", "Restarts", labels=["extension"])
    crashes = CounterMetricFamily("ringfence_extension_crashes", "Crashes", labels=["extension"])
    for e in extensions:
        for name in EXTENSION_STATES:
            state.add_metric([e.id, name], float(e.state == name))
        info.add_metric([e.id, e.engine_version or "", e.content_version or ""], 1)
        restarts.add_metric([e.id], e.restarts)
        crashes.add_metric([e.id], e.crashes)
    yield from (state, info, restarts, crashes)


def _sensors(h: Health) -> Iterator[Metric]:
    running = GaugeMetricFamily("ringfence_sensor_running", "1 while a sensor runs", labels=["sensor"])
    emitted = CounterMetricFamily("ringfence_sensor_events", "Events a sensor emitted", labels=["sensor"])
    for s in h.sensors:
        running.add_metric([s.name], float(s.running))
        emitted.add_metric([s.name], s.emitted)
    for name in h.unavailable:
        running.add_metric([name], 0.0)
    published = CounterMetricFamily(
        "ringfence_events_published", "Events published, by kind", labels=["kind"]
    )
    for kind, k in sorted(h.broker.kinds.items()):
        published.add_metric([kind], k.published)
    yield from (running, emitted, published)


def _syslog(h: Health) -> Iterator[Metric]:
    """The syslog output, when configured: messages by result, and whether its receiver takes them."""
    s = h.syslog
    if s is None:
        return
    messages = CounterMetricFamily(
        "ringfence_syslog_messages", "Messages to the syslog receiver, by result", labels=["result"]
    )
    messages.add_metric(["sent"], s.sent)
    messages.add_metric(["dropped"], s.channel.dropped + s.unsendable)
    messages.add_metric(["truncated"], s.truncated)
    yield messages
    yield CounterMetricFamily("ringfence_syslog_errors", "Failed connects and sends (each retried)", s.errors)
    yield GaugeMetricFamily("ringfence_syslog_queued", "Messages waiting for the receiver", s.channel.queued)
    yield GaugeMetricFamily(
        "ringfence_syslog_up", "1 while the receiver takes what is sent", float(not s.failing_since_ns)
    )


class MetricsServer:
    """The listener: a private registry (no process-global state) with one HealthCollector."""

    def __init__(self, health: Callable[[], Health], address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(HealthCollector(health))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve. Raises OSError (address in use, not available)."""
        self._server, self._thread = start_http_server(self.port, self.address, registry=self._registry)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
