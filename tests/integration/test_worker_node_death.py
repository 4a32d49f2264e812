"""Finding 22 with real processes: ``serve`` with QC in its child process (the default),
Orthanc as the PACS. The whole node SIGKILLed more often than ``job_max_attempts`` while
its QC child holds the same job: the image is still evaluated and its SR and SC land at
the PACS once. A poison image that kills the QC child under a live serve is still given
up, with a clear status, and ingest and the other images go on."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from qcnode.db import FAILED, RUNNING, Instance, Job, Result
from tests.conftest import Orthanc, Postgres, wait_for
from tests.integration.nodeproc import NodeProcess, descendants
from tests.integration.test_delivery import node_settings
from tests.reliability.support import (
    NOTHING_LOST,
    Modality,
    delivery_figures,
    mixed_images,
    nothing_lost,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


def holder(node: NodeProcess) -> str | None:
    """The worker id holding the one running job, if any (fails once it was given up)."""
    assert not node.query(select(Job.id).where(Job.state == FAILED)), "the job was given up"
    rows = node.query(select(Job.worker).where(Job.state == RUNNING))
    return str(rows[0][0]) if rows else None


@pytest.mark.slow
def test_whole_node_killed_more_than_max_attempts_during_one_job(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    node = NodeProcess(
        tmp_path / "n",
        fake_model=True,
        qc_process=True,
        env={"QCNODE_TEST_MODEL_SECONDS": "3"},  # the job is held ≥ 3 s per attempt
        **node_settings(tmp_path, orthanc, job_max_attempts=2),
    )
    node.start()
    try:
        m = Modality(port=node.port, images=mixed_images(1, seed=72, sizes=((512, 512),)))
        m.run_once()
        assert not m.pending()
        seen: set[str] = set()
        for _ in range(3):  # > job_max_attempts whole-node deaths mid-job
            wait_for(lambda: holder(node) not in (None, *seen), 120, "a new holder", step=0.05)
            seen.add(str(holder(node)))
            node.kill(tree=True)  # serve and its QC child at once
            node.start()
        figures = delivery_figures(node, orthanc, [str(m.images[0].SOPInstanceUID)], 120)
        assert nothing_lost(figures) == NOTHING_LOST, figures
        assert figures["evaluated"] == 1 and figures["jobs_given_up"] == 0, figures
        assert figures["objects_expected"] == 2, figures  # its SR and its SC
        ((attempts, error),) = node.query(select(Job.attempts, Job.error))
        assert attempts == 1 and error is None
        # released at start-up, or (when the killed QC child is still a zombie then, so it
        # looks alive) re-claimed after its lease: neither counts an attempt (asserted above)
        log = node.log()
        assert (
            "interrupted by the whole node's end: not counted" in log
            or "after its lease expired" in log
        )
    finally:
        node.stop()


@pytest.mark.slow
def test_poison_image_killing_the_qc_child_is_given_up(tmp_path: Path, orthanc: Orthanc) -> None:
    good, poison = mixed_images(2, seed=73, sizes=((256, 256),))
    node = NodeProcess(
        tmp_path / "n",
        fake_model=True,
        qc_process=True,
        env={"QCNODE_TEST_POISON_UID": str(poison.SOPInstanceUID)},
        **node_settings(tmp_path, orthanc, job_max_attempts=1),
    )
    node.start()
    try:
        assert node.proc is not None
        serve = node.proc.pid
        Modality(port=node.port, images=[poison]).run_once()
        wait_for(lambda: node.query(select(Job.id).where(Job.state == FAILED)), 120, "the give-up")
        assert node.proc.poll() is None  # serve lived through its child's deaths
        Modality(port=node.port, images=[good]).run_once()  # ingest and QC go on
        figures = delivery_figures(node, orthanc, [str(good.SOPInstanceUID)], 120)
        assert nothing_lost(figures) == NOTHING_LOST and figures["evaluated"] == 1, figures
        ((verdict, error),) = node.query(
            select(Result.verdict, Result.error)
            .join(Instance, Instance.id == Result.instance_id)
            .where(Instance.sop_instance_uid == str(poison.SOPInstanceUID))
        )
        assert verdict == "error" and "given up after 1 interrupted attempts" in error
        assert "its QC worker died each time" in error
        assert "died (exit -9): starting a new one" in node.log()
        assert descendants(serve)  # a QC child runs again
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_qcnode_worker_killed_with_its_child_on_postgres(
    tmp_path: Path, orthanc: Orthanc, postgres: Postgres
) -> None:
    """Scale-out: ``qcnode worker`` (QC in its child process) on PostgreSQL, killed with its
    child more often than job_max_attempts while holding the job; an ingest-only serve."""
    url = postgres.create_database("node_death")
    common = node_settings(tmp_path, orthanc, database_url=url, job_max_attempts=2)
    ingest = NodeProcess(tmp_path / "ingest", fake_model=True, **{**common, "workers": 0})
    worker = NodeProcess(
        tmp_path / "w",
        fake_model=True,
        role="worker",
        qc_process=True,
        env={"QCNODE_TEST_MODEL_SECONDS": "3"},
        **common,
    )
    ingest.start()
    try:
        worker.start()
        m = Modality(port=ingest.port, images=mixed_images(1, seed=74, sizes=((512, 512),)))
        m.run_once()
        assert not m.pending()
        seen: set[str] = set()
        for _ in range(3):
            wait_for(lambda: holder(ingest) not in (None, *seen), 120, "a new holder", step=0.05)
            seen.add(str(holder(ingest)))
            worker.kill(tree=True)
            worker.start()
        figures = delivery_figures(ingest, orthanc, [str(m.images[0].SOPInstanceUID)], 120)
        assert nothing_lost(figures) == NOTHING_LOST, figures
        assert figures["evaluated"] == 1 and figures["jobs_given_up"] == 0, figures
        assert figures["objects_expected"] == 2, figures
        ((attempts,),) = ingest.query(select(Job.attempts))
        assert attempts == 1
    finally:
        worker.stop()
        ingest.stop()
