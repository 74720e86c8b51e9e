"""What the API and the `ringfence server` commands do to the database, one transaction each.

Every function takes a Session factory and the time, and keeps nothing between calls: any API node
may serve any request (the tests run them on SQLite; PostgreSQL takes the same statements).

Errors: Refused (a client's request that is wrong: its message is safe to send back), with `status`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from ringfence.fleet._auth import MAX_SKEW_S, load_public, new_token, signed_message, token_hash, verify
from ringfence.fleet._db import (
    EnrollmentToken,
    Finding,
    FindingBatch,
    Host,
    HostStatus,
    RequestNonce,
)
from ringfence.fleet._operators import audit

Sessions = sessionmaker[Session]


NONCE_KEEP_NS = 2 * MAX_SKEW_S * 1_000_000_000  # a nonce is kept past any date the clock check lets in


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SignedRequest:
    method: str
    path: str
    host_id: str  # the Ringfence-* headers, "" where missing
    date: str
    nonce: str
    signature: str
    body: bytes


@dataclass(frozen=True)
class HostRow:
    id: str
    name: str
    enrolled_at_ns: int
    revoked_at_ns: int | None
    last_seen_at_ns: int | None
    healthy: bool | None
    agent_version: str


def create_token(sessions: Sessions, now_ns: int, expires_s: float) -> str:
    """A new one-time enrollment token; only its hash is stored."""
    token = new_token()
    with sessions.begin() as s:
        audit(s, now_ns, "cli", "token.create", token_hash(token)[:12], detail=f"expires_s={expires_s:g}")
        s.add(
            EnrollmentToken(
                token_hash=token_hash(token),
                created_at_ns=now_ns,
                expires_at_ns=now_ns + int(expires_s * 1e9),
            )
        )
    return token


def enroll(sessions: Sessions, now_ns: int, token: str, hostname: str, public_key: str) -> str:
    """The new host's id. The token is spent in the same transaction, by a conditional UPDATE, so two
    nodes given the same token at once enroll one host."""
    try:
        load_public(public_key)
    except ValueError as e:
        raise Refused(422, f"public_key: {e}") from e
    host_id = str(uuid.uuid4())
    with sessions.begin() as s:
        spent = s.execute(
            sa.update(EnrollmentToken)
            .where(
                EnrollmentToken.token_hash == token_hash(token),
                EnrollmentToken.used_at_ns.is_(None),
                EnrollmentToken.expires_at_ns > now_ns,
            )
            .values(used_at_ns=now_ns, host_id=host_id)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise Refused(401, _why_token_refused(s, token, now_ns))
        s.add(Host(id=host_id, name=hostname, public_key=public_key, enrolled_at_ns=now_ns))
        audit(s, now_ns, "enrollment", "host.enroll", host_id, detail=f"name={hostname}")
    return host_id


def _why_token_refused(s: Session, token: str, now_ns: int) -> str:
    row = s.scalar(sa.select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash(token)))
    if row is None:
        return "enrollment token unknown"
    if row.used_at_ns is not None:
        return "enrollment token already used (each token enrolls one host)"
    return "enrollment token expired"


def authenticate(sessions: Sessions, now_ns: int, request: SignedRequest) -> str:
    """The host id of a signed request, its nonce recorded. Raises Refused(401) for a missing, bad or
    replayed signature, a clock outside the window, an unknown host; Refused(403) for a revoked one."""
    with sessions.begin() as s:
        return _authenticate_in(s, now_ns, request)


def check_headers(request: SignedRequest, now_ns: int) -> None:
    """What of a signed request can be refused without the database: missing or oversized headers, a
    date outside the clock window. Raises Refused(401)."""
    host_id, date, nonce, signature = request.host_id, request.date, request.nonce, request.signature
    if not (host_id and date and nonce and signature):
        raise Refused(401, "not signed: Ringfence-Host, -Date, -Nonce and -Signature headers are needed")
    if len(nonce) > 64 or len(host_id) > 36:
        raise Refused(401, "Ringfence-Nonce or Ringfence-Host too long")
    try:
        when_s = int(date)
    except ValueError as e:
        raise Refused(401, "Ringfence-Date: not an integer of seconds") from e
    if abs(when_s - now_ns // 1_000_000_000) > MAX_SKEW_S:
        raise Refused(401, f"Ringfence-Date: more than {MAX_SKEW_S} s from the server's clock")


UNKNOWN_HOST = "unknown host (enroll it again)"


def refusal(request: SignedRequest, public_key: str, revoked: bool) -> Refused | None:
    """Why a request whose headers passed `check_headers` is refused, given its host's key and whether
    the host is revoked; None when it is authentic. The nonce is checked apart."""
    message = signed_message(
        method=request.method, path=request.path, host_id=request.host_id, date=request.date,
        nonce=request.nonce, body=request.body,
    )  # fmt: skip
    if not verify(load_public(public_key), request.signature, message):
        return Refused(401, "bad signature")
    if revoked:
        return Refused(403, "host revoked: its credential is refused (enroll it again with a new token)")
    return None


def _authenticate_in(s: Session, now_ns: int, request: SignedRequest) -> str:
    """`authenticate` in the caller's transaction."""
    check_headers(request, now_ns)
    host_id = request.host_id
    host = s.get(Host, host_id)
    if host is None:
        raise Refused(401, UNKNOWN_HOST)
    why = refusal(request, host.public_key, host.revoked_at_ns is not None)
    if why is not None:
        raise why
    s.execute(sa.delete(RequestNonce).where(RequestNonce.expires_at_ns < now_ns))
    s.add(RequestNonce(host_id=host_id, nonce=request.nonce, expires_at_ns=now_ns + NONCE_KEEP_NS))
    host.last_seen_at_ns = now_ns
    try:
        s.flush()
    except sa_exc.IntegrityError as e:
        raise Refused(401, "replayed request (nonce seen before)") from e
    return host_id


def store_findings(
    sessions: Sessions, now_ns: int, host_id: str, batch_id: str, findings: list[msgspec.Raw]
) -> bool:
    """Stores a batch once: False when this host sent this batch id before (a retry; nothing stored)."""
    with sessions.begin() as s:
        if s.get(FindingBatch, (host_id, batch_id)) is not None:
            return False
        s.add(FindingBatch(host_id=host_id, batch_id=batch_id, received_at_ns=now_ns, count=len(findings)))
        s.add_all(
            Finding(host_id=host_id, batch_id=batch_id, received_at_ns=now_ns, document=bytes(raw).decode())
            for raw in findings
        )
    return True


def revoke(sessions: Sessions, now_ns: int, host_id: str, by: str = "cli") -> bool:
    """False: no such host. Revoking twice keeps the first time. In the audit log, as done `by`."""
    with sessions.begin() as s:
        host = s.get(Host, host_id)
        if host is None:
            return False
        if host.revoked_at_ns is None:
            host.revoked_at_ns = now_ns
            audit(s, now_ns, by, "host.revoke", host_id, detail=f"name={host.name}")
    return True


def list_hosts(sessions: Sessions) -> list[HostRow]:
    with sessions() as s:
        rows = s.execute(
            sa.select(Host, HostStatus)
            .outerjoin(HostStatus, HostStatus.host_id == Host.id)
            .order_by(Host.name)
        ).all()
        return [
            HostRow(
                id=h.id,
                name=h.name,
                enrolled_at_ns=h.enrolled_at_ns,
                revoked_at_ns=h.revoked_at_ns,
                last_seen_at_ns=h.last_seen_at_ns,
                healthy=st.healthy if st is not None else None,
                agent_version=st.agent_version if st is not None else "",
            )
            for h, st in rows
        ]
