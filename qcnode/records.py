"""Records shared by every pipeline stage: the contracts between decode, model, rules, report.

Coordinates: every geometry and mask is in *source image pixels* (x = column, y = row,
origin at the top-left pixel centre). "right"/"left" in structure names are the patient's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt


class View(enum.StrEnum):
    FRONTAL = "frontal"
    LATERAL = "lateral"
    OTHER = "other"


class Status(enum.StrEnum):
    """Status of one finding."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    NOT_EVALUABLE = "not_evaluable"


class Verdict(enum.StrEnum):
    """Verdict of an image or of one family."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"


class Family(enum.StrEnum):
    COMPLETENESS = "completeness"  # 总体完整
    ORGANS = "organs"  # 脏器完整
    EXPOSURE = "exposure"  # 成像细节
    POSITIONING = "positioning"  # 位置细节
    METADATA = "metadata"


# One channel set for both views (multi-label, sigmoid per channel). A structure that a view
# does not show well (clavicles on a lateral) is still a channel; rules decide what to use.
STRUCTURES: tuple[str, ...] = (
    "lung_right",
    "lung_left",
    "heart",
    "clavicle_right",
    "clavicle_left",
    "scapula_right",
    "scapula_left",
    "spine",
    "trachea",
    "humerus_right",
    "humerus_left",
    "sternum",
    "ribs_posterior_right",
    "ribs_posterior_left",
    "body",
    "field",  # the exposed (un-collimated) field
)
# Extra channels a model may carry beside STRUCTURES, never read by the rules: the lungs as a
# radiograph shows them, cut at the diaphragm silhouette (what human lung masks draw), while
# the STRUCTURES lungs are whole 3D projections that the completeness rules need.
VISIBLE_LUNGS: tuple[str, ...] = ("lung_right_visible", "lung_left_visible")
# The channel lists a weights file may declare: STRUCTURES first, extras after.
MODEL_CHANNELS: tuple[tuple[str, ...], ...] = (STRUCTURES, STRUCTURES + VISIBLE_LUNGS)

FloatImage = npt.NDArray[np.float32]
BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ImageMeta:
    """Header facts the rules, reports and dashboard need. No pixel data."""

    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    photometric: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    view_position: str = ""  # PA, AP, LL, RL, ... as in the header ("" if absent)
    body_part: str = ""
    image_laterality: str = ""
    patient_orientation: tuple[str, ...] = ()
    exposure_index: float | None = None
    target_exposure_index: float | None = None
    deviation_index: float | None = None
    station_name: str = ""
    operators_name: str = ""
    manufacturer: str = ""
    pixel_spacing_source: str = ""  # "ImagerPixelSpacing", "PixelSpacing" or "" if none usable
    transfer_syntax_uid: str = ""


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image after modality/VOI LUT and MONOCHROME1 inversion.

    ``pixels``: float32 (rows, columns) in [0, 1], MONOCHROME2 sense (attenuating = bright).
    ``spacing_mm``: (row, column) mm per pixel from the header, or None if missing/zero.
    """

    pixels: FloatImage
    spacing_mm: tuple[float, float] | None
    meta: ImageMeta


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True, eq=False)
class Prediction:
    """Model output resampled back to source pixels."""

    view: View
    view_probabilities: Mapping[View, float]
    masks: Mapping[str, BoolMask]  # keys from STRUCTURES, each (rows, columns)
    # Spacing the model used (header spacing, or its anatomy-based estimate when absent).
    spacing_mm: tuple[float, float]
    spacing_estimated: bool = False
    # The model's channels beyond STRUCTURES (VISIBLE_LUNGS), when its weights have them.
    extra_masks: Mapping[str, BoolMask] = field(default_factory=dict)

    def lung_fields(self) -> BoolMask | None:
        """Both lung fields (the visible-lung channels' union), the definition human lung
        masks share; None when the weights lack those channels."""
        if not all(n in self.extra_masks for n in VISIBLE_LUNGS):
            return None
        right, left = (np.asarray(self.extra_masks[n], dtype=bool) for n in VISIBLE_LUNGS)
        out: BoolMask = right | left
        return out


class Predictor(Protocol):
    """The model seam: real network in qcnode.model, fakes in qcnode.testing."""

    @property
    def info(self) -> ModelInfo: ...

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]: ...


@dataclass(frozen=True)
class Geometry:
    """What shows a finding on the image: points, an open polyline or a closed polygon."""

    kind: Literal["point", "polyline", "polygon"]
    points: tuple[tuple[float, float], ...]  # (x, y) in source pixels
    label: str = ""


@dataclass(frozen=True)
class Finding:
    rule: str  # an ID from DESIGN §4, e.g. "positioning.rotation"
    family: Family
    status: Status
    value: float | None
    unit: str | None  # UCUM: "mm", "deg", "{ribs}", "%", "1"
    threshold: float | None
    message: str
    geometry: tuple[Geometry, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "family": str(self.family),
            "status": str(self.status),
            "value": self.value,
            "unit": self.unit,
            "threshold": self.threshold,
            "message": self.message,
        }


_FINDING_RANK = {Status.PASS: 0, Status.NOT_EVALUABLE: 0, Status.WARN: 1, Status.FAIL: 2}
_RANK_VERDICT = {0: Verdict.PASS, 1: Verdict.WARN, 2: Verdict.FAIL}


def worst(findings: Sequence[Finding]) -> Verdict:
    """The verdict of a set of findings: the worst status (not_evaluable counts as pass)."""
    rank = max((_FINDING_RANK[f.status] for f in findings), default=0)
    return _RANK_VERDICT[rank]


@dataclass(frozen=True, eq=False)
class QCResult:
    """Everything QC concluded about one image: the `qcnode check --json` contract."""

    sop_instance_uid: str
    view: View
    verdict: Verdict
    families: Mapping[Family, Verdict]
    findings: tuple[Finding, ...]
    model: ModelInfo | None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self, *, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "sop_instance_uid": self.sop_instance_uid,
            "view": str(self.view),
            "verdict": str(self.verdict),
            "families": {str(k): str(v) for k, v in self.families.items()},
            "findings": [f.to_json() for f in self.findings],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "model": (
                None
                if self.model is None
                else {
                    "name": self.model.name,
                    "version": self.model.version,
                    "sha256": self.model.sha256,
                }
            ),
            "error": self.error,
        }
