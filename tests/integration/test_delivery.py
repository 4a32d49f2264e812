"""Delivery guarantees with real processes and a real PACS (Orthanc).

The node is a real process (fake model: instant, always "frontal chest"), so it can be
SIGKILLed at any moment. What is checked: every image that got a C-STORE success is
QC'd and its SR and SC are at the PACS exactly once; a PACS that is down gets everything
once it is back.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from qcnode.report.validate import assert_valid, dsrdump
from tests.conftest import Orthanc, free_port, radiograph, wait_for
from tests.integration.nodeproc import NodeProcess

DX = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"


def node_settings(tmp_path: Path, pacs: Orthanc, **extra: object) -> dict[str, object]:
    return {
        "data_dir": str(tmp_path / "node"),
        "bind_address": "127.0.0.1",
        "port": free_port(),
        "web_port": 0,
        "destinations": [pacs.destination],
        "batch_size": 4,
        "batch_max_wait_ms": 20,
        "lease_seconds": 5,
        "send_backoff_seconds": 0.3,
        "send_max_attempts": 50,
        **extra,
    }


def stream(port: int, images: list, acknowledged: list[str], stop: threading.Event) -> None:  # type: ignore[type-arg]
    """A modality: C-STORE each image; remember the ones that got success."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DX, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    if not assoc.is_established:
        return
    for ds in images:
        if stop.is_set():
            break
        try:
            status = assoc.send_c_store(ds)
        except (RuntimeError, OSError, ValueError):
            break
        if int(status.get("Status", -1)) == 0:
            acknowledged.append(str(ds.SOPInstanceUID))
        elif not assoc.is_established:
            break
    if assoc.is_established:
        assoc.release()
    else:  # the node died under us: close what pynetdicom leaves open
        assoc.abort()
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.close()


def sop_uids_at(pacs: Orthanc) -> list[str]:
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.instances()]


def assert_delivered_once(node: NodeProcess, pacs: Orthanc, sources: list[str]) -> None:
    def done() -> bool:
        objects = node.objects()
        want = {uid for src in sources for _, uid in objects.get(src, [])}
        have = set(sop_uids_at(pacs))
        return all(len(objects.get(src, [])) == 2 for src in sources) and want <= have

    wait_for(done, 180, "every acknowledged image's SR and SC at the PACS", step=0.5)
    objects = node.objects()
    expected = sorted(uid for src in sources for _, uid in objects[src])
    for src in sources:
        assert sorted(kind for kind, _ in objects[src]) == ["sc", "sr"]
    at_pacs = sop_uids_at(pacs)
    assert sorted(at_pacs) == expected  # nothing missing, nothing twice, nothing else
    assert pacs.count() == len(expected)


@pytest.mark.slow
# the modality's association dies with the node: pynetdicom leaves its socket to the GC
@pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")
def test_sigkill_during_a_stream_then_restart(tmp_path: Path, orthanc: Orthanc) -> None:
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    images = [radiograph(rows=400, columns=400, seed=i) for i in range(16)]
    acknowledged: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=stream, args=(node.port, images, acknowledged, stop))
    sender.start()
    wait_for(lambda: len(acknowledged) >= 6, 60, "the first acknowledged images")
    node.kill()  # mid-stream: ingest, worker and sender all die where they are
    stop.set()
    sender.join(timeout=60)
    assert 6 <= len(acknowledged) < len(images)
    node.start()
    # the modality re-sends what was not acknowledged (and, harmlessly, one that was)
    rest = [ds for ds in images if str(ds.SOPInstanceUID) not in acknowledged]
    again: list[str] = []
    stream(node.port, [images[0], *rest], again, threading.Event())
    assert len(again) == len(rest) + 1
    # and again while it catches up: results half-committed, deliveries in flight
    wait_for(lambda: len(sop_uids_at(orthanc)) >= 4, 60, "the first deliveries")
    node.kill()
    node.start()
    try:
        assert_delivered_once(node, orthanc, [str(ds.SOPInstanceUID) for ds in images])
    finally:
        node.stop()
    assert "re-claim" in node.log() or "requeued" in node.log()  # the dead worker's jobs
    gc.collect()  # the dead association's socket, under this test's warning filter


@pytest.mark.slow
def test_pacs_down_then_up(tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.stop()
    node = NodeProcess(tmp_path / "n", fake_model=True, **node_settings(tmp_path, orthanc))
    node.start()
    images = [radiograph(rows=400, columns=400, seed=i) for i in range(6)]
    acknowledged: list[str] = []
    stream(node.port, images, acknowledged, threading.Event())
    assert len(acknowledged) == len(images)
    wait_for(lambda: len(node.objects()) == len(images), 60, "QC of every image")
    wait_for(lambda: node.log().count("delivery to ORTHANC") >= 4, 30, "failed delivery attempts")
    orthanc.start()
    try:
        assert_delivered_once(node, orthanc, acknowledged)
    finally:
        node.stop()
    # what the PACS holds is valid DICOM (dciodvfy) and the SR reads back with DCMTK
    for item in orthanc.instances():
        data = orthanc.file(item["ID"])
        path = tmp_path / f"{item['MainDicomTags']['SOPInstanceUID']}.dcm"
        path.write_bytes(data)
        assert_valid(path)
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID in {str(i.StudyInstanceUID) for i in images}
        if ds.Modality == "SR":
            assert "Quality" in dsrdump(path) or "quality" in dsrdump(path)
