"""Scale-out on a real PostgreSQL: an ingest node (no workers) and two worker processes
claiming jobs with FOR UPDATE SKIP LOCKED; one worker is SIGKILLed mid-way and its jobs
are re-claimed after their lease. Every image is QC'd once and delivered once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from qcnode.db import DONE, Job
from tests.conftest import Orthanc, Postgres, radiograph, wait_for
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import assert_delivered_once, node_settings, stream


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_one_killed(tmp_path: Path, orthanc: Orthanc, postgres: Postgres) -> None:
    url = postgres.create_database("scaleout")
    common = node_settings(tmp_path, orthanc, database_url=url, lease_seconds=3, batch_size=2)
    ingest = NodeProcess(tmp_path / "ingest", fake_model=True, **{**common, "workers": 0})
    workers = [
        NodeProcess(tmp_path / f"w{n}", fake_model=True, role="worker", **common) for n in range(2)
    ]
    ingest.start()
    try:
        for w in workers:
            w.start()
        images = [radiograph(rows=400, columns=400, seed=i) for i in range(16)]
        acknowledged: list[str] = []
        stream(ingest.port, images, acknowledged, threading.Event())
        assert len(acknowledged) == len(images)
        wait_for(lambda: len(ingest.results()) >= 3, 120, "the first results")
        workers[0].kill()
        assert_delivered_once(ingest, orthanc, acknowledged)
        jobs = ingest.query(select(Job.state, Job.worker))
        assert {state for state, _ in jobs} == {DONE}
        assert len(jobs) == len(images)
        assert len(ingest.results()) == len(images)
    finally:
        for w in workers:
            w.stop()
        ingest.stop()
