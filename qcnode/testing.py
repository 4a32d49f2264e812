"""Fakes for the Protocol seams (DESIGN §8), used by tests and by offline evaluation.

FakePredictor stands in for the network: it returns the masks and view it was given (for
instance the exact masks of a synthetic sample), so that rules and the engine can be tested
and calibrated independently of the model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from qcnode.config import Destination
from qcnode.errors import DeliveryError
from qcnode.records import (
    STRUCTURES,
    VISIBLE_LUNGS,
    BoolMask,
    DecodedImage,
    FloatImage,
    ModelInfo,
    Prediction,
    View,
)

if TYPE_CHECKING:  # only for mypy: importing qcnode.db loads SQLAlchemy
    from qcnode.db import Clock

FAKE_MODEL = ModelInfo(name="fake", version="0", sha256="0" * 64)

MaskSource = Callable[[DecodedImage], tuple[View, Mapping[str, BoolMask]]]


class FakePredictor:
    """A Predictor that answers from given masks instead of a network.

    ``source`` maps a decoded image to (view, masks): a callable, or a mapping keyed by SOP
    Instance UID. Missing structures are empty masks; masks must have the image's shape.
    Given ``VISIBLE_LUNGS`` masks become the prediction's extra masks (as a model with those
    channels returns them); absent ones stay absent.
    ``spacing_mm`` is reported for images without header spacing (as the real model would
    report its anatomy-based estimate); None leaves the estimate to the rules.

    A mapping's masks belong to the first pixels seen under that UID: the same image
    flipped (the engine's second look at a film turned back upright) gets them flipped the
    same way, as a mirror-symmetric model would answer. A callable answers for itself.
    """

    def __init__(
        self,
        *,
        source: MaskSource | Mapping[str, tuple[View, Mapping[str, BoolMask]]],
        info: ModelInfo = FAKE_MODEL,
        spacing_mm: tuple[float, float] | None = None,
    ) -> None:
        self._source = source
        self._info = info
        self._spacing = spacing_mm
        self.calls: list[int] = []  # batch sizes, so tests can see batching
        self._seen: dict[str, FloatImage] = {}  # a mapping UID's first pixels

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _lookup(self, image: DecodedImage) -> tuple[View, Mapping[str, BoolMask]]:
        if callable(self._source):
            return self._source(image)
        uid = image.meta.sop_instance_uid
        view, masks = self._source[uid]
        axes = _flip_between(self._seen.setdefault(uid, image.pixels), image.pixels)
        if axes:
            masks = {k: np.flip(np.asarray(v), axes) for k, v in masks.items()}
        return view, masks

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]:
        self.calls.append(len(images))
        out = []
        for image in images:
            view, given = self._lookup(image)
            shape = image.pixels.shape
            masks: dict[str, BoolMask] = {}
            for name in STRUCTURES:
                m = given.get(name)
                if m is None:
                    masks[name] = np.zeros(shape, dtype=bool)
                    continue
                m = np.asarray(m, dtype=bool)
                if m.shape != shape:
                    raise ValueError(f"fake mask {name} {m.shape} != image {shape}")
                masks[name] = m
            extra = {n: np.asarray(given[n], dtype=bool) for n in VISIBLE_LUNGS if n in given}
            for n, m in extra.items():
                if m.shape != shape:
                    raise ValueError(f"fake mask {n} {m.shape} != image {shape}")
            if image.spacing_mm is not None:
                spacing, estimated = image.spacing_mm, False
            elif self._spacing is not None:
                spacing, estimated = self._spacing, True
            else:
                spacing, estimated = (0.0, 0.0), False
            probs = {v: (1.0 if v is view else 0.0) for v in View}
            out.append(
                Prediction(
                    view=view,
                    view_probabilities=probs,
                    masks=masks,
                    spacing_mm=spacing,
                    spacing_estimated=estimated,
                    extra_masks=extra,
                )
            )
        return out


def _flip_between(first: FloatImage, pixels: FloatImage) -> tuple[int, ...]:
    """The axes along which ``pixels`` are ``first`` flipped; () when they are not."""
    if first is pixels or first.shape != pixels.shape or np.array_equal(first, pixels):
        return ()
    for axes in ((1,), (0,), (0, 1)):
        if np.array_equal(np.flip(first, axes), pixels):
            return axes
    return ()


# ---- hand-built phantoms with known geometry (1 mm pixels by default) ----------------------


def _box(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> BoolMask:
    """A rectangle, rows r0..r1 and columns c0..c1 inclusive."""
    m = np.zeros(shape, dtype=bool)
    m[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1] = True
    return m


def frontal_phantom(shape: tuple[int, int] = (400, 400)) -> dict[str, BoolMask]:
    """A PA chest of rectangles in the standard display (patient's right on the image left).

    Landmarks (row, col): right lung rows 60–300 × cols 60–170, left lung 60–300 × 230–340;
    field rows 20–340 × cols 20–380 (every lung margin and excess is 40 px); spine 190–210
    (centre 200); clavicle medial ends at cols 185 and 215 (15 px each side: no rotation),
    rows 70–80 (15 px below the apices); eleven posterior rib bands (period 24 px) above
    the right lung's lowest row 300, i.e. ten above the dome; heart 200–300 × 170–260 (to
    the image right); scapulae overlap each lung by 5 px.
    """
    b = _box
    masks = {
        "lung_right": b(shape, 60, 300, 60, 170),
        "lung_left": b(shape, 60, 300, 230, 340),
        "heart": b(shape, 200, 300, 170, 260),
        "clavicle_right": b(shape, 70, 80, 80, 185),
        "clavicle_left": b(shape, 70, 80, 215, 320),
        "scapula_right": b(shape, 90, 200, 40, 64),
        "scapula_left": b(shape, 90, 200, 336, 360),
        "spine": b(shape, 0, shape[0] - 1, 190, 210),
        "trachea": b(shape, 20, 120, 195, 205),
        "body": b(shape, 0, shape[0] - 1, 40, 360),
        "field": b(shape, 20, 340, 20, 380),
    }
    ribs_r = np.zeros(shape, dtype=bool)
    ribs_l = np.zeros(shape, dtype=bool)
    for k in range(11):  # the 11th band lies in the "posterior recess" below the dome
        r0 = 40 + 24 * k
        ribs_r |= b(shape, r0, r0 + 9, 50, 185)
        ribs_l |= b(shape, r0, r0 + 9, 215, 350)
    masks["ribs_posterior_right"] = ribs_r
    masks["ribs_posterior_left"] = ribs_l
    return masks


def lateral_phantom(shape: tuple[int, int] = (400, 400)) -> dict[str, BoolMask]:
    """A lateral chest of rectangles, anterior to the image left, arms raised.

    Lungs rows 50–300 × cols 100–300 (both sides superimposed); heart 180–300 (its lower
    border, on the diaphragm, 250 mm below the apex: full inspiration); sternum cols 80–95;
    spine cols 300–340; posterior ribs of both sides end at col 310; field as frontal.
    """
    b = _box
    lungs = b(shape, 50, 300, 100, 300)
    masks = {
        "lung_right": lungs.copy(),
        "lung_left": lungs.copy(),
        "heart": b(shape, 180, 300, 110, 200),
        "spine": b(shape, 0, shape[0] - 1, 300, 340),
        "sternum": b(shape, 100, 250, 80, 95),
        "trachea": b(shape, 20, 120, 200, 215),
        "humerus_right": b(shape, 0, 45, 150, 200),
        "humerus_left": b(shape, 0, 45, 160, 210),
        "body": b(shape, 0, shape[0] - 1, 60, 360),
        "field": b(shape, 20, 340, 20, 380),
    }
    ribs = np.zeros(shape, dtype=bool)
    for k in range(10):
        r0 = 40 + 24 * k
        ribs |= b(shape, r0, r0 + 9, 250, 310)
    masks["ribs_posterior_right"] = ribs.copy()
    masks["ribs_posterior_left"] = ribs.copy()
    return masks


_DENSITY = (  # grey level painted for each structure, later ones on top
    ("body", 0.45),
    ("lung_right", 0.15),
    ("lung_left", 0.15),
    ("heart", 0.6),
    ("ribs_posterior_right", 0.3),
    ("ribs_posterior_left", 0.3),
    ("spine", 0.75),
    ("sternum", 0.7),
    ("clavicle_right", 0.8),
    ("clavicle_left", 0.8),
    ("scapula_right", 0.55),
    ("scapula_left", 0.55),
    ("humerus_right", 0.8),
    ("humerus_left", 0.8),
)


def phantom_image(
    masks: Mapping[str, BoolMask],
    *,
    spacing_mm: tuple[float, float] | None = (1.0, 1.0),
    noise: float = 0.01,
    seed: int = 0,
    uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "DX",
    view_position: str = "PA",
    body_part: str = "CHEST",
    deviation_index: float | None = 0.0,
) -> DecodedImage:
    """Paint a phantom's masks into a noisy [0, 1] image (collimated area white)."""
    from qcnode.records import ImageMeta

    shape = next(iter(masks.values())).shape
    px = np.full(shape, 0.05, dtype=np.float32)
    for name, level in _DENSITY:
        m = masks.get(name)
        if m is None:
            continue
        if name.startswith("ribs"):
            px[m] += level - 0.15
        else:
            px[m] = level
    px += np.random.default_rng(seed).normal(0.0, noise, shape).astype(np.float32)
    field_mask = masks.get("field")
    if field_mask is not None and field_mask.any():
        px[~field_mask] = 0.97
    px = np.clip(px, 0.0, 1.0).astype(np.float32)
    meta = ImageMeta(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        modality=modality,
        rows=shape[0],
        columns=shape[1],
        photometric="MONOCHROME2",
        view_position=view_position,
        body_part=body_part,
        deviation_index=deviation_index,
    )
    return DecodedImage(pixels=px, spacing_mm=spacing_mm, meta=meta)


# ---- node seams: clock and sender (issue 2) ------------------------------------------------


class FakeClock:
    """A clock that only moves when told (naive UTC, like qcnode.db.utcnow)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 1, 1, 12, 0, 0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


if TYPE_CHECKING:  # mypy checks that the fake fits its seam (qcnode.db.Clock)
    _clock: Clock = FakeClock()


class FakeSender:
    """A Sender that records what it was asked to C-STORE.

    ``status``: the DICOM status to answer; ``down``: raise DeliveryError (no association)
    for the destinations whose AE title is in it.
    """

    def __init__(self, *, status: int = 0x0000) -> None:
        self.status = status
        self.down: set[str] = set()
        self.stored: list[tuple[str, str]] = []  # (destination AE, SOP Instance UID)
        self.idled: list[str] = []

    def store(self, destination: Destination, path: Path) -> int:
        if destination.ae_title in self.down:
            raise DeliveryError(f"{destination.ae_title} is down")
        import pydicom

        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        self.stored.append((destination.ae_title, uid))
        return self.status

    def idle(self, destination: Destination) -> None:
        self.idled.append(destination.ae_title)

    def close(self) -> None:
        pass


def phantom_dataset(
    masks: Mapping[str, BoolMask],
    *,
    spacing_mm: float = 1.0,
    view_position: str = "PA",
    modality: str = "DX",
    monochrome1: bool = False,
    deviation_index: float | None = 0.3,
    seed: int = 0,
) -> Dataset:
    """A DX dataset (Part 10 ready) whose pixels are a painted phantom: for engine/node tests."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    dx = UID("1.2.840.10008.5.1.4.1.1.1.1")
    px = phantom_image(masks, seed=seed).pixels
    stored = np.round(px * 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dx
    uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("phantom.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = dx
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "PHANTOM^QC"
    ds.PatientID = "PHANTOM"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if deviation_index is not None:
        ds.DeviationIndex = deviation_index
    ds.PixelData = stored.tobytes()
    return ds
