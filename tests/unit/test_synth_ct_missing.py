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


def _fake_ct(folder: Path, *, affine_diag: tuple[float, ...]) -> None:
    """A tiny all-air CT in the three files the generator reads."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag(affine_diag)
    air = np.full((8, 8, 4), -1000, dtype=np.int16)
    nib.save(nib.Nifti1Image(air, affine), folder / "cxr.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.uint8), affine), folder / "mask.nii.gz")
    (folder / "structures.csv").write_text("id,structure\n1,lung_upper_lobe_left\n")


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
