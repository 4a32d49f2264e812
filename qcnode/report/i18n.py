"""Texts of the result objects in the configured language (en, zh).

The rule engine writes each finding's ``message``; these are the fixed labels around it:
family and status names, rule titles, structure names and the banner.
"""

from __future__ import annotations

from qcnode.errors import ConfigError
from qcnode.records import Family, Status, Verdict

LANGUAGES: tuple[str, ...] = ("en", "zh")

_TEXT: dict[str, tuple[str, str]] = {
    "not_for_diagnosis": ("NOT FOR DIAGNOSIS", "非诊断用途"),
    "qc": ("QC", "质控"),
    "legend": ("Structures", "解剖结构"),
    "families": ("Families", "质控类别"),
    "findings": ("Findings", "问题"),
    "no_findings": ("No findings", "无问题"),
    "model": ("Model", "模型"),
    "view": ("View", "体位"),
    "threshold": ("limit", "阈值"),
    "sr_title": ("Chest radiograph quality control", "胸片质量控制"),
    "kos_description": (
        "Images that failed automated quality control",
        "未通过自动质控的图像",
    ),
    "sc_series": ("QC overlay (not for diagnosis)", "质控叠加图（非诊断用途）"),
    "sr_series": ("QC report", "质控报告"),
    "gsps_series": ("QC annotations", "质控标注"),
    "kos_series": ("QC key images", "质控关键图像"),
    "gsps_label": ("QC", "质控"),
    "error": ("QC not completed", "质控未完成"),
}

_FAMILY: dict[Family, tuple[str, str]] = {
    Family.COMPLETENESS: ("Completeness", "总体完整"),
    Family.ORGANS: ("Organs", "脏器完整"),
    Family.EXPOSURE: ("Exposure", "成像细节"),
    Family.POSITIONING: ("Positioning", "位置细节"),
    Family.METADATA: ("Header", "头信息"),
}

_STATUS: dict[str, tuple[str, str]] = {
    Status.PASS: ("pass", "合格"),
    Status.WARN: ("warn", "警告"),
    Status.FAIL: ("fail", "不合格"),
    Status.NOT_EVALUABLE: ("not evaluable", "无法评估"),
    Verdict.NOT_APPLICABLE: ("not applicable", "不适用"),
    Verdict.ERROR: ("error", "错误"),
}

_VIEW: dict[str, tuple[str, str]] = {
    "frontal": ("frontal", "正位"),
    "lateral": ("lateral", "侧位"),
    "other": ("other", "其他"),
}

# Rule IDs are the contract of DESIGN §4; unknown IDs fall back to the ID itself.
RULE_TITLES: dict[str, tuple[str, str]] = {
    "completeness.apices": ("Lung apices in field", "肺尖完整"),
    "completeness.costophrenic": ("Costophrenic angles in field", "肋膈角完整"),
    "completeness.lateral_walls": ("Lateral chest walls in field", "两侧胸壁完整"),
    "completeness.anteroposterior": ("Sternum and posterior wall in field", "前后胸壁完整"),
    "completeness.collimation": ("Collimation", "照射野"),
    "completeness.centering": ("Centering", "居中"),
    "organs.lungs": ("Lungs", "双肺"),
    "organs.heart": ("Heart", "心脏"),
    "organs.clavicles": ("Clavicles", "锁骨"),
    "organs.diaphragm": ("Hemidiaphragms", "膈肌"),
    "organs.spine": ("Spine", "脊柱"),
    "organs.sternum": ("Sternum", "胸骨"),
    "exposure.deviation_index": ("Deviation index", "曝光偏差指数"),
    "exposure.saturation": ("Saturation in lungs", "肺野饱和"),
    "exposure.contrast": ("Contrast", "对比度"),
    "exposure.noise": ("Noise", "噪声"),
    "exposure.spine_through_heart": ("Spine visible through heart", "心影后椎体可见"),
    "exposure.sharpness": ("Sharpness", "清晰度"),
    "positioning.rotation": ("Rotation", "旋转"),
    "positioning.scapulae": ("Scapulae outside lungs", "肩胛骨移出肺野"),
    "positioning.inspiration": ("Inspiration", "吸气程度"),
    "positioning.tilt": ("Tilt", "倾斜"),
    "positioning.orientation": ("Orientation", "方向"),
    "positioning.arms": ("Arms clear of lungs", "双臂上举"),
    "metadata.view": ("View in header", "头信息体位"),
    "metadata.spacing": ("Pixel spacing", "像素间距"),
}

STRUCTURE_NAMES: dict[str, tuple[str, str]] = {
    "lung_right": ("right lung", "右肺"),
    "lung_left": ("left lung", "左肺"),
    "heart": ("heart", "心脏"),
    "clavicle_right": ("right clavicle", "右锁骨"),
    "clavicle_left": ("left clavicle", "左锁骨"),
    "scapula_right": ("right scapula", "右肩胛骨"),
    "scapula_left": ("left scapula", "左肩胛骨"),
    "spine": ("spine", "脊柱"),
    "trachea": ("trachea", "气管"),
    "humerus_right": ("right humerus", "右肱骨"),
    "humerus_left": ("left humerus", "左肱骨"),
    "sternum": ("sternum", "胸骨"),
    "ribs_posterior_right": ("right posterior ribs", "右后肋"),
    "ribs_posterior_left": ("left posterior ribs", "左后肋"),
    "body": ("body", "体廓"),
    "field": ("exposed field", "照射野"),
}


def check_language(language: str) -> int:
    """Index of ``language`` in the text tables; a clear error for anything else."""
    try:
        return LANGUAGES.index(language)
    except ValueError:
        raise ConfigError(f"language {language!r} is not one of {', '.join(LANGUAGES)}") from None


def text(key: str, language: str) -> str:
    return _TEXT[key][check_language(language)]


def family_name(family: Family | str, language: str) -> str:
    pair = _FAMILY.get(Family(family)) if family in Family._value2member_map_ else None
    return pair[check_language(language)] if pair else str(family)


def status_name(status: Status | Verdict | str, language: str) -> str:
    pair = _STATUS.get(str(status))
    return pair[check_language(language)] if pair else str(status)


def view_name(view: str, language: str) -> str:
    pair = _VIEW.get(str(view))
    return pair[check_language(language)] if pair else str(view)


def rule_title(rule: str, language: str) -> str:
    pair = RULE_TITLES.get(rule)
    return pair[check_language(language)] if pair else rule


def structure_name(name: str, language: str) -> str:
    pair = STRUCTURE_NAMES.get(name)
    return pair[check_language(language)] if pair else name
