"""Persistence: the schema (SQLAlchemy 2 models), engines and Alembic upgrades.

One schema for the embedded default (SQLite in WAL mode, ``synchronous=FULL`` so that a
committed job row survives a power cut) and for scale-out on PostgreSQL. The dashboard
reads these tables directly, so header facts it groups by (station, operator,
manufacturer, study date, view) live on ``instances`` and the verdict of each family is a
column of ``results``. All timestamps are naive UTC.

Tables: ``instances`` (what was received) → ``jobs`` (QC queue, leases) → ``results``
(one per instance, replaced on re-run) → ``findings`` (one per rule) and
``result_objects`` (SR/SC/GSPS/KOS files) → ``outbox`` (one row per object and
destination). ``audit_events`` is the append-only log of associations, refusals,
deliveries and dead letters.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from qcnode.config import Settings
from qcnode.errors import StorageError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> dt.datetime:
    """Naive UTC, the one timestamp convention of the schema."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Clock(Protocol):
    """Where the queue and the sender read the time (leases, retries, sent_at): ``utcnow``
    in the node, ``qcnode.testing.FakeClock`` in tests, so that lease expiry and backoff are
    tested without sleeping. Must return naive UTC, as ``utcnow``."""

    def __call__(self) -> dt.datetime: ...


class Base(DeclarativeBase):
    pass


# Job states
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
# Outbox states
PENDING, SENT, DEAD = "pending", "sent", "dead"


class Instance(Base):
    """One received SOP instance (the file under ``data_dir``) and its header facts."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True, default="")
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    path: Mapped[str] = mapped_column(String(512))  # relative to data_dir
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # dashboard facts (staff and equipment, not patient data)
    station_name: Mapped[str] = mapped_column(String(64), default="", index=True)
    operators_name: Mapped[str] = mapped_column(String(256), default="", index=True)
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    manufacturer_model: Mapped[str] = mapped_column(String(64), default="")
    institution_name: Mapped[str] = mapped_column(String(128), default="")
    study_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True, index=True)
    view_position: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[int] = mapped_column(Integer, default=0)
    # False when the header says this is not a chest radiograph (kept, not evaluated)
    applicable: Mapped[bool] = mapped_column(Boolean, default=True)

    job: Mapped[Job | None] = relationship(back_populates="instance", uselist=False)
    result: Mapped[Result | None] = relationship(back_populates="instance", uselist=False)


class Job(Base):
    """The QC queue. A worker claims a job with a lease; an expired lease is re-claimed."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_lease", "state", "lease_until"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), unique=True
    )
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the node run (``host:pid:token`` of the supervising process) whose QC child process
    # holds the claim; None for workers without a supervisor (threads, ``qcnode worker``
    # with worker_process off). Lets a restarted node tell "the whole node died" (not the
    # image's fault) from "a worker died under a live node" (maybe a poison image).
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    instance: Mapped[Instance] = relationship(back_populates="job")


class Result(Base):
    """What QC concluded about one instance (the latest run; a re-run replaces it)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), unique=True
    )
    view: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    verdict_completeness: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verdict_organs: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verdict_exposure: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verdict_positioning: Mapped[str | None] = mapped_column(String(16), nullable=True)
    verdict_metadata: Mapped[str | None] = mapped_column(String(16), nullable=True)
    model_name: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    timings_ms: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # .npz of bit-packed masks (keys: STRUCTURES names + "shape"), relative to data_dir
    masks_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)

    instance: Mapped[Instance] = relationship(back_populates="result")
    findings: Mapped[list[Finding]] = relationship(
        back_populates="result", cascade="all, delete-orphan", passive_deletes=True
    )
    objects: Mapped[list[ResultObject]] = relationship(
        back_populates="result", cascade="all, delete-orphan", passive_deletes=True
    )


class Finding(Base):
    """One rule's finding (DESIGN §4 rule IDs)."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    family: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str | None] = mapped_column(String(16), nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    # [{"kind": "polygon", "points": [[x, y], ...], "label": ""}, ...] in source pixels
    geometry: Mapped[list[Any]] = mapped_column(JSON, default=list)

    result: Mapped[Result] = relationship(back_populates="findings")


class ResultObject(Base):
    """A result DICOM object (sr, sc, gsps, kos) written under ``data_dir/results``."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(512))  # relative to data_dir
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    result: Mapped[Result] = relationship(back_populates="objects")
    deliveries: Mapped[list[Outbox]] = relationship(
        back_populates="object", cascade="all, delete-orphan", passive_deletes=True
    )


class Outbox(Base):
    """One delivery: an object to a destination (``AE@HOST:PORT``). Written in the same
    transaction as the result, so a committed result is always delivered."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("object_id", "destination", name="uq_outbox_object_destination"),
        Index("ix_outbox_due", "destination", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    object: Mapped[ResultObject] = relationship(back_populates="deliveries")


class AuditEvent(Base):
    """Append-only log: associations, stores, refusals, QC, deliveries, dead letters."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), nullable=True
    )
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --- engines -------------------------------------------------------------------------


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(settings: Settings, *, readonly: bool = False) -> Engine:
    """An engine for ``settings.database``.

    SQLite: WAL, ``synchronous=FULL``, foreign keys on, and (unless ``readonly``) every
    transaction begins IMMEDIATE so that read-then-write transactions (claiming a job)
    queue on the busy timeout instead of failing with "database is locked". Readers (the
    dashboard) should pass ``readonly=True``: WAL lets them read while the node writes.
    """
    url = settings.database
    if _is_sqlite(url):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=10)


def make_sessions(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# --- migrations ----------------------------------------------------------------------


def alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", settings.database.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings) -> None:
    """``qcnode db upgrade``: apply the Alembic migrations up to head (idempotent)."""
    from alembic import command

    if _is_sqlite(settings.database):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        command.upgrade(alembic_config(settings), "head")
    except Exception as exc:  # alembic and drivers raise many kinds; one message for the user
        raise StorageError(f"database upgrade failed: {exc}") from exc
    log.info("database schema at head", extra={"database": _safe_url(settings.database)})


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
