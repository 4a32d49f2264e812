"""Job queue: claiming, leases, re-claiming a dead worker's job, ownership on finish."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from qcnode.config import Settings
from qcnode.db import DONE, QUEUED, RUNNING, Instance, Job, make_engine, make_sessions, upgrade
from qcnode.queue import JobQueue
from qcnode.testing import FakeClock


@pytest.fixture
def sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path)
    upgrade(settings)
    engine = make_engine(settings)
    yield make_sessions(engine)
    engine.dispose()


def add_jobs(sessions, n: int) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        for i in range(n):
            inst = Instance(sop_instance_uid=f"1.2.3.{i}", sop_class_uid="1.2", path=f"x/{i}")
            s.add(inst)
            s.flush()
            s.add(Job(instance_id=inst.id))


def test_claims_oldest_first_and_never_twice(sessions) -> None:  # type: ignore[no-untyped-def]
    add_jobs(sessions, 5)
    clock = FakeClock()
    a = JobQueue(sessions=sessions, worker_id="a", lease_seconds=60, clock=clock)
    b = JobQueue(sessions=sessions, worker_id="b", lease_seconds=60, clock=clock)
    first = a.claim(3)
    second = b.claim(3)
    assert [c.instance_id for c in first] == [1, 2, 3]
    assert [c.instance_id for c in second] == [4, 5]
    assert b.claim(3) == []
    assert a.counts() == {RUNNING: 5}


def test_expired_lease_is_reclaimed_and_old_holder_cannot_finish(sessions) -> None:  # type: ignore[no-untyped-def]
    add_jobs(sessions, 1)
    clock = FakeClock()
    dead = JobQueue(sessions=sessions, worker_id="dead", lease_seconds=10, clock=clock)
    alive = JobQueue(sessions=sessions, worker_id="alive", lease_seconds=10, clock=clock)
    (old,) = dead.claim(1)
    clock.advance(5)
    assert alive.claim(1) == []  # lease still valid
    clock.advance(6)
    (new,) = alive.claim(1)
    assert new.job_id == old.job_id and new.attempt == 2
    with sessions.begin() as s:
        assert dead.holds(s, old) is None
        job = alive.holds(s, new)
        assert job is not None
        JobQueue.finish(s, job)
    with sessions() as s:
        assert s.scalar(select(Job.state)) == DONE


def test_startup_requeues_jobs_of_dead_local_processes(sessions) -> None:  # type: ignore[no-untyped-def]
    add_jobs(sessions, 2)
    host = socket.gethostname()[:40]
    q = JobQueue(sessions=sessions, worker_id=f"{host}:999999999:x", lease_seconds=600)
    q.claim(1)
    live = JobQueue(sessions=sessions, worker_id=f"{host}:{os.getppid()}:y", lease_seconds=600)
    live.claim(1)
    assert q.release_dead_local() == 1
    with sessions() as s:
        states = {i: st for i, st in s.execute(select(Job.id, Job.state)).all()}
    assert states == {1: QUEUED, 2: RUNNING}


def test_sweep_removes_only_old_leftovers(tmp_path: Path) -> None:
    from qcnode.store import FileStore

    store = FileStore(root=tmp_path)
    old, new = store.tmp / "old.dcm", store.tmp / "new.dcm"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (0, 0))
    assert store.sweep_tmp() == 1
    assert not old.exists() and new.exists()


def test_a_job_started_before_runs_alone_and_defer_does_not_count(sessions) -> None:  # type: ignore[no-untyped-def]
    add_jobs(sessions, 4)
    clock = FakeClock()
    q = JobQueue(sessions=sessions, worker_id="w", lease_seconds=10, clock=clock)
    first = q.claim(2)
    clock.advance(11)  # the worker died holding two jobs
    (retry,) = q.claim(8)  # one of them, alone, not a batch with the fresh jobs
    assert retry.job_id == first[0].job_id and retry.attempt == 2
    with sessions.begin() as s:
        job = q.holds(s, retry)
        assert job is not None
        q.defer(job, 30)  # e.g. the disk is full: try again later, not a crash
    assert [c.job_id for c in q.claim(8)] == [first[1].job_id]  # the other dead one
    assert [c.job_id for c in q.claim(8)] == [3, 4]  # then the fresh ones, as a batch
    clock.advance(31)
    (again,) = q.claim(8)
    assert again.job_id == retry.job_id and again.attempt == 2  # the deferral did not count


# --- node death vs worker death (finding 22) -----------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Sessions on SQLite and on a real PostgreSQL (one fresh database per test)."""
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.create_database(f"queue_{os.getpid()}_{request.node.name[-40:]}".lower())
        settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings)
    engine = make_engine(settings)
    yield make_sessions(engine)
    engine.dispose()


def attempts(sessions) -> dict[int, int]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return dict(s.execute(select(Job.id, Job.attempts)).all())  # type: ignore[arg-type]


DEAD = 999_999_999  # above any pid_max: never a live process


def test_a_whole_node_death_is_not_counted_a_worker_death_under_a_live_run_is(any_db) -> None:  # type: ignore[no-untyped-def]
    sessions = any_db
    add_jobs(sessions, 4)
    host = socket.gethostname()[:40]
    current = f"{host}:{os.getpid()}:now"
    holders = [
        # 1: QC child of a run that ended (serve and child SIGKILLed together)
        (f"{host}:{DEAD - 1}:w", f"{host}:{DEAD}:old"),
        # 2: QC child of a run whose pid is ours now (a container's pid 1), another token
        (f"{host}:{DEAD - 2}:w", f"{host}:{os.getpid()}:old"),
        # 3: QC child died while this run (its serve) lives: maybe the image's fault
        (f"{host}:{DEAD - 3}:w", current),
        # 4: a worker without a supervisor (threads): nothing tells why it died
        (f"{host}:{DEAD - 4}:w", None),
    ]
    for worker, run in holders:
        JobQueue(sessions=sessions, worker_id=worker, lease_seconds=600, run_id=run).claim(1)
    assert attempts(sessions) == {1: 1, 2: 1, 3: 1, 4: 1}
    startup = JobQueue(sessions=sessions, worker_id="startup", lease_seconds=1, run_id=current)
    assert startup.release_dead_local() == 4
    assert attempts(sessions) == {1: 0, 2: 0, 3: 1, 4: 1}
    q = JobQueue(sessions=sessions, worker_id=f"{host}:{os.getpid()}:q", lease_seconds=60)
    assert [c.job_id for c in q.claim(8)] == [3]  # counted ones run alone first
    assert [c.job_id for c in q.claim(8)] == [4]
    again = q.claim(8)  # the spared ones are a batch again, on their first counted attempt
    assert [(c.job_id, c.attempt) for c in again] == [(1, 1), (2, 1)]


def test_repeated_node_deaths_never_give_up_worker_deaths_still_do(any_db) -> None:  # type: ignore[no-untyped-def]
    """Job 1 is interrupted by ten whole-node deaths, job 2 by ten deaths of its QC child
    under a live serve: only job 2's attempts add up (to the give-up count)."""
    sessions = any_db
    add_jobs(sessions, 2)
    host = socket.gethostname()[:40]
    live = f"{host}:{os.getpid()}:live"
    for n in range(10):
        dead_node = JobQueue(
            sessions=sessions,
            worker_id=f"{host}:{DEAD - 1}:a{n}",
            lease_seconds=600,
            run_id=f"{host}:{DEAD}:run{n}",
        )
        dead_child = JobQueue(
            sessions=sessions, worker_id=f"{host}:{DEAD - 2}:b{n}", lease_seconds=600, run_id=live
        )
        # a counted job is claimed first (alone), a spared one is fresh again
        order = (dead_node, dead_child) if n == 0 else (dead_child, dead_node)
        held = {q.claim(1)[0].job_id: q for q in order}
        assert held == {1: dead_node, 2: dead_child}
        JobQueue(
            sessions=sessions, worker_id="startup", lease_seconds=1, run_id=live
        ).release_dead_local()
    assert attempts(sessions) == {1: 0, 2: 10}


def test_an_expired_lease_of_a_dead_local_run_is_not_counted(any_db) -> None:  # type: ignore[no-untyped-def]
    sessions = any_db
    add_jobs(sessions, 1)
    host = socket.gethostname()[:40]
    clock = FakeClock()
    old = JobQueue(
        sessions=sessions,
        worker_id=f"{host}:{DEAD - 1}:w",
        lease_seconds=10,
        clock=clock,
        run_id=f"{host}:{DEAD}:old",
    )
    old.claim(1)
    clock.advance(11)
    other_host = JobQueue(
        sessions=sessions, worker_id="elsewhere:1:w", lease_seconds=10, clock=clock
    )
    (claim,) = other_host.claim(1)
    assert claim.attempt == 1  # the run that held it is gone: the node died, not the image
    clock.advance(11)  # this one dies too; its run (none: threads) cannot be checked
    (claim,) = old.claim(1)
    assert claim.attempt == 2
