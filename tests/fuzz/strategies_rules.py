"""Hypothesis strategies for the rules' inputs: decoded images and what a model may answer."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from qcnode.records import STRUCTURES, DecodedImage, ImageMeta, View
from tests.fuzz.harness import MaskPlan

EDITS = ("keep", "keep", "keep", "empty", "full", "noise", "shift", "pixel")
SPACINGS = st.sampled_from(
    [None, (0.2, 0.2), (0.1, 0.1), (0.15, 0.3), (1.0, 1.0), (1e-4, 1e-4), (50.0, 50.0)]
)


@st.composite
def mask_plan(draw: Any) -> MaskPlan:
    """A view and, for a few structures, a hostile answer (none, everything, noise...)."""
    view = draw(st.sampled_from([View.FRONTAL, View.FRONTAL, View.LATERAL, View.OTHER]))
    names = draw(st.lists(st.sampled_from(STRUCTURES), max_size=5, unique=True))
    edits = {name: draw(st.sampled_from(EDITS)) for name in names}
    return MaskPlan(
        view=view, edits=edits, seed=draw(st.integers(0, 1000)), spacing_mm=draw(SPACINGS)
    )


@st.composite
def drawn_image(draw: Any) -> DecodedImage:
    """A decoded image as the decoder could hand it over: any size, flat or noisy, with or
    without header spacing and header facts."""
    rows = draw(st.integers(1, 400))
    columns = draw(st.integers(1, 400))
    kind = draw(st.sampled_from(["smooth", "flat0", "flat1", "noise", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    if kind == "smooth":
        y, x = np.mgrid[0:rows, 0:columns]
        pixels = 0.5 + 0.4 * np.sin(x / max(columns, 1) * np.pi) * np.cos(y / max(rows, 1) * 2)
        pixels = pixels + rng.normal(0, 0.02, size=(rows, columns))
    elif kind == "flat0":
        pixels = np.zeros((rows, columns))
    elif kind == "flat1":
        pixels = np.ones((rows, columns))
    elif kind == "noise":
        pixels = rng.random((rows, columns))
    else:
        pixels = (rng.random((rows, columns)) > 0.5).astype(float)
    meta = ImageMeta(
        sop_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        modality=draw(st.sampled_from(["DX", "CR", ""])),
        rows=rows,
        columns=columns,
        photometric="MONOCHROME2",
        view_position=draw(st.sampled_from(["PA", "AP", "LL", "RL", ""])),
        body_part=draw(st.sampled_from(["CHEST", ""])),
        patient_orientation=draw(st.sampled_from([(), ("L", "F"), ("A", "F"), ("R", "H")])),
        exposure_index=draw(st.sampled_from([None, 0.0, 400.0, 1e9])),
        target_exposure_index=draw(st.sampled_from([None, 0.0, 400.0])),
        deviation_index=draw(st.sampled_from([None, -30.0, 0.0, 30.0])),
    )
    return DecodedImage(
        pixels=np.clip(pixels, 0, 1).astype(np.float32), spacing_mm=draw(SPACINGS), meta=meta
    )
