"""`qcnode check --json`: the DESIGN §9 contract, folders, unreadable files, exit status 0."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom

from qcnode.config import Settings
from qcnode.engine import QCEngine, check_command, collect_files
from qcnode.records import View
from qcnode.rules import CATALOGUE
from qcnode.testing import FakePredictor, frontal_phantom, phantom_dataset


def write_dx(path: Path, *, monochrome1: bool = False, cut_apices: bool = False) -> str:
    """A DX file whose pixels are the frontal phantom (1 mm spacing); returns its UID."""
    masks = frontal_phantom()
    if cut_apices:
        masks["field"][:65] = False
    ds = phantom_dataset(masks, monochrome1=monochrome1)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _engine() -> QCEngine:
    def source(image: object) -> tuple[View, dict[str, np.ndarray]]:
        m = frontal_phantom()
        # the "model" sees the cut field in the image itself: unexposed rows are white
        px = image.pixels  # type: ignore[attr-defined]
        m["field"] &= px < 0.96
        return View.FRONTAL, m

    return QCEngine(predictor=FakePredictor(source=source), batch_size=2)


def _check(paths: list[Path], as_json: bool = True) -> tuple[int, str]:
    out = io.StringIO()
    rc = check_command(Settings(), paths=paths, as_json=as_json, out=out, engine=_engine())
    return rc, out.getvalue()


def test_json_contract_every_field_and_every_rule(tmp_path: Path) -> None:
    uid = write_dx(tmp_path / "a.dcm")
    rc, text = _check([tmp_path / "a.dcm"])
    assert rc == 0
    (line,) = text.splitlines()
    obj = json.loads(line)
    assert list(obj) == [
        "path",
        "sop_instance_uid",
        "view",
        "verdict",
        "families",
        "findings",
        "timings_ms",
        "model",
        "error",
    ]
    assert obj["path"] == str(tmp_path / "a.dcm")
    assert obj["sop_instance_uid"] == uid
    assert obj["view"] == "frontal"
    assert obj["verdict"] == "pass"
    assert obj["error"] is None
    assert set(obj["families"]) == {"completeness", "organs", "exposure", "positioning", "metadata"}
    assert [f["rule"] for f in obj["findings"]] == list(CATALOGUE[View.FRONTAL])
    for f in obj["findings"]:
        assert list(f) == ["rule", "family", "status", "value", "unit", "threshold", "message"]
        assert f["status"] in ("pass", "warn", "fail", "not_evaluable")
        assert f["family"] == f["rule"].split(".")[0]
        assert f["message"]
    assert set(obj["timings_ms"]) == {"decode", "model", "rules", "total"}
    assert obj["timings_ms"]["decode"] > 0
    assert obj["model"] == {"name": "fake", "version": "0", "sha256": "0" * 64}


def test_failed_qc_is_exit_zero_and_unreadable_file_does_not_stop_the_run(tmp_path: Path) -> None:
    write_dx(tmp_path / "1_good.dcm")
    (tmp_path / "2_garbage.dcm").write_bytes(b"this is not DICOM at all" * 10)
    write_dx(tmp_path / "3_cut.dcm", cut_apices=True)
    rc, text = _check([tmp_path])
    assert rc == 0
    rows = [json.loads(line) for line in text.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["1_good.dcm", "2_garbage.dcm", "3_cut.dcm"]
    assert rows[0]["verdict"] == "pass"
    assert rows[1]["verdict"] == "error"
    assert "2_garbage.dcm" in rows[1]["error"]
    assert rows[1]["findings"] == []
    assert rows[2]["verdict"] == "fail"
    apices = next(f for f in rows[2]["findings"] if f["rule"] == "completeness.apices")
    assert apices["status"] == "fail"


def test_monochrome1_gives_the_same_verdicts(tmp_path: Path) -> None:
    write_dx(tmp_path / "m2.dcm")
    write_dx(tmp_path / "m1.dcm", monochrome1=True)
    _, text = _check([tmp_path / "m2.dcm", tmp_path / "m1.dcm"])
    a, b = (json.loads(line) for line in text.splitlines())
    assert [f["status"] for f in a["findings"]] == [f["status"] for f in b["findings"]]


def test_folders_are_recursed_and_missing_paths_reported(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    write_dx(tmp_path / "sub" / "deeper" / "x.dcm")
    (tmp_path / "sub" / ".hidden").write_bytes(b"x")
    files = collect_files([tmp_path, tmp_path / "nope.dcm"])
    assert files == [tmp_path / "sub" / "deeper" / "x.dcm", tmp_path / "nope.dcm"]
    rc, text = _check([tmp_path, tmp_path / "nope.dcm"])
    rows = [json.loads(line) for line in text.splitlines()]
    assert rc == 0 and [r["verdict"] for r in rows] == ["pass", "error"]


def test_readable_table_without_json(tmp_path: Path) -> None:
    write_dx(tmp_path / "cut.dcm", cut_apices=True)
    rc, text = _check([tmp_path], as_json=False)
    assert rc == 0
    assert "FAIL" in text and "completeness.apices" in text
    assert "1 file(s): fail 1" in text


def test_dataset_is_readable_by_pydicom(tmp_path: Path) -> None:
    write_dx(tmp_path / "a.dcm")
    assert pydicom.dcmread(tmp_path / "a.dcm").Modality == "DX"


def test_compressed_transfer_syntaxes_give_the_same_verdicts(tmp_path: Path) -> None:
    from pydicom.uid import JPEGLSLossless, RLELossless

    write_dx(tmp_path / "0_plain.dcm")
    plain = pydicom.dcmread(tmp_path / "0_plain.dcm")
    for i, syntax in enumerate((RLELossless, JPEGLSLossless), start=1):
        ds = pydicom.dcmread(tmp_path / "0_plain.dcm")
        ds.compress(syntax)
        ds.save_as(tmp_path / f"{i}_{syntax.name.split()[0]}.dcm", enforce_file_format=True)
    _, text = _check([tmp_path])
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 3
    statuses = [[f["status"] for f in r["findings"]] for r in rows]
    assert statuses[0] == statuses[1] == statuses[2]
    assert (
        plain.file_meta.TransferSyntaxUID
        != pydicom.dcmread(tmp_path / "1_RLE.dcm").file_meta.TransferSyntaxUID
    )
