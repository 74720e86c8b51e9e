"""The console's pages: overview, the filtered and paged host list, host detail, findings; htmx parts;
hostile input (bad filters, huge cursors, markup in names) on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from ringfence.fleet._db import Finding, Host, HostStatus
from tests.fleet.console_seed import heartbeat_document, name_for, seed, set_latest_document
from tests.fleet.helpers import Server
from tests.fleet.test_console import _login

HX = {"HX-Request": "true"}
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def viewer(server: Server) -> Server:
    assert _login(server.client, "victor") == 303
    return server


def _host_ids(page: str) -> list[str]:
    return re.findall(r'<td><a href="/hosts/([0-9a-f-]{36})">', page)


def _next(page: str) -> str:
    found = re.search(r'id="next" href="([^"]+)"', page)
    return found.group(1).replace("&amp;", "&") if found else ""


def test_every_page_needs_a_login(server: Server) -> None:
    for url in ("/", "/hosts", "/hosts/x", "/findings"):
        r = server.client.get(url, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/login"), url
        r = server.client.get(url, headers=HX, follow_redirects=False)
        assert (r.status_code, r.headers["HX-Redirect"]) == (401, "/login"), "htmx loads the login page"


def test_overview_counts_hosts_by_status_and_the_days_findings(viewer: Server) -> None:
    seed(viewer.engine, viewer.clock.now_ns, hosts=100, findings_per_host=2, history_hosts=0)
    page = viewer.client.get("/").text
    counts = dict(re.findall(r'id="count-(\w+)" href="[^"]+"><span class="n \w+">(\d+)<', page))
    assert counts == {"healthy": "86", "degraded": "5", "offline": "4", "never": "3", "revoked": "2"}
    assert 'href="/hosts?status=offline"' in page
    day = re.search(r'id="findings-24h" href="/findings\?since=([^"]+)"><span class="n">(\d+)<', page)
    assert day is not None and day.group(2) == str(2 * 97), "two findings per host that reported"
    viewer.clock.now_ns += 25 * 3600 * 10**9
    assert _login(viewer.client, "victor") == 303, "the session of 12 h ended"
    page = viewer.client.get("/").text
    counts = dict(re.findall(r'id="count-(\w+)" href="[^"]+"><span class="n \w+">(\d+)<', page))
    assert counts == {"healthy": "0", "degraded": "0", "offline": "95", "never": "3", "revoked": "2"}
    assert re.search(r'id="findings-24h"[^>]*><span class="n">0<', page)


def test_host_offline_after_two_minutes_without_a_heartbeat(viewer: Server, tmp_path: Path) -> None:
    cred = viewer.enroll(tmp_path / "a", name="web-1")
    body = heartbeat_document("web-1", True, viewer.clock.now_ns, 1).encode()
    assert viewer.host_client(cred).post("/heartbeat", body).status_code == 200
    viewer.clock.now_ns += 120 * 10**9
    assert '<td class="healthy">healthy</td>' in viewer.client.get("/hosts").text
    viewer.clock.now_ns += 1
    assert '<td class="offline">offline</td>' in viewer.client.get("/hosts").text
    assert _host_ids(viewer.client.get("/hosts?status=offline").text) == [cred.host_id]
    assert _host_ids(viewer.client.get("/hosts?status=healthy").text) == []


def test_host_list_filters_by_status_name_id_and_version(viewer: Server) -> None:
    fleet = seed(viewer.engine, viewer.clock.now_ns, hosts=100, findings_per_host=0, history_hosts=0)
    by_status = {
        status: sorted(h for h, st in fleet.statuses.items() if st == status)
        for status in ("healthy", "degraded", "offline", "never", "revoked")
    }
    for status in ("degraded", "offline", "never", "revoked"):
        page = viewer.client.get(f"/hosts?status={status}").text
        assert sorted(_host_ids(page)) == by_status[status], status
        assert f'<option value="{status}" selected>' in page, "the form keeps the filter"
    assert len(_host_ids(viewer.client.get("/hosts?status=healthy").text)) == 50, "a page of them"
    assert name_for(13) == "db-ap-00013"
    assert _host_ids(viewer.client.get("/hosts?q=DB-AP-00013").text) == [fleet.host_ids[13]], "any case"
    assert _host_ids(viewer.client.get(f"/hosts?q={fleet.host_ids[7][-12:]}").text) == [fleet.host_ids[7]]
    old = [h for i, h in enumerate(fleet.host_ids) if i % 10 == 0 and fleet.statuses[h] != "never"]
    page = viewer.client.get("/hosts?version=0.9.1").text
    assert sorted(_host_ids(page)) == sorted(old) and f"Hosts ({len(old)})" in page, "every tenth runs 0.9.1"
    both = viewer.client.get("/hosts?version=0.9.1&status=degraded&q=eu").text
    assert "Hosts (0)" in both and "No host matches these filters" in both


def test_filters_swap_only_the_table_for_htmx(viewer: Server) -> None:
    seed(viewer.engine, viewer.clock.now_ns, hosts=20, findings_per_host=1, history_hosts=0)
    whole = viewer.client.get("/hosts?status=degraded")
    part = viewer.client.get("/hosts?status=degraded", headers=HX)
    assert whole.text.startswith("<!doctype html>") and '<form class="filters"' in whole.text
    assert part.text.startswith('<div id="results">') and "<html" not in part.text
    assert _host_ids(part.text) == _host_ids(whole.text) and part.headers["Vary"] == "HX-Request"
    part = viewer.client.get("/findings?severity=5", headers=HX)
    assert part.text.startswith('<div id="results">') and "Critical" in part.text
    restore = viewer.client.get("/hosts", headers={**HX, "HX-History-Restore-Request": "true"})
    assert restore.text.startswith("<!doctype html>"), "a history restore gets the whole page"
    bad = viewer.client.get("/hosts?status=nope", headers=HX)
    assert (
        bad.status_code == 422 and bad.text.startswith('<div id="results">') and "status: one of" in bad.text
    )


def test_host_list_pages_by_cursor_without_gaps_or_repeats(viewer: Server) -> None:
    fleet = seed(viewer.engine, viewer.clock.now_ns, hosts=120, findings_per_host=0, history_hosts=0)
    seen, url, pages = [], "/hosts", 0
    while url:
        page = viewer.client.get(url).text
        assert "Hosts (120)" in page, "the count is of every match, not of the page"
        seen += _host_ids(page)
        url, pages = _next(page), pages + 1
    assert pages == 3 and len(seen) == 120 and set(seen) == set(fleet.host_ids)
    names = [name_for(fleet.host_ids.index(h)) for h in seen]
    assert names == sorted(names)
    page = viewer.client.get("/hosts?status=healthy").text
    assert "status=healthy" in _next(page), "the next page keeps the filter"


def test_bad_filter_values_are_refused_with_the_parameter_named(viewer: Server) -> None:
    refused = {
        "/hosts?status=sick": "status: one of",
        "/hosts?q=" + "x" * 256: "q: at most 255",
        "/hosts?version=" + "1" * 65: "version: at most 64",
        "/hosts?q=a%00b": "q: printable",
        "/hosts?after=" + "f" * 37: "after: a host id",
        "/hosts?after=00000000-0000-0000-0000-000000000000": "after: no host",
        "/findings?severity=7": "severity:",
        "/findings?severity=-1": "severity:",
        "/findings?severity=high": "severity:",
        "/findings?before=0": "before: a finding id",
        "/findings?before=-5": "before: a finding id",
        "/findings?before=" + "9" * 40: "before: a finding id",
        "/findings?before=9223372036854775808": "before: a finding id",
        "/findings?since=yesterday": "since: a UTC time",
        "/findings?until=2026-13-45T99:99": "until: a UTC time",
        "/findings?host=" + "h" * 300: "host: at most 255",
    }
    for url, message in refused.items():
        r = viewer.client.get(url)
        assert r.status_code == 422 and message in r.text, url
    ok = viewer.client.get("/findings?before=9223372036854775807&page=99999999999999999999999")
    assert ok.status_code == 200 and "No finding." in ok.text, "the largest id; unknown params ignored"
    assert viewer.client.get("/hosts?status=&q=&version=").status_code == 200, "empty means any"


def test_like_wildcards_in_filters_are_literal(viewer: Server, tmp_path: Path) -> None:
    viewer.enroll(tmp_path / "a", name="web_1")
    viewer.enroll(tmp_path / "b", name="webX1")
    viewer.enroll(tmp_path / "c", name="100%-db")
    assert "Hosts (1)" in viewer.client.get("/hosts?q=web_").text
    assert "Hosts (1)" in viewer.client.get("/hosts?q=%25").text
    assert "Hosts (0)" in viewer.client.get("/hosts?q=%5C").text


def test_markup_in_names_problems_and_findings_is_escaped(viewer: Server, tmp_path: Path) -> None:
    cred = viewer.enroll(tmp_path / "a", name=EVIL)
    doc = msgspec.json.decode(heartbeat_document("x", False, viewer.clock.now_ns, 1))
    doc["health"]["problems"] = [EVIL]
    doc["health"]["warnings"] = [EVIL]
    doc["health"]["extensions"][0]["last_error"] = EVIL
    doc["health"]["drops"][0]["stage"] = EVIL
    assert viewer.host_client(cred).post("/heartbeat", msgspec.json.encode(doc)).status_code == 200
    finding = {
        "class_uid": 2004,
        "severity_id": 4,
        "finding_info": {"title": EVIL, "analytic": {"name": EVIL}},
    }
    batch = msgspec.json.encode({"batch_id": "b1", "findings": [finding]})
    assert viewer.host_client(cred).post("/findings", batch).status_code == 200
    for url in ("/", "/hosts", f"/hosts/{cred.host_id}", "/findings", f"/findings?q={EVIL}"):
        page = viewer.client.get(url).text
        assert "<script>alert" not in page, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, url


def test_host_detail_shows_the_latest_heartbeat_its_history_and_findings(viewer: Server) -> None:
    fleet = seed(
        viewer.engine, viewer.clock.now_ns, hosts=10, findings_per_host=2, history_hosts=10, history=30
    )
    degraded = next(h for h, st in fleet.statuses.items() if st == "healthy")
    with viewer.sessions.begin() as s:  # make one host degraded in its latest heartbeat
        st = s.get(HostStatus, degraded)
        st.healthy = False
        doc = heartbeat_document("web-eu-00000", False, st.received_at_ns, 30)
        set_latest_document(s.connection(), degraded, doc)
    page = viewer.client.get(f"/hosts/{degraded}").text
    assert '<span class="degraded">degraded</span>' in page
    assert "stage output events dropped 412 events" in page, "the problem"
    extensions = re.search(r'<table id="extensions">(.*?)</table>', page, re.S).group(1)
    assert extensions.count("<tr>") == 4 and "ringfence.sigma" in extensions and "2026.11.28" in extensions
    sigma = re.search(r"<tr><td><code>ringfence.sigma</code>.*?</tr>", extensions, re.S).group(0)
    assert re.findall(r'class="num">(\d+)<', sigma)[:4] == ["2", "1", "3", "0"], "restarts crashes misses"
    assert re.search(r'<table id="drops">.*output events.*412', page, re.S)
    assert "RSS</dt><dd>61.1 MiB" in page and "3 of 2400 requests" in page
    history = re.search(r'<table id="history">(.*?)</table>', page, re.S).group(1)
    assert history.count("<tr>") == 31 and "Health history (30 heartbeats" in page
    assert re.search(r'class="num">0\.9<', history), "CPU % between beats: 0.28 s of CPU per 30 s"
    findings = re.search(r"<h2>Recent findings</h2>(.*?)</table>", page, re.S).group(1)
    assert findings.count("<tr>") == 3
    never = next(h for h, st in fleet.statuses.items() if st == "never")
    page = viewer.client.get(f"/hosts/{never}").text
    assert "No heartbeat yet" in page and "None stored" in page
    assert viewer.client.get("/hosts/" + "0" * 36).status_code == 404
    assert viewer.client.get("/hosts/" + "x" * 5000).status_code == 404


def test_host_detail_survives_an_unreadable_heartbeat(viewer: Server) -> None:
    fleet = seed(viewer.engine, viewer.clock.now_ns, hosts=1, findings_per_host=0, history_hosts=0)
    with viewer.sessions.begin() as s:
        set_latest_document(s.connection(), fleet.host_ids[0], '{"schema_version": 99}')
    page = viewer.client.get(f"/hosts/{fleet.host_ids[0]}")
    assert (
        page.status_code == 200
        and "The latest heartbeat cannot be read: heartbeat: schema version 99" in page.text
    )


def test_findings_filter_by_host_severity_text_and_time(viewer: Server) -> None:
    now = viewer.clock.now_ns
    fleet = seed(viewer.engine, now, hosts=30, findings_per_host=3, history_hosts=0)
    with viewer.sessions() as s:
        total = s.scalar(sa.select(sa.func.count()).select_from(Finding))

    def shown(query: str) -> int:
        return int(re.search(r'id="findings-shown">(\d+) shown', viewer.client.get(query).text).group(1))

    reported = sum(st != "never" for st in fleet.statuses.values())
    assert shown("/findings") == 50 and total == 3 * reported
    assert shown(f"/findings?host={fleet.host_ids[1]}") == 3
    cache_eu = [
        i for i in range(30) if "cache-eu" in name_for(i) and fleet.statuses[fleet.host_ids[i]] != "never"
    ]
    assert shown("/findings?host=cache-eu") == 3 * len(cache_eu) > 0, "a substring of the host's name"
    crit = viewer.client.get("/findings?severity=5").text
    assert "Critical" in crit and "High" not in crit.split("<tbody>")[1]
    assert shown("/findings?q=CRON") == shown("/findings?q=sigma.cron_persistence") > 0, "title or rule"
    since = re.search(r'href="/findings\?since=([^"]+)"', viewer.client.get("/").text).group(1)
    assert shown(f"/findings?since={since}") == 50
    assert shown("/findings?until=2020-01-01T00:00") == 0
    assert shown("/findings?since=2030-01-01") == 0
    seen, url = [], "/findings?severity=4"
    while url:
        page = viewer.client.get(url).text
        seen += re.findall(r"<tr>\n<td>", page)
        url = _next(page)
    with viewer.sessions() as s:
        docs = s.scalars(sa.select(Finding.document)).all()
    assert len(seen) == sum(msgspec.json.decode(d)["severity_id"] >= 4 for d in docs)


def test_static_files_and_a_csp_with_nothing_inline(viewer: Server) -> None:
    js = viewer.client.get("/static/htmx.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "htmx" in js.text and js.headers["X-Content-Type-Options"] == "nosniff"
    assert "Zero-Clause BSD" in viewer.client.get("/static/htmx.LICENSE").text
    for name in ("../_console.py", "nope.js", "%2e%2e%2f_db.py"):
        assert viewer.client.get(f"/static/{name}").status_code == 404
    seed(viewer.engine, viewer.clock.now_ns, hosts=5, findings_per_host=1, history_hosts=1, history=3)
    host = _host_ids(viewer.client.get("/hosts").text)[0]
    for url in ("/", "/hosts", f"/hosts/{host}", "/findings", "/login"):
        r = viewer.client.get(url)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), f"{url}: an inline script"
        assert "<style" not in r.text and " style=" not in r.text and " hx-on" not in r.text, url
    assert '"includeIndicatorStyles": false' in viewer.client.get("/").text


def test_nav_offers_the_audit_log_to_admins_only(server: Server) -> None:
    assert _login(server.client, "victor") == 303
    nav = server.client.get("/").text.split("</header>")[0]
    assert [*re.findall(r'<a href="([^"]+)"', nav)] == ["/", "/hosts", "/findings", "/rollouts"]
    assert 'href="/" aria-current="page"' in nav
    assert _login(server.client, "alice") == 303
    nav = server.client.get("/findings").text.split("</header>")[0]
    assert re.findall(r'<a href="([^"]+)"', nav) == ["/", "/hosts", "/findings", "/rollouts", "/audit"]


def test_revoked_host_shows_as_revoked_everywhere(server: Server, tmp_path: Path) -> None:
    cred = server.enroll(tmp_path / "a")
    assert _login(server.client, "alice") == 303
    page = server.client.get(f"/hosts/{cred.host_id}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert "Revoke this host" in page
    server.client.post(f"/hosts/{cred.host_id}/revoke", data={"csrf": csrf})
    page = server.client.get(f"/hosts/{cred.host_id}").text
    assert '<span class="revoked">revoked</span>' in page and "Revoke this host" not in page
    assert _host_ids(server.client.get("/hosts?status=revoked").text) == [cred.host_id]
    assert server.scalar(sa.select(Host.revoked_at_ns)) == server.clock.now_ns
