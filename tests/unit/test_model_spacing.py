"""The model stage's process-level inputs: a header spacing no chest film can have is not
trusted, and the allocator is tuned for repeated forwards.

A header 10x too fine (e.g. a downsampled copy that kept the detector's spacing) made a real
lateral film a few centimetres wide on the canvas: the network called it frontal and drew
no lungs, and every finding was about the wrong view."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qcnode.imaging import decode
from qcnode.records import View

LATERAL = Path("/work/shared/data/realcxr/lateral/commons_haggstrom_normal_lateral.png")


def test_an_impossibly_small_field_is_read_as_if_the_header_had_no_spacing() -> None:
    if not LATERAL.is_file():
        pytest.skip(f"{LATERAL} not on this machine")
    from qcnode.errors import QcnodeError
    from qcnode.model import load_predictor

    try:
        predictor = load_predictor(device="cpu")
    except QcnodeError as exc:
        pytest.skip(f"no shipped weights: {exc}")
    film = decode(LATERAL)  # a PNG: no spacing, the anatomy gives ~0.38 mm
    wrong = replace(film, spacing_mm=(0.05, 0.05))  # 51 x 37 mm
    plain, told = predictor.predict([film, wrong])
    assert plain.view is View.LATERAL and told.view is View.LATERAL
    assert told.spacing_estimated and told.spacing_mm == pytest.approx(plain.spacing_mm)
    a, b = plain.masks["lung_right"], told.masks["lung_right"]
    assert 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.98


def test_the_allocator_is_tuned_once_where_the_c_library_is_glibc() -> None:
    import platform

    from qcnode.model.infer import keep_heap

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_heap() is expected
    assert keep_heap() is expected  # cached: mallopt runs once per process
    assert keep_heap.cache_info().hits >= 1
