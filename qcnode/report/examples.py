"""Hand-made masks and findings laid out on a frontal chest image of any size.

For the report tests and for documentation pictures while no model output is at hand:
the shapes are plausible (lungs, heart, clavicles, spine ...) and every geometry kind
and status occurs, so every drawing and coding path runs. Not a model, never a QC result
of a real image.
"""

from __future__ import annotations

import numpy as np

from qcnode.records import (
    STRUCTURES,
    BoolMask,
    DecodedImage,
    Family,
    Finding,
    Geometry,
    ModelInfo,
    Prediction,
    QCResult,
    Status,
    Verdict,
    View,
    worst,
)

EXAMPLE_MODEL = ModelInfo(name="example-masks", version="hand-made", sha256="0" * 64)


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> BoolMask:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.asarray(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)


def _band(
    shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], half_width: float
) -> BoolMask:
    """Pixels within ``half_width`` of the segment p0-p1 (x, y)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.asarray(np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= half_width)


def example_prediction(image: DecodedImage) -> Prediction:
    """Frontal-looking masks scaled to the image (patient's right on the image's left)."""
    h, w = image.pixels.shape
    s = (h, w)
    masks: dict[str, BoolMask] = {name: np.zeros(s, dtype=bool) for name in STRUCTURES}
    masks["lung_right"] = _ellipse(s, 0.33 * w, 0.45 * h, 0.13 * w, 0.25 * h)
    masks["lung_left"] = _ellipse(s, 0.67 * w, 0.45 * h, 0.13 * w, 0.25 * h)
    masks["heart"] = _ellipse(s, 0.55 * w, 0.60 * h, 0.12 * w, 0.10 * h)
    masks["clavicle_right"] = _band(s, (0.20 * w, 0.20 * h), (0.45 * w, 0.26 * h), 0.012 * w)
    masks["clavicle_left"] = _band(s, (0.80 * w, 0.20 * h), (0.55 * w, 0.26 * h), 0.012 * w)
    masks["scapula_right"] = _ellipse(s, 0.17 * w, 0.33 * h, 0.05 * w, 0.10 * h)
    masks["scapula_left"] = _ellipse(s, 0.83 * w, 0.33 * h, 0.05 * w, 0.10 * h)
    masks["spine"] = _band(s, (0.5 * w, 0.08 * h), (0.5 * w, 0.95 * h), 0.03 * w)
    masks["trachea"] = _band(s, (0.5 * w, 0.06 * h), (0.5 * w, 0.30 * h), 0.012 * w)
    masks["body"] = _ellipse(s, 0.5 * w, 0.55 * h, 0.46 * w, 0.60 * h)
    field = np.zeros(s, dtype=bool)
    field[int(0.02 * h) : int(0.98 * h), int(0.02 * w) : int(0.98 * w)] = True
    masks["field"] = field
    spacing = image.spacing_mm or (0.2, 0.2)
    return Prediction(
        view=View.FRONTAL,
        view_probabilities={View.FRONTAL: 0.98, View.LATERAL: 0.01, View.OTHER: 0.01},
        masks=masks,
        spacing_mm=spacing,
        spacing_estimated=image.spacing_mm is None,
    )


def example_result(
    image: DecodedImage,
    *,
    sop_instance_uid: str | None = None,
    model: ModelInfo | None = EXAMPLE_MODEL,
) -> QCResult:
    """Findings of every status and geometry kind, placed on the example masks."""
    h, w = image.pixels.shape
    pt = Geometry
    findings = (
        Finding(
            rule="completeness.apices",
            family=Family.COMPLETENESS,
            status=Status.PASS,
            value=31.0,
            unit="mm",
            threshold=5.0,
            message="Both apices 31 mm inside the field",
            geometry=(
                pt("point", ((0.33 * w, 0.20 * h),), "apex R"),
                pt("point", ((0.67 * w, 0.20 * h),), "apex L"),
            ),
        ),
        Finding(
            rule="completeness.costophrenic",
            family=Family.COMPLETENESS,
            status=Status.WARN,
            value=4.0,
            unit="mm",
            threshold=5.0,
            message="Left costophrenic angle only 4 mm from the field edge",
            geometry=(
                pt("point", ((0.21 * w, 0.69 * h),), "CP R"),
                pt("point", ((0.79 * w, 0.69 * h),), "CP L"),
            ),
        ),
        Finding(
            rule="completeness.collimation",
            family=Family.COMPLETENESS,
            status=Status.PASS,
            value=22.0,
            unit="mm",
            threshold=50.0,
            message="Field fits the thorax",
            geometry=(
                pt(
                    "polygon",
                    (
                        (0.02 * w, 0.02 * h),
                        (0.98 * w, 0.02 * h),
                        (0.98 * w, 0.98 * h),
                        (0.02 * w, 0.98 * h),
                    ),
                    "field",
                ),
            ),
        ),
        Finding(
            rule="organs.lungs",
            family=Family.ORGANS,
            status=Status.PASS,
            value=None,
            unit=None,
            threshold=None,
            message="Two lungs found",
        ),
        Finding(
            rule="exposure.deviation_index",
            family=Family.EXPOSURE,
            status=Status.NOT_EVALUABLE,
            value=None,
            unit="1",
            threshold=3.0,
            message="No exposure index in the header",
        ),
        Finding(
            rule="exposure.saturation",
            family=Family.EXPOSURE,
            status=Status.PASS,
            value=0.2,
            unit="%",
            threshold=1.0,
            message="0.2 % of lung pixels clipped",
        ),
        Finding(
            rule="positioning.rotation",
            family=Family.POSITIONING,
            status=Status.FAIL,
            value=7.9,
            unit="deg",
            threshold=5.0,
            message="Rotated 7.9°: clavicle heads off the spinous line",
            geometry=(
                pt("point", ((0.44 * w, 0.26 * h), (0.56 * w, 0.26 * h)), "clavicle heads"),
                pt(
                    "polyline",
                    ((0.5 * w, 0.08 * h), (0.505 * w, 0.5 * h), (0.51 * w, 0.95 * h)),
                    "spinous line",
                ),
            ),
        ),
        Finding(
            rule="positioning.inspiration",
            family=Family.POSITIONING,
            status=Status.WARN,
            value=9.0,
            unit="{ribs}",
            threshold=10.0,
            message="9 posterior ribs above the dome",
            geometry=(
                pt(
                    "polyline",
                    ((0.22 * w, 0.66 * h), (0.33 * w, 0.62 * h), (0.44 * w, 0.66 * h)),
                    "right dome",
                ),
            ),
        ),
        Finding(
            rule="positioning.scapulae",
            family=Family.POSITIONING,
            status=Status.PASS,
            value=0.0,
            unit="mm",
            threshold=10.0,
            message="Scapulae outside the lung fields",
            geometry=(
                pt(
                    "polygon",
                    (
                        (0.12 * w, 0.25 * h),
                        (0.22 * w, 0.25 * h),
                        (0.22 * w, 0.43 * h),
                        (0.12 * w, 0.43 * h),
                    ),
                    "scapula R",
                ),
            ),
        ),
    )
    families = {
        f: worst([x for x in findings if x.family == f])
        for f in (Family.COMPLETENESS, Family.ORGANS, Family.EXPOSURE, Family.POSITIONING)
    }
    families[Family.METADATA] = Verdict.PASS
    return QCResult(
        sop_instance_uid=sop_instance_uid or image.meta.sop_instance_uid,
        view=View.FRONTAL,
        verdict=worst(findings),
        families=families,
        findings=findings,
        model=model,
        timings_ms={"total": 0.0},
    )
