"""The GSPS as DCMTK sees it: dcmpschk accepts it, dcmp2pgm displays the image right side up.

MONOCHROME1 sources need Presentation LUT Shape INVERSE; if that were wrong, DCMTK's
rendering through the presentation state would be the negative of the decoded image.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_support import header_and_image, source_dataset

from qcnode.report import build_gsps
from qcnode.report.examples import example_prediction, example_result


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not installed (scripts/setup installs dcmtk)")
    return found


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dcmtk_checks_and_renders_the_presentation_state(tmp_path: Path, photometric: str) -> None:
    source = source_dataset(rows=240, columns=200, photometric=photometric)
    header, image = header_and_image(source)
    gsps = build_gsps(header, example_prediction(image), example_result(image))
    image_file, gsps_file, pgm = tmp_path / "image.dcm", tmp_path / "gsps.dcm", tmp_path / "out.pgm"
    source.save_as(image_file, enforce_file_format=True)
    gsps.save_as(gsps_file, enforce_file_format=True)
    check = subprocess.run(
        [_need("dcmpschk"), str(gsps_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Test passed" in check.stdout + check.stderr, check.stdout + check.stderr
    subprocess.run(
        [_need("dcmp2pgm"), "-p", str(gsps_file), str(image_file), str(pgm)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    shown = np.asarray(Image.open(pgm), dtype=np.float64)
    assert shown.shape == image.pixels.shape
    correlation = np.corrcoef(shown.ravel(), image.pixels.astype(np.float64).ravel())[0, 1]
    assert correlation > 0.95  # same sense as the decoded (MONOCHROME2-sense) image
