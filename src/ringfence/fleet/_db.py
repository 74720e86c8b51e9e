"""The control plane's database: SQLAlchemy 2 models, the engine for a URL, and migrations at start.

Everything a second API node needs is here, never in a node's memory: enrollment tokens (hashed),
hosts and their public keys, request nonces, heartbeats (the latest per host and a bounded history),
findings, and the seam for rollouts (releases and per-host assignments, filled by the rollout
controller, not by this slice). Times are integers of nanoseconds since the epoch (UTC): the same on
SQLite and PostgreSQL, and what the agent's records carry.

    open_database(url)  -> Engine, migrated to the newest revision (alembic); raises ServerError
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ringfence.fleet._errors import ServerError

DB_FILE = "fleet.db"
DIALECTS = ("sqlite", "postgresql")
MIGRATION_LOCK = 0x52_46_4C_54  # "RFLT": the advisory lock key held while migrating (PostgreSQL)
# Connections a node keeps open to PostgreSQL, and never more: past them a request waits for one (up to
# 30 s, then a 503). SQLAlchemy's default (5, and 10 more closed as they come back) made PostgreSQL fork
# a backend for most heartbeats under load: 6 ms of its CPU each (bench/fleet_load_bench.py). 4 nodes
# fit in PostgreSQL's default max_connections (100).
PG_POOL_SIZE = 20


class Base(DeclarativeBase):
    pass


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    expires_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    used_at_ns: Mapped[int | None] = mapped_column(sa.BigInteger)
    host_id: Mapped[str | None] = mapped_column(sa.String(36))


_REVOKED = sa.text("revoked_at_ns IS NOT NULL")


def _trigrams(name: str, expression: str | sa.Label[str]) -> sa.Index:
    """A pg_trgm GIN index of `expression`, for LIKE '%text%' on it (PostgreSQL only: migration 0007)."""
    key = expression if isinstance(expression, str) else expression.name
    index = sa.Index(name, expression, postgresql_using="gin", postgresql_ops={key: "gin_trgm_ops"})
    return index.ddl_if(dialect="postgresql")


class Host(Base):
    __tablename__ = "hosts"
    # The console lists hosts by (name, id) and walks this index until a page is full, probing each
    # host's status, instead of sorting every host; its name searches scan this index, not the rows. The
    # revoked hosts are few: the status counts read them from their own (partial) index. On PostgreSQL the
    # searches (`lower(name) LIKE '%text%'`, `id LIKE ...`: _console_data._contains) use trigrams.
    __table_args__ = (
        sa.Index("ix_hosts_name_id", "name", "id"),
        sa.Index("ix_hosts_revoked", "id", postgresql_where=_REVOKED, sqlite_where=_REVOKED),
        _trigrams("ix_hosts_name_lower_trgm", sa.func.lower(sa.column("name")).label("lower_name")),
        _trigrams("ix_hosts_id_trgm", "id"),
    )
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)  # a UUID the server gives
    name: Mapped[str] = mapped_column(sa.String(255))  # what the host called itself at enrollment
    public_key: Mapped[str] = mapped_column(sa.String(64))  # Ed25519, base64
    enrolled_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    revoked_at_ns: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_seen_at_ns: Mapped[int | None] = mapped_column(sa.BigInteger)


class RequestNonce(Base):
    """Nonces of signed requests inside the clock window: a replayed request finds its nonce here."""

    __tablename__ = "request_nonces"
    host_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    nonce: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at_ns: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class HostStatus(Base):
    """The summary of each host's latest heartbeat; its document is the host's newest `heartbeats` row.

    Narrow on purpose: the console's status counts and filters read every row (or this covering index,
    which PostgreSQL's heap visits still follow, the rows being updated constantly). The document was
    here too until migration 0007: 110 MB to scan at 100,000 hosts."""

    __tablename__ = "host_status"
    __table_args__ = (
        sa.Index("ix_host_status_summary", "host_id", "received_at_ns", "healthy", "agent_version"),
    )
    host_id: Mapped[str] = mapped_column(sa.ForeignKey("hosts.id"), primary_key=True)
    received_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    healthy: Mapped[bool] = mapped_column(sa.Boolean)
    agent_version: Mapped[str] = mapped_column(sa.String(64))


class HeartbeatRecord(Base):
    """Each host's recent heartbeats, at most `history` of them and at least its latest (older ones are
    deleted on insert): the newest row's document is the host's latest heartbeat."""

    __tablename__ = "heartbeats"
    __table_args__ = (sa.Index("ix_heartbeats_host_id_id", "host_id", "id"),)
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    host_id: Mapped[str] = mapped_column(sa.ForeignKey("hosts.id"))
    received_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    sent_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    healthy: Mapped[bool] = mapped_column(sa.Boolean)
    document: Mapped[str] = mapped_column(sa.Text)


class FindingBatch(Base):
    """One upload: a retried batch (same id) is acknowledged again, not stored twice."""

    __tablename__ = "finding_batches"
    host_id: Mapped[str] = mapped_column(sa.ForeignKey("hosts.id"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    received_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    count: Mapped[int] = mapped_column(sa.Integer)


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (sa.Index("ix_findings_host_id_id", "host_id", "id"),)
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    host_id: Mapped[str] = mapped_column(sa.ForeignKey("hosts.id"))
    batch_id: Mapped[str] = mapped_column(sa.String(64))
    received_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    document: Mapped[str] = mapped_column(sa.Text)  # one OCSF finding (JSON)


class Release(Base):
    """The seam for rollouts: a content version that can be assigned (the rollout controller's)."""

    __tablename__ = "releases"
    id: Mapped[int] = mapped_column(primary_key=True)
    engine: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[str] = mapped_column(sa.String(64))
    created_at_ns: Mapped[int] = mapped_column(sa.BigInteger)


class Assignment(Base):
    """Which release each host should run, per engine (written by the rollout controller)."""

    __tablename__ = "assignments"
    host_id: Mapped[str] = mapped_column(sa.ForeignKey("hosts.id"), primary_key=True)
    engine: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    release_id: Mapped[int] = mapped_column(sa.ForeignKey("releases.id"))
    assigned_at_ns: Mapped[int] = mapped_column(sa.BigInteger)


class RolloutRecord(Base):
    """One rollout of a release of one engine: the controller's whole state (`Rollout`, as JSON) and the
    lease that lets one API node at a time evaluate it."""

    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    engine: Mapped[str] = mapped_column(sa.String(128), index=True)
    release: Mapped[str] = mapped_column(sa.String(64))
    last_known_good: Mapped[str] = mapped_column(sa.String(64))
    phase: Mapped[str] = mapped_column(sa.String(16), index=True)  # Rollout.phase, for queries
    state: Mapped[str] = mapped_column(sa.Text)  # encode_rollout(...)
    created_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    created_by: Mapped[str] = mapped_column(sa.String(64))
    updated_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    started_at_ns: Mapped[int] = mapped_column(sa.BigInteger)  # the controller's clock zero (wall clock)
    lease_owner: Mapped[str] = mapped_column(sa.String(64), default="")
    lease_until_ns: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class Placement(Base):
    """An operator's choice for a host (`host:ID`) or a group (`group:NAME`): a fixed ring, a pin to the
    release before the newest (`n-1`), and a host's group. A host's own choice beats its group's."""

    __tablename__ = "placements"
    subject: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    ring: Mapped[int | None] = mapped_column(sa.Integer)
    pin: Mapped[str] = mapped_column(sa.String(8), default="")  # "" (follow the rings), "n", "n-1"
    group_name: Mapped[str] = mapped_column(sa.String(128), default="")  # hosts only
    updated_at_ns: Mapped[int] = mapped_column(sa.BigInteger)


class Operator(Base):
    """A console account: admin (may change things) or viewer (may look)."""

    __tablename__ = "operators"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))  # scrypt$N$r$p$salt$hash
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at_ns: Mapped[int] = mapped_column(sa.BigInteger)


class OperatorSession(Base):
    __tablename__ = "operator_sessions"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # SHA-256 of the cookie's token
    operator_id: Mapped[int] = mapped_column(sa.ForeignKey("operators.id"))
    csrf: Mapped[str] = mapped_column(sa.String(64))
    created_at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    expires_at_ns: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class AuditEntry(Base):
    """Every change an operator made (and every login), oldest first."""

    __tablename__ = "audit_log"
    # The login limits' counts (fleet/_ratelimit.py) are lookups, not scans of the whole log: by name, and
    # by client address among the failures only (their detail is short; other rows' detail is not bounded).
    __table_args__ = (
        sa.Index("ix_audit_log_action_target_at_ns", "action", "target", "at_ns"),
        sa.Index(
            "ix_audit_log_failed_login_detail_at_ns",
            "detail",
            "at_ns",
            postgresql_where=sa.text("action = 'login.failed'"),
            sqlite_where=sa.text("action = 'login.failed'"),
        ),
    )
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    at_ns: Mapped[int] = mapped_column(sa.BigInteger)
    operator: Mapped[str] = mapped_column(sa.String(64))  # a username, or "cli" for the server's commands
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str] = mapped_column(sa.String(255))
    detail: Mapped[str] = mapped_column(sa.Text, default="")


def default_url(state_dir: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(state_dir), DB_FILE)}"


def make_engine(url: str) -> Engine:
    """An Engine for `url` (not yet connected). Raises ServerError for a URL that is not one, or not for
    SQLite or PostgreSQL, or whose driver is not installed."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as e:
        raise ServerError(f"--db {url!r}: not a database URL (sqlite:///PATH or postgresql://...)") from e
    if parsed.get_backend_name() not in DIALECTS:
        raise ServerError(
            f"--db: {parsed.get_backend_name()!r} is not supported; use sqlite:///PATH or postgresql://..."
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        kwargs.update(pool_size=PG_POOL_SIZE, max_overflow=0)
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ImportError, sa_exc.NoSuchModuleError) as e:
        raise ServerError(f"--db: the driver for {parsed.drivername} is not installed ({e})") from e
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    # The driver's own transaction handling leaves DDL outside transactions and begins lazily: off, and
    # every transaction begins IMMEDIATE (below), so a migration is atomic, two servers starting on one
    # file migrate one after the other, and a read-then-write never fails on upgrading its lock.
    conn.isolation_level = None
    cur = conn.cursor()
    _journal_wal(cur)  # readers do not wait for the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


WAL_WAIT_S = 30.0  # as long as BEGIN IMMEDIATE waits (the connect timeout)


def _journal_wal(cur: sqlite3.Cursor) -> None:
    # Switching a file to WAL needs it to itself, and SQLite answers "database is locked" at once, without
    # its busy handler, when another connection holds a lock meanwhile: four nodes opening a new file
    # together failed 1 run in 15. The mode is kept in the file, so only the first opener switches it; the
    # others retry until the switch is done (or the connect timeout has passed, and the error stands).
    deadline = time.monotonic() + WAL_WAIT_S
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        else:
            return
        time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 (jitter, not a secret)


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits for the writer lock (connect timeout, 30 s)


def open_database(url: str) -> Engine:
    """The engine for `url`, connected once and migrated to the newest revision.

    Raises ServerError: a bad URL, an unreachable database or one that refuses us, a failed migration."""
    engine = make_engine(url)
    safe = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # nodes starting together migrate one at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            migrate(conn)
    except sa_exc.OperationalError as e:
        raise ServerError(f"database {safe}: cannot connect or write: {_one_line(e.orig)}") from e
    except sa_exc.SQLAlchemyError as e:
        raise ServerError(f"database {safe}: {e}") from e
    return engine


def migrate(conn: sa.Connection, revision: str = "head") -> None:
    """alembic upgrade to `revision` (the newest; tests stop earlier), on `conn` (its transaction)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(__file__), "migrations"))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _one_line(e: BaseException | None) -> str:
    return " ".join(str(e).split())
