"""Login rate limits, counted in the database (the audit log), so every node sees the same count.

    login(sessions, now_ns, username, password, address) -> session token | Blocked | None

Each try is first admitted: in one short transaction (serialized: BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL) the recent `login.failed` rows of the name and of the client address are
counted and, unless a limit is reached, the try is written as `login.failed` before its password is
checked, so tries made at once on any nodes are all counted. A try that succeeds turns its row into
`login`. The name tried is counted whether or not an operator has it: the answer (401, then 429) is
the same for both, and so tells no one which names exist.

    per name      `per_account` (5) failures since the later of the window's start and the name's last
                  success: every further try is 429 (an operator's own success ends the lock on her name)
    per address   `per_address` (20) failures in the window: every further try from it is 429 (a
                  success from the address leaves its other failures counted)

A refused try is not written: it does not extend the lock. Retry-After is the time until the oldest
failure that keeps the limit reached leaves the window.

Index: the counts read `audit_log` by (action, target, at_ns) and (action, detail, at_ns); the table
has no index yet, so each login scans it (fine for thousands of rows, not millions). A migration
adding `ix_audit_log_action_at_ns (action, at_ns)` and `(action, target, at_ns)` would make them
lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ringfence.fleet import _operators
from ringfence.fleet._db import AuditEntry

FAILED, SUCCEEDED = "login.failed", "login"
# In the SQL text, not a parameter: PostgreSQL's generic plan of a prepared statement can use the partial
# index of failed logins (fleet/_db.py) only for a condition it can see.
_FAILED_LITERAL: sa.ColumnClause[str] = sa.literal_column(f"'{FAILED}'")
LOGIN_LOCK = 0x52_46_4C_47  # "RFLG": PostgreSQL advisory lock held while a try is admitted


@dataclass(frozen=True)
class LoginLimits:
    window_s: int = 15 * 60
    per_account: int = 5  # failures of one name in the window; the next try is refused
    per_address: int = 20  # failures from one client address in the window


DEFAULT_LIMITS = LoginLimits()


@dataclass(frozen=True)
class Blocked:
    retry_after_s: int


def account_key(username: str) -> str:
    """The name as counted and audited: printable (so any database stores it), 255 characters at most."""
    return "".join(c if c.isprintable() else "?" for c in username)[:255]


def address_detail(address: str) -> str:
    return f"address={account_key(address)[:200]}"


def login(
    sessions: sessionmaker[Session],
    now_ns: int,
    username: str,
    password: str,
    address: str,
    *,
    limits: LoginLimits = DEFAULT_LIMITS,
) -> str | Blocked | None:
    """A session token; None for a wrong name or password; Blocked while a limit is reached."""
    admitted = admit(sessions, now_ns, username, address, limits)
    if isinstance(admitted, Blocked):
        return admitted
    return _operators.login(sessions, now_ns, username, password, attempt_id=admitted)


def admit(
    sessions: sessionmaker[Session], now_ns: int, username: str, address: str, limits: LoginLimits
) -> int | Blocked:
    """The id of the try's audit row (written as failed), or Blocked (nothing written)."""
    name, detail = account_key(username), address_detail(address)
    start_ns = now_ns - limits.window_s * 1_000_000_000
    with sessions.begin() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOGIN_LOCK})
        last_success = s.scalar(
            sa.select(sa.func.max(AuditEntry.at_ns)).where(
                AuditEntry.action == SUCCEEDED, AuditEntry.target == name, AuditEntry.at_ns > start_ns
            )
        )
        waits = [
            _wait(s, AuditEntry.target == name, max(start_ns, last_success or 0), limits.per_account),
            _wait(s, AuditEntry.detail == detail, start_ns, limits.per_address),
        ]
        wait_ns = max((w for w in waits if w is not None), default=None)
        if wait_ns is not None:
            return Blocked(max(1, math.ceil((wait_ns - now_ns + limits.window_s * 1_000_000_000) / 1e9)))
        entry = AuditEntry(at_ns=now_ns, operator=name[:64], action=FAILED, target=name, detail=detail)
        s.add(entry)
        s.flush()
        return entry.id


def _wait(s: Session, which: sa.ColumnElement[bool], after_ns: int, limit: int) -> int | None:
    """The time of the `limit`-th newest failure after `after_ns`, when there are that many."""
    return s.scalar(
        sa.select(AuditEntry.at_ns)
        .where(AuditEntry.action == _FAILED_LITERAL, which, AuditEntry.at_ns > after_ns)
        .order_by(AuditEntry.at_ns.desc())
        .offset(limit - 1)
        .limit(1)
    )
