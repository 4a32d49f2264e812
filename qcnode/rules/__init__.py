"""QC rules (DESIGN §4): pure functions over an image, the model's masks and the header.

``evaluate(image, prediction, config=..., language=...)`` returns one Finding per rule ID of
the catalogue for the predicted view, in catalogue order. Rules never raise on odd anatomy:
what cannot be measured is ``not_evaluable`` with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcnode.records import DecodedImage, Finding, Prediction, Status, View
from qcnode.rules import completeness, exposure, lateral, metadata, organs, positioning
from qcnode.rules.catalogue import CATALOGUE, FRONTAL_RULES, LATERAL_RULES, SPECS, rule_ids
from qcnode.rules.config import RulesConfig, load_config
from qcnode.rules.geometry import ShutterSpec, Subject
from qcnode.rules.messages import LANGUAGES, make

log = logging.getLogger(__name__)

Rule = Callable[[Subject, RulesConfig], Finding]

# Fewer source pixels than this along a side: nothing on the film can be located.
MIN_SIDE_PX = 8

_COMMON: dict[str, Rule] = {
    "completeness.apices": completeness.apices,
    "completeness.costophrenic": completeness.costophrenic,
    "organs.lungs": organs.lungs,
    "organs.heart": organs.heart,
    "exposure.deviation_index": exposure.deviation_index,
    "exposure.saturation": exposure.saturation,
    "exposure.contrast": exposure.contrast,
    "exposure.noise": exposure.noise,
    "exposure.sharpness": exposure.sharpness,
    "positioning.orientation": positioning.orientation,
    "metadata.view": metadata.view,
    "metadata.spacing": metadata.spacing,
}

RULES: dict[View, dict[str, Rule]] = {
    View.FRONTAL: {
        **_COMMON,
        "completeness.lateral_walls": completeness.lateral_walls,
        "completeness.collimation": completeness.collimation,
        "completeness.centering": completeness.centering,
        "organs.clavicles": organs.clavicles,
        "organs.diaphragm": organs.diaphragm,
        "exposure.spine_through_heart": exposure.spine_through_heart,
        "positioning.rotation": positioning.rotation,
        "positioning.scapulae": positioning.scapulae,
        "positioning.inspiration": positioning.inspiration,
        "positioning.tilt": positioning.tilt,
    },
    View.LATERAL: {
        **_COMMON,
        "completeness.anteroposterior": completeness.anteroposterior,
        "organs.spine": organs.spine,
        "organs.sternum": organs.sternum,
        "positioning.rotation": lateral.rotation,
        "positioning.arms": lateral.arms,
        "positioning.inspiration": lateral.inspiration,
    },
    View.OTHER: {},
}


def evaluate(
    image: DecodedImage,
    prediction: Prediction,
    *,
    config: RulesConfig | None = None,
    language: str = "en",
    orientation: str | None = None,
) -> tuple[Finding, ...]:
    """All findings for the prediction's view (empty for ``other``), in catalogue order.

    ``orientation``: how the pipeline already found the film hanging (see ``assess``).
    """
    return assess(
        image, prediction, config=config, language=language, orientation=orientation
    ).findings


@dataclass(frozen=True)
class Assessment:
    """The rules' findings and how the film was found hanging ("upright" where the rules
    measured nothing: view ``other``, a degenerate grid)."""

    findings: tuple[Finding, ...]
    orientation: str = "upright"


def assess(
    image: DecodedImage,
    prediction: Prediction,
    *,
    config: RulesConfig | None = None,
    language: str = "en",
    orientation: str | None = None,
    stop_if_turned: bool = False,
) -> Assessment:
    """``evaluate`` that also says how the film hangs.

    ``orientation`` given: image and prediction are the pipeline's second look (the film
    turned back upright and the model's masks of it) and ``orientation`` is how its first
    look found the film hanging: reported, not detected again; geometry lies on the
    turned-back image (the pipeline maps it to the source). ``stop_if_turned``: a film found
    not upright returns with no findings (the pipeline then takes that second look;
    upright films, nearly all, cost one Subject as before).
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, not {language!r}")
    cfg = config if config is not None else load_config()
    view = prediction.view
    if view is View.OTHER:
        return Assessment(())
    shape = degenerate_shape(image, prediction)
    if shape is not None:  # say so per rule instead of measuring noise or raising
        s = _Language(language)
        return Assessment(
            tuple(
                make(s, rule, Status.NOT_EVALUABLE, None, None, "degenerate", shape=shape)
                for rule in CATALOGUE[view]
            )
        )
    subject = build_subject(image, prediction, cfg, language=language, orientation=orientation)
    if stop_if_turned and subject.orientation != "upright":
        return Assessment((), subject.orientation)
    table = RULES[view]
    findings = []
    for rule in CATALOGUE[view]:
        try:
            findings.append(table[rule](subject, cfg))
        except Exception:  # a measurement bug must not lose the other findings
            log.exception("rule failed", extra={"rule": rule})
            findings.append(make(subject, rule, Status.NOT_EVALUABLE, None, None, "internal"))
    return Assessment(tuple(findings), subject.orientation)


def build_subject(
    image: DecodedImage,
    prediction: Prediction,
    cfg: RulesConfig,
    *,
    language: str = "en",
    orientation: str | None = None,
) -> Subject:
    """The measured film with every setting from ``cfg`` (rules and calibration scripts);
    ``orientation`` as in ``assess``."""
    return Subject.build(
        image,
        prediction,
        language=language,
        lung_span_mm=cfg.metadata.anatomy_lung_span_mm,
        lung_depth_mm=cfg.metadata.anatomy_lung_depth_mm,
        tolerance=cfg.metadata.spacing_anatomy_tolerance,
        heart_offset_mm=cfg.positioning.orientation_heart_offset_mm,
        heart_spine_mm=cfg.positioning.orientation_heart_spine_mm,
        shutter=shutter_spec(cfg),
        orientation=orientation,
    )


def shutter_spec(cfg: RulesConfig) -> ShutterSpec:
    """How the rules find collimator shutters on the pixels (etc/rules.toml [completeness])."""
    c = cfg.completeness
    return ShutterSpec(
        flat_range=c.shutter_flat_range,
        min_level=c.shutter_min_level,
        min_fraction=c.shutter_min_fraction,
    )


@dataclass(frozen=True)
class _Language:
    language: str


def degenerate_shape(image: DecodedImage, prediction: Prediction) -> str | None:
    """The pixel grid's shape as text when the rules cannot measure on it, else None.

    Not 2-D (a multi-sample or 3-D array), fewer than ``MIN_SIDE_PX`` pixels along a side,
    non-finite pixels, or a mask whose shape differs from the image's.
    """
    px = np.asarray(image.pixels)
    text = "×".join(str(n) for n in px.shape) or "scalar"
    if px.ndim != 2 or min(px.shape) < MIN_SIDE_PX or not bool(np.isfinite(px).all()):
        return text
    if any(np.shape(m) != px.shape for m in prediction.masks.values()):
        return text + " ≠ masks"
    return None


__all__ = [
    "CATALOGUE",
    "FRONTAL_RULES",
    "LATERAL_RULES",
    "RULES",
    "SPECS",
    "Assessment",
    "RulesConfig",
    "assess",
    "evaluate",
    "load_config",
    "rule_ids",
]
