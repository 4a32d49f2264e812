"""Group commit of received instances on a real database (SQLite; PostgreSQL too)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from qcnode.config import Settings
from qcnode.db import Instance, Job, make_engine, make_sessions, upgrade
from qcnode.errors import StorageError
from qcnode.groupcommit import GroupCommit


def _row(uid: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sop_instance_uid": uid,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
        "path": f"instances/00/{uid}.dcm",
        "size_bytes": 1,
    }
    row.update(over)
    return row


def _group(settings: Settings) -> tuple[GroupCommit, Any]:
    upgrade(settings)
    engine = make_engine(settings)
    return GroupCommit(sessions=make_sessions(engine)), engine


def _concurrent(group: GroupCommit, rows: list[dict[str, Any]]) -> list[Any]:
    """Commit every row from its own thread, all released at once."""
    results: list[Any] = [None] * len(rows)
    start = threading.Barrier(len(rows))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = group.commit(rows[i])
        except StorageError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _check_batches(settings: Settings) -> None:
    group, engine = _group(settings)
    try:
        assert group.commit(_row("1.2.3.0")) is not None  # alone: a batch of one
        assert group.batches == 1
        ids = _concurrent(group, [_row(f"1.2.3.{i}") for i in range(1, 25)])
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 24
        assert group.batches < 1 + 24  # some handlers shared a transaction
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Instance)) == 25
            jobs = conn.execute(select(Job.instance_id, Job.state)).all()
        assert sorted(j.instance_id for j in jobs) == sorted([*ids, 1])
        assert {j.state for j in jobs} == {"queued"}
        # an instance already kept (a concurrent duplicate) is None, not an error
        assert group.commit(_row("1.2.3.5")) is None
    finally:
        engine.dispose()


def test_group_commit_sqlite(tmp_path: Path) -> None:
    _check_batches(Settings(data_dir=tmp_path))


@pytest.mark.postgres
def test_group_commit_postgres(postgres) -> None:  # type: ignore[no-untyped-def]
    _check_batches(Settings(database_url=postgres.create_database("groupcommit")))


def test_a_bad_row_fails_alone(tmp_path: Path) -> None:
    group, engine = _group(Settings(data_dir=tmp_path))
    try:
        rows = [_row(f"1.2.4.{i}") for i in range(8)]
        rows[3]["path"] = None  # NOT NULL: the statement fails for this row only
        results = _concurrent(group, rows)
        assert isinstance(results[3], StorageError)
        assert all(isinstance(r, int) for i, r in enumerate(results) if i != 3)
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Instance)) == 7
    finally:
        engine.dispose()
