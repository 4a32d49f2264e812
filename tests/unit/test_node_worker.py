"""The worker over a real database and file store, with the model faked (FakePredictor
answering phantom masks) and the real rules and report builders."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from qcnode.config import Destination, Settings
from qcnode.db import (
    DONE,
    Finding,
    Instance,
    Job,
    Outbox,
    Result,
    ResultObject,
    make_engine,
    make_sessions,
    upgrade,
    utcnow,
)
from qcnode.node import EngineAnalyzer, ReportBuilder
from qcnode.queue import JobQueue
from qcnode.records import View
from qcnode.store import FileStore
from qcnode.testing import FakePredictor, frontal_phantom
from qcnode.worker import Worker
from tests.conftest import radiograph, write

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104, objects=("sr", "sc"))
ARCHIVE = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=105, objects=("sr",))


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, destinations=(PACS, ARCHIVE), batch_size=4)
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_sessions(engine)
    store = FileStore(root=tmp_path)
    yield settings, sessions, store
    engine.dispose()


def receive(sessions, store: FileStore, tmp_path: Path, **kw) -> int:  # type: ignore[no-untyped-def]
    ds = radiograph(rows=400, columns=400, **kw)
    src = write(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm")
    rel, size = store.keep_received(src, ds.SOPInstanceUID)
    with sessions.begin() as s:
        inst = Instance(
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            path=rel,
            size_bytes=size,
            applicable=kw.get("body_part", "CHEST") == "CHEST",
        )
        s.add(inst)
        s.flush()
        s.add(Job(instance_id=inst.id))
        return inst.id


def make_worker(settings, sessions, store, predictor) -> Worker:  # type: ignore[no-untyped-def]
    return Worker(
        settings=settings,
        sessions=sessions,
        store=store,
        queue=JobQueue(sessions=sessions, worker_id="w", lease_seconds=60),
        analyzer=EngineAnalyzer(predictor=predictor, settings=settings),
        builder=ReportBuilder(settings=settings),
        wake=threading.Event(),
    )


def phantom_predictor() -> FakePredictor:
    return FakePredictor(source=lambda image: (View.FRONTAL, frontal_phantom(image.pixels.shape)))


def test_batch_stores_results_findings_objects_and_outbox(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    ids = [receive(sessions, store, tmp_path, seed=i) for i in range(3)]
    knee = receive(sessions, store, tmp_path, body_part="KNEE")
    predictor = phantom_predictor()
    worker = make_worker(settings, sessions, store, predictor)
    assert worker.run_once() == 4
    assert predictor.calls == [3]  # one batched model call; the knee never reaches the model
    with sessions() as s:
        assert set(s.scalars(select(Job.state))) == {DONE}
        results = {r.instance_id: r for r in s.scalars(select(Result))}
        assert results[knee].verdict == "not_applicable"
        for i in ids:
            r = results[i]
            assert r.verdict in ("pass", "warn", "fail") and r.view == "frontal"
            assert r.model_name == "fake" and r.masks_path
            assert (settings.data_dir / r.masks_path).is_file()
            assert {"decode", "model", "rules"} <= set(r.timings_ms)
            findings = list(s.scalars(select(Finding).where(Finding.result_id == r.id)))
            assert any(f.rule == "positioning.rotation" for f in findings)
            objs = list(s.scalars(select(ResultObject).where(ResultObject.result_id == r.id)))
            assert sorted(o.kind for o in objs) == ["sc", "sr"]
            for o in objs:
                assert (settings.data_dir / o.path).is_file()
                dests = set(s.scalars(select(Outbox.destination).where(Outbox.object_id == o.id)))
                want = {"PACS@127.0.0.1:104"} | (
                    {"ARCHIVE@127.0.0.1:105"} if o.kind == "sr" else set()
                )
                assert dests == want


def test_rerun_gives_the_same_object_uids(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    receive(sessions, store, tmp_path)
    worker = make_worker(settings, sessions, store, phantom_predictor())
    worker.run_once()
    with sessions() as s:
        first = sorted(s.scalars(select(ResultObject.sop_instance_uid)))
    with sessions.begin() as s:  # queue it again, as a re-run would
        job = s.scalar(select(Job))
        assert job is not None
        job.state = "queued"
    worker.run_once()
    with sessions() as s:
        assert sorted(s.scalars(select(ResultObject.sop_instance_uid))) == first
        assert len(list(s.scalars(select(Result)))) == 1


def test_unreadable_pixels_give_an_error_result(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    receive(sessions, store, tmp_path, pixel_data=False)
    big = radiograph(rows=400, columns=400)
    big.Rows = 60000
    big.Columns = 60000
    src = write(big, tmp_path / "big.dcm")
    rel, _ = store.keep_received(src, big.SOPInstanceUID)
    with sessions.begin() as s:
        inst = Instance(
            sop_instance_uid=big.SOPInstanceUID, sop_class_uid=big.SOPClassUID, path=rel
        )
        s.add(inst)
        s.flush()
        s.add(Job(instance_id=inst.id))
    worker = make_worker(settings, sessions, store, phantom_predictor())
    assert worker.run_once() == 2
    with sessions() as s:
        results = list(s.scalars(select(Result).order_by(Result.instance_id)))
        assert [r.verdict for r in results] == ["error", "error"]
        assert "pixel data" in (results[0].error or "")
        assert "too large" in (results[1].error or "")
        assert not list(s.scalars(select(Outbox)))


def test_sr_is_committed_before_the_overlay_is_built(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Phase 1 hands the SR to the sender while the SC is still being drawn."""
    settings, sessions, store = env
    receive(sessions, store, tmp_path)
    real = ReportBuilder(settings=settings)
    drawing, release = threading.Event(), threading.Event()

    class SlowOverlay:
        def build(self, source, image, prediction, result, *, objects):  # type: ignore[no-untyped-def]
            if "sc" in objects:
                drawing.set()
                assert release.wait(30)
            return real.build(source, image, prediction, result, objects=objects)

    worker = make_worker(settings, sessions, store, phantom_predictor())
    worker.builder = SlowOverlay()
    woken: list[int] = []
    worker.on_result = lambda: woken.append(1)
    t = threading.Thread(target=worker.run_once)
    t.start()
    assert drawing.wait(30)
    with sessions() as s:
        assert s.scalar(select(Job.state)) == "running"
        assert list(s.scalars(select(ResultObject.kind))) == ["sr"]
        assert len(list(s.scalars(select(Outbox)))) == 2  # PACS and ARCHIVE get the SR
    assert woken == [1]  # the sender was woken for the SR
    release.set()
    t.join(30)
    with sessions() as s:
        assert s.scalar(select(Job.state)) == DONE
        assert sorted(s.scalars(select(ResultObject.kind))) == ["sc", "sr"]
        assert s.scalar(select(Result.masks_path))


def test_each_destination_gets_the_objects_it_asked_for(tmp_path) -> None:  # type: ignore[no-untyped-def]
    viewer = Destination(ae_title="VIEWER", host="h", port=1, objects=("gsps", "kos"))
    settings = Settings(data_dir=tmp_path, destinations=(PACS, viewer), kos_when="always")
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_sessions(engine)
    store = FileStore(root=tmp_path)
    receive(sessions, store, tmp_path)
    make_worker(settings, sessions, store, phantom_predictor()).run_once()
    with sessions() as s:
        rows = s.execute(
            select(ResultObject.kind, Outbox.destination).join(
                Outbox, Outbox.object_id == ResultObject.id
            )
        ).all()
    engine.dispose()
    assert sorted(rows) == [
        ("gsps", "VIEWER@h:1"),
        ("kos", "VIEWER@h:1"),
        ("sc", "PACS@127.0.0.1:104"),
        ("sr", "PACS@127.0.0.1:104"),
    ]


def test_objects_not_written_defer_the_job_until_they_can_be(env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Disk full while writing the SR: the verdict is kept, the job is redone later (not
    counted as a crash), and then the SR and SC are written and queued for delivery."""
    from qcnode.errors import StorageError
    from qcnode.testing import FakeClock

    settings, sessions, store = env
    receive(sessions, store, tmp_path)
    clock = FakeClock(start=utcnow())
    worker = make_worker(settings, sessions, store, phantom_predictor())
    worker.queue.clock = clock
    real_write = store.write_object

    def full(ds):  # type: ignore[no-untyped-def]
        raise StorageError("No space left on device")

    monkeypatch.setattr(store, "write_object", full)
    assert worker.run_once() == 1
    with sessions() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "running" and job.attempts == 0
        assert s.scalar(select(Result.verdict)) in ("pass", "warn", "fail")
        assert not list(s.scalars(select(ResultObject)))
    assert worker.run_once() == 0  # not before the retry delay
    monkeypatch.setattr(store, "write_object", real_write)
    clock.advance(60)
    assert worker.run_once() == 1
    with sessions() as s:
        assert s.scalar(select(Job.state)) == DONE
        assert sorted(s.scalars(select(ResultObject.kind))) == ["sc", "sr"]
        assert len(list(s.scalars(select(Outbox)))) == 3  # SR to both, SC to PACS


def _requeue_exhausted(s: Session, settings: Settings) -> None:
    """The only job queued again with every attempt spent (its workers all died)."""
    job = s.scalar(select(Job))
    assert job is not None
    job.state, job.attempts = "queued", settings.job_max_attempts


def test_giving_up_keeps_a_result_already_delivered(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    receive(sessions, store, tmp_path)
    worker = make_worker(settings, sessions, store, phantom_predictor())
    worker.run_once()
    with sessions() as s:
        before = sorted(s.scalars(select(ResultObject.sop_instance_uid)))
        verdict = s.scalar(select(Result.verdict))
    with sessions.begin() as s:  # as if every later attempt had died with its worker
        _requeue_exhausted(s, settings)
    assert worker.run_once() == 1
    with sessions() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "failed" and "given up" in (job.error or "")
        assert s.scalar(select(Result.verdict)) == verdict  # not replaced by an error
        assert sorted(s.scalars(select(ResultObject.sop_instance_uid))) == before


def test_giving_up_after_the_sr_says_which_objects_never_come(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Finding 22's end state, when it still happens (a worker without a supervisor): the
    job's status names what the kept result lacks."""
    settings, sessions, store = env
    receive(sessions, store, tmp_path)
    worker = make_worker(settings, sessions, store, phantom_predictor())
    worker.run_once()
    with sessions.begin() as s:  # as if only phase 1 had committed, then five deaths
        s.execute(delete(ResultObject).where(ResultObject.kind == "sc"))
        _requeue_exhausted(s, settings)
    assert worker.run_once() == 1
    with sessions() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "failed"
        assert job.error is not None and job.error.startswith("given up after 5 interrupted")
        assert job.error.endswith("the kept result of an earlier attempt has no sc")
        assert sorted(s.scalars(select(ResultObject.kind))) == ["sr"]
