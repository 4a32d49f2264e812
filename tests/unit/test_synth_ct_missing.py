"""`qcnode synth` without the CT: one readable error line and exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcnode.cli import main
from qcnode.errors import QcnodeError
from qcnode.synth import ct as ctmod


@pytest.fixture
def no_ct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """QCNODE_CT_DIR at an empty folder (the real CT cache is left alone)."""
    empty = tmp_path / "no-ct"
    empty.mkdir()
    monkeypatch.setenv("QCNODE_CT_DIR", str(empty))
    assert ctmod.default_ct_dir() == empty
    return empty


def test_synth_without_the_ct_is_a_readable_error(
    no_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "set"
    assert main(["synth", "--out", str(out), "--count", "1"]) == 2
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr
    missing = "['cxr.nii.gz', 'mask.nii.gz', 'structures.csv']"
    assert f"qcnode: error: CT files {missing} not in {no_ct}: " in stderr
    assert "run scripts/fetch_ct" in stderr and "QCNODE_CT_DIR" in stderr
    assert not out.exists()  # nothing written before the check


def test_synth_checks_the_ct_before_starting_worker_processes(
    no_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool worker whose initializer raises is replaced by another, without end: the
    missing CT must be found in the parent, before the pool."""
    from qcnode.synth import cli

    def no_pool(*_a: object, **_k: object) -> object:
        raise AssertionError("a worker pool was started without the CT")

    monkeypatch.setattr(cli.mp, "get_context", no_pool)
    assert main(["synth", "--out", str(tmp_path / "set"), "--count", "1", "--workers", "2"]) == 2


def test_ct_not_found_is_a_qcnode_error_and_still_a_file_not_found_error(no_ct: Path) -> None:
    with pytest.raises(QcnodeError) as caught:
        ctmod.load()
    assert isinstance(caught.value, FileNotFoundError)  # for callers that catch that
    (no_ct / "cxr.nii.gz").write_bytes(b"")
    with pytest.raises(ctmod.CTNotFoundError, match=r"\['mask.nii.gz', 'structures.csv'\]"):
        ctmod.require_ct()
    # the prepared cache is enough: load() reads only that when it is there
    (no_ct / f"prepared_v{ctmod.PREPARED_VERSION}.npz").write_bytes(b"")
    assert ctmod.require_ct() == no_ct


LAS = (-1.0, 1.0, 1.0, 1.0)  # the orientation the generator expects
LUNGS = (
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
)
# Every TotalSegmentator name the generator reads from structures.csv.
STRUCTURES = (
    *LUNGS,
    *("heart", "trachea", "liver", "spleen", "stomach", "colon", "sternum"),
    *(
        f"{bone}_{side}"
        for bone in ("clavicula", "scapula", "humerus")
        for side in ("right", "left")
    ),
    *("kidney_right", "kidney_left"),
    *(f"rib_{side}_{i}" for side in ("right", "left") for i in range(1, 13)),
)


def _fake_ct(
    folder: Path,
    *,
    affine_diag: tuple[float, ...] = LAS,
    body: bool = False,
    labels: tuple[str, ...] = (),
    structures: tuple[str, ...] = STRUCTURES,
) -> None:
    """A tiny CT (1 mm voxels) in the three files the generator reads: all air, or with
    ``body`` a soft-tissue block; ``labels`` (structures.csv names) each get a block of
    voxels inside it, away from the top and bottom slices; ``structures`` is structures.csv."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag(affine_diag)
    shape = (16, 16, 16)  # x, y, z
    hu = np.full(shape, -1000, dtype=np.int16)
    if body:
        hu[2:14, 2:14, :] = 0
    ids = {name: i for i, name in enumerate(structures, start=1)}
    mask = np.zeros(shape, dtype=np.uint8)
    for k, name in enumerate(labels):
        x0 = 3 + 2 * (k % 5)
        mask[x0 : x0 + 2, 4:12, 4:12] = ids[name]
    nib.save(nib.Nifti1Image(hu, affine), folder / "cxr.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "mask.nii.gz")
    rows = "".join(f"{i},{name}\n" for name, i in ids.items())
    (folder / "structures.csv").write_text("id,structure\n" + rows)


@pytest.mark.parametrize(
    ("diag", "reason"),
    [
        ((-1.0, 1.0, 1.0, 1.0), "no body in the CT"),
        ((1.0, 1.0, 1.0, 1.0), "unexpected CT orientation"),
    ],
)
def test_an_unusable_ct_is_a_readable_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    diag: tuple[float, ...],
    reason: str,
) -> None:
    folder = tmp_path / "bad-ct"
    _fake_ct(folder, affine_diag=diag)
    monkeypatch.setenv("QCNODE_CT_DIR", str(folder))
    with pytest.raises(ctmod.CTInvalidError, match=reason):
        ctmod.prepare(folder)
    assert main(["synth", "--out", str(tmp_path / "set"), "--count", "1"]) == 2
    _, stderr = capsys.readouterr()
    assert "Traceback" not in stderr and f"qcnode: error: {reason}" in stderr


def test_the_fake_ct_with_lungs_and_liver_prepares(tmp_path: Path) -> None:
    """The fixture reads right: with a body, both lungs and the liver, prepare succeeds."""
    _fake_ct(tmp_path, body=True, labels=(*LUNGS, "liver"))
    arrays = ctmod.prepare(tmp_path)
    assert arrays["soft"].shape[1:] == (8, 8)  # in-plane halved


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ((), r"no voxels of lung_right \(.*\); lung_left \(.*\); abdomen_right \(liver\) in"),
        (("liver",), r"no voxels of lung_right \(.*\); lung_left \(.*\) in the CT's labels"),
        ((*LUNGS[3:], "liver"), r"no voxels of lung_right \(lung_upper_lobe_right, .*\) in"),
        (LUNGS, r"no voxels of abdomen_right \(liver\) in the CT's labels \(mask.nii.gz\)$"),
    ],
)
def test_a_ct_without_lung_or_liver_voxels_is_ct_invalid(
    tmp_path: Path, labels: tuple[str, ...], reason: str
) -> None:
    _fake_ct(tmp_path, body=True, labels=labels)
    with pytest.raises(ctmod.CTInvalidError, match=reason) as caught:
        ctmod.prepare(tmp_path)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("structures", "reason"),
    [
        (
            tuple(n for n in STRUCTURES if n not in ("heart", "rib_left_12")),
            r"structures.csv lacks the structures heart, rib_left_12$",
        ),
        (tuple(n for n in STRUCTURES if n != "spleen"), "lacks the structures spleen$"),
    ],
)
def test_a_structures_csv_without_a_name_is_ct_invalid(
    tmp_path: Path, structures: tuple[str, ...], reason: str
) -> None:
    _fake_ct(tmp_path, body=True, labels=(*LUNGS, "liver"), structures=structures)
    with pytest.raises(ctmod.CTInvalidError, match=reason):
        ctmod.prepare(tmp_path)


def test_a_structures_csv_without_its_columns_is_ct_invalid(tmp_path: Path) -> None:
    _fake_ct(tmp_path, body=True, labels=(*LUNGS, "liver"))
    (tmp_path / "structures.csv").write_text("label,name\n1,heart\n")
    with pytest.raises(ctmod.CTInvalidError, match=r"structures\.csv is not an id,structure table"):
        ctmod.prepare(tmp_path)


def test_synth_on_a_ct_without_lungs_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_ct(tmp_path / "ct", body=True, labels=("liver",))
    monkeypatch.setenv("QCNODE_CT_DIR", str(tmp_path / "ct"))
    assert main(["synth", "--out", str(tmp_path / "set"), "--count", "1"]) == 2
    _, stderr = capsys.readouterr()
    assert "Traceback" not in stderr
    assert "qcnode: error: no voxels of lung_right (lung_upper_lobe_right, " in stderr


def test_synth_workers_report_an_unusable_ct_in_one_line(tmp_path: Path) -> None:
    """With a worker pool the CT is prepared in the workers: their error (raised by each
    task, not by the pool initializer, which would respawn workers without end) comes back
    to the command as one line and exit status 2, and no worker is left running."""
    import os
    import signal
    import subprocess
    import sys

    _fake_ct(tmp_path / "ct", body=True, labels=("liver",))
    env = {**os.environ, "QCNODE_CT_DIR": str(tmp_path / "ct"), "OMP_NUM_THREADS": "1"}
    argv = ["synth", "--out", str(tmp_path / "set"), "--count", "1", "--workers", "2"]
    code = "import sys; from qcnode.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers
        proc.communicate()
        pytest.fail("qcnode synth --workers 2 did not stop on an unusable CT")
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stdout + stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("qcnode: error:")]
    assert error.startswith("qcnode: error: no voxels of lung_right (lung_upper_lobe_right, ")
