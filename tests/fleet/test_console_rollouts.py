"""The console's rollout pages on SQLite and PostgreSQL: the list, one rollout's ring chart and decisions
with their gate evidence (refreshed by htmx), and an admin's pause and rollback through the form (CSRF);
a viewer can look but not act; hostile names are escaped; an unknown rollout or action is refused."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from ringfence.fleet import _store
from ringfence.fleet._auth import new_key, public_text
from ringfence.fleet._evaluator import create_rollout, evaluate, load_rollout, place
from ringfence.fleet._rollout import Ring, RolloutPlan
from tests.fleet.helpers import Server
from tests.fleet.test_console import _csrf, _login

PLAN = RolloutPlan(rings=(Ring(fraction=0.25, bake_s=3600.0), Ring(fraction=1.0, bake_s=0.0)))


@pytest.fixture
def server(server: Server) -> Server:
    """The operators' server (conftest.py) with eight hosts, the first placed in ring 0."""
    key = public_text(new_key())
    hosts = [
        _store.enroll(server.sessions, server.clock.now_ns, server.token(), f"web-{i}", key) for i in range(8)
    ]
    place(server.sessions, server.clock.now_ns, f"host:{hosts[0]}", ring=0, by="cli")
    return server


def _rollout(server: Server) -> str:
    now = server.clock.now_ns
    rid = create_rollout(
        server.sessions, now, "ringfence.sigma", "2.0", last_known_good="1.0", plan=PLAN, by="cli"
    )
    evaluate(server.sessions, server.clock.now_ns, "node-a")
    return rid


def test_the_rollout_pages_show_the_rings_and_the_decisions(server: Server) -> None:
    rid = _rollout(server)
    assert _login(server.client, "victor") == 303
    listing = server.client.get("/rollouts")
    assert (
        listing.status_code == 200 and f'href="/rollouts/{rid}"' in listing.text and "baking" in listing.text
    )
    page = server.client.get(f"/rollouts/{rid}")
    assert page.status_code == 200 and "<svg" in page.text and "style=" not in page.text
    assert 'hx-trigger="every 5s"' in page.text
    rows = re.findall(
        r"<tr><td>(\d)</td>.*?<td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>", page.text, re.S
    )
    (r0, hosts0, on0), (r1, hosts1, on1) = rows
    # ring 0: the 2 hosts first by rank (a quarter of 8), and the placed canary if it is not one of them
    assert (r0, r1) == ("0", "1") and hosts0 == on0 and hosts0 in ("2", "3") and on1 == "0"
    assert int(hosts0) + int(hosts1) == 8
    assert "rollout started; ring 0 assigned" in page.text
    live = server.client.get(f"/rollouts/{rid}", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "<html" not in live.text and 'id="decisions"' in live.text
    assert 'formaction="/rollouts/' not in page.text, "a viewer gets no buttons"
    r = server.client.post(f"/rollouts/{rid}/rollback", data={"csrf": "x"}, follow_redirects=False)
    assert r.status_code == 403
    assert server.client.get(f"/rollouts/{'0' * 36}").status_code == 404


def test_an_admin_pauses_and_rolls_back_through_the_form(server: Server) -> None:
    rid = _rollout(server)
    client: TestClient = server.client
    assert _login(client, "alice") == 303
    page = client.get(f"/rollouts/{rid}")
    csrf = _csrf(page.text)
    assert (
        client.post(f"/rollouts/{rid}/pause", data={"reason": "freeze"}, follow_redirects=False).status_code
        == 403
    )
    r = client.post(
        f"/rollouts/{rid}/pause", data={"csrf": csrf, "reason": "<b>freeze</b>"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"/rollouts/{rid}"
    shown = client.get(f"/rollouts/{rid}").text
    assert "&lt;b&gt;freeze&lt;/b&gt;" in shown and "<b>freeze</b>" not in shown
    assert client.post(f"/rollouts/{rid}/pause", data={"csrf": csrf}).status_code == 409, "already paused"
    assert client.post(f"/rollouts/{rid}/delete", data={"csrf": csrf}).status_code == 422
    assert (
        client.post(f"/rollouts/{rid}/rollback", data={"csrf": csrf}, follow_redirects=False).status_code
        == 303
    )
    with server.sessions() as s:
        _, rollout = load_rollout(s, rid)
    assert [d.action for d in rollout.log] == ["start", "pause", "rollback"] and rollout.log[-1].by == "alice"
    assert "rolled-back" in client.get("/rollouts").text
