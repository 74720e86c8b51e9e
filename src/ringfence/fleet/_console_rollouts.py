"""The console's rollout pages: the list, and one rollout with its ring chart, its log with the gate's
evidence, and (admins) pause, resume, abort, roll back.

    GET  /rollouts                         newest first (viewer, admin)
    GET  /rollouts/{id}                    the whole page; asked by htmx, only its live part (every 5 s)
    POST /rollouts/{id}/{action}           admin, CSRF; pause, resume, abort, rollback (with a reason)

The ring chart is SVG drawn on the server (no inline style: the Content-Security-Policy refuses it): per
ring its hosts, how many are assigned the release, and which ring is baking, halted or rolled back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ringfence.fleet import _evaluator as ev
from ringfence.fleet._db import Assignment, Release
from ringfence.fleet._rollout import Rollout
from ringfence.fleet._rollout_cli import metric_line

Page = Callable[..., Response]


@dataclass(frozen=True)
class RingBar:
    ring: int
    fraction: float
    bake_s: float
    hosts: int  # hosts placed in this ring now
    on_release: int  # of them assigned the release
    state: str  # "done", "baking", "waiting", "halted", "rolled-back", "held", "paused", "aborted"
    y: int  # the SVG row
    width: float  # 0..100: share of the fleet in this ring
    filled: float  # 0..100: share of the fleet in this ring assigned the release


@dataclass(frozen=True)
class RolloutView:
    engine: str
    rollout: Rollout
    bars: list[RingBar]
    fleet: int
    on_release: int
    height: int
    decisions: list[dict[str, Any]]


def rollout_view(sessions: sessionmaker[Session], rollout_id: str) -> RolloutView:
    """Raises OperatorRefused(404)."""
    with sessions() as s:
        record, rollout = ev.load_rollout(s, rollout_id)
        placed = ev.placed_hosts(s, rollout)
        on = set(
            s.scalars(
                sa.select(Assignment.host_id)
                .join(Release, Release.id == Assignment.release_id)
                .where(Assignment.engine == record.engine, Release.version == rollout.release)
            )
        )
    fleet = max(len(placed), 1)
    per_ring = [0] * len(rollout.plan.rings)
    per_ring_on = [0] * len(rollout.plan.rings)
    for p in placed:
        per_ring[p.ring] += 1
        per_ring_on[p.ring] += p.host_id in on
    bars = []
    for k, ring in enumerate(rollout.plan.rings):
        bars.append(
            RingBar(
                ring=k, fraction=ring.fraction, bake_s=ring.bake_s, hosts=per_ring[k],
                on_release=per_ring_on[k], state=_ring_state(rollout, k), y=8 + 28 * k,
                width=100 * per_ring[k] / fleet, filled=100 * per_ring_on[k] / fleet,
            )
        )  # fmt: skip
    decisions = [
        {
            "d": d,
            "evidence": [metric_line(m) for m in d.gate.metrics] if d.gate is not None else [],
        }
        for d in reversed(rollout.log)
    ]
    return RolloutView(
        engine=record.engine, rollout=rollout, bars=bars, fleet=len(placed), on_release=len(on),
        height=16 + 28 * len(bars), decisions=decisions,
    )  # fmt: skip


def _ring_state(rollout: Rollout, k: int) -> str:
    phase = str(rollout.phase)
    if k < rollout.ring:
        return "done" if rollout.through_ring >= k else phase
    if k > rollout.ring:
        return "waiting"
    return {"baking": "baking", "hold": "held", "completed": "done"}.get(phase, phase)


def add_rollout_pages(
    app: FastAPI,
    sessions: sessionmaker[Session],
    now_ns: Callable[[], int],
    *,
    viewer: Callable[[Request], Awaitable[Any]],
    changing: Callable[[Request], Awaitable[tuple[Any, dict[str, str]]]],
    page: Page,
    denied: Callable[[int, str], Exception],
) -> None:
    @app.get("/rollouts", include_in_schema=False)
    async def rollouts(request: Request) -> Response:
        me = await viewer(request)

        def rows() -> list[ev.RolloutRow]:
            with sessions() as s:
                return ev.rollouts(s)

        return page(
            "rollouts.html", me, title="Rollouts", here="/rollouts", rows=await run_in_threadpool(rows)
        )

    @app.get("/rollouts/{rollout_id}", include_in_schema=False)
    async def rollout(request: Request, rollout_id: str) -> Response:
        me = await viewer(request)
        try:
            view = await run_in_threadpool(rollout_view, sessions, rollout_id[:64])
        except ev.OperatorRefused as e:
            raise denied(e.status, str(e)) from e
        name = "_rollout_live.html" if request.headers.get("HX-Request") == "true" else "rollout.html"
        return page(name, me, title=f"Rollout {view.engine} {view.rollout.release}", here="/rollouts", v=view)

    @app.post("/rollouts/{rollout_id}/{action}", include_in_schema=False)
    async def act(request: Request, rollout_id: str, action: str) -> Response:
        me, form = await changing(request)
        reason = form.get("reason", "")[:500]
        try:
            await run_in_threadpool(
                ev.operate, sessions, now_ns(), rollout_id[:64], action, by=me.username, reason=reason
            )
        except ev.OperatorRefused as e:
            raise denied(e.status, str(e)) from e
        return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
