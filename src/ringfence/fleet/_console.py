"""The console: server-rendered pages (Jinja2, autoescaped) for operators, behind a login.

    GET  /login, POST /login, POST /logout
    GET  /hosts                      every host: name, id, state, agent version, last seen (viewer, admin)
    POST /hosts/{host_id}/revoke     admin; the host's credential is refused from then on
    GET  /audit                      the audit log (admin)

Every form that changes something carries the session's CSRF token (and the login form a token that
must match its cookie); the session cookie is HttpOnly and SameSite=Strict. Form bodies are parsed by
hand (urlencoded, 16 KiB at most): no multipart parser is needed for three fields.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ringfence.fleet import _operators, _ratelimit, _store
from ringfence.fleet._db import AuditEntry

SESSION_COOKIE = "rf_session"
LOGIN_COOKIE = "rf_login"
MAX_FORM_BYTES = 16 << 10
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("ringfence.fleet", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def add_console(app: FastAPI, sessions: sessionmaker[Session], now_ns: Callable[[], int]) -> None:
    @app.exception_handler(_Denied)
    async def denied(_request: Request, e: _Denied) -> Response:
        return _page("base.html", None, status=e.status, title=str(e))

    async def who(request: Request) -> _operators.SignedIn | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        return await run_in_threadpool(_operators.session_of, sessions, now_ns(), token)

    async def signed_in(request: Request, role: str = "viewer") -> _operators.SignedIn:
        me = await who(request)
        if me is None:
            raise _Denied(401, "Not logged in")
        if role == "admin" and me.role != "admin":
            raise _Denied(403, "Admins only")
        return me

    async def changing(request: Request) -> tuple[_operators.SignedIn, dict[str, str]]:
        me = await signed_in(request, "admin")
        form = await _form(request)
        if not _operators.csrf_ok(me, form.get("csrf", "")):
            raise _Denied(403, "Bad or missing CSRF token: reload the page and try again")
        return me, form

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return RedirectResponse("/hosts", status_code=303)

    @app.get("/login", include_in_schema=False)
    async def login_form() -> Response:
        return _login_page("")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not secrets.compare_digest(cookie, form.get("csrf", "")):
            return _login_page("The form expired: try again", status=403)
        address = request.client.host if request.client else ""
        username, password = form.get("username", ""), form.get("password", "")
        token = await run_in_threadpool(_ratelimit.login, sessions, now_ns(), username, password, address)
        if isinstance(token, _ratelimit.Blocked):
            return _login_page(
                f"Too many failed logins: try again in {math.ceil(token.retry_after_s / 60)} min",
                status=429,
                headers={"Retry-After": str(token.retry_after_s)},
            )
        if token is None:
            return _login_page("Wrong username or password", status=401)
        r = RedirectResponse("/hosts", status_code=303)
        r.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=_operators.SESSION_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        r.delete_cookie(LOGIN_COOKIE)
        return r

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        me = await signed_in(request)
        form = await _form(request)
        if not _operators.csrf_ok(me, form.get("csrf", "")):
            raise _Denied(403, "Bad or missing CSRF token")
        await run_in_threadpool(
            _operators.logout, sessions, now_ns(), request.cookies.get(SESSION_COOKIE, "")
        )
        r = RedirectResponse("/login", status_code=303)
        r.delete_cookie(SESSION_COOKIE)
        return r

    @app.get("/hosts", include_in_schema=False)
    async def hosts(request: Request) -> Response:
        me = await who(request)
        if me is None:
            return RedirectResponse("/login", status_code=303)
        rows = await run_in_threadpool(_store.list_hosts, sessions)
        return _page("hosts.html", me, title="Hosts", hosts=[_host_view(h) for h in rows])

    @app.post("/hosts/{host_id}/revoke", include_in_schema=False)
    async def revoke(request: Request, host_id: str) -> Response:
        me, _ = await changing(request)
        found = await run_in_threadpool(_store.revoke, sessions, now_ns(), host_id, me.username)
        if not found:
            raise _Denied(404, f"No host {host_id}")
        return RedirectResponse("/hosts", status_code=303)

    @app.get("/audit", include_in_schema=False)
    async def audit(request: Request) -> Response:
        me = await signed_in(request, "admin")
        entries = await run_in_threadpool(_audit_entries, sessions)
        return _page("audit.html", me, title="Audit log", entries=entries)


def _audit_entries(sessions: sessionmaker[Session]) -> list[dict[str, str]]:
    import sqlalchemy as sa

    with sessions() as s:
        rows = s.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(500)).all()
        return [
            {
                "when": _when(e.at_ns),
                "operator": e.operator,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in rows
        ]


def _host_view(h: _store.HostRow) -> dict[str, Any]:
    if h.revoked_at_ns:
        state, css = "revoked", "revoked"
    elif h.healthy is None:
        state, css = "never seen", "never"
    else:
        state, css = ("healthy", "healthy") if h.healthy else ("degraded", "degraded")
    return {
        "id": h.id,
        "name": h.name,
        "state": state,
        "state_class": css,
        "agent_version": h.agent_version,
        "last_seen": _when(h.last_seen_at_ns) if h.last_seen_at_ns else "never",
        "revoked": bool(h.revoked_at_ns),
    }


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Denied(413, "Form too large")
    try:
        fields = parse_qs(body.decode(), max_num_fields=16, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as e:
        raise _Denied(400, "Not a form") from e
    return {k: v[0] for k, v in fields.items()}


def _login_page(error: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    csrf = secrets.token_urlsafe(32)
    r = _page("login.html", None, status=status, title="Log in", error=error, csrf=csrf)
    r.headers.update(headers or {})
    r.set_cookie(LOGIN_COOKIE, csrf, max_age=3600, httponly=True, samesite="strict")
    return r


def _page(name: str, who: _operators.SignedIn | None, status: int = 200, **values: Any) -> Response:
    html = _templates.get_template(name).render(who=who, **values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)
