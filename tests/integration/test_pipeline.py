"""The whole pipeline as users run it: ``qcnode serve`` (the real CLI and model) between
DCMTK storescu (the modality) and Orthanc (the PACS), on SQLite and on PostgreSQL.

The model is the test-only weights file under tests/data (testonly_*): small, trained
only so that these tests exercise the real network code; never shipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from qcnode.report.validate import assert_valid
from qcnode.testing import frontal_phantom, phantom_image
from tests.conftest import Orthanc, free_port, radiograph, storescu, wait_for, write
from tests.integration.nodeproc import ROOT, NodeProcess

TEST_WEIGHTS = sorted((ROOT / "tests" / "data").glob("testonly_*.pt"))


def chest_file(path: Path, seed: int) -> Path:
    """A phantom chest (rectangles with the right anatomy layout) as a 12-bit DX."""
    ds = radiograph(rows=512, columns=512, seed=seed)
    small = phantom_image(frontal_phantom((400, 400)), seed=seed).pixels
    idx = np.linspace(0, 399, 512).astype(int)
    pixels = np.clip(small[np.ix_(idx, idx)] * 3800, 0, 4095).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    return write(ds, path)


def test_serve_refuses_to_start_without_trained_weights(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "qcnode.cli", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        env={"QCNODE_MODEL": "no-such-model", "QCNODE_WEB_PORT": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert "qcnode: error:" in run.stderr and "no-such-model" in run.stderr


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    postgres = request.getfixturevalue("postgres")
    return str(postgres.create_database("pipeline"))


@pytest.mark.slow
def test_storescu_to_orthanc(tmp_path: Path, orthanc: Orthanc, database_url: str) -> None:
    if not TEST_WEIGHTS:
        pytest.skip("no tests/data/testonly_*.pt weights yet (the model issue provides them)")
    node = NodeProcess(
        tmp_path / "node",
        fake_model=False,
        data_dir=str(tmp_path / "node" / "data"),
        database_url=database_url,
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        model=str(TEST_WEIGHTS[0]),
        device="cpu",
        destinations=[orthanc.destination],
        send_backoff_seconds=0.3,
    )
    node.start()
    try:
        files = [chest_file(tmp_path / "in" / f"{i}.dcm", seed=i) for i in range(4)]
        knee = write(radiograph(rows=64, columns=64, body_part="KNEE"), tmp_path / "in" / "k.dcm")
        nopix = write(radiograph(rows=64, columns=64, pixel_data=False), tmp_path / "in" / "n.dcm")
        huge = radiograph(rows=64, columns=64)
        huge.Rows = huge.Columns = 60000  # absurd header, small pixel data
        huge_file = write(huge, tmp_path / "in" / "h.dcm")
        bad = [knee, nopix]
        run = storescu(node.port, [*files, *bad])
        assert run.returncode == 0, run.stderr
        refused = storescu(node.port, [huge_file])  # refused before it is kept
        assert refused.returncode != 0
        wait_for(lambda: "(0xA703)" in node.log(), 30, "the refusal in the log")
        sent = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
        knee_uid, nopix_uid = (str(pydicom.dcmread(f).SOPInstanceUID) for f in bad)
        wait_for(lambda: len(node.results()) == 6, 300, "QC of every image", step=0.5)
        results = node.results()
        assert results[knee_uid] == "not_applicable"
        assert results[nopix_uid] == "error"
        evaluated = [u for u in sent if results[u] in ("pass", "warn", "fail")]
        assert evaluated, results  # the test model sees these phantoms as frontal chests
        assert set(results[u] for u in sent) <= {"pass", "warn", "fail", "not_applicable"}

        def delivered() -> bool:
            objects = node.objects()
            want = {uid for src in evaluated for _, uid in objects.get(src, [])}
            have = {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances()}
            return want <= have and all(len(objects.get(s, [])) == 2 for s in evaluated)

        wait_for(delivered, 120, "SR and SC of every evaluated image at Orthanc", step=0.5)
        assert orthanc.count() == 2 * len(evaluated)
        for item in orthanc.instances():
            path = tmp_path / "pacs" / f"{item['ID']}.dcm"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(orthanc.file(item["ID"]))
            assert_valid(path)
    finally:
        node.stop()
    assert "Tech^One" not in node.log() and "TEST0001" not in node.log()  # no PHI in logs


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir() if tasks.exists() else []:
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _qc_child(pid: int) -> int | None:
    """serve's QC process (multiprocessing's resource tracker is its other child)."""
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes() and not _gone(child):
                return child
    return None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not yet reaped


def test_qc_process_follows_serve(tmp_path: Path, orthanc: Orthanc) -> None:
    """``serve`` runs QC in one child process: it stops with serve (SIGTERM) and on its
    own when serve is SIGKILLed, so no orphan keeps claiming jobs; when the child dies
    (a decoder crash, say), serve starts a new one and QC goes on."""
    if not TEST_WEIGHTS:
        pytest.skip("no tests/data/testonly_*.pt weights")
    node = NodeProcess(
        tmp_path / "node",
        fake_model=False,
        data_dir=str(tmp_path / "node" / "data"),
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        model=str(TEST_WEIGHTS[0]),
        device="cpu",
        destinations=[orthanc.destination],
    )

    def store(seed: int) -> None:
        run = storescu(node.port, [chest_file(tmp_path / "in" / f"{seed}.dcm", seed=seed)])
        assert run.returncode == 0, run.stderr

    # SIGTERM: the child stops with serve
    node.start()
    assert node.proc is not None
    children = _children(node.proc.pid)
    first = _qc_child(node.proc.pid)
    assert first is not None, "no QC child process"
    store(1)
    wait_for(lambda: len(node.results()) == 1, 120, "QC in the child")
    node.stop()
    wait_for(lambda: all(_gone(c) for c in children), 30, "the QC child gone with serve")

    # the child dies: a new one takes over
    node.start()
    assert node.proc is not None
    serve = node.proc.pid
    first = _qc_child(serve)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _qc_child(serve) not in (None, first), 120, "a new QC child")
    store(2)
    wait_for(lambda: len(node.results()) == 2, 120, "QC in the new child")
    assert "died (exit -9): starting a new one" in node.log()

    # SIGKILL of serve: the child notices and exits by itself
    children = _children(serve)
    node.kill()
    wait_for(lambda: all(_gone(c) for c in children), 30, "the QC child gone after SIGKILL")
