"""The console: server-rendered pages (Jinja2, autoescaped, htmx) for operators, behind a login.

    GET  /login, POST /login, POST /logout
    GET  /                           the fleet: hosts per status, findings in the last 24 h (viewer, admin)
    GET  /hosts                      hosts by name, filtered (status, q, version), 50 a page (viewer, admin)
    GET  /hosts/{host_id}            the latest heartbeat, the health history, recent findings (viewer, admin)
    POST /hosts/{host_id}/revoke     admin; the host's credential is refused from then on
    GET  /findings                   findings, newest first, filtered (host, severity, q, since, until)
    GET  /rollouts, /rollouts/{id}   rollouts; one with its ring chart and gate evidence (_console_rollouts)
    POST /rollouts/{id}/{action}     admin: pause, resume, abort, rollback
    GET  /audit                      the audit log (admin)
    GET  /static/NAME                htmx and the style sheet (no login)

A list page asked by htmx (`HX-Request`) gets only its results table, which htmx swaps in; without
JavaScript the same filter form is a plain GET and gets the whole page. A filter value that is not one
is a 422 naming the parameter. Every form that changes something carries the session's CSRF token (and
the login form a token that must match its cookie); the session cookie is HttpOnly and SameSite=Strict.
Form bodies are parsed by hand (urlencoded, 16 KiB at most): no multipart parser is needed for three
fields. The Content-Security-Policy allows scripts and styles from this server only (none inline), so
htmx runs with its inline indicator styles and eval off (the htmx-config meta tag in base.html).
"""

from __future__ import annotations

import calendar
import functools
import importlib.resources
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ringfence.fleet import _console_data as data
from ringfence.fleet import _operators, _ratelimit, _store
from ringfence.fleet._console_rollouts import add_rollout_pages
from ringfence.fleet._db import AuditEntry

SESSION_COOKIE = "rf_session"
LOGIN_COOKIE = "rf_login"
MAX_FORM_BYTES = 16 << 10
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "HX-Request",
}
# The pages a signed-in operator is offered, in order: (label, path, role needed).
NAV = (("Overview", "/", "viewer"), ("Hosts", "/hosts", "viewer"), ("Findings", "/findings", "viewer"),
       ("Rollouts", "/rollouts", "viewer"), ("Audit log", "/audit", "admin"))  # fmt: skip
STATIC = {"htmx.min.js": "text/javascript", "htmx.LICENSE": "text/plain; charset=utf-8",
          "console.css": "text/css", "favicon.svg": "image/svg+xml"}  # fmt: skip
STATUS_LABELS = {"healthy": "healthy", "degraded": "degraded", "offline": "offline", "never": "never seen",
                 "revoked": "revoked"}  # fmt: skip
MAX_TEXT = 255  # characters of a text filter
MAX_ID = 2**63 - 1  # a finding id fits a BIGINT


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _LoggedOut(Exception):
    pass


def add_console(app: FastAPI, sessions: sessionmaker[Session], now_ns: Callable[[], int]) -> None:
    @app.exception_handler(_Denied)
    async def denied(request: Request, e: _Denied) -> Response:
        if _htmx(request):  # swapped in for the results (htmx-config: 422 is swapped)
            return _page("_error.html", None, status=e.status, title=str(e))
        return _page("base.html", None, status=e.status, title=str(e))

    @app.exception_handler(_LoggedOut)
    async def logged_out(request: Request, _e: _LoggedOut) -> Response:
        if _htmx(request):  # htmx follows HX-Redirect with a whole page load
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", status_code=303)

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
        return _page("audit.html", me, title="Audit log", here="/audit", entries=entries)

    _add_views(app, sessions, now_ns, who)
    add_rollout_pages(
        app, sessions, now_ns, viewer=_viewer(who), changing=changing, page=_page, denied=_Denied
    )


def _add_views(
    app: FastAPI,
    sessions: sessionmaker[Session],
    now_ns: Callable[[], int],
    who: Callable[[Request], Awaitable[_operators.SignedIn | None]],
) -> None:
    """The pages any operator signed in may see (and the static files, which need no login)."""

    viewer = _viewer(who)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response("no such file", status_code=404, media_type="text/plain")
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"}
        return Response(_static(name), media_type=STATIC[name], headers=headers)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        me = await viewer(request)
        view = await run_in_threadpool(data.overview, sessions, now_ns())
        since = _iso(now_ns() - data.DAY_NS)
        return _page(
            "overview.html", me, title="Overview", here="/", view=view, since=since,
            offline_after_s=data.OFFLINE_AFTER_S,
        )  # fmt: skip

    @app.get("/hosts", include_in_schema=False)
    async def hosts(request: Request) -> Response:
        me = await viewer(request)
        f = _host_filter(request.query_params)
        try:
            page = await run_in_threadpool(data.host_page, sessions, now_ns(), f)
        except data.BadFilter as e:
            raise _Denied(422, str(e)) from e
        raw = {"status": f.status, "q": f.q, "version": f.version}
        values: dict[str, Any] = {
            "page": page,
            "filters": raw,
            "next_url": _url("/hosts", raw, after=page.next_after),
        }
        if _htmx(request):
            return _page("_hosts_table.html", me, **values)
        return _page("hosts.html", me, title="Hosts", here="/hosts", **values)

    @app.get("/hosts/{host_id}", include_in_schema=False)
    async def host(request: Request, host_id: str) -> Response:
        me = await viewer(request)
        detail = await run_in_threadpool(data.host_detail, sessions, now_ns(), host_id[:64])
        if detail is None:
            raise _Denied(404, f"No host {host_id}")
        return _page("host.html", me, title=detail.host.name, here="/hosts", d=detail, now=now_ns())

    @app.get("/findings", include_in_schema=False)
    async def findings(request: Request) -> Response:
        me = await viewer(request)
        f, raw = _finding_filter(request.query_params)
        page = await run_in_threadpool(data.finding_page, sessions, f)
        values: dict[str, Any] = {
            "page": page,
            "filters": raw,
            "next_url": _url("/findings", raw, before=page.next_before),
        }
        if _htmx(request):
            return _page("_findings_table.html", me, **values)
        return _page("findings.html", me, title="Findings", here="/findings", **values)


def _viewer(
    who: Callable[[Request], Awaitable[_operators.SignedIn | None]],
) -> Callable[[Request], Awaitable[_operators.SignedIn]]:
    async def viewer(request: Request) -> _operators.SignedIn:
        """The operator of a page anyone signed in may see; not signed in: to the login page."""
        me = await who(request)
        if me is None:
            raise _LoggedOut
        return me

    return viewer


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


def _host_filter(params: Mapping[str, str]) -> data.HostFilter:
    status = params.get("status", "")
    if status and status not in data.STATUSES:
        raise _Denied(422, f"status: one of {', '.join(data.STATUSES)}, or none")
    after = params.get("after", "")
    if len(after) > 36:
        raise _Denied(422, "after: a host id")
    return data.HostFilter(
        status=status, q=_text(params, "q"), version=_text(params, "version", 64), after=after
    )


def _finding_filter(params: Mapping[str, str]) -> tuple[data.FindingFilter, dict[str, str]]:
    """The filter, and the raw values to put back in the form and the next page's link."""
    raw = {k: params.get(k, "").strip() for k in ("host", "severity", "q", "since", "until")}
    severity = 0
    if raw["severity"]:
        if not raw["severity"].isdigit() or int(raw["severity"]) not in data.SEVERITIES:
            raise _Denied(422, "severity: an OCSF severity_id (1 Informational .. 6 Fatal), or none")
        severity = int(raw["severity"])
    before = params.get("before", "")
    if before and (not before.isdigit() or not 0 < int(before) <= MAX_ID):
        raise _Denied(422, "before: a finding id")
    f = data.FindingFilter(
        host=_text(params, "host"),
        severity=severity,
        q=_text(params, "q"),
        since_ns=_time(raw["since"], "since"),
        until_ns=_time(raw["until"], "until"),
        before=int(before or 0),
    )
    return f, raw


def _text(params: Mapping[str, str], name: str, limit: int = MAX_TEXT) -> str:
    value = params.get(name, "").strip()
    if len(value) > limit:
        raise _Denied(422, f"{name}: at most {limit} characters")
    if not value.isprintable():
        raise _Denied(422, f"{name}: printable characters only")
    return value


def _time(value: str, name: str) -> int:
    """YYYY-MM-DDTHH:MM[:SS] in UTC (what a datetime-local input sends) as ns; "" is 0 (no bound)."""
    if not value:
        return 0
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(value, layout)) * 10**9
        except ValueError:
            continue
    raise _Denied(422, f"{name}: a UTC time as YYYY-MM-DDTHH:MM")


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ns // 10**9))


def _url(path: str, raw: Mapping[str, str], **cursor: str | int) -> str:
    """The link to the next page: the same filters and the cursor; "" when there is no next page."""
    if not any(cursor.values()):
        return ""
    return f"{path}?{urlencode({**{k: v for k, v in raw.items() if v}, **cursor})}"


def _htmx(request: Request) -> bool:
    """A request htmx made for a part of a page (a history restore wants the whole page)."""
    h = request.headers
    return h.get("hx-request") == "true" and h.get("hx-history-restore-request") != "true"


@functools.cache
def _static(name: str) -> bytes:
    return importlib.resources.files("ringfence.fleet").joinpath("static", name).read_bytes()


def _when(ns: int | None) -> str:
    if not ns:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def _bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def _ago(ns: int | None, now_ns: int) -> str:
    if not ns:
        return "never"
    s = max(0, (now_ns - ns) // 10**9)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


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
    nav = [(label, path) for label, path, role in NAV if who and (role == "viewer" or who.role == "admin")]
    values.setdefault("title", "")
    html = (
        _env()
        .get_template(name)
        .render(who=who, nav=nav, statuses=STATUS_LABELS, severities=data.SEVERITIES, **values)
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ringfence.fleet", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, size=_bytes, ago=_ago)
    return env
