"""The rule catalogue of DESIGN §4: which rule IDs exist for which view, in display order.

The IDs are a contract shared by the CLI, the SR builder, the dashboard and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcnode.records import Family, View


@dataclass(frozen=True)
class RuleSpec:
    rule: str
    family: Family
    # UCUM unit of the finding's usual value; a rule whose branches report other quantities
    # passes its own (organs.*: "mm2", the area, when an organ is missing)
    unit: str | None
    title_en: str
    title_zh: str


_SPECS: tuple[RuleSpec, ...] = (
    RuleSpec("completeness.apices", Family.COMPLETENESS, "mm", "Lung apices", "肺尖"),
    RuleSpec(
        "completeness.costophrenic", Family.COMPLETENESS, "mm", "Costophrenic angles", "肋膈角"
    ),
    RuleSpec(
        "completeness.lateral_walls", Family.COMPLETENESS, "mm", "Lateral chest walls", "侧胸壁"
    ),
    RuleSpec(
        "completeness.anteroposterior",
        Family.COMPLETENESS,
        "mm",
        "Sternum and back",
        "胸骨与后胸壁",
    ),
    RuleSpec("completeness.collimation", Family.COMPLETENESS, "mm", "Collimation", "照射野"),
    RuleSpec("completeness.centering", Family.COMPLETENESS, "%", "Centering", "中心线"),
    RuleSpec("organs.lungs", Family.ORGANS, "mm", "Lungs", "双肺"),
    RuleSpec("organs.heart", Family.ORGANS, "mm", "Heart", "心脏"),
    RuleSpec("organs.clavicles", Family.ORGANS, "mm2", "Clavicles", "锁骨"),
    RuleSpec("organs.diaphragm", Family.ORGANS, "%", "Diaphragm domes", "膈顶"),
    RuleSpec("organs.spine", Family.ORGANS, "mm", "Spine", "脊柱"),
    RuleSpec("organs.sternum", Family.ORGANS, "mm", "Sternum", "胸骨"),
    RuleSpec("exposure.deviation_index", Family.EXPOSURE, "1", "Deviation index", "偏差指数"),
    RuleSpec("exposure.saturation", Family.EXPOSURE, "%", "Saturation", "饱和"),
    RuleSpec("exposure.contrast", Family.EXPOSURE, "1", "Contrast", "对比度"),
    RuleSpec("exposure.noise", Family.EXPOSURE, "1", "Noise", "噪声"),
    RuleSpec(
        "exposure.spine_through_heart", Family.EXPOSURE, "1", "Spine behind heart", "心影后椎体"
    ),
    RuleSpec("exposure.sharpness", Family.EXPOSURE, "mm", "Sharpness", "锐利度"),
    RuleSpec("positioning.rotation", Family.POSITIONING, "deg", "Rotation", "旋转"),
    RuleSpec("positioning.scapulae", Family.POSITIONING, "mm", "Scapulae", "肩胛骨"),
    RuleSpec("positioning.inspiration", Family.POSITIONING, "{ribs}", "Inspiration", "吸气"),
    RuleSpec("positioning.tilt", Family.POSITIONING, "mm", "Tilt", "前凸/后凸投照"),
    RuleSpec("positioning.orientation", Family.POSITIONING, None, "Orientation", "图像方位"),
    RuleSpec("positioning.arms", Family.POSITIONING, "mm2", "Arms", "上臂"),
    RuleSpec("metadata.view", Family.METADATA, None, "View position", "投照体位"),
    RuleSpec("metadata.spacing", Family.METADATA, "mm", "Pixel spacing", "像素间距"),
)

SPECS: dict[str, RuleSpec] = {s.rule: s for s in _SPECS}

FRONTAL_RULES: tuple[str, ...] = (
    "completeness.apices",
    "completeness.costophrenic",
    "completeness.lateral_walls",
    "completeness.collimation",
    "completeness.centering",
    "organs.lungs",
    "organs.heart",
    "organs.clavicles",
    "organs.diaphragm",
    "exposure.deviation_index",
    "exposure.saturation",
    "exposure.contrast",
    "exposure.noise",
    "exposure.spine_through_heart",
    "exposure.sharpness",
    "positioning.rotation",
    "positioning.scapulae",
    "positioning.inspiration",
    "positioning.tilt",
    "positioning.orientation",
    "metadata.view",
    "metadata.spacing",
)

LATERAL_RULES: tuple[str, ...] = (
    "completeness.apices",
    "completeness.costophrenic",
    "completeness.anteroposterior",
    "organs.lungs",
    "organs.heart",
    "organs.spine",
    "organs.sternum",
    "exposure.deviation_index",
    "exposure.saturation",
    "exposure.contrast",
    "exposure.noise",
    "exposure.sharpness",
    "positioning.rotation",
    "positioning.arms",
    "positioning.inspiration",
    "positioning.orientation",
    "metadata.view",
    "metadata.spacing",
)

CATALOGUE: dict[View, tuple[str, ...]] = {
    View.FRONTAL: FRONTAL_RULES,
    View.LATERAL: LATERAL_RULES,
    View.OTHER: (),
}


def rule_ids(view: View) -> tuple[str, ...]:
    """The rule IDs evaluated for a view, in display order (none for ``other``)."""
    return CATALOGUE[view]


def family_of(rule: str) -> Family:
    return SPECS[rule].family


def title(rule: str, language: str = "en") -> str:
    spec = SPECS[rule]
    return spec.title_zh if language == "zh" else spec.title_en
