"""What the console's pages show, read from the database: one read-only session per page, no I/O else.

    overview(sessions, now_ns)                     -> Overview: hosts per status, findings in the last 24 h
    host_page(sessions, now_ns, HostFilter)        -> HostPage: at most PAGE_SIZE hosts by name, a cursor
    host_detail(sessions, now_ns, host_id)         -> HostDetail | None: latest heartbeat, history, findings
    finding_page(sessions, FindingFilter)          -> FindingPage: newest first, a cursor

A host's status, from its row and its latest heartbeat (`host_status`), first match wins:

    revoked     its credential is refused
    never       enrolled, no heartbeat stored yet
    offline     no heartbeat for OFFLINE_AFTER_S (what the rollout gates call silent)
    degraded    the latest heartbeat says unhealthy
    healthy

Pages are keyset-paginated (hosts by (name, id), findings by id descending): the cost of a page does
not grow with how far in it is. Filters are validated where they are parsed (_console.py); here they
are typed. Findings are OCSF documents: severity, title and rule are read from the JSON by the
database (json_extract on SQLite, ->> on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from ringfence.events import Heartbeat, decode_heartbeat
from ringfence.fleet._db import Finding, FindingBatch, HeartbeatRecord, Host, HostStatus

Sessions = sessionmaker[Session]

OFFLINE_AFTER_S = 120  # as the rollout gates' silent hosts (_hosts.py, _simulate.py)
PAGE_SIZE = 50
HISTORY = 100  # heartbeats shown on a host's page (the server keeps --heartbeat-history)
HOST_FINDINGS = 20
FEW_HOSTS = 5000  # a findings' host filter matching at most these reads their findings by host (_by_host)
DAY_NS = 86_400 * 10**9
STATUSES = ("healthy", "degraded", "offline", "never", "revoked")
SEVERITIES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical",
              6: "Fatal", 99: "Other"}  # fmt: skip


class BadFilter(Exception):
    """A filter that names something that does not exist (a cursor of a host since removed)."""


@dataclass(frozen=True)
class HostFilter:
    status: str = ""  # one of STATUSES, "" for any
    q: str = ""  # a substring of the name or the id
    version: str = ""  # the agent version, exactly
    after: str = ""  # the id of the last host of the previous page


@dataclass(frozen=True)
class FindingFilter:
    host: str = ""  # a host id, exactly, or a substring of the host's name
    host_id: str = ""  # this host's only (a host's own page): the (host_id, id) index, no name search
    severity: int = 0  # at least this severity_id
    q: str = ""  # a substring of the title or the rule (analytic) name
    since_ns: int = 0
    until_ns: int = 0  # 0: no end
    before: int = 0  # the id of the last finding of the previous page; 0: the newest


@dataclass(frozen=True)
class HostRow:
    id: str
    name: str
    status: str
    agent_version: str
    last_heartbeat_ns: int | None
    enrolled_at_ns: int


@dataclass(frozen=True)
class HostPage:
    hosts: list[HostRow]
    total: int  # hosts matching the filter, every page
    next_after: str  # "" on the last page


@dataclass(frozen=True)
class FindingRow:
    id: int
    host_id: str
    host_name: str
    received_at_ns: int
    time_ms: int | None  # the finding's own time (OCSF `time`)
    severity_id: int
    severity: str
    title: str
    rule: str
    product: str
    action: str


@dataclass(frozen=True)
class FindingPage:
    findings: list[FindingRow]
    next_before: int  # 0 on the last page


@dataclass(frozen=True)
class Overview:
    counts: dict[str, int]  # status -> hosts
    total: int
    findings_24h: int
    latest: list[FindingRow]


@dataclass(frozen=True)
class HistoryPoint:
    received_at_ns: int
    sequence: int
    healthy: bool
    cpu_percent: float | None  # since the previous point of the same agent run
    rss_bytes: int | None
    drops: int | None
    problems: list[str]
    unreadable: str = ""  # why the document could not be decoded


@dataclass(frozen=True)
class HostDetail:
    host: HostRow
    revoked_at_ns: int | None
    heartbeat: Heartbeat | None
    unreadable: str  # why the latest document could not be decoded; "" when it could (or there is none)
    history: list[HistoryPoint] = field(default_factory=list)  # newest first
    findings: list[FindingRow] = field(default_factory=list)


def status_of(
    revoked_at_ns: int | None, received_at_ns: int | None, healthy: bool | None, now_ns: int
) -> str:
    if revoked_at_ns is not None:
        return "revoked"
    if received_at_ns is None or healthy is None:
        return "never"
    if received_at_ns < now_ns - OFFLINE_AFTER_S * 10**9:
        return "offline"
    return "healthy" if healthy else "degraded"


def _status_where(status: str, now_ns: int) -> sa.ColumnElement[bool]:
    cutoff = now_ns - OFFLINE_AFTER_S * 10**9
    live = sa.and_(Host.revoked_at_ns.is_(None), HostStatus.received_at_ns >= cutoff)
    return {
        "revoked": Host.revoked_at_ns.is_not(None),
        "never": sa.and_(Host.revoked_at_ns.is_(None), HostStatus.host_id.is_(None)),
        "offline": sa.and_(Host.revoked_at_ns.is_(None), HostStatus.received_at_ns < cutoff),
        "degraded": sa.and_(live, HostStatus.healthy.is_(False)),
        "healthy": sa.and_(live, HostStatus.healthy.is_(True)),
    }[status]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _contains(s: Session, column: InstrumentedAttribute[str], text: str) -> sa.ColumnElement[bool]:
    """`column` holds `text`, in any case. SQLite's LIKE already ignores the case of ASCII letters, and
    only of those, as its lower() does: the lower() that ILIKE is made of there doubled the cost of a
    scan of 100,000 names (58 -> 30 ms). On PostgreSQL `lower(name)` is exactly the expression of the
    trigram index `ix_hosts_name_lower_trgm` (migration 0007), which serves LIKE '%text%': keep the two
    the same, or every search scans the names again (ILIKE, which that index would not serve either)."""
    if s.get_bind().dialect.name == "sqlite":
        return column.like(_like(text), escape="\\")
    return sa.func.lower(column).like(sa.func.lower(_like(text)), escape="\\")


def overview(sessions: Sessions, now_ns: int) -> Overview:
    with sessions() as s:
        counts = _status_counts(s, now_ns)
        # finding_batches carries each upload's count: a scan of small rows, not of the documents
        day = s.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(FindingBatch.count), 0)).where(
                FindingBatch.received_at_ns >= now_ns - DAY_NS
            )
        )
        latest = _findings(s, FindingFilter(), 10)
    return Overview(counts=counts, total=sum(counts.values()), findings_24h=int(day or 0), latest=latest)


def _status_counts(s: Session, now_ns: int) -> dict[str, int]:
    """Hosts per status, exact, without joining every host to its status (a GROUP BY of that join was
    330 ms at 100,000 hosts): one pass over the covering index of `host_status` counts the latest
    heartbeats as live-healthy, live-degraded or older than the cutoff, the revoked hosts' own are taken
    back out (they are few, by their partial index), and the hosts with no heartbeat are the rest."""
    cutoff = now_ns - OFFLINE_AFTER_S * 10**9
    live = HostStatus.received_at_ns >= cutoff
    tally = (
        sa.func.count(),
        sa.func.count().filter(live, HostStatus.healthy.is_(True)),
        sa.func.count().filter(live, HostStatus.healthy.is_(False)),
    )
    seen, healthy, degraded = s.execute(sa.select(*tally).select_from(HostStatus)).one()
    r_seen, r_healthy, r_degraded = s.execute(
        sa.select(*tally)
        .select_from(HostStatus)
        .join(Host, Host.id == HostStatus.host_id)
        .where(Host.revoked_at_ns.is_not(None))
    ).one()
    hosts = s.scalar(sa.select(sa.func.count()).select_from(Host)) or 0
    revoked = s.scalar(sa.select(sa.func.count()).where(Host.revoked_at_ns.is_not(None))) or 0
    seen, healthy, degraded = seen - r_seen, healthy - r_healthy, degraded - r_degraded
    return {
        "healthy": healthy,
        "degraded": degraded,
        "offline": seen - healthy - degraded,
        "never": hosts - revoked - seen,
        "revoked": revoked,
    }


def host_page(sessions: Sessions, now_ns: int, f: HostFilter) -> HostPage:
    """The page's ids come from `hosts` alone unless the filter reads the latest heartbeat: joining
    `host_status` for every host costs a scan of it all."""
    with sessions() as s:
        ids = _host_ids(s, now_ns, f)
        total = _host_total(s, now_ns, f, ids)
        if f.after:
            last = s.execute(sa.select(Host.name, Host.id).where(Host.id == f.after)).first()
            if last is None:
                raise BadFilter(f"after: no host {f.after} (it was removed? start from the first page)")
            ids = ids.where(sa.tuple_(Host.name, Host.id) > sa.tuple_(last.name, last.id))
        chosen = ids.order_by(Host.name, Host.id).limit(PAGE_SIZE + 1).subquery()
        rows = s.execute(
            sa.select(
                Host.id, Host.name, Host.revoked_at_ns, Host.enrolled_at_ns,
                HostStatus.received_at_ns, HostStatus.healthy, HostStatus.agent_version,
            )
            .join(chosen, chosen.c.id == Host.id)
            .outerjoin(HostStatus, HostStatus.host_id == Host.id)
            .order_by(Host.name, Host.id)
        ).all()  # fmt: skip
    hosts = [
        HostRow(
            id=r.id,
            name=r.name,
            status=status_of(r.revoked_at_ns, r.received_at_ns, r.healthy, now_ns),
            agent_version=r.agent_version or "",
            last_heartbeat_ns=r.received_at_ns,
            enrolled_at_ns=r.enrolled_at_ns,
        )
        for r in rows[:PAGE_SIZE]
    ]
    return HostPage(hosts=hosts, total=total, next_after=hosts[-1].id if len(rows) > PAGE_SIZE else "")


def _host_ids(s: Session, now_ns: int, f: HostFilter) -> sa.Select[str, str]:
    where: list[sa.ColumnElement[bool]] = []
    if f.status:
        where.append(_status_where(f.status, now_ns))
    if f.q:
        where.append(sa.or_(_contains(s, Host.name, f.q), Host.id.like(_like(f.q.lower()), escape="\\")))
    if f.version:
        where.append(HostStatus.agent_version == f.version)
    ids = sa.select(Host.id, Host.name).where(*where)
    if f.status in ("never", "offline", "degraded", "healthy") or f.version:
        ids = ids.outerjoin(HostStatus, HostStatus.host_id == Host.id)
    return ids


def _host_total(s: Session, now_ns: int, f: HostFilter, ids: sa.Select[str, str]) -> int:
    """A status alone is counted as the overview counts it (86,000 healthy hosts were counted by a join
    of each to its status: 160 ms); other filters count what they select."""
    if not f.q and not f.version:
        if f.status:
            return _status_counts(s, now_ns)[f.status]
        return int(s.scalar(sa.select(sa.func.count()).select_from(Host)) or 0)
    return int(s.scalar(sa.select(sa.func.count()).select_from(ids.subquery())) or 0)


def host_detail(sessions: Sessions, now_ns: int, host_id: str) -> HostDetail | None:
    """The latest heartbeat's document is the host's newest row of `heartbeats` (the ingest keeps at
    least that one); `host_status` carries the summary the list shows, so both agree on the status."""
    with sessions() as s:
        host = s.get(Host, host_id)
        if host is None:
            return None
        st = s.get(HostStatus, host_id)
        beats = s.execute(
            sa.select(HeartbeatRecord.received_at_ns, HeartbeatRecord.sequence, HeartbeatRecord.healthy,
                      HeartbeatRecord.document)
            .where(HeartbeatRecord.host_id == host_id)
            .order_by(HeartbeatRecord.id.desc())
            .limit(HISTORY)
        ).all()  # fmt: skip
        findings = _findings(s, FindingFilter(host_id=host_id), HOST_FINDINGS)
        row = HostRow(
            id=host.id,
            name=host.name,
            status=status_of(
                host.revoked_at_ns, st.received_at_ns if st else None, st.healthy if st else None, now_ns
            ),
            agent_version=st.agent_version if st else "",
            last_heartbeat_ns=st.received_at_ns if st else None,
            enrolled_at_ns=host.enrolled_at_ns,
        )
        document = beats[0].document if beats else ""
    beat, unreadable = _decode(document) if document else (None, "")
    return HostDetail(
        host=row,
        revoked_at_ns=host.revoked_at_ns,
        heartbeat=beat,
        unreadable=unreadable,
        history=_history(beats),
        findings=findings,
    )


def _decode(document: str) -> tuple[Heartbeat | None, str]:
    try:
        return decode_heartbeat(document.encode()), ""
    except ValueError as e:
        return None, str(e)


def _history(beats: Sequence[sa.Row[int, int, bool, str]]) -> list[HistoryPoint]:
    decoded = [(b, *_decode(b.document)) for b in beats]
    points = []
    for i, (b, beat, why) in enumerate(decoded):
        older = decoded[i + 1][1] if i + 1 < len(decoded) else None
        health = beat.health if beat else None
        points.append(
            HistoryPoint(
                received_at_ns=b.received_at_ns,
                sequence=b.sequence,
                healthy=b.healthy,
                cpu_percent=_cpu_percent(beat, older),
                rss_bytes=health.memory_rss_bytes if health else None,
                drops=sum(d.total for d in health.drops) if health else None,
                problems=list(health.problems) if health else [],
                unreadable=why,
            )
        )
    return points


def _cpu_percent(beat: Heartbeat | None, older: Heartbeat | None) -> float | None:
    """CPU of the agent between two heartbeats of the same run (the same start), in percent of a core."""
    if beat is None or older is None or beat.health.started_at_ns != older.health.started_at_ns:
        return None
    wall_s = (beat.sent_at_ns - older.sent_at_ns) / 1e9
    if wall_s <= 0:
        return None
    used_s = (beat.health.cpu_user_s + beat.health.cpu_system_s) - (
        older.health.cpu_user_s + older.health.cpu_system_s
    )
    return max(0.0, used_s / wall_s * 100)


def finding_page(sessions: Sessions, f: FindingFilter) -> FindingPage:
    with sessions() as s:
        rows = _findings(s, f, PAGE_SIZE + 1)
    return FindingPage(
        findings=rows[:PAGE_SIZE], next_before=rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else 0
    )


def _json_text(s: Session, *path: str) -> sa.ColumnElement[str]:
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        return sa.cast(Finding.document, JSONB)[path].astext  # type: ignore[no-any-return]
    return sa.func.json_extract(Finding.document, "$." + ".".join(path))


def _findings(s: Session, f: FindingFilter, limit: int) -> list[FindingRow]:
    severity = _json_text(s, "severity_id")
    title = _json_text(s, "finding_info", "title")
    rule = _json_text(s, "finding_info", "analytic", "name")
    q = sa.select(Finding.id, Finding.host_id, Finding.received_at_ns, Finding.document)
    if f.host_id:
        q = q.where(Finding.host_id == f.host_id)
    few: list[str] | None = None  # the hosts of a host filter, when they are few
    if f.host:
        q, few = _by_host(s, q, f.host)
    if f.severity:
        q = q.where(sa.cast(severity, sa.Integer) >= f.severity)
    if f.q:
        pattern = _like(f.q)
        q = q.where(sa.or_(title.ilike(pattern, escape="\\"), rule.ilike(pattern, escape="\\")))
    if f.since_ns:
        q = q.where(Finding.received_at_ns >= f.since_ns)
    if f.until_ns:
        q = q.where(Finding.received_at_ns < f.until_ns)
    if f.before:
        q = q.where(Finding.id < f.before)
    rows = (
        s.execute(q.order_by(Finding.id.desc()).limit(limit)).all()
        if few is None
        else _of_few(s, q, few, limit)
    )
    # the names of the page's hosts only: joined in the query, a host row was read for every finding
    # sorted (44 of 51 ms for the findings of 3,336 hosts)
    names = dict(s.execute(sa.select(Host.id, Host.name).where(Host.id.in_({r.host_id for r in rows}))).all())
    return [_finding_row(r.id, r.host_id, names[r.host_id], r.received_at_ns, r.document) for r in rows]


def _by_host(
    s: Session, q: sa.Select[int, str, int, str], text: str
) -> tuple[sa.Select[int, str, int, str], list[str] | None]:
    """Findings of the host with this id or of the hosts whose name holds it: the hosts are looked up
    first (their names' index; on PostgreSQL its trigrams). When they are few, their ids are returned
    and their findings read by the (host_id, id) index (`_of_few`). Tested on each finding instead,
    newest first, the filter read every newer finding before the first match (340 ms for 556 hosts of
    100,000 whose findings are the oldest); that stays the plan for a pattern many hosts share, whose
    matches are dense."""
    named = sa.or_(Host.id == text, _contains(s, Host.name, text))
    ids = s.scalars(sa.select(Host.id).where(named).limit(FEW_HOSTS + 1)).all()
    if len(ids) > FEW_HOSTS:
        return q.join(Host, Host.id == Finding.host_id).where(named), None
    return q, list(ids)


def _of_few(
    s: Session, q: sa.Select[int, str, int, str], ids: list[str], limit: int
) -> Sequence[sa.Row[int, str, int, str]]:
    """The newest `limit` findings of `q` among these hosts'. SQLite: their findings by the (host_id, id)
    index, sorted by id + 0, not id, so that the planner does not read the primary key backwards testing
    each finding against the list (PostgreSQL did: 175,000 rows to find 51 of 556 hosts' findings, 62 ms).
    PostgreSQL: each host's newest `limit` by that index (a LATERAL join), then the newest of those:
    given the list, it chose a parallel scan of every finding for 3,336 hosts (146 ms of 100,000 hosts'
    200,000)."""
    if s.get_bind().dialect.name != "postgresql":
        return s.execute(
            q.where(Finding.host_id.in_(ids)).order_by((Finding.id + 0).desc()).limit(limit)
        ).all()
    from sqlalchemy.dialects.postgresql import ARRAY

    hosts = (
        sa.func.unnest(sa.bindparam("few_hosts", ids, type_=ARRAY(sa.String)))
        .table_valued("host_id")
        .render_derived()
    )
    each = q.where(Finding.host_id == hosts.c.host_id).order_by(Finding.id.desc()).limit(limit).lateral()
    newest = sa.select(each).select_from(hosts).join(each, sa.true()).order_by(each.c.id.desc()).limit(limit)
    return s.execute(newest).all()


class _Ocsf(msgspec.Struct):
    """The few attributes of an OCSF finding the console shows; anything else is ignored."""

    time: int | None = None
    severity_id: int = 0
    finding_info: dict[str, Any] = msgspec.field(default_factory=dict)
    action: str = ""
    disposition: str = ""


def _finding_row(id_: int, host_id: str, host_name: str, received_at_ns: int, document: str) -> FindingRow:
    try:
        doc = msgspec.json.decode(document, type=_Ocsf)
    except msgspec.DecodeError:
        doc = _Ocsf(finding_info={"title": "(a document the console cannot read)"})
    info = doc.finding_info
    analytic, product = info.get("analytic"), info.get("product")
    return FindingRow(
        id=id_,
        host_id=host_id,
        host_name=host_name,
        received_at_ns=received_at_ns,
        time_ms=doc.time,
        severity_id=doc.severity_id,
        severity=SEVERITIES.get(doc.severity_id, str(doc.severity_id)),
        title=_str(info.get("title")),
        rule=_str(analytic.get("name")) if isinstance(analytic, dict) else "",
        product=_str(product.get("name")) if isinstance(product, dict) else "",
        action=doc.disposition or doc.action,
    )


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
