"""Finding messages in English and Simplified Chinese, and the Finding factory the rules use.

Templates are looked up as ``<rule>.<key>``, then ``*.<key>`` (shared wording). Words that
rules pass as parameters (sides, structures, places) are translated here, so rules stay
language-free.
"""

from __future__ import annotations

import math
from typing import Any

from qcnode.records import Finding, Geometry, Status
from qcnode.rules.catalogue import SPECS

LANGUAGES = ("en", "zh")

WORDS_ZH = {
    "right": "右",
    "left": "左",
    "lung": "肺",
    "heart": "心脏",
    "sternum": "胸骨",
    "spine": "脊柱",
    "clavicle": "锁骨",
    "top": "上方",
    "bottom": "下方",
    "image_left": "图像左侧",
    "image_right": "图像右侧",
    "anterior": "前方",
    "posterior": "后方",
    "frontal": "正位",
    "lateral": "侧位",
    "other": "非胸片",
    "": "",
}
WORDS_EN = {"image_left": "image left", "image_right": "image right"}

# (English, 中文)
TEMPLATES: dict[str, tuple[str, str]] = {
    # shared
    "*.no_lungs": ("Lungs not found: not evaluable.", "未识别到肺野，无法评价。"),
    "*.missing": ("{what} not found: not evaluable.", "未识别到{what}，无法评价。"),
    "*.internal": ("Measurement failed: not evaluable.", "测量失败，无法评价。"),
    "*.degenerate": (
        "Image too small or not a 2-D grey-level grid ({shape}): not evaluable.",
        "图像过小或不是二维灰度图像（{shape}），无法评价。",
    ),
    # completeness
    "completeness.apices.pass": (
        "Both lung apices inside the field (smallest margin {value:.0f} mm ≥ {threshold:.0f} mm).",
        "双肺尖完整（最小边距 {value:.0f} mm ≥ {threshold:.0f} mm）。",
    ),
    "completeness.apices.fail": (
        "{side_cap} lung apex cut off or too close to the field edge: margin {value:.0f} mm "
        "< {threshold:.0f} mm.",
        "{side}肺尖未完整包括或距照射野边缘过近：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.apices.missing": (
        "{side_cap} lung not found: apex not evaluable.",
        "未识别到{side}肺，肺尖无法评价。",
    ),
    "completeness.apices.lateral_pass": (
        "Lung apex inside the field (margin {value:.0f} mm ≥ {threshold:.0f} mm).",
        "肺尖完整（边距 {value:.0f} mm ≥ {threshold:.0f} mm）。",
    ),
    "completeness.apices.lateral_fail": (
        "Lung apex cut off or too close to the field edge: margin {value:.0f} mm "
        "< {threshold:.0f} mm.",
        "肺尖未完整包括：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.costophrenic.pass": (
        "Both costophrenic angles inside the field (smallest margin {value:.0f} mm).",
        "双侧肋膈角完整（最小边距 {value:.0f} mm）。",
    ),
    "completeness.costophrenic.fail": (
        "{side_cap} costophrenic angle cut off or too close to the field edge: margin "
        "{value:.0f} mm < {threshold:.0f} mm.",
        "{side}侧肋膈角未完整包括：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.costophrenic.missing": (
        "{side_cap} lung not found: costophrenic angle not evaluable.",
        "未识别到{side}肺，肋膈角无法评价。",
    ),
    "completeness.costophrenic.lateral_pass": (
        "Posterior costophrenic angle inside the field (margin {value:.0f} mm).",
        "后肋膈角完整（边距 {value:.0f} mm）。",
    ),
    "completeness.costophrenic.lateral_fail": (
        "Posterior costophrenic angle cut off: margin {value:.0f} mm < {threshold:.0f} mm.",
        "后肋膈角未完整包括：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.costophrenic.lateral_base_cut": (
        "Posterior costophrenic angle cut off: the lung base ends at the field edge still "
        "{share:.0%} of the lungs' widest (margin {value:.0f} mm).",
        "后肋膈角未完整包括：肺底止于照射野边缘处仍为最宽处的 {share:.0%}（边距 {value:.0f} mm）。",
    ),
    "completeness.lateral_walls.pass": (
        "Both lateral chest walls inside the field (smallest margin {value:.0f} mm).",
        "双侧胸壁完整（最小边距 {value:.0f} mm）。",
    ),
    "completeness.lateral_walls.fail": (
        "{side_cap} lateral lung border cut off or too close to the field edge: margin "
        "{value:.0f} mm < {threshold:.0f} mm.",
        "{side}侧胸壁未完整包括：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.lateral_walls.missing": (
        "{side_cap} lung not found: lateral wall not evaluable.",
        "未识别到{side}肺，侧胸壁无法评价。",
    ),
    "completeness.anteroposterior.pass": (
        "Sternum and posterior chest wall inside the field (smallest margin {value:.0f} mm).",
        "胸骨及后胸壁完整（最小边距 {value:.0f} mm）。",
    ),
    "completeness.anteroposterior.fail": (
        "Chest cut off {where}: margin {value:.0f} mm < {threshold:.0f} mm.",
        "胸部{where}未完整包括：边距 {value:.0f} mm < {threshold:.0f} mm。",
    ),
    "completeness.anteroposterior.sternum_outside": (
        "Sternum not on the film: the lungs/heart reach the field edge ({where}, margin "
        "{value:.0f} mm): chest cut off.",
        "胸骨不在图像内：肺/心影已达{where}照射野边缘（边距 {value:.0f} mm），"
        "胸部{where}未完整包括。",
    ),
    "completeness.anteroposterior.missing_ap": (
        "Sternum or posterior chest wall not found: not evaluable.",
        "未识别到胸骨或后胸壁，无法评价。",
    ),
    "completeness.collimation.pass": (
        "Field fits the thorax (largest excess {value:.0f} mm ≤ {threshold:.0f} mm).",
        "照射野大小合适（最大超出 {value:.0f} mm ≤ {threshold:.0f} mm）。",
    ),
    "completeness.collimation.warn": (
        "Field extends {value:.0f} mm beyond the lungs at the {where} (> {threshold:.0f} mm): "
        "collimate closer to reduce dose.",
        "照射野在{where}超出肺野 {value:.0f} mm（> {threshold:.0f} mm），请缩小照射野以减少剂量。",
    ),
    "completeness.centering.pass": (
        "Thorax centred in the field (offset {value:.1f} % of the field width).",
        "胸部居中（偏移 {value:.1f}% 照射野宽度）。",
    ),
    "completeness.centering.warn": (
        "Thorax off-centre: midline {value:.1f} % of the field width from its centre "
        "(> {threshold:.0f} %).",
        "胸部未居中：中线偏离照射野中心 {value:.1f}%（> {threshold:.0f}%）。",
    ),
    # organs
    "*.found": ("{what_cap} found.", "已识别{what}。"),
    "organs.lungs.pass": ("Both lungs found and whole.", "双肺显示完整。"),
    "organs.lungs.missing": (
        "{what} not found or too small ({value:.0f} mm² < {threshold:.0f} mm²).",
        "未识别到{what}或面积过小（{value:.0f} mm² < {threshold:.0f} mm²）。",
    ),
    "organs.lungs.cut": (
        "{side_cap} lung cut by the field edge ({where}): extrapolated loss index {value:.2f} "
        "(>= {threshold:.2f}).",
        "{side}肺被照射野边缘截断（{where}）：外推缺失指数 {value:.2f}（≥ {threshold:.2f}）。",
    ),
    "*.truncated": (
        "{what_cap} truncated: {value:.0f} mm of its outline on the field edge.",
        "{what}显示不完整：{value:.0f} mm 轮廓位于照射野边缘。",
    ),
    "organs.heart.pass": ("Heart found and whole.", "心脏显示完整。"),
    "organs.heart.missing": ("Heart not found.", "未识别到心脏。"),
    "organs.sternum.pass": ("Sternum found and whole.", "胸骨显示完整。"),
    "organs.sternum.missing": ("Sternum not found.", "未识别到胸骨。"),
    "organs.spine.missing": ("Spine not found.", "未识别到脊柱。"),
    "organs.clavicles.pass": ("Both clavicles found.", "双侧锁骨显示。"),
    "organs.clavicles.missing": ("{side_cap} clavicle not found.", "未识别到{side}锁骨。"),
    "organs.clavicles.unsegmented": (
        "{side_cap} clavicle not segmented, but the field reaches {margin:.0f} mm above that "
        "apex, so it is on the film: not evaluated.",
        "未能分割{side}锁骨，但照射野超出该侧肺尖{margin:.0f}毫米，锁骨应在片内：未评估。",
    ),
    "organs.diaphragm.pass": (
        "Both hemidiaphragm domes inside the field.",
        "双侧膈顶显示完整。",
    ),
    "organs.diaphragm.fail": (
        "{side_cap} hemidiaphragm cut off: {value:.0f} % of the lung's lower border on the "
        "field edge (> {threshold:.0f} %).",
        "{side}侧膈肌未完整显示：{value:.0f}% 肺下缘位于照射野边缘（> {threshold:.0f}%）。",
    ),
    "organs.diaphragm.missing": (
        "{side_cap} lung not found: diaphragm not evaluable.",
        "未识别到{side}肺，膈肌无法评价。",
    ),
    # exposure
    "exposure.deviation_index.no_header": (
        "No exposure index in the header: deviation index not evaluable.",
        "头文件无曝光指数，偏差指数无法评价。",
    ),
    "exposure.deviation_index.pass": (
        "Deviation index {value:+.1f} (|DI| ≤ {threshold:.0f}).",
        "偏差指数 {value:+.1f}（|DI| ≤ {threshold:.0f}）。",
    ),
    "exposure.deviation_index.warn_high": (
        "Deviation index {value:+.1f}: exposure above target.",
        "偏差指数 {value:+.1f}：曝光高于目标值。",
    ),
    "exposure.deviation_index.warn_low": (
        "Deviation index {value:+.1f}: exposure below target.",
        "偏差指数 {value:+.1f}：曝光低于目标值。",
    ),
    "exposure.deviation_index.fail_high": (
        "Deviation index {value:+.1f}: overexposed (|DI| > {threshold:.0f}).",
        "偏差指数 {value:+.1f}：曝光过度（|DI| > {threshold:.0f}）。",
    ),
    "exposure.deviation_index.fail_low": (
        "Deviation index {value:+.1f}: underexposed (|DI| > {threshold:.0f}).",
        "偏差指数 {value:+.1f}：曝光不足（|DI| > {threshold:.0f}）。",
    ),
    "exposure.saturation.pass": (
        "{value:.2f} % of lung pixels clipped (≤ {threshold:.1f} %).",
        "肺野饱和像素 {value:.2f}%（≤ {threshold:.1f}%）。",
    ),
    "exposure.saturation.fail": (
        "{value:.1f} % of lung pixels clipped (> {threshold:.1f} %): detail lost.",
        "肺野饱和像素 {value:.1f}%（> {threshold:.1f}%），细节丢失。",
    ),
    "exposure.contrast.pass": (
        "Tonal range {value:.2f} used (≥ {threshold:.2f}); lung–mediastinum contrast {lung:.2f}.",
        "灰阶范围 {value:.2f}（≥ {threshold:.2f}）；肺野与纵隔对比度 {lung:.2f}。",
    ),
    "exposure.contrast.fail": (
        "Flat image: tonal range {value:.2f} (< {threshold:.2f}); lung–mediastinum contrast "
        "{lung:.2f}.",
        "图像灰平：灰阶范围 {value:.2f}（< {threshold:.2f}）；肺野与纵隔对比度 {lung:.2f}。",
    ),
    "exposure.noise.pass": (
        "Noise {value:.3f} in the lungs (≤ {threshold:.3f}; contrast-to-noise {cnr:.0f}).",
        "肺野噪声 {value:.3f}（≤ {threshold:.3f}；对比噪声比 {cnr:.0f}）。",
    ),
    "exposure.noise.fail": (
        "Noisy image: lung noise {value:.3f} (> {threshold:.3f}; contrast-to-noise {cnr:.0f}).",
        "图像噪声大：肺野噪声 {value:.3f}（> {threshold:.3f}；对比噪声比 {cnr:.0f}）。",
    ),
    "exposure.spine_through_heart.pass": (
        "Vertebrae visible behind the heart (edge {value:.1f}× noise).",
        "心影后椎体可见（边缘 {value:.1f} 倍噪声）。",
    ),
    "exposure.spine_through_heart.fail": (
        "Vertebrae not visible behind the heart (edge {value:.1f}× noise "
        "< {threshold:.1f}): underpenetrated.",
        "心影后椎体不可见（边缘 {value:.1f} 倍噪声 < {threshold:.1f}），穿透不足。",
    ),
    "exposure.spine_through_heart.no_spine": (
        "Spine behind the heart not found: not evaluable.",
        "未识别到心影后脊柱，无法评价。",
    ),
    "exposure.sharpness.pass": (
        "Heart border edge width {value:.1f} mm (≤ {threshold:.1f} mm).",
        "心缘边缘宽度 {value:.1f} mm（≤ {threshold:.1f} mm）。",
    ),
    "exposure.sharpness.fail": (
        "Blurred heart border {value:.1f} mm (> {threshold:.1f} mm): motion or defocus.",
        "心缘模糊 {value:.1f} mm（> {threshold:.1f} mm），可能为运动伪影。",
    ),
    "exposure.sharpness.pass_fwhm": (
        "Apparent edge FWHM {value:.1f} mm at the anatomy's sharpest edges (≤ {threshold:.1f} mm).",
        "解剖边缘表观半高宽 {value:.1f} mm（≤ {threshold:.1f} mm）。",
    ),
    "exposure.sharpness.fail_fwhm": (
        "Blurred anatomy: apparent edge FWHM {value:.1f} mm (> {threshold:.1f} mm): motion or "
        "defocus.",
        "解剖边缘模糊，表观半高宽 {value:.1f} mm（> {threshold:.1f} mm），可能为运动伪影。",
    ),
    "exposure.sharpness.no_edges": (
        "Too few anatomical edges inside the field: sharpness not evaluable.",
        "照射野内解剖边缘过少，锐利度无法评价。",
    ),
    "exposure.sharpness.no_edge": (
        "Heart border against lung not found: sharpness not evaluable.",
        "未识别到心缘与肺野交界，锐利度无法评价。",
    ),
    # positioning
    "positioning.rotation.pass": (
        "No rotation: {value:.1f}° (clavicle heads {d_right:.0f} / {d_left:.0f} mm from the "
        "spinous processes).",
        "无旋转：{value:.1f}°（锁骨头距棘突 右 {d_right:.0f} / 左 {d_left:.0f} mm）。",
    ),
    "positioning.rotation.fail": (
        "Patient rotated {value:.1f}° (> {threshold:.0f}°): {side} clavicle head farther from "
        "the spinous processes ({d_right:.0f} / {d_left:.0f} mm).",
        "患者旋转 {value:.1f}°（> {threshold:.0f}°）：{side}锁骨头距棘突较远"
        "（右 {d_right:.0f} / 左 {d_left:.0f} mm）。",
    ),
    "positioning.rotation.missing": (
        "Clavicle heads or spine not found: rotation not evaluable.",
        "未识别到锁骨头或脊柱，旋转无法评价。",
    ),
    "positioning.rotation.lateral_pass": (
        "Posterior ribs superimposed ({value:.0f} mm apart).",
        "双侧后肋重叠良好（相距 {value:.0f} mm）。",
    ),
    "positioning.rotation.lateral_fail": (
        "Patient rotated: posterior ribs {value:.0f} mm apart (> {threshold:.0f} mm).",
        "患者旋转：双侧后肋相距 {value:.0f} mm（> {threshold:.0f} mm）。",
    ),
    "positioning.rotation.lateral_missing": (
        "Posterior ribs not found: superimposition not evaluable.",
        "未识别到后肋，重叠情况无法评价。",
    ),
    "positioning.scapulae.pass": (
        "Scapulae clear of the lungs ({value:.0f} mm overlap ≤ {threshold:.0f} mm).",
        "肩胛骨已拉开（重叠 {value:.0f} mm ≤ {threshold:.0f} mm）。",
    ),
    "positioning.scapulae.fail": (
        "{side_cap} scapula projects {value:.0f} mm into the lung field (> {threshold:.0f} mm): "
        "rotate the shoulders forward.",
        "{side}肩胛骨投影入肺野 {value:.0f} mm（> {threshold:.0f} mm），请将双肩内旋。",
    ),
    "positioning.inspiration.pass": (
        "Good inspiration: ≈{value:.0f} posterior ribs above the right dome "
        "(from the dome's depth below the apex).",
        "吸气充分：右膈顶上方约 {value:.0f} 根后肋（按膈顶至肺尖距离估算）。",
    ),
    "positioning.inspiration.warn": (
        "Borderline inspiration: ≈{value:.0f} posterior ribs above the right dome "
        "(< {threshold:.0f}).",
        "吸气欠充分：右膈顶上方约 {value:.0f} 根后肋（< {threshold:.0f}）。",
    ),
    "positioning.inspiration.fail": (
        "Poor inspiration: ≈{value:.0f} posterior ribs above the right dome (< {threshold:.0f}).",
        "吸气不足：右膈顶上方仅约 {value:.0f} 根后肋（< {threshold:.0f}）。",
    ),
    "positioning.inspiration.missing": (
        "Diaphragm (heart's lower border) or lung apex not found or cut by the field: "
        "inspiration not evaluable.",
        "未识别到膈面（心影下缘）或肺尖，或被照射野截断，吸气无法评价。",
    ),
    "positioning.inspiration.lateral_pass": (
        "Good inspiration: ≈{value:.0f} posterior ribs above the diaphragm.",
        "吸气充分：膈上约 {value:.0f} 根后肋。",
    ),
    "positioning.inspiration.lateral_warn": (
        "Borderline inspiration: ≈{value:.0f} posterior ribs above the diaphragm "
        "(< {threshold:.0f}).",
        "吸气欠充分：膈上约 {value:.0f} 根后肋（< {threshold:.0f}）。",
    ),
    "positioning.inspiration.lateral_fail": (
        "Poor inspiration: ≈{value:.0f} posterior ribs above the diaphragm (< {threshold:.0f}).",
        "吸气不足：膈上仅约 {value:.0f} 根后肋（< {threshold:.0f}）。",
    ),
    "positioning.tilt.pass": (
        "No tilt: apices {value:.0f} mm above the clavicle heads.",
        "无前凸/后凸：肺尖高于锁骨头 {value:.0f} mm。",
    ),
    "positioning.tilt.lordotic": (
        "Lordotic projection: apices only {value:.0f} mm above the clavicle heads "
        "(< {threshold:.0f} mm).",
        "前凸位投照：肺尖仅高于锁骨头 {value:.0f} mm（< {threshold:.0f} mm）。",
    ),
    "positioning.tilt.kyphotic": (
        "Kyphotic projection: apices {value:.0f} mm above the clavicle heads "
        "(> {threshold:.0f} mm).",
        "后凸位投照：肺尖高于锁骨头 {value:.0f} mm（> {threshold:.0f} mm）。",
    ),
    "positioning.tilt.missing": (
        "Clavicles or apices not found: tilt not evaluable.",
        "未识别到锁骨或肺尖，倾斜无法评价。",
    ),
    "positioning.orientation.pass": ("Image upright and not mirrored.", "图像方位正确。"),
    "positioning.orientation.mirrored": (
        "Image mirrored left–right (heart on the wrong side).",
        "图像左右翻转（心影位于错误一侧）。",
    ),
    "positioning.orientation.upside_down": (
        "Image upside down (rotated 180°).",
        "图像上下颠倒（旋转 180°）。",
    ),
    "positioning.orientation.flipped": (
        "Image flipped top–bottom.",
        "图像上下翻转。",
    ),
    "positioning.arms.pass": (
        "Arms clear of the lung fields ({value:.0f} mm² overlap).",
        "上臂已上举，未与肺野重叠（{value:.0f} mm²）。",
    ),
    "positioning.arms.fail": (
        "Arms over the lung fields: {value:.0f} mm² overlap (> {threshold:.0f} mm²). "
        "Raise the arms.",
        "上臂与肺野重叠 {value:.0f} mm²（> {threshold:.0f} mm²），请上举双臂。",
    ),
    # metadata
    "metadata.view.pass": (
        "Header view {header} agrees with the image ({detected}).",
        "头文件体位 {header} 与图像一致（{detected}）。",
    ),
    "metadata.view.mismatch": (
        "Header view {header} but the image looks {detected}.",
        "头文件体位为 {header}，但图像为{detected}。",
    ),
    "metadata.view.no_header": (
        "No ViewPosition in the header.",
        "头文件无投照体位（ViewPosition）。",
    ),
    "metadata.spacing.pass": (
        "Pixel spacing {value:.3f} mm from the header.",
        "像素间距 {value:.3f} mm（来自头文件）。",
    ),
    "metadata.spacing.implausible": (
        "Implausible pixel spacing {value:.3f} mm in the header.",
        "头文件像素间距 {value:.3f} mm 不合理。",
    ),
    "metadata.spacing.disagrees": (
        "Header pixel spacing {value:.3f} mm disagrees with the anatomy ({anatomy:.3f} mm): "
        "the anatomy-based scale was used.",
        "头文件像素间距 {value:.3f} mm 与解剖结构不符（{anatomy:.3f} mm），已按解剖比例尺计算。",
    ),
    "metadata.spacing.estimated_model": (
        "No usable pixel spacing in the header: scale estimated ({value:.3f} mm).",
        "头文件无有效像素间距：按估计比例尺计算（{value:.3f} mm）。",
    ),
    "metadata.spacing.estimated_anatomy": (
        "No usable pixel spacing in the header: scale estimated from the anatomy ({value:.3f} mm).",
        "头文件无有效像素间距：按解剖结构估计比例尺（{value:.3f} mm）。",
    ),
}


def _word(word: str, language: str) -> str:
    if language == "zh":
        return WORDS_ZH.get(word, word)
    return WORDS_EN.get(word, word)


def template(rule: str, key: str, language: str) -> str:
    pair = TEMPLATES.get(f"{rule}.{key}") or TEMPLATES.get(f"*.{key}")
    if pair is None:
        raise KeyError(f"no message for {rule}.{key}")
    return pair[1] if language == "zh" else pair[0]


def render(rule: str, key: str, language: str, **params: Any) -> str:
    """The message for a finding; word parameters are translated for the language."""
    values: dict[str, Any] = {}
    for k, v in params.items():
        values[k] = _word(v, language) if isinstance(v, str) else v
    structure = values.get("structure", "")
    side = values.get("side", "")
    if language == "zh":
        what = f"{side}{structure}" if structure else side
    else:
        what = f"{side} {structure}".strip()
    values.setdefault("what", what)
    values["what_cap"] = values["what"][:1].upper() + values["what"][1:]
    values["side_cap"] = str(side)[:1].upper() + str(side)[1:]
    return template(rule, key, language).format(**values)


def _round(x: float) -> float:
    """Two decimals, but at least three significant digits (noise is ~0.01)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(2, 2 - math.floor(math.log10(abs(x)))))


def make(
    s: Any,
    rule: str,
    status: Status,
    value: float | None,
    threshold: float | None,
    key: str,
    geometry: tuple[Geometry, ...] = (),
    *,
    unit: str | None = None,
    **params: Any,
) -> Finding:
    """Build a Finding with the catalogue's family/unit and the message in ``s.language``."""
    spec = SPECS[rule]
    v = None if value is None else _round(float(value))
    t = None if threshold is None else float(threshold)
    message = render(rule, key, s.language, value=v, threshold=t, **params)
    return Finding(
        rule=rule,
        family=spec.family,
        status=status,
        value=v,
        unit=unit if unit is not None else (spec.unit if v is not None else None),
        threshold=t,
        message=message,
        geometry=geometry,
    )
