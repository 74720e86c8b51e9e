"""DnsSensor: DNS queries and responses seen on a packet socket, as DnsActivity, and the name cache.

Two threads, as in the audit sensor: a reader that only moves packets from the socket into a bounded
queue (drop-newest when full, counted), and a processor that decodes (IP, UDP/TCP, then dnspython),
learns names from solicited responses, finds the asker of a query (best effort, `_owner.py`) and
hands events to the sink. Malformed packets and messages are counted, never fatal. The reader reads
at most `max_packets_per_s` (a token bucket); beyond, it leaves packets in the socket buffer for a
while, so a flood of DNS costs the agent bounded CPU and the kernel drops what does not fit, counted.

Both threads run in the network namespace the sensor is given (`netns`, a path such as
/run/netns/NAME; None: the agent's own): each moves itself there with setns(2) before it does anything
else, since a namespace is per thread. So the sensor can watch a namespace the agent is not in, which
is also how the tests run it without touching the host's network. start() waits (bounded) until the
reader has opened its socket, and raises SensorUnavailable with what the kernel said if it could not.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import os
import select
import socket
import threading

from ringfence._counters import Counters
from ringfence.events import (
    Clock,
    DnsActivity,
    DnsActivityId,
    DnsAnswer,
    DnsQuery,
    Endpoint,
    HeaderStamper,
    ProcessRef,
    SystemClock,
)
from ringfence.sensors._base import EventSink, ProcessResolver, SensorStatistics, SensorUnavailable
from ringfence.sensors.dns._cache import NameCache, NameCacheConfig
from ringfence.sensors.dns._capture import enter_netns, kernel_statistics, open_capture
from ringfence.sensors.dns._filter import DNS_PORT
from ringfence.sensors.dns._message import DnsMessage, MessageError, parse
from ringfence.sensors.dns._owner import OUTCOMES, OwnerFinder
from ringfence.sensors.dns._packet import Outcome, PacketError, Segment, decode
from ringfence.sensors.dns._pending import PendingQueries
from ringfence.sensors.dns._rate import TokenBucket

log = logging.getLogger(__name__)

_INTERFACE = "packet socket (AF_PACKET)"
_RECV_BYTES = 65536
_BATCH = 64  # packets per queue item at most
_START_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 5.0
_PAUSE_MS = 20  # how long the reader leaves packets in the kernel once its budget is spent

COUNTERS = (
    "received",  # packets Python read (all passed the kernel filter)
    "kernel_passed",  # packets the kernel filter passed (PACKET_STATISTICS)
    "kernel_drops",  # of those, dropped by the kernel for a full socket buffer
    "queue_drops",  # read, but the queue to the processor was full
    "budget_pauses",  # times the reader stopped reading for a while: max_packets_per_s were read
    "malformed_packets",  # not a whole IP + UDP/TCP packet
    "malformed_messages",  # a payload dnspython could not read
    "tcp_partial",  # a TCP segment with part of a message (not reassembled)
    "tcp_empty",  # TCP segments without payload (handshakes, ACKs)
    "queries",
    "responses",
    "emitted",
    "sink_errors",
    "internal_errors",  # a bug on the processor's path: logged with its traceback, that packet lost
    "unsolicited_responses",  # answers no query seen asked for: reported, but they teach no name
    "pending_expired",  # queries that got no response in time
    "pending_evicted",  # queries forgotten beyond the bound of those waiting
    *OUTCOMES,
)


@dataclasses.dataclass(frozen=True)
class DnsTuning:
    """Knobs with safe defaults. Units are in the names."""

    rcvbuf_bytes: int = 4 * 1024 * 1024
    queue_packets: int = 16384  # reader -> processor, about this many packets; drop-newest beyond
    max_packets_per_s: float = 2000.0  # read at most; ~100 us of CPU each, so about 20 % of a core
    find_owner: bool = True  # look up the process that sent a query (`_owner.py`)
    owner_walks_per_s: float = 5.0  # each walks /proc/*/fd: 3.5 ms with 85 processes, more with more
    cache: NameCacheConfig = dataclasses.field(default_factory=NameCacheConfig)


class DnsSensor:
    """DnsActivity for each DNS message on the wire, to `sink` (called from the processor thread)."""

    name = "dns"

    def __init__(
        self,
        sink: EventSink,
        resolver: ProcessResolver,
        host: str,
        *,
        interfaces: tuple[str, ...] = (),
        netns: str | None = None,
        clock: Clock | None = None,
        tuning: DnsTuning | None = None,
    ) -> None:
        self._sink = sink
        self._resolver = resolver
        self._interfaces = interfaces
        self._netns = netns
        self._clock = clock or SystemClock()
        self._tuning = tuning or DnsTuning()
        self._stamper = HeaderStamper(self.name, host, self._clock)
        self.names = NameCache(self._clock, self._tuning.cache)
        self.counters = Counters(COUNTERS)
        self._pending = PendingQueries(self._clock, self.counters)  # the processor thread's alone
        self._lock = threading.Lock()
        self._running: _Running | None = None

    def start(self) -> None:
        """Open the packet socket (in `netns`) and start both threads. Raises SensorUnavailable."""
        with self._lock:
            if self._running is None:
                self._running = _Running.start(self)

    def stop(self) -> None:
        """Stop both threads and close the socket. Idempotent."""
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            running.stop()

    def statistics(self) -> SensorStatistics:
        running = self._running
        if running is not None:
            running.refresh_kernel_statistics()
        c = self.counters.snapshot()
        detail = c | {f"cache_{k}": v for k, v in self.names.counters.snapshot().items()}
        detail["cache_entries"] = len(self.names)
        return SensorStatistics(
            name=self.name,
            running=running is not None,
            received=c["received"],
            emitted=c["emitted"],
            dropped=c["kernel_drops"] + c["queue_drops"],
            errors=c["malformed_packets"] + c["malformed_messages"] + c["sink_errors"] + c["internal_errors"],
            last_seq=self._stamper.last_seq,
            detail=detail,
        )

    # -- the processor's work, per packet (also what the tests and the benchmark drive) ----------------

    def process_packet(self, packet: bytes, owners: OwnerFinder | None = None) -> None:
        count = self.counters.add
        try:
            segment = decode(packet)
        except PacketError as e:
            count("malformed_packets")
            log.debug("dns: malformed packet (%s)", e)
            return
        if segment.outcome is Outcome.PARTIAL:
            count("tcp_partial")
        elif segment.outcome is Outcome.EMPTY:
            count("tcp_empty")
        for wire in segment.messages:
            try:
                message = parse(wire)
            except MessageError as e:
                count("malformed_messages")
                log.debug("dns: malformed message from %s:%d (%s)", segment.src, segment.sport, e)
                continue
            self._emit(segment, message, owners)

    def _emit(self, segment: Segment, message: DnsMessage, owners: OwnerFinder | None) -> None:
        if message.response:
            self.counters.add("responses")
            if self._pending.answered(segment, message):
                self.names.learn(message)
        else:
            self.counters.add("queries")
            self._pending.asked(segment, message)
        process = None
        if owners is not None and not message.response and segment.dport == DNS_PORT:
            owner = owners.find(segment.transport, segment.sport)
            if owner is not None and owner.pid is not None:
                process = self._resolver.resolve(owner.pid)
        event = to_activity(self._stamper, segment, message, process)
        try:
            self._sink(event)
        except Exception:  # supervision boundary: a sink bug costs this event only
            self.counters.add("sink_errors")
            log.exception("dns event could not be delivered")
            return
        self.counters.add("emitted")


def to_activity(
    stamper: HeaderStamper, segment: Segment, message: DnsMessage, process: ProcessRef | None
) -> DnsActivity:
    query = None
    if message.query is not None:
        query = DnsQuery(hostname=message.query, type=message.query_type, dns_class=message.query_class)
    return DnsActivity(
        header=stamper.stamp(),
        activity=DnsActivityId.RESPONSE if message.response else DnsActivityId.QUERY,
        query=query,
        transaction_id=message.id,
        rcode=message.rcode_id if message.response else None,
        answers=tuple(DnsAnswer(name=a.name, type=a.type, data=a.data, ttl=a.ttl) for a in message.answers),
        src=Endpoint(family=segment.family, ip=segment.src, port=segment.sport),
        dst=Endpoint(family=segment.family, ip=segment.dst, port=segment.dport),
        process=process,
    )


class _Running:
    """One start..stop: the socket, the queue and the two threads."""

    def __init__(self, sensor: DnsSensor) -> None:
        self.sensor = sensor
        self.backlog = _Backlog(sensor._tuning.queue_packets)
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.stopping = threading.Event()
        self.opened = threading.Event()
        self.failure: str | None = None
        self.sock: socket.socket | None = None
        self.stats_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="ringfence-dns-reader", daemon=True)
        self.processor = threading.Thread(target=self._process, name="ringfence-dns-events", daemon=True)

    @classmethod
    def start(cls, sensor: DnsSensor) -> _Running:
        running = cls(sensor)
        running.reader.start()
        if not running.opened.wait(_START_TIMEOUT_S):
            running.failure = f"the reader did not open its socket within {_START_TIMEOUT_S} s"
        if running.failure is not None:
            running.stop()
            raise SensorUnavailable(_INTERFACE, running.failure)
        running.processor.start()
        log.info("dns sensor started (interfaces %s)", ", ".join(sensor._interfaces) or "all")
        return running

    def stop(self) -> None:
        self.stopping.set()
        os.eventfd_write(self.stop_fd, 1)
        for thread in (self.reader, self.processor):
            if thread.is_alive():
                thread.join(_JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.warning(
                        "dns sensor: thread %s did not stop within %s s", thread.name, _JOIN_TIMEOUT_S
                    )
        self.refresh_kernel_statistics()
        with self.stats_lock:
            sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        os.close(self.stop_fd)

    def refresh_kernel_statistics(self) -> None:
        """The kernel resets its counters on each read, so they are added up here, under a lock."""
        with self.stats_lock:
            if self.sock is None:
                return
            passed, drops = kernel_statistics(self.sock)
        self.sensor.counters.add("kernel_passed", passed)
        self.sensor.counters.add("kernel_drops", drops)

    def _enter(self) -> None:
        if self.sensor._netns is not None:
            enter_netns(self.sensor._netns)

    def _read(self) -> None:
        try:
            self._enter()
            sock = open_capture(self.sensor._interfaces, self.sensor._tuning.rcvbuf_bytes)
        except OSError as e:
            self.failure = str(e)
            self.opened.set()
            return
        with self.stats_lock:
            self.sock = sock
        self.opened.set()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self.stop_fd, select.POLLIN)
        buf = bytearray(_RECV_BYTES)
        budget = TokenBucket(self.sensor._clock, self.sensor._tuning.max_packets_per_s)
        while not self.stopping.is_set():
            ready = {fd for fd, _ in poller.poll()}
            if self.stop_fd in ready:
                return
            drained = self._drain(sock, buf, budget)
            if drained is _Drained.FAILED:
                return
            if drained is _Drained.OVER_BUDGET:
                # Leave the rest in the socket buffer for a while: a flood then costs the kernel (whose
                # drops PACKET_STATISTICS counts), not the agent's CPU and GIL.
                self.sensor.counters.add("budget_pauses")
                if self._stopped_within(_PAUSE_MS):
                    return

    def _stopped_within(self, timeout_ms: int) -> bool:
        waiter = select.poll()
        waiter.register(self.stop_fd, select.POLLIN)
        return bool(waiter.poll(timeout_ms))

    def _drain(self, sock: socket.socket, buf: bytearray, budget: TokenBucket) -> _Drained:
        batch: list[bytes] = []
        try:
            while True:
                if not budget.take():
                    return _Drained.OVER_BUDGET
                try:
                    n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    budget.give_back()
                    return _Drained.EMPTY
                except OSError:
                    log.exception("dns packet socket read failed, the reader stops")
                    return _Drained.FAILED
                batch.append(bytes(buf[:n]))
                if len(batch) >= _BATCH:
                    self._offer(batch)
                    batch = []
        finally:
            if batch:
                self._offer(batch)

    def _offer(self, batch: list[bytes]) -> None:
        self.sensor.counters.add("received", len(batch))
        dropped = self.backlog.put(batch)
        if dropped:
            self.sensor.counters.add("queue_drops", dropped)

    def _process(self) -> None:
        owners = self._owner_finder()
        while True:
            batch = self.backlog.get(timeout_s=0.25)
            if batch is None:
                if self.stopping.is_set():
                    return
                continue
            for packet in batch:
                self._process_one(packet, owners)

    def _owner_finder(self) -> OwnerFinder | None:
        """In the sensor's namespace, where the socket tables that name the asker are."""
        tuning = self.sensor._tuning
        if not tuning.find_owner:
            return None
        try:
            self._enter()
        except OSError:
            log.exception("dns processor could not enter %s; askers are not looked up", self.sensor._netns)
            return None
        return OwnerFinder(self.sensor._clock, self.sensor.counters, walks_per_s=tuning.owner_walks_per_s)

    def _process_one(self, packet: bytes, owners: OwnerFinder | None) -> None:
        try:
            self.sensor.process_packet(packet, owners)
        except Exception:  # supervision boundary: a bug costs this packet, not the sensor
            self.sensor.counters.add("internal_errors")
            log.exception("dns sensor: a packet could not be processed")


class _Drained(enum.Enum):
    EMPTY = "empty"
    OVER_BUDGET = "over budget"
    FAILED = "failed"


class _Backlog:
    """Reader -> processor: batches of packets, bounded in packets (not batches, which may hold one
    packet or 64). Beyond the bound the newest packets are dropped; `put` says how many."""

    def __init__(self, max_packets: int) -> None:
        self._max = max(1, max_packets)
        self._batches: collections.deque[list[bytes]] = collections.deque()
        self._packets = 0
        self._ready = threading.Condition()

    def put(self, batch: list[bytes]) -> int:
        with self._ready:
            room = self._max - self._packets
            kept = batch if len(batch) <= room else batch[:room]
            if kept:
                self._batches.append(kept)
                self._packets += len(kept)
                self._ready.notify()
        return len(batch) - len(kept)

    def get(self, timeout_s: float) -> list[bytes] | None:
        with self._ready:
            if not self._batches:
                self._ready.wait(timeout_s)
            if not self._batches:
                return None
            batch = self._batches.popleft()
            self._packets -= len(batch)
            return batch
