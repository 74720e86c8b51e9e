"""The console's host counts (overview, the host list's totals per status) and its findings' host filter,
read by the cheap plans of fleet/_console_data.py, against a plain reading of the same rows: every host
joined to its latest heartbeat, and every finding tested on its host's id and name. On SQLite and
PostgreSQL."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from ringfence.fleet import _console_data as data
from ringfence.fleet import _store
from ringfence.fleet._db import Finding, Host, HostStatus
from tests.fleet.console_seed import heartbeat_document, name_for, seed
from tests.fleet.helpers import Server
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
