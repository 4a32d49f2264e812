"""Load with real processes: 8 modalities at once, mixed sizes and transfer syntaxes
(native and compressed), the worker running, Orthanc as the PACS.

Checked: every image is acknowledged (0 lost at the modality), every acknowledged image's
SR and SC are at the PACS exactly once (0 lost, 0 duplicated), and the node's memory stays
bounded: ingest streams each dataset to disk (chunked receive), so receiving large
datasets does not grow the process by their size. scripts/reliability runs the same with
8 × 200 images and larger files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from qcnode.db import Instance
from tests.conftest import Orthanc, free_port, radiograph, storescu, wait_for, write
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import assert_delivered_once, node_settings
from tests.reliability.support import MemoryWatch, Modality, memory_kib, mixed_images

ASSOCIATIONS = 8
PER_ASSOCIATION = 2  # CI; scripts/reliability uses 200


@pytest.mark.slow
def test_eight_concurrent_modalities_nothing_lost_nothing_twice(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    watch = MemoryWatch()
    assert node.proc is not None
    watch.pid = node.proc.pid
    try:
        modalities = [
            Modality(
                port=node.port,
                images=mixed_images(PER_ASSOCIATION, seed=m),
                ae_title=f"MOD{m}",
            ).start(deadline_s=120)
            for m in range(ASSOCIATIONS)
        ]
        for m in modalities:
            m.join(150)
        sent = [str(ds.SOPInstanceUID) for m in modalities for ds in m.images]
        assert all(not m.pending() for m in modalities), [m.statuses for m in modalities]
        assert all(set(m.statuses) == {0} for m in modalities)  # no refusal under load
        assert len(set(sent)) == ASSOCIATIONS * PER_ASSOCIATION
        assert_delivered_once(node, orthanc, sent)
    finally:
        watch.close()
        node.stop()
    assert 0 < watch.peak_kib < 1_500_000  # a fake-model node stays well under 1.5 GB


def test_receiving_large_datasets_does_not_grow_the_node(tmp_path: Path) -> None:
    """Ingest only: three 48 MB datasets raise the node's peak RSS by far less than one."""
    node = NodeProcess(
        tmp_path / "n",
        fake_model=True,
        data_dir=str(tmp_path / "node"),
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        workers=0,
        min_free_disk_bytes=0,
    )
    node.start()
    try:
        assert node.proc is not None
        big = radiograph(rows=4900, columns=4900, seed=1)  # 48 MB of pixels
        paths = []
        for i in range(3):
            big.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1176.9.{i}"
            big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
            paths.append(write(big, tmp_path / f"big{i}.dcm"))
        before = memory_kib(node.proc.pid)["VmHWM"]
        run = storescu(node.port, paths)
        assert run.returncode == 0, run.stderr
        wait_for(lambda: len(node.query(select(Instance.id))) == 3, 60, "three kept instances")
        grown = memory_kib(node.proc.pid)["VmHWM"] - before
        assert grown < 24 * 1024, f"peak RSS grew by {grown} KiB receiving 3 × 48 MB"
    finally:
        node.stop()


def test_cstore_storm_every_request_answered_and_kept(tmp_path: Path) -> None:
    """The storm harness (tests/reliability/storm.py; finding 23) in small: concurrent
    requestors, short associations, tiny datasets against the real ingest in its own
    process; every C-STORE answered, every acknowledged instance kept."""
    from tests.reliability import storm

    out = tmp_path / "out"
    storm.OUT = out
    assert storm.main(["--threads", "3", "--stores", "300", "--per-assoc", "25"]) == 0
    figures = json.loads((out / "storm-ingest.json").read_text())
    assert figures["c_stores_sent"] == 300 and figures["no_response"] == 0
    assert figures["associations"] == 12
    assert figures["instances_acknowledged"] == 75 and figures["acknowledged_not_kept"] == 0
