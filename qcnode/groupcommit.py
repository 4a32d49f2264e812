"""Group commit of received instances: one transaction (one WAL fsync) for every
C-STORE that is waiting at that moment.

Each C-STORE may be answered only after its instance and job rows are durable. With one
association that is one commit per image, as before. With several associations at once,
per-image commits queue on SQLite's single write lock (whose busy handler sleeps in
growing steps) and each pays its own fsync. Here the first waiting handler becomes the
leader, commits every row queued so far in one transaction and wakes their handlers;
rows that arrive meanwhile form the next batch, led by one of them. No dedicated thread,
so a lone association pays nothing extra.

Rows are inserted with ``ON CONFLICT (sop_instance_uid) DO NOTHING`` (SQLite and
PostgreSQL): a SOP instance already kept (a concurrent duplicate) yields ``None`` instead
of failing the others in its batch. Any other database error fails the batch; its rows
are then retried one per transaction so that one bad row cannot fail its neighbours.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qcnode.db import QUEUED, Instance, Job
from qcnode.errors import StorageError

# Largest batch: bounds one transaction's time (a few hundred rows commit in milliseconds)
MAX_BATCH = 64


@dataclass(eq=False)
class _Waiter:
    row: dict[str, Any]
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to lead the next batch, not because it is done
    done: bool = False
    instance_id: int | None = None
    error: StorageError | None = None


class GroupCommit:
    """Commits instance + job rows for concurrent C-STORE handlers in shared batches."""

    def __init__(self, *, sessions: sessionmaker[Session], max_batch: int = MAX_BATCH) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._leading = False
        self.batches = 0  # transactions committed (for tests and the benchmark)
        bind = sessions.kw.get("bind")
        dialect = getattr(getattr(bind, "dialect", None), "name", "sqlite")
        upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._insert_instance = (
            upsert(Instance)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(Instance.id)
        )
        self._insert_job = insert(Job)

    def commit(self, row: dict[str, Any]) -> int | None:
        """Insert an instance (``row``: its column values) and its queued job durably;
        returns the instance id, or ``None`` if that SOP instance is already kept.
        Blocks until the batch holding the row is committed; raises StorageError."""
        me = _Waiter(row)
        with self._lock:
            self._queue.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            me.woken.wait()
            lead = me.lead and not me.done
        if lead:
            self._lead()
        if me.error is not None:
            raise me.error
        return me.instance_id

    def _lead(self) -> None:
        """Commit one batch (which includes the leader's own row), wake its handlers and
        hand the lead to a handler still waiting, if any."""
        with self._lock:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        self._commit_batch(batch)
        with self._lock:
            self.batches += 1
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._leading = False
            else:
                successor.lead = True
        for waiter in batch:
            waiter.done = True
            waiter.woken.set()
        if successor is not None:
            successor.woken.set()

    def _commit_batch(self, batch: list[_Waiter]) -> None:
        try:
            with self.sessions.begin() as session:
                conn = session.connection()
                for waiter in batch:
                    waiter.instance_id = self._insert(conn, waiter.row)
            return
        except SQLAlchemyError as exc:
            if len(batch) == 1:
                batch[0].instance_id = None
                batch[0].error = StorageError(f"database: {exc.__class__.__name__}")
                return
        for waiter in batch:  # isolate the bad row
            self._commit_batch([waiter])

    def _insert(self, conn: Connection, row: dict[str, Any]) -> int | None:
        instance_id = conn.execute(self._insert_instance, row).scalar_one_or_none()
        if instance_id is None:
            return None
        conn.execute(self._insert_job, {"instance_id": instance_id, "state": QUEUED, "attempts": 0})
        return int(instance_id)
