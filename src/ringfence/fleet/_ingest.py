"""Heartbeats stored in batches: one transaction, and a handful of statements, for every heartbeat that
reached the node while the last batch was being written (the writer thread is _writer.py).

A transaction and a worker thread per heartbeat cost a node 10 ms of CPU each, most of it the ORM, the
GIL hand-offs between the event loop and 40 threads, and a round trip per statement
(bench/fleet_load_bench.py); a batch pays for the statements once.

Each heartbeat of a batch is judged as it would be alone, in the same order as before:

    unknown host (401), bad signature (401), revoked host (403)     one SELECT of the batch's hosts
    replayed nonce (401)                                            one INSERT .. ON CONFLICT DO NOTHING
                                                                    RETURNING; a nonce twice in one batch:
                                                                    the first is stored, the second refused
    a body that does not decode (422, its nonce spent all the same) decoded before, answered here
    stored: the history row, the trim to `history`, the status row   one statement each for the batch
    answered with the host's assignments                            one SELECT

Nothing here commits: the caller's transaction holds it all, so a batch is stored whole or not at all.
Rows are locked in the order of their host ids in every statement, so batches of two nodes that share
hosts wait for each other rather than deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ringfence.events import Heartbeat
from ringfence.fleet._db import HeartbeatRecord, Host, HostStatus, RequestNonce
from ringfence.fleet._evaluator import assignments_of_hosts
from ringfence.fleet._store import NONCE_KEEP_NS, UNKNOWN_HOST, Refused, Sessions, SignedRequest, refusal


@dataclass(frozen=True)
class Arrival:
    """A heartbeat as it reached the node: its headers checked (`_store.check_headers`), its body decoded
    or the reason it does not, answered only once the request is authenticated."""

    request: SignedRequest
    now_ns: int  # when it arrived: its nonce's expiry and its received_at_ns
    beat: Heartbeat | Refused


Outcome: TypeAlias = dict[str, str] | Refused  # the host's assignments, or why it was refused


@dataclass(frozen=True)
class Beat:
    """An authentic heartbeat to store: its host, when it arrived, and its document as received."""

    host_id: str
    received_at_ns: int
    beat: Heartbeat
    document: str


@dataclass(frozen=True)
class _Key:
    public_key: str
    revoked: bool


def store_batch(conn: sa.Connection, arrivals: Sequence[Arrival], *, history: int) -> list[Outcome]:
    """Each arrival's outcome, in order, in `conn`'s transaction (the caller commits or rolls back)."""
    outcomes: dict[int, Outcome] = {}
    keys = _host_keys(conn, {a.request.host_id for a in arrivals})
    for i, a in enumerate(arrivals):
        key = keys.get(a.request.host_id)
        why = Refused(401, UNKNOWN_HOST) if key is None else refusal(a.request, key.public_key, key.revoked)
        if why is not None:
            outcomes[i] = why
    signed = [i for i in range(len(arrivals)) if i not in outcomes]
    authentic = _spend_nonces(conn, arrivals, signed)
    new = set(authentic)
    for i in signed:
        if i not in new:
            outcomes[i] = Refused(401, "replayed request (nonce seen before)")
    _touch_hosts(conn, [arrivals[i] for i in authentic])
    beats: list[Beat] = []
    for i in authentic:
        a = arrivals[i]
        if isinstance(a.beat, Refused):
            outcomes[i] = a.beat  # the nonce is spent all the same: a replay is refused as one
        else:
            beats.append(Beat(a.request.host_id, a.now_ns, a.beat, a.request.body.decode()))
    store_beats(conn, beats, history=history)
    assigned = assignments_of_hosts(conn, {b.host_id for b in beats})
    for i in authentic:
        outcomes.setdefault(i, assigned.get(arrivals[i].request.host_id, {}))
    return [outcomes[i] for i in range(len(arrivals))]


def store_heartbeat(
    sessions: Sessions, now_ns: int, host_id: str, beat: Heartbeat, document: bytes, *, history: int
) -> dict[str, str]:
    """One heartbeat stored as a batch's are, without authentication (seeding, simulations). Returns the
    host's assignments (engine -> version)."""
    with sessions.begin() as s:
        store_beats(s.connection(), [Beat(host_id, now_ns, beat, document.decode())], history=history)
        return assignments_of_hosts(s, {host_id}).get(host_id, {})


def purge_nonces(conn: sa.Connection, now_ns: int) -> int:
    """Deletes the nonces whose window has passed; how many. Done every so often, not per request: a
    nonce kept longer than needed refuses only what the clock check refuses anyway."""
    done = conn.execute(sa.delete(RequestNonce).where(RequestNonce.expires_at_ns < now_ns))
    return int(done.rowcount)


def _host_keys(conn: sa.Connection, host_ids: set[str]) -> dict[str, _Key]:
    """Read in the batch's transaction, every time: a host revoked a moment ago is refused (its key
    could be kept, it never changes; whether it is revoked could not)."""
    rows = conn.execute(
        sa.select(Host.id, Host.public_key, Host.revoked_at_ns).where(Host.id.in_(sorted(host_ids)))
    )
    return {hid: _Key(key, revoked is not None) for hid, key, revoked in rows}


def _spend_nonces(conn: sa.Connection, arrivals: Sequence[Arrival], signed: list[int]) -> list[int]:
    """Of the `signed` requests, those whose nonce was new (now stored), in order. Of a nonce sent twice
    in one batch the first is new and the second a replay. A nonce that another node's transaction
    holds uncommitted is waited for (the unique key), then counts as seen."""
    first: dict[tuple[str, str], int] = {}
    for i in signed:
        first.setdefault((arrivals[i].request.host_id, arrivals[i].request.nonce), i)
    if not first:
        return []
    rows = [
        {"host_id": h, "nonce": n, "expires_at_ns": arrivals[i].now_ns + NONCE_KEEP_NS}
        for (h, n), i in sorted(first.items())
    ]
    insert = _insert(conn, RequestNonce).on_conflict_do_nothing()
    new = conn.execute(insert.returning(RequestNonce.host_id, RequestNonce.nonce), rows).all()
    return sorted(first[h, n] for h, n in new)


def _touch_hosts(conn: sa.Connection, arrivals: Sequence[Arrival]) -> None:
    seen: dict[str, int] = {}
    for a in arrivals:
        seen[a.request.host_id] = max(a.now_ns, seen.get(a.request.host_id, a.now_ns))
    if seen:
        conn.execute(
            sa.update(Host).where(Host.id == sa.bindparam("hid")).values(last_seen_at_ns=sa.bindparam("at")),
            [{"hid": h, "at": at} for h, at in sorted(seen.items())],
        )


def store_beats(conn: sa.Connection, beats: Sequence[Beat], *, history: int) -> None:
    """The history rows, each host's history trimmed to `history`, and each host's status row (its last
    heartbeat of `beats`), in `conn`'s transaction. The one way heartbeats are stored (tests seed with it)."""
    if not beats:
        return
    conn.execute(
        sa.insert(HeartbeatRecord),
        [
            {
                "host_id": b.host_id, "received_at_ns": b.received_at_ns, "sequence": b.beat.sequence,
                "sent_at_ns": b.beat.sent_at_ns, "healthy": b.beat.health.healthy, "document": b.document,
            }
            for b in beats
        ],
    )  # fmt: skip
    latest = {b.host_id: b for b in beats}
    _trim(conn, sorted(latest), max(history, 1))  # the newest row is the latest document (host detail)
    status = [
        {
            "host_id": hid, "received_at_ns": b.received_at_ns, "sequence": b.beat.sequence,
            "healthy": b.beat.health.healthy, "agent_version": b.beat.health.version,
        }
        for hid, b in sorted(latest.items())
    ]  # fmt: skip
    upsert = _insert(conn, HostStatus)
    changed = {c: getattr(upsert.excluded, c) for c in status[0] if c != "host_id"}
    conn.execute(upsert.on_conflict_do_update(index_elements=[HostStatus.host_id], set_=changed), status)


def _trim(conn: sa.Connection, host_ids: list[str], history: int) -> None:
    """Each host's rows past its newest `history` deleted: the cutoff is an index-only walk of the host's
    newest rows, the delete a range of the same index."""
    cutoff = (
        sa.select(HeartbeatRecord.id)
        .where(HeartbeatRecord.host_id == sa.bindparam("hid"))
        .order_by(HeartbeatRecord.id.desc())
        .offset(history)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        sa.delete(HeartbeatRecord).where(
            HeartbeatRecord.host_id == sa.bindparam("hid"), HeartbeatRecord.id <= cutoff
        ),
        [{"hid": h} for h in host_ids],
    )


def _insert(conn: sa.Connection, table: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (SQLite 3.24 and PostgreSQL alike)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
