"""Faults with real processes (node, Orthanc as the PACS, SQLite/PostgreSQL, a real file
system): SIGKILL at random points (repeated), the PACS killed under load then back, the
database locked, the disk full. In each case: nothing acknowledged is lost and every
result lands at the PACS exactly once.

CI sizes are small; scripts/reliability repeats them longer (≥ 20 kills, PACS down for
minutes) and writes the figures in docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from qcnode.db import RUNNING, Job
from qcnode.ingest import DISK_FULL, OUT_OF_RESOURCES
from tests.conftest import Orthanc, Postgres, wait_for
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import assert_delivered_once, node_settings
from tests.reliability.support import (
    NOTHING_LOST,
    Modality,
    delivery_figures,
    mixed_images,
    nothing_lost,
)

# A node SIGKILLed mid-association leaves pynetdicom's requestor socket to the garbage
# collector (a ResourceWarning at an arbitrary later moment): not what these tests judge.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


def run_modalities(port: int, count: int, per: int, seed: int) -> list[Modality]:
    return [
        Modality(port=port, images=mixed_images(per, seed=seed + m), ae_title=f"MOD{m}").start(
            deadline_s=240
        )
        for m in range(count)
    ]


def sources(modalities: list[Modality]) -> list[str]:
    return [str(ds.SOPInstanceUID) for m in modalities for ds in m.images]


def kill_pacs(pacs: Orthanc) -> None:
    """SIGKILL, not a clean stop: an association may be cut mid C-STORE."""
    assert pacs.process is not None
    pacs.process.kill()
    pacs.process.wait(30)
    pacs.process = None


def repeated_sigkill(
    node: NodeProcess, modalities: list[Modality], kills: int, rng: random.Random
) -> list[float]:
    """Kill the node ``kills`` times at random moments while the modalities send and the
    worker and sender work; restart it each time. Returns when each kill happened (s)."""
    moments = []
    for _ in range(kills):
        delay = rng.uniform(0.3, 2.5)
        time.sleep(delay)  # a random point in ingest / QC / delivery, not a wait for a state
        node.kill()
        moments.append(delay)
        node.start()
    return moments


@pytest.mark.slow
def test_repeated_sigkill_at_random_points(tmp_path: Path, orthanc: Orthanc) -> None:
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    try:
        modalities = run_modalities(node.port, count=2, per=5, seed=11)
        repeated_sigkill(node, modalities, kills=3, rng=random.Random(8))
        for m in modalities:
            m.join(240)
        assert all(not m.pending() for m in modalities)
        figures = delivery_figures(node, orthanc, sources(modalities), timeout=180)
        # An image whose batch was cut by three kills may be "given up" (request 10,
        # pinned by the next test): it has an error result, so it is not lost, but it
        # gets no SR, and an SR delivered before it was given up stays at the PACS
        # unknown to the node. Everything else is evaluated and delivered exactly once.
        unexpected = figures.pop("objects_unexpected_at_pacs")
        assert unexpected <= figures["given_up"], figures
        assert nothing_lost({**figures, "objects_unexpected_at_pacs": 0}) == NOTHING_LOST
        assert figures["evaluated"] + figures["given_up"] == figures["acknowledged"], figures
    finally:
        node.stop()


@pytest.mark.slow
def test_three_kills_during_one_job_do_not_give_the_image_up(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """Kill the node three times while the worker holds the same job (a deploy, an OOM
    kill of a neighbour, power): the image is still QC'd and its SR delivered."""
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    try:
        m = Modality(port=node.port, images=mixed_images(1, seed=71, sizes=((2048, 2048),)))
        m.run_once()
        assert not m.pending()
        for attempt in (1, 2, 3):
            wait_for(
                lambda a=attempt: node.query(
                    select(Job.id).where(Job.state == RUNNING, Job.attempts == a)
                ),
                60,
                f"the worker to hold the job (attempt {attempt})",
                step=0.02,
            )
            node.kill()
            node.start()
        figures = delivery_figures(node, orthanc, sources([m]), timeout=60)
        assert figures["evaluated"] == 1, figures
    finally:
        node.stop()


@pytest.mark.slow
def test_pacs_killed_under_load_then_back(tmp_path: Path, orthanc: Orthanc) -> None:
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    try:
        modalities = run_modalities(node.port, count=4, per=4, seed=21)
        wait_for(lambda: orthanc.count() >= 2, 60, "the first results at the PACS")
        kill_pacs(orthanc)  # mid-delivery
        for m in modalities:  # ingest does not depend on the PACS: all acknowledged
            m.join(120)
        assert all(not m.pending() for m in modalities)
        wait_for(lambda: "delivery to ORTHANC" in node.log(), 120, "a failed delivery attempt")
        orthanc.start()
        figures = delivery_figures(node, orthanc, sources(modalities), timeout=120)
        assert nothing_lost(figures) == NOTHING_LOST, figures
        assert figures["evaluated"] == figures["acknowledged"], figures
    finally:
        node.stop()


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another process's exclusive write lock on the node's SQLite database."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.mark.slow
def test_sqlite_locked_by_another_process(tmp_path: Path, orthanc: Orthanc) -> None:
    """Locked for 5 s (under the 30 s busy timeout): C-STOREs wait, none is refused or lost."""
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    try:
        with sqlite_locked(node.settings.data_dir / "qcnode.sqlite"):
            modalities = run_modalities(node.port, count=2, per=3, seed=31)
            time.sleep(5)  # the lock is the fault; its length is the test's parameter
        for m in modalities:
            m.join(120)
        assert all(not m.pending() for m in modalities)
        assert all(set(m.statuses) == {0} for m in modalities)
        assert max(lat for m in modalities for lat in m.latencies_ms) > 3000  # it did wait
        assert_delivered_once(node, orthanc, sources(modalities))
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_tables_locked(tmp_path: Path, orthanc: Orthanc, postgres: Postgres) -> None:
    """ACCESS EXCLUSIVE locks on jobs and outbox for 5 s: everything waits, nothing is lost."""
    url = postgres.create_database("reliability_lock")
    node = NodeProcess(
        tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc, database_url=url)
    )
    node.start()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("LOCK TABLE jobs, outbox IN ACCESS EXCLUSIVE MODE")
            modalities = run_modalities(node.port, count=2, per=3, seed=41)
            time.sleep(5)
        for m in modalities:
            m.join(120)
        assert all(not m.pending() for m in modalities)
        assert_delivered_once(node, orthanc, sources(modalities))
    finally:
        engine.dispose()
        node.stop()


@contextlib.contextmanager
def small_filesystem(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` at ``path`` (needs root and mount rights, else skip)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path, leave_bytes: int) -> Path:
    """Fill a file system until about ``leave_bytes`` are free."""
    filler = path / "filler.bin"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with filler.open("wb") as f:
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = f.write(chunk[: min(len(chunk), remaining)])
            remaining -= n
        f.flush()
        os.fsync(f.fileno())
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("guard", [True, False], ids=["free-space-guard", "real-ENOSPC"])
def test_disk_nearly_full_refuses_then_recovers(
    tmp_path: Path, orthanc: Orthanc, guard: bool
) -> None:
    """With the guard (min_free_disk_bytes) the node answers 0xA702 before writing; without
    it the write itself fails (ENOSPC) and the answer is 0xA700. Either way the modality
    keeps the image; once space is back it re-sends and every result lands once."""
    with small_filesystem(tmp_path / "small", 48) as small:
        settings = node_settings(
            tmp_path,
            orthanc,
            data_dir=str(small / "node"),
            min_free_disk_bytes=(4 << 20) if guard else 0,
        )
        node = NodeProcess(tmp_path / "n", fake_model=True, **settings)
        node.start()
        try:
            filler = fill(small, leave_bytes=(3 << 20))
            m = Modality(port=node.port, images=mixed_images(3, seed=51, sizes=((1024, 1024),)))
            m.run_once()
            if guard:  # refused before anything is written, with the named status
                assert m.statuses.get(DISK_FULL, 0) >= 1, m.statuses
            else:  # the write fails mid-reception: pynetdicom aborts the association
                assert m.statuses.get(-1, 0) + m.statuses.get(OUT_OF_RESOURCES, 0) >= 1
            assert len(m.acknowledged) < len(m.images)
            filler.unlink()
            m.start(deadline_s=120)
            m.join(150)
            assert not m.pending()
            assert_delivered_once(node, orthanc, [str(ds.SOPInstanceUID) for ds in m.images])
        finally:
            node.stop()


@pytest.mark.slow
def test_sigkill_while_the_modality_is_mid_dataset(tmp_path: Path, orthanc: Orthanc) -> None:
    """A kill while a large dataset streams in: its partial file is never taken for kept."""
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    try:
        # 18 MB uncompressed: big enough that a 2 ms poll sees it half received even on an
        # idle machine (an 8 MB dataset sometimes arrived whole between two polls).
        m = Modality(port=node.port, images=mixed_images(1, seed=61, sizes=((3072, 3072),)))
        thread = threading.Thread(target=m.run_once)
        thread.start()
        wait_for(
            lambda: any(
                p.stat().st_size > 1 << 20 for p in (node.settings.data_dir / "tmp").iterdir()
            ),
            60,
            "a dataset half received",
            step=0.002,
        )
        node.kill()
        thread.join(60)
        node.start()
        m.start(deadline_s=120)
        m.join(150)
        assert not m.pending()
        assert_delivered_once(node, orthanc, [str(ds.SOPInstanceUID) for ds in m.images])
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_disk_full_while_the_worker_writes_results(
    tmp_path: Path, orthanc: Orthanc, postgres: Postgres
) -> None:
    """Scale-out layout (PostgreSQL, data_dir a volume): images kept, then the volume fills
    before QC. Once space is back their SR and SC must still be made and delivered: the
    worker must not commit a result whose objects it could not write."""
    url = postgres.create_database("reliability_disk")
    with small_filesystem(tmp_path / "small", 48) as small:
        settings = node_settings(
            tmp_path, orthanc, data_dir=str(small / "node"), min_free_disk_bytes=0, database_url=url
        )
        ingest = NodeProcess(tmp_path / "n", fake_model=True, **{**settings, "workers": 0})
        ingest.start()
        worker = NodeProcess(tmp_path / "w", fake_model=True, role="worker", **settings)
        try:
            m = Modality(port=ingest.port, images=mixed_images(2, seed=81))
            m.run_once()
            assert not m.pending()
            filler = fill(small, leave_bytes=0)
            worker.start()
            wait_for(lambda: len(ingest.results()) == 2, 60, "results while the disk is full")
            filler.unlink()
            figures = delivery_figures(ingest, orthanc, sources([m]), timeout=20)
            assert nothing_lost(figures) == NOTHING_LOST, figures
        finally:
            worker.stop()
            ingest.stop()
