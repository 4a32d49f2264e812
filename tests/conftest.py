"""Shared fixtures: real peers on free ports (DCMTK, Orthanc, PostgreSQL) and test images.

Everything here starts real programs: Orthanc (Debian package) as the PACS with its own
storage directory, a throwaway PostgreSQL cluster, DCMTK's storescu/echoscu as the
modality. A fixture that cannot find its program skips with the reason (scripts/setup
installs them all, so in CI nothing skips).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (DESIGN §8: poll, never sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


# --- test images ---------------------------------------------------------------------------


def radiograph(
    *,
    rows: int = 256,
    columns: int = 256,
    sop_class: str = DX_PRESENTATION,
    modality: str = "DX",
    body_part: str = "CHEST",
    view_position: str = "PA",
    study_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
    pixel_data: bool = True,
) -> Dataset:
    """A synthetic 12-bit chest-like radiograph header with smooth random pixels (no PHI)."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "TEST0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "qcnode-tests"
    ds.StationName = "ROOM1"
    ds.OperatorsName = "Tech^One"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if pixel_data:
        y, x = np.mgrid[0:rows, 0:columns]
        base = 1500 + 1000 * np.sin(x / max(columns, 1) * np.pi) * np.cos(y / max(rows, 1) * 2)
        noise = rng.normal(0, 60, size=(rows, columns))
        ds.PixelData = np.clip(base + noise, 0, 4095).astype(np.uint16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def make_radiograph(tmp_path: Path) -> Callable[..., Path]:
    """Write ``radiograph(**kw)`` to a file under tmp_path and return the path."""
    counter = iter(range(1_000_000))

    def make(name: str | None = None, **kw: Any) -> Path:
        return write(radiograph(**kw), tmp_path / "images" / (name or f"img{next(counter)}.dcm"))

    return make


# --- DCMTK ---------------------------------------------------------------------------------


def need(program: str) -> str:
    found = shutil.which(program) or (program if Path(program).exists() else None)
    if not found:
        pytest.skip(f"{program} is not installed (scripts/setup installs it)")
    return found


def storescu(
    port: int,
    files: list[Path],
    *,
    calling: str = "MODALITY",
    called: str = "QCNODE",
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu as the modality: every file over one association."""
    return subprocess.run(
        [need("storescu"), *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=300,
        check=False,
    )


# --- Orthanc -------------------------------------------------------------------------------


@dataclass
class Orthanc:
    """A running Orthanc: ``ae_title@127.0.0.1:dicom_port``, REST on ``http_port``."""

    ae_title: str
    dicom_port: int
    http_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def file(self, instance_id: str) -> bytes:
        url = f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file"
        with urllib.request.urlopen(url, timeout=10) as r:
            return bytes(r.read())

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags (SOPInstanceUID, SOPClassUID, ...)."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return list(found)

    def count(self) -> int:
        # the instance list itself rather than /statistics' derived counter
        return len(self.get("/instances"))

    def extra_config(self) -> dict[str, Any]:
        """Settings a specialised test PACS adds to the common configuration."""
        return {}

    def start(self) -> None:
        config = {
            "Name": "qcnode-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "Plugins": [],
            "SaveJobs": False,
            "StorageCompression": False,
            "OverwriteInstances": False,
            **self.extra_config(),
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        with (self.root / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                [need("/usr/sbin/Orthanc"), str(self.root / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
            )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return True
            except (OSError, urllib.error.URLError):
                return False

        wait_for(up, 30, "Orthanc to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (the PACS) on free ports with its own storage."""
    root = tmp_path / "orthanc"
    root.mkdir()
    pacs = Orthanc(ae_title="ORTHANC", dicom_port=free_port(), http_port=free_port(), root=root)
    pacs.start()
    yield pacs
    pacs.stop()


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so use the postgres user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) for the whole session."""
    initdb = PG_BIN / "initdb"
    if not initdb.exists():
        pytest.skip("PostgreSQL 15 is not installed (scripts/setup installs it)")
    root = tmp_path_factory.mktemp("pg")
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(root, 0o755)
        for parent in root.parents:  # the postgres user must reach its directory
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    user = "postgres"
    subprocess.run(
        _as_pg_user([str(initdb), "-D", str(data), "-A", "trust", "-U", user, "--no-sync"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_pg_user(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "pg.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(port=port, user=user)
    finally:
        subprocess.run(
            _as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )


def prepared_ct() -> Any:
    """The synthesis CT (``qcnode.synth.ct.PreparedCT``), fetched by scripts/fetch_ct when
    not cached; the test is skipped when that fails (no registry access)."""
    from qcnode.synth import ct as ctmod

    ct_dir = ctmod.default_ct_dir()
    if not all((ct_dir / f).is_file() for f in ctmod.CT_FILES):
        script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_ct"
        proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"CT not cached and scripts/fetch_ct failed: {proc.stderr[-300:]}")
    return ctmod.load(ct_dir)


@pytest.fixture(scope="session")
def ct() -> Any:
    """The prepared synthesis CT, loaded once for every synthesis test."""
    return prepared_ct()


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
