"""Operators of the console: accounts with a role, passwords under scrypt, sessions, and the audit log.

    hash_password(pw) / check_password(pw, stored)      scrypt (hashlib; N=2**14, r=8, p=1, 16-byte salt)
    add_operator(...), login(...), session_of(...), logout(...)   one transaction each, on the database
    audit(s, now_ns, who, action, target, detail)       a row in `audit_log`, in the caller's transaction

Sessions are random 256-bit tokens in a cookie; the database keeps their SHA-256 and a CSRF token of
their own, which every form that changes something must send back. Like everything else, nothing
lives in a node's memory.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ringfence.fleet._db import AuditEntry, Operator, OperatorSession

ROLES = ("admin", "viewer")
SESSION_S = 12 * 3600
_N, _R, _P = 2**14, 8, 1  # scrypt: about 16 MiB and tens of ms per guess
MIN_PASSWORD = 10


class OperatorError(Exception):
    pass


@dataclass(frozen=True)
class SignedIn:
    username: str
    role: str
    csrf: str


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def _dummy_hash() -> str:
    """Checked for unknown names, so the time taken does not tell which names exist."""
    return hash_password(secrets.token_hex(8))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit(s: Session, now_ns: int, who: str, action: str, target: str, *, detail: str = "") -> None:
    s.add(AuditEntry(at_ns=now_ns, operator=who, action=action, target=target, detail=detail))


def add_operator(
    sessions: sessionmaker[Session], now_ns: int, username: str, password: str, role: str, *, by: str
) -> None:
    if role not in ROLES:
        raise OperatorError(f"role: admin or viewer, got {role!r}")
    if not _name_ok(username):
        raise OperatorError("username: 1..64 printable characters, no spaces")
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"password: at least {MIN_PASSWORD} characters")
    with sessions.begin() as s:
        if s.scalar(sa.select(Operator.id).where(Operator.username == username)) is not None:
            raise OperatorError(f"operator {username!r} exists already")
        s.add(
            Operator(
                username=username, password_hash=hash_password(password), role=role, created_at_ns=now_ns
            )
        )
        audit(s, now_ns, by, "operator.add", username, detail=f"role={role}")


def _name_ok(username: str) -> bool:
    return 1 <= len(username) <= 64 and username.isprintable() and " " not in username


def login(
    sessions: sessionmaker[Session], now_ns: int, username: str, password: str, *, attempt_id: int = 0
) -> str | None:
    """A new session token, or None for a wrong name or password (the same answer for both).

    `attempt_id`: the `login.failed` row the rate limiter wrote for this try (_ratelimit.py); a success
    turns it into `login`, a failure leaves it. Without it a failure of a known name is audited here."""
    with sessions.begin() as s:
        op = (  # a name add_operator would refuse is no one's (and PostgreSQL refuses NUL in text)
            s.scalar(sa.select(Operator).where(Operator.username == username)) if _name_ok(username) else None
        )
        if op is None:
            check_password(password, _dummy_hash())
            return None
        if not check_password(password, op.password_hash):
            if not attempt_id:
                audit(s, now_ns, username, "login.failed", username)
            return None
        token = secrets.token_urlsafe(32)
        s.execute(sa.delete(OperatorSession).where(OperatorSession.expires_at_ns < now_ns))
        s.add(
            OperatorSession(
                id=_session_hash(token),
                operator_id=op.id,
                csrf=secrets.token_urlsafe(32),
                created_at_ns=now_ns,
                expires_at_ns=now_ns + SESSION_S * 1_000_000_000,
            )
        )
        if attempt_id:
            s.execute(sa.update(AuditEntry).where(AuditEntry.id == attempt_id).values(action="login"))
        else:
            audit(s, now_ns, username, "login", username)
    return token


def session_of(sessions: sessionmaker[Session], now_ns: int, token: str) -> SignedIn | None:
    if not token:
        return None
    with sessions() as s:
        row = s.execute(
            sa.select(OperatorSession, Operator)
            .join(Operator, Operator.id == OperatorSession.operator_id)
            .where(OperatorSession.id == _session_hash(token), OperatorSession.expires_at_ns > now_ns)
        ).first()
        if row is None:
            return None
        session, op = row
        return SignedIn(username=op.username, role=op.role, csrf=session.csrf)


def logout(sessions: sessionmaker[Session], now_ns: int, token: str) -> None:
    with sessions.begin() as s:
        s.execute(sa.delete(OperatorSession).where(OperatorSession.id == _session_hash(token)))


def csrf_ok(signed_in: SignedIn, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(signed_in.csrf, sent)
