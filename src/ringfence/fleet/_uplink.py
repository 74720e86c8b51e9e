"""The agent's uplink: a thread that sends heartbeats and uploads findings, never blocking the agent.

    Uplink(url, credential_path, heartbeat, spool, config).start() / .stop()
    .step()         one round (the thread's body; tests call it directly): returns seconds to wait
    .statistics()   FleetStatistics for the health document

Each round: the heartbeat when it is due (every `heartbeat_interval_s`; a heartbeat that cannot be
sent is not kept, the next one says more), then findings batches until the spool is empty. Any failure
(no answer, 429, 5xx, a refusal) backs off exponentially from 1 s to `max_backoff_s`, or as long as
the server's Retry-After asks, whichever is longer. Nothing here raises into the agent: an exception
in a round is logged with its traceback, counted as a failure, and the thread goes on.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import msgspec

from ringfence.events import FleetStatistics, Heartbeat
from ringfence.fleet._assignments import FleetAssignments
from ringfence.fleet._client import (
    CREDENTIAL_FILE,
    Credential,
    FleetClient,
    Unreachable,
    Untrusted,
    detail_of,
    enroll,
    load_credential,
)
from ringfence.fleet._errors import CredentialError, EnrollError, TrustError
from ringfence.fleet._spool import FindingsSpool

log = logging.getLogger(__name__)

LOOK_INTERVAL_S = 1.0  # how often the thread looks for new findings
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class UplinkConfig:
    heartbeat_interval_s: float = 30.0
    batch_lines: int = 500  # findings per upload at most
    batch_bytes: int = 4 << 20  # bytes of findings.jsonl per upload at most
    timeout_s: float = 10.0  # per request
    min_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    batches_per_round: int = 20  # then the heartbeat gets its turn again
    ca_file: str = ""  # PEM CAs an https:// server is verified with; "": the system's


class _Failed(Exception):
    def __init__(self, message: str, retry_after_s: float = 0.0, problem: str = "") -> None:
        super().__init__(message)
        self.retry_after_s, self.problem = retry_after_s, problem


class Uplink:
    def __init__(
        self,
        url: str,
        credential_path: str,
        heartbeat: Callable[[], Heartbeat],
        spool: FindingsSpool,
        config: UplinkConfig | None = None,
        *,
        http: httpx.Client | None = None,
        enroll_token: str = "",
        hostname: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        assignments: FleetAssignments | None = None,
    ) -> None:
        self.url, self._credential_path = url, credential_path
        self.assignments = assignments  # None: the host does not take content choices from the server
        self._heartbeat, self._spool = heartbeat, spool
        self.config = config or UplinkConfig()
        self._http, self._clock, self._wall_ns = http, clock, wall_ns
        self._token, self._hostname = enroll_token, hostname
        self._client: FleetClient | None = None
        self._lock = threading.Lock()
        self._stats = FleetStatistics(url=url)
        self._next_beat = 0.0
        self._next_try = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringfence-fleet", daemon=True)

    # -- the thread --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception as e:  # supervision boundary: log, count, go on (never stop uploading)
                log.exception("fleet uplink round failed")
                wait = self._failed(_Failed(f"internal error: {e}"))
            self._stop.wait(max(0.0, min(wait, LOOK_INTERVAL_S)))

    # -- one round ---------------------------------------------------------------------------------------

    def step(self) -> float:
        now = self._clock()
        if now < self._next_try:
            return self._next_try - now
        try:
            client = self._client_now()
            if now >= self._next_beat:
                self._send_heartbeat(client)
                self._next_beat = now + self.config.heartbeat_interval_s
            for _ in range(self.config.batches_per_round):
                if self._stop.is_set() or not self._send_findings(client):
                    break
        except _Failed as e:
            return self._failed(e)
        with self._lock:
            self._stats.connected, self._stats.failures, self._stats.failing_since_ns = True, 0, 0
            self._stats.retry_in_s, self._stats.problem = 0.0, ""
        self._update_pending()
        return max(0.0, self._next_beat - self._clock())

    def _client_now(self) -> FleetClient:
        if self._client is None:
            try:
                credential = self._credential()
                client = FleetClient(
                    self.url,
                    credential,
                    http=self._http,
                    timeout_s=self.config.timeout_s,
                    wall_ns=self._wall_ns,
                    ca_file=self.config.ca_file,
                )
            except (CredentialError, EnrollError, TrustError) as e:
                raise _Failed(str(e), problem=f"fleet: {e}") from e
            self._client = client
            with self._lock:
                self._stats.host_id = credential.host_id
        return self._client

    def _credential(self) -> Credential:
        """The stored credential; with `[fleet] token` and none stored yet, enroll first."""
        try:
            return load_credential(self._credential_path)
        except CredentialError:
            if not self._token or os.path.exists(self._credential_path):
                raise
        directory = os.path.dirname(self._credential_path)
        log.info("fleet: enrolling with %s ([fleet] token)", self.url)
        credential = enroll(
            self.url,
            self._token,
            directory,
            hostname=self._hostname,
            http=self._http,
            ca_file=self.config.ca_file,
        )
        if os.path.join(directory, CREDENTIAL_FILE) != self._credential_path:
            os.replace(os.path.join(directory, CREDENTIAL_FILE), self._credential_path)
        return credential

    def _post(self, client: FleetClient, path: str, body: bytes) -> httpx.Response:
        try:
            r = client.post(path, body)
        except Untrusted as e:  # not the server being away: this host's trust is wrong, say so
            raise _Failed(f"no answer: {e}", problem=f"fleet: {e}") from e
        except Unreachable as e:
            raise _Failed(f"no answer: {e}") from e
        if r.status_code in (429, 503) or r.status_code >= 500:
            raise _Failed(f"{path}: HTTP {r.status_code}: {detail_of(r)}", _retry_after(r))
        if r.status_code in (401, 403):
            self._client = None  # read the credential again next time: it may have been re-enrolled
            why = f"{path}: credential refused (HTTP {r.status_code}): {detail_of(r)}"
            raise _Failed(why, problem=f"fleet: {why}")
        return r

    def _send_heartbeat(self, client: FleetClient) -> None:
        body = msgspec.json.encode(self._heartbeat())
        r = self._post(client, "/heartbeat", body)
        if r.status_code != 200:
            raise _Failed(f"/heartbeat: HTTP {r.status_code}: {detail_of(r)}")
        with self._lock:
            self._stats.heartbeats_sent += 1
            self._stats.last_heartbeat_ns = self._wall_ns()
        if self.assignments is not None:
            try:
                answer = msgspec.json.decode(r.content)
            except msgspec.DecodeError:
                answer = None
            self.assignments.offer(answer.get("assignments", {}) if isinstance(answer, dict) else answer)

    def _send_findings(self, client: FleetClient) -> bool:
        """One batch; False when the spool had nothing."""
        batch = self._spool.next_batch(self.config.batch_lines, self.config.batch_bytes)
        if batch is None:
            return False
        if batch.findings:
            body = msgspec.json.encode({"batch_id": batch.batch_id, "findings": batch.findings})
            r = self._post(client, "/findings", body)
            if r.status_code in (413, 422):  # this batch can never be taken: drop it, counted, move on
                log.warning(
                    "fleet: findings batch refused, %d dropped: %s", len(batch.findings), detail_of(r)
                )
                batch.skipped += len(batch.findings)
            elif r.status_code != 200:
                raise _Failed(f"/findings: HTTP {r.status_code}: {detail_of(r)}")
            else:
                with self._lock:
                    self._stats.findings_sent += len(batch.findings)
                    self._stats.batches_sent += 1
        self._spool.commit(batch)
        return True

    def _failed(self, e: _Failed) -> float:
        with self._lock:
            s = self._stats
            s.failures += 1
            s.failing_since_ns = s.failing_since_ns or self._wall_ns()
            s.connected = False
            s.last_error = str(e)
            s.problem = e.problem
            backoff = min(
                self.config.max_backoff_s, self.config.min_backoff_s * 2.0 ** min(s.failures - 1, 20)
            )
            backoff = max(backoff * random.uniform(0.8, 1.0), e.retry_after_s)  # noqa: S311 - jitter
            s.retry_in_s = backoff
        self._next_try = self._clock() + backoff
        log.debug("fleet uplink: %s; next try in %.1f s", e, backoff)
        self._update_pending()
        return backoff

    def _update_pending(self) -> None:
        pending = self._spool.pending_bytes()
        with self._lock:
            self._stats.pending_bytes = pending
            self._stats.findings_dropped = self._spool.dropped
            self._stats.spool_lost = self._spool.lost

    def statistics(self) -> FleetStatistics:
        with self._lock:
            stats = msgspec.structs.replace(self._stats)
        stats.retry_in_s = max(0.0, self._next_try - self._clock())
        if self.assignments is not None:
            stats.assignments = dict(self.assignments.current())
            stats.assignments_problem = self.assignments.problem
        return stats


def _retry_after(r: httpx.Response) -> float:
    value = str(r.headers.get("Retry-After", ""))
    return float(value) if value.isdigit() else 0.0
