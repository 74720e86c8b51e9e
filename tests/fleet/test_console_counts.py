"""The console's host counts (overview, the host list's totals per status) and its findings' host filter,
read by the cheap plans of fleet/_console_data.py, against a plain reading of the same rows: every host
joined to its latest heartbeat, and every finding tested on its host's id and name. Migration 0007 (the
latest heartbeat's document read from `heartbeats`; trigram indexes for the name searches). On SQLite and
PostgreSQL."""

from __future__ import annotations

import collections
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from ringfence.fleet import _console_data as data
from ringfence.fleet import _store
from ringfence.fleet._db import (
    Finding,
    HeartbeatRecord,
    Host,
    HostStatus,
    make_engine,
    migrate,
    open_database,
)
from ringfence.fleet._errors import ServerError
from ringfence.fleet._operators import add_operator
from tests.fleet.console_seed import heartbeat_document, name_for, seed
from tests.fleet.helpers import PASSWORD, Server, make_server
from tests.fleet.postgres import new_database
from tests.fleet.test_console import _login

SECOND = 10**9


def _statuses(server: Server, now_ns: int) -> dict[str, str]:
    """host id -> status, from each host's row and its latest heartbeat (the reference)."""
    with server.sessions() as s:
        rows = s.execute(
            sa.select(Host.id, Host.revoked_at_ns, HostStatus.received_at_ns, HostStatus.healthy).outerjoin(
                HostStatus, HostStatus.host_id == Host.id
            )
        ).all()
    return {r.id: data.status_of(r.revoked_at_ns, r.received_at_ns, r.healthy, now_ns) for r in rows}


def _check_counts(server: Server, now_ns: int) -> dict[str, int]:
    """The overview's counts and each status filter's total, which must equal the reference's."""
    want = dict.fromkeys(data.STATUSES, 0) | collections.Counter(_statuses(server, now_ns).values())
    assert data.overview(server.sessions, now_ns).counts == want
    for status in data.STATUSES:
        page = data.host_page(server.sessions, now_ns, data.HostFilter(status=status))
        assert page.total == want[status], status
        assert all(h.status == status for h in page.hosts), status
    return want


def test_counts_follow_the_offline_boundary_as_time_passes(viewer: Server) -> None:
    seed(viewer.engine, viewer.clock.now_ns, hosts=200, findings_per_host=0, history_hosts=0)
    now = viewer.clock.now_ns
    first = _check_counts(viewer, now)
    assert first == {"healthy": 172, "degraded": 10, "offline": 8, "never": 6, "revoked": 4}
    # live hosts were seeded 0-29 s ago: each turns offline 120 s after its heartbeat, not before
    for later_s in (90, 119, 120, 121, 135, 149, 150):
        counts = _check_counts(viewer, now + later_s * SECOND)
        assert counts["never"] == 6 and counts["revoked"] == 4, "time moves no host in or out of these"
    assert _check_counts(viewer, now + 150 * SECOND)["offline"] == 190, "every seen host"
    assert _check_counts(viewer, now + 91 * SECOND) != _check_counts(viewer, now + 92 * SECOND), (
        "a host seeded 29 s ago crosses the boundary between these"
    )


def test_counts_follow_a_host_from_never_seen_to_degraded_to_revoked(viewer: Server, tmp_path: Path) -> None:
    seed(viewer.engine, viewer.clock.now_ns, hosts=100, findings_per_host=0, history_hosts=0)
    base = _check_counts(viewer, viewer.clock.now_ns)
    cred = viewer.enroll(tmp_path / "a", name="web-new")
    assert _check_counts(viewer, viewer.clock.now_ns) == base | {"never": base["never"] + 1}
    host = viewer.host_client(cred)

    def beat(healthy: bool, sequence: int) -> None:
        doc = heartbeat_document("web-new", healthy, viewer.clock.now_ns, sequence).encode()
        assert host.post("/heartbeat", doc).status_code == 200

    beat(True, 1)
    assert _check_counts(viewer, viewer.clock.now_ns) == base | {"healthy": base["healthy"] + 1}
    viewer.clock.now_ns += 30 * SECOND
    beat(False, 2)
    counts = _check_counts(viewer, viewer.clock.now_ns)
    assert (counts["healthy"], counts["degraded"]) == (base["healthy"], base["degraded"] + 1)
    assert f"Hosts ({counts['degraded']})" in viewer.client.get("/hosts?status=degraded").text
    viewer.clock.now_ns += 30 * SECOND
    beat(True, 3)
    counts = _check_counts(viewer, viewer.clock.now_ns)
    assert (counts["healthy"], counts["degraded"]) == (base["healthy"] + 1, base["degraded"])
    viewer.clock.now_ns += 30 * SECOND
    beat(False, 4)
    assert _store.revoke(viewer.sessions, viewer.clock.now_ns, cred.host_id)
    counts = _check_counts(viewer, viewer.clock.now_ns)
    assert (counts["degraded"], counts["revoked"]) == (base["degraded"], base["revoked"] + 1), (
        "a revoked host's latest heartbeat, degraded, counts no more"
    )
    viewer.clock.now_ns += 200 * SECOND  # its heartbeat gets old: still revoked, not offline
    counts = _check_counts(viewer, viewer.clock.now_ns)
    assert counts["revoked"] == base["revoked"] + 1


def test_overview_shows_the_counts_of_an_empty_fleet(viewer: Server) -> None:
    assert _check_counts(viewer, viewer.clock.now_ns) == dict.fromkeys(data.STATUSES, 0)
    page = viewer.client.get("/").text
    counts = dict(re.findall(r'id="count-(\w+)" href="[^"]+"><span class="n \w+">(\d+)<', page))
    assert counts == dict.fromkeys(data.STATUSES, "0")
    assert "Hosts (0)" in viewer.client.get("/hosts?status=healthy").text


def _reference_findings(server: Server, f: data.FindingFilter) -> list[int]:
    """The ids the host filter selects when every finding is tested on its host (as the console did)."""
    with server.sessions() as s:
        pattern = f"%{f.host}%".lower()
        rows = s.execute(sa.select(Finding.id, Finding.host_id, Host.name).join(Host)).all()
    ids = [r.id for r in rows if r.host_id == f.host or (pattern.strip("%") in r.name.lower())]
    return sorted(ids, reverse=True)


def _all_pages(server: Server, f: data.FindingFilter) -> list[int]:
    seen: list[int] = []
    while True:
        page = data.finding_page(server.sessions, f)
        seen += [r.id for r in page.findings]
        assert all(r.host_name for r in page.findings), "each row names its host"
        if not page.next_before:
            return seen
        f = data.FindingFilter(host=f.host, before=page.next_before)


@pytest.mark.parametrize("few_hosts", [1000, 3], ids=["by-host-index", "scan-past-3-hosts"])
def test_findings_host_filter_selects_what_testing_each_finding_selects(
    viewer: Server, monkeypatch: pytest.MonkeyPatch, few_hosts: int
) -> None:
    """Both plans (the hosts' findings by index when they are few, the findings scanned when many share
    the pattern) return the same findings, newest first, over every page."""
    monkeypatch.setattr(data, "FEW_HOSTS", few_hosts)
    fleet = seed(viewer.engine, viewer.clock.now_ns, hosts=240, findings_per_host=3, history_hosts=0)
    exact_id, one = fleet.host_ids[7], name_for(230)
    assert fleet.statuses[fleet.host_ids[7]] != "never" != fleet.statuses[fleet.host_ids[230]]
    for host in ("db-eu-0000", "DB-EU-001", "db-eu", "eu-00", "-", one, exact_id, "nobody"):
        f = data.FindingFilter(host=host)
        want = _reference_findings(viewer, f)
        assert _all_pages(viewer, f) == want, host
        assert want or host == "nobody", "the patterns match findings"
    assert len(_reference_findings(viewer, data.FindingFilter(host="eu-00"))) > 2 * data.PAGE_SIZE


def test_findings_host_filter_keeps_the_other_filters(
    viewer: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(viewer.engine, viewer.clock.now_ns, hosts=120, findings_per_host=4, history_hosts=0)
    by_scan: dict[int, list[int]] = {}
    for few in (1000, 2):
        monkeypatch.setattr(data, "FEW_HOSTS", few)
        f = data.FindingFilter(host="db-", severity=5, q="shell")
        rows = data.finding_page(viewer.sessions, f).findings
        assert rows and all(r.severity_id >= 5 and "shell" in r.title.lower() for r in rows)
        assert all(r.host_name.startswith("db-") for r in rows)
        by_scan[few] = [r.id for r in rows]
    assert by_scan[1000] == by_scan[2]
    page = viewer.client.get("/findings?host=db-&severity=5&q=shell").text
    assert page.count('<td class="sev-5">') == len(by_scan[2]), "the page shows the same findings"


@pytest.fixture
def viewer(server: Server) -> Server:
    assert _login(server.client, "victor") == 303
    return server


# -- migration 0007: the document out of host_status; trigram name searches on PostgreSQL ------------------


def _database_at_0006(tmp_path: Path, db_url: str) -> str:
    """A database migrated to 0006 (the document still in `host_status`); its URL."""
    url = db_url or f"sqlite:///{tmp_path}/fleet.db"
    engine = make_engine(url)
    with engine.begin() as conn:
        migrate(conn, "0006")
    engine.dispose()
    return url


def _write_at_0006(url: str, now_ns: int) -> dict[str, str]:
    """Hosts as a server before 0007 left them: `a` with its latest heartbeat also its newest history row,
    `b` with no history (`--heartbeat-history 0`), `c` whose history is behind its status, `d` never seen,
    `e` whose latest document cannot be read. Host name -> id."""
    ids = {name: f"00000000-0000-0000-0000-00000000000{i}" for i, name in enumerate("abcde")}
    engine = make_engine(url)
    hosts = [{"id": i, "name": n, "public_key": "A" * 44, "enrolled_at_ns": now_ns} for n, i in ids.items()]
    history = [("a", 1), ("a", 2), ("c", 1)]
    status = {"a": 2, "b": 7, "c": 2, "e": 3}
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO hosts (id, name, public_key, enrolled_at_ns) "
                    "VALUES (:id, :name, :public_key, :enrolled_at_ns)"), hosts,
        )  # fmt: skip
        for name, seq in history:
            conn.execute(
                sa.text("INSERT INTO heartbeats (host_id, received_at_ns, sequence, sent_at_ns, healthy, "
                        "document) VALUES (:h, :at, :seq, :at, true, :doc)"),
                {"h": ids[name], "at": now_ns + seq * SECOND, "seq": seq,
                 "doc": heartbeat_document(name, True, now_ns + seq * SECOND, seq)},
            )  # fmt: skip
        for name, seq in status.items():
            doc = '{"schema_version": 99}' if name == "e" else heartbeat_document(name, False, now_ns, seq)
            conn.execute(
                sa.text("INSERT INTO host_status (host_id, received_at_ns, sequence, healthy, agent_version, "
                        "document) VALUES (:h, :at, :seq, false, '0.9.2', :doc)"),
                {"h": ids[name], "at": now_ns + seq * SECOND, "seq": seq, "doc": doc},
            )  # fmt: skip
    engine.dispose()
    return ids


def test_migration_0007_keeps_each_hosts_latest_heartbeat_for_host_detail(
    tmp_path: Path, db_url: str
) -> None:
    url = _database_at_0006(tmp_path, db_url)
    now = 1_800_000_000 * SECOND
    ids = _write_at_0006(url, now)
    engine = open_database(url)  # upgrades to the newest revision
    try:
        sessions = sessionmaker(engine)
        columns = {c["name"] for c in sa.inspect(engine).get_columns("host_status")}
        assert "document" not in columns and "healthy" in columns
        for name, seq in (("a", 2), ("b", 7), ("c", 2)):
            detail = data.host_detail(sessions, now, ids[name])
            assert detail is not None and detail.heartbeat is not None, name
            assert detail.heartbeat.sequence == seq and detail.heartbeat.health.host == name, name
        e = data.host_detail(sessions, now, ids["e"])
        assert e is not None and e.heartbeat is None and "schema version 99" in e.unreadable
        d = data.host_detail(sessions, now, ids["d"])
        assert d is not None and d.heartbeat is None and d.unreadable == "" and d.history == []
        with sessions() as s:
            rows = s.execute(sa.select(HeartbeatRecord.host_id, HeartbeatRecord.sent_at_ns)).all()
        per_host = collections.Counter(r.host_id for r in rows)
        assert per_host == {ids["a"]: 2, ids["b"]: 1, ids["c"]: 2, ids["e"]: 1}, "copied only where missing"
        sent = {r.host_id: r.sent_at_ns for r in rows}
        assert sent[ids["b"]] == now and sent[ids["e"]] == now + 3 * SECOND, "the document's, else received"
    finally:
        engine.dispose()


def test_migration_0007_fails_whole_and_names_pg_trgm_when_it_cannot_create_it(postgres_server: str) -> None:
    """A role that may create tables but not extensions: the upgrade fails, says what to do, and leaves
    nothing behind (every revision runs in one transaction)."""
    role, db = f"rf_weak_{uuid.uuid4().hex[:8]}", f"rf_weak_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    owner = sa.create_engine(postgres_server.replace("postgresql://", "postgresql+psycopg://") + f"/{db}")
    with owner.begin() as conn:
        conn.execute(sa.text(f"ALTER SCHEMA public OWNER TO {role}"))
    weak_url = postgres_server.replace("postgres@", f"{role}@") + f"/{db}"
    with pytest.raises(ServerError, match=r"pg_trgm.*CREATE EXTENSION pg_trgm.*nothing was changed"):
        open_database(weak_url)
    assert sa.inspect(owner).get_table_names() == [], "no revision half-applied"
    owner.dispose()
    admin.dispose()


def _names(server: Server, now_ns: int, *names: str) -> dict[str, str]:
    """Hosts with these names (no heartbeat), written straight in; name -> id."""
    ids = {n: str(uuid.uuid4()) for n in names}
    with server.sessions.begin() as s:
        s.execute(
            sa.insert(Host),
            [{"id": i, "name": n, "public_key": "A" * 44, "enrolled_at_ns": now_ns} for n, i in ids.items()],
        )
    return ids


def test_name_search_ignores_case_and_takes_percent_and_underscore_literally(viewer: Server) -> None:
    now = viewer.clock.now_ns
    ids = _names(viewer, now, "Web_EU-01", "webXeu-02", "DB%Prod", "dbxprod", "Ärger-01", "plain")

    def found(q: str) -> set[str]:
        page = data.host_page(viewer.sessions, now, data.HostFilter(q=q))
        assert page.total == len(page.hosts), q
        return {h.name for h in page.hosts}

    assert found("web_eu") == {"Web_EU-01"}, "_ is an underscore, not any character"
    assert found("WEB") == {"Web_EU-01", "webXeu-02"}
    assert found("%") == {"DB%Prod"} and found("b%p") == {"DB%Prod"}, "% is a percent sign"
    assert found("DBXPROD") == {"dbxprod"}
    assert found("U-0") == {"Web_EU-01", "webXeu-02"}, "letters no id holds (ids are hex)"
    assert found("ä") == ({"Ärger-01"} if viewer.engine.dialect.name == "postgresql" else set()), (
        "PostgreSQL folds every letter; SQLite's LIKE ASCII letters only"
    )
    assert found(ids["plain"][-12:].upper()) == {"plain"}, "a part of the id"
    assert found("\\") == set() and found("nobody") == set()
    rows = data.finding_page(viewer.sessions, data.FindingFilter(host="web_eu")).findings
    assert rows == []  # no findings, but the query ran with the same expression


def _plan(s: Any, query: sa.Select[Any]) -> str:
    s.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a small table: the planner would rather scan
    compiled = query.compile(dialect=s.get_bind().dialect)
    return "\n".join(r[0] for r in s.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))


@pytest.fixture
def pg_viewer(tmp_path: Path, postgres_server: str) -> Iterator[Server]:
    """The viewer on PostgreSQL only: the trigram indexes are PostgreSQL's (SQLite scans its names)."""
    s = make_server(tmp_path / "server", new_database(postgres_server))
    add_operator(s.sessions, s.clock.now_ns, "victor", PASSWORD, "viewer", by="cli")
    assert _login(s.client, "victor") == 303
    yield s
    s.engine.dispose()


def test_postgresql_name_searches_use_the_trigram_indexes(pg_viewer: Server) -> None:
    """The query's expressions are the indexes' exactly (`lower(name)`, `id`): otherwise each search
    scans every name again, which no timing-free test would see but this plan."""
    viewer = pg_viewer
    seed(viewer.engine, viewer.clock.now_ns, hosts=3000, findings_per_host=0, history_hosts=0)
    _names(viewer, viewer.clock.now_ns, "Zqxjkv-Wyvern")  # rare trigrams: the index is worth reading
    with viewer.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # as autovacuum does after many inserts: a GIN index's new entries wait in its pending list, and
        # the planner prices the index by its pages until a VACUUM has moved them into the tree
        conn.exec_driver_sql("VACUUM ANALYZE hosts")
    with viewer.sessions() as s:
        plan = _plan(s, data._host_ids(s, viewer.clock.now_ns, data.HostFilter(q="QXJKV-WY")))
        assert "ix_hosts_name_lower_trgm" in plan and "ix_hosts_id_trgm" in plan, plan
    with viewer.sessions() as s:  # the findings' host filter finds its hosts with the same expression
        named = sa.select(Host.id).where(sa.or_(Host.id == "zqxjkv", data._contains(s, Host.name, "zqxJKV")))
        assert "ix_hosts_name_lower_trgm" in _plan(s, named)
    page = data.host_page(viewer.sessions, viewer.clock.now_ns, data.HostFilter(q="QXJKV-WY"))
    assert [h.name for h in page.hosts] == ["Zqxjkv-Wyvern"]
