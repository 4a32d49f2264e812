"""Node benchmarks (DESIGN §7), called by ``qcnode bench --what ingest|e2e``.

ingest: the same DX files (2–15 MB, explicit VR little endian) sent by DCMTK ``storescu``
over one association to (a) qcnode's ingest (fsync'd file + directory + committed job row
before each success), (b) DCMTK ``storescp`` (no fsync), (c) ``storescp`` that runs
``sync FILE`` before answering (``--exec-on-reception --exec-sync``: fsync durability).
Both peers get ``TCP_NODELAY=1``. Each target runs ``rounds`` times on a fresh directory;
the best round is reported (on a shared machine
other load only ever adds time), with the median beside it.

e2e: in qcnode.e2e_bench (real chest radiographs through ``qcnode serve`` into Orthanc);
the helpers it shares (Orthanc, serve process, ports) live here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from qcnode.config import Settings
from qcnode.errors import ModelError, QcnodeError

log = logging.getLogger(__name__)

DX = "1.2.840.10008.5.1.4.1.1.1.1"
# (rows, columns): 2.1, 8.4, 15.0 and 7.9 MB of 16-bit pixels
INGEST_SIZES = ((1024, 1024), (2048, 2048), (2500, 3000), (1800, 2200))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise QcnodeError(f"nothing listens on port {port}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QcnodeError(f"{name} not found (Debian package dcmtk; scripts/setup installs it)")
    return path


def dx_dataset(
    rows: int, columns: int, *, pixels: np.ndarray | None = None, seed: int = 0
) -> Dataset:
    """A synthetic DX chest header (no PHI) with 12-bit pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = UID(DX)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Bench^Synthetic",
        "BENCH",
        "",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "1", 1, 1
    ds.Modality, ds.Manufacturer, ds.StationName = "DX", "qcnode-bench", "BENCH1"
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels is None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = np.asarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _storescu(port: int, files: list[Path], called: str, concurrency: int = 1) -> float:
    """Send ``files`` with ``concurrency`` storescu processes at once (one association
    each, files dealt round-robin); the wall time until the last one is done."""
    groups = [files[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [_tool("storescu"), "-aet", f"BENCH{i}", "-aec", called, "127.0.0.1", str(port)]
            + [str(f) for f in group],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        for i, group in enumerate(groups)
        if group
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - started
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise QcnodeError(f"storescu failed: {err.strip()[-500:]}")
    return elapsed


def _round_qcnode(
    settings: Settings, files: list[Path], work: Path, concurrency: int = 1, processes: int = 1
) -> float:
    """One round against qcnode's ingest: serve's own process plus ``processes - 1``
    extra ingest processes on the same port (qcnode.ingestprocs), started before timing."""
    from sqlalchemy import func, select

    from qcnode.db import Instance, make_sessions
    from qcnode.ingestprocs import start_extra
    from qcnode.node import Node

    data = work / "qcnode"
    s = dataclasses.replace(
        settings,
        data_dir=data,
        database_url="",
        bind_address="127.0.0.1",
        port=_free_port(),
        workers=0,
        web_port=0,
        destinations=(),
        allowed_calling_aes=(),
        ingest_processes=processes,
    )
    node = Node(settings=s)
    node.start()
    extra = None
    try:
        assert node.address is not None
        extra = start_extra(s, node.address[1], lambda: None, node.stop)
        elapsed = _storescu(node.address[1], files, s.ae_title, concurrency)
        with make_sessions(node.engine)() as session:
            stored = session.execute(select(func.count()).select_from(Instance)).scalar_one()
        if stored != len(files):
            raise QcnodeError(f"qcnode kept {stored} of {len(files)} files")
    finally:
        if extra is not None:
            extra.stop()
        node.close()
        shutil.rmtree(data, ignore_errors=True)
    return elapsed


def _round_storescp(files: list[Path], work: Path, *, fsync: bool, concurrency: int = 1) -> float:
    out = work / "storescp"
    out.mkdir()
    port = _free_port()
    cmd = [_tool("storescp"), "-aet", "STORESCP", "-od", str(out)]
    if concurrency > 1:
        cmd.append("--fork")  # one process per association, as qcnode's thread each
    if fsync:
        cmd += ["--exec-on-reception", "sync #p/#f", "--exec-sync"]
    proc = subprocess.Popen(
        [*cmd, str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        elapsed = _storescu(port, files, "STORESCP", concurrency)
        stored = len(list(out.iterdir()))
        if stored != len(files):
            raise QcnodeError(f"storescp kept {stored} of {len(files)} files")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(out, ignore_errors=True)
    return elapsed


def _qcnode_key(processes: int) -> str:
    return "qcnode" if processes == 1 else f"qcnode_{processes}proc"


def bench_ingest(
    settings: Settings,
    *,
    count: int = 24,
    rounds: int = 5,
    concurrency: int = 1,
    processes: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Best and median of ``rounds`` interleaved rounds per target; qcnode once per
    ``processes`` value (ingest processes), keyed ``qcnode`` / ``qcnode_Nproc``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=settings.data_dir))
    try:
        files = []
        for i in range(count):
            rows, cols = INGEST_SIZES[i % len(INGEST_SIZES)]
            files.append(_write(dx_dataset(rows, cols, seed=i), work / f"in{i:03d}.dcm"))
        total = sum(f.stat().st_size for f in files)
        times: dict[str, list[float]] = {_qcnode_key(p): [] for p in processes}
        times.update({"storescp": [], "storescp_fsync": []})
        for _ in range(rounds):  # interleaved, so that background load hits all alike
            for p in processes:
                times[_qcnode_key(p)].append(
                    _round_qcnode(settings, files, work, concurrency, processes=p)
                )
            times["storescp"].append(
                _round_storescp(files, work, fsync=False, concurrency=concurrency)
            )
            times["storescp_fsync"].append(
                _round_storescp(files, work, fsync=True, concurrency=concurrency)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "files": count,
        "megabytes": round(total / 1e6, 1),
        "rounds": rounds,
        "associations": concurrency,
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for name, values in times.items():
        t = min(values)
        result[name] = {
            "seconds": round(t, 3),
            "mb_per_s": round(total / 1e6 / t, 1),
            "images_per_s": round(count / t, 1),
            "median_mb_per_s": round(total / 1e6 / statistics.median(values), 1),
        }
    for p in processes:
        key = _qcnode_key(p)
        suffix = "" if p == 1 else f"_{p}proc"
        q = result[key]["mb_per_s"]
        result[f"ratio{suffix}_vs_storescp"] = round(q / result["storescp"]["mb_per_s"], 2)
        result[f"ratio{suffix}_vs_storescp_fsync"] = round(
            q / result["storescp_fsync"]["mb_per_s"], 2
        )
    return result


# --- end to end ------------------------------------------------------------------------


class _Orthanc:
    """A throwaway Orthanc (Debian package) as the PACS."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dicom_port, self.http_port = _free_port(), _free_port()
        config = {
            "Name": "qcnode-bench-pacs",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "SaveJobs": False,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps(config))
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(binary).exists():
            raise QcnodeError("Orthanc not found (Debian package orthanc)")
        self.proc = subprocess.Popen(
            [binary, str(root / "orthanc.json")],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.http_port)

    def count(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(json.loads(r.read())["CountInstances"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def _serve_process(
    settings: Settings, data: Path, port: int, **env: str
) -> subprocess.Popen[bytes]:
    """``qcnode serve`` as users run it, configured through QCNODE_* variables."""
    environ = {
        **os.environ,
        "QCNODE_DATA_DIR": str(data),
        "QCNODE_DATABASE_URL": "",
        "QCNODE_BIND_ADDRESS": "127.0.0.1",
        "QCNODE_PORT": str(port),
        "QCNODE_WEB_PORT": "0",
        "QCNODE_MODEL": settings.model,
        "QCNODE_DEVICE": settings.device,
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "qcnode.cli", "serve"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, timeout=300)
    except QcnodeError:
        proc.kill()
        raise
    return proc


def bench_ingest_during_qc(
    settings: Settings, *, rounds: int = 3, backlog: int = 12, count: int = 24
) -> dict[str, Any]:
    """Ingest while the node is busy with QC: ``qcnode serve`` (the configured model) is
    first sent ``backlog`` copies of RG1 (a real 1955x1841 chest CR the model analyses in
    full; the phantoms of session 2 are now view "other"), then, while it analyses them, the
    ingest files; ingest MB/s with no workers, with the workers as threads and as a
    child process (``worker_process``). Best of ``rounds`` each, interleaved."""
    from pydicom import dcmread
    from sqlalchemy import create_engine, text

    from qcnode.e2e_bench import e2e_inputs, fresh_copy

    rg1 = dcmread(e2e_inputs(["rg1"])["rg1"][0])
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-qc-", dir=settings.data_dir))
    modes = {
        "no_qc": {"QCNODE_WORKERS": "0"},
        "qc_threads": {"QCNODE_WORKERS": "1", "QCNODE_WORKER_PROCESS": "false"},
        "qc_process": {"QCNODE_WORKERS": "1", "QCNODE_WORKER_PROCESS": "true"},
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    busy: dict[str, list[int]] = {m: [] for m in modes}
    try:
        files = []
        for i in range(count):
            rows, cols = INGEST_SIZES[i % len(INGEST_SIZES)]
            files.append(_write(dx_dataset(rows, cols, seed=i), work / f"in{i:03d}.dcm"))
        total = sum(f.stat().st_size for f in files)
        for r in range(rounds):
            for mode, env in modes.items():
                queued = [_write(fresh_copy(rg1), work / f"qc{i:03d}.dcm") for i in range(backlog)]
                data, port = work / f"node-{mode}-{r}", _free_port()
                proc = _serve_process(settings, data, port, **env)
                try:
                    _storescu(port, queued, settings.ae_title)
                    elapsed = _storescu(port, files, settings.ae_title)
                    engine = create_engine(f"sqlite:///{data / 'qcnode.sqlite'}")
                    with engine.connect() as conn:
                        done = int(conn.execute(text("SELECT count(*) FROM results")).scalar_one())
                    engine.dispose()
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
                    shutil.rmtree(data, ignore_errors=True)
                times[mode].append(elapsed)
                busy[mode].append(backlog - done)  # still queued when ingest ended
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "files": count,
        "megabytes": round(total / 1e6, 1),
        "rounds": rounds,
        "backlog": backlog,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for mode, values in times.items():
        result[mode] = {
            "mb_per_s": round(total / 1e6 / min(values), 1),
            "median_mb_per_s": round(total / 1e6 / statistics.median(values), 1),
            "backlog_left_at_end": busy[mode],
        }
    return result


def _wait_quiet(fn: Any, target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn() >= target:
            return True
        time.sleep(0.05)
    return False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def run(
    settings: Settings,
    *,
    what: str,
    rounds: int | None = None,
    concurrency: int = 1,
    ingest_processes: str = "1",
) -> dict[str, Any]:
    """``qcnode bench --what ingest|e2e|all`` (node part): a dict of measured numbers;
    ``python -m qcnode.node_bench --what ingest-qc`` measures ingest while QC runs. The
    keywords are this module's own flags; ``qcnode bench`` leaves them at their defaults
    (``rounds`` None or 0: 5 for ingest, 3 for ingest-qc)."""
    out: dict[str, Any] = {}
    if what in ("ingest", "all"):
        out["ingest"] = bench_ingest(
            settings,
            rounds=int(rounds or 5),
            concurrency=int(concurrency or 1),
            processes=tuple(int(p) for p in str(ingest_processes or "1").split(",")),
        )
    if what == "ingest-qc":
        try:
            out["ingest_during_qc"] = bench_ingest_during_qc(settings, rounds=int(rounds or 3))
        except ModelError as exc:
            out["ingest_during_qc"] = {"skipped": str(exc)}
    if what in ("e2e", "all"):
        try:
            from qcnode.e2e_bench import bench_e2e

            out["e2e"] = bench_e2e(settings)
        except ModelError as exc:
            out["e2e"] = {"skipped": str(exc)}
    return out


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--what", default="ingest")
    parser.add_argument("--data-dir", type=Path, default=Path("qcnode-data"))
    parser.add_argument("--model", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1, help="parallel associations")
    parser.add_argument(
        "--ingest-processes", default="1", help="qcnode ingest processes, e.g. 1,2 (each)"
    )
    a = parser.parse_args()
    from qcnode.config import load_settings

    st = load_settings(None, {"data_dir": a.data_dir, "model": a.model or None})
    report = run(
        st,
        what=a.what,
        rounds=a.rounds,
        concurrency=a.concurrency,
        ingest_processes=a.ingest_processes,
    )
    print(json.dumps(report, indent=2))
    sys.exit(0)
