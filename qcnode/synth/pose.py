"""Radiographic pose geometry: the truth of positioning.rotation and positioning.tilt.

A radiographer judges rotation by the medial clavicle ends against the spinous processes
(EUR 16260) and tilt by the clavicles against the apices, i.e. by the anatomy as it lies,
not by a pose parameter. The one CT's own pose is neither symmetric (its clavicle heads are
≈ 3.3° rotated against its spinous processes) nor free of elastic asymmetry once deformed.
So the truth takes 3D landmarks from the CT's label volumes, moves them through the
sample's known 3D edit (habitus scale, elastic warp, rotation, tilt — the renderer's own
transform, inverted) and measures the angles there. Nothing here reads a mask or a pixel;
the pass/fail statuses are in qcnode.synth.truth (rotation_truth, tilt_truth).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

STANDARD_SID_MM = 1800.0  # positioning.tilt: the PA distance a "neutral" projection refers to


@dataclass(frozen=True)
class Landmarks:
    """CT patient-frame points (x left, y anterior, z superior; mm) of the reference pose."""

    clavicle_right: tuple[float, float, float]  # centre of the clavicle's medial 10 mm
    clavicle_left: tuple[float, float, float]
    spinous: tuple[float, float, float]  # spinous-process tips at the clavicle heads' level
    apex: tuple[float, float, float]  # top of the lungs (mean of both apices)


def _frame_points(bits: npt.NDArray[Any], bit: int, spacing: Any, origin: Any, name: str) -> Any:
    """The patient-frame points (N, 3) of one label; CTInvalidError when the CT has none."""
    from qcnode.synth import ct as ctmod

    zz, yy, xx = np.nonzero((bits.astype(np.int64) >> bit) & 1)
    if zz.size == 0:
        raise ctmod.CTInvalidError(f"no {name} in the CT's labels: no positioning truth")
    return np.stack(
        [
            (xx - origin[2]) * spacing[2],
            (yy - origin[1]) * spacing[1],
            (zz - origin[0]) * spacing[0],
        ],
        axis=1,
    )


@functools.cache
def ct_landmarks() -> Landmarks:
    """The reference landmarks of the CT (qcnode.synth.ct; cached per process).

    Clavicle medial end: centre of the clavicle's voxels within 10 mm of its most medial
    voxel. Spinous processes: in each CT slice within ±20 mm of the clavicle heads' level,
    the spine's voxels within 8 mm of its posterior-most one; their mean. Apex: the mean of
    each lung's topmost voxels. A CT without one of these structures (or without spine at
    the clavicle heads' level) cannot yield the positioning truth: CTInvalidError.
    """
    from qcnode.synth import ct as ctmod

    ct = ctmod.load()
    bone = ct.bone_bits.numpy()
    soft = ct.soft_bits.numpy()
    sp, og = ct.spacing_mm, ct.origin_index
    ends = {}
    for side, sign in (("right", 1.0), ("left", -1.0)):  # medial: +x for the right clavicle
        name = f"clavicle_{side}"
        pts = _frame_points(bone, ctmod.BONE_BITS[name], sp, og, name)
        medial = sign * pts[:, 0]
        ends[side] = pts[medial >= medial.max() - 10.0].mean(axis=0)
    level = (ends["right"][2] + ends["left"][2]) / 2.0
    spine = _frame_points(bone, ctmod.BONE_BITS["spine"], sp, og, "spine")
    tips = []
    for z in np.unique(spine[:, 2]):
        if abs(z - level) <= 20.0:
            sl = spine[spine[:, 2] == z]
            tips.append(sl[sl[:, 1] <= sl[:, 1].min() + 8.0].mean(axis=0))
    if not tips:
        raise ctmod.CTInvalidError("no spine at the clavicle heads' level in the CT's labels")
    apices = []
    for side in ("right", "left"):
        name = f"lung_{side}"
        pts = _frame_points(soft, ctmod.SOFT_BITS[name], sp, og, name)
        apices.append(pts[pts[:, 2] >= pts[:, 2].max() - 1e-6].mean(axis=0))

    def t(v: Any) -> tuple[float, float, float]:
        return (float(v[0]), float(v[1]), float(v[2]))

    return Landmarks(
        clavicle_right=t(ends["right"]),
        clavicle_left=t(ends["left"]),
        spinous=t(np.mean(tips, axis=0)),
        apex=t(np.mean(apices, axis=0)),
    )


def pose_of(params: dict[str, Any]) -> Any:
    """The render.Pose recorded in a sample's params; keys a caller left out (a hand-built
    test pose) take render.Pose's defaults, i.e. the CT's reference pose."""
    from qcnode.synth import render

    d = render.Pose()
    cx, cz = params.get("beam_center_mm", d.center_mm)
    return render.Pose(
        view_position=str(params.get("view_position", d.view_position)),
        sid_mm=float(params.get("sid_mm", d.sid_mm)),
        rotation_deg=float(params.get("rotation_deg", d.rotation_deg)),
        tilt_deg=float(params.get("tilt_deg", d.tilt_deg)),
        scale=tuple(float(v) for v in params.get("scale_zyx", d.scale)),  # type: ignore[arg-type]
        elastic_mm=float(params.get("elastic_mm", d.elastic_mm)),
        elastic_seed=int(params.get("elastic_seed", d.elastic_seed)),
        center_mm=(float(cx), float(cz)),
    )


def positioned(points: npt.NDArray[np.float64], params: dict[str, Any]) -> Any:
    """CT-frame points (N, 3) → the positioned patient frame of a sample's pose.

    The renderer maps positioned → CT (``render._to_ct``: un-rotate, un-scale, then the
    elastic terms one after another); here that map is inverted: each elastic term in reverse
    order by fixed-point iteration (amplitudes of a few mm over wavelengths of 18–40 cm: a
    strong contraction), then scale and rotation.
    Bones do not take the diaphragm edit.
    """
    import torch

    from qcnode.synth import render

    pose = pose_of(params)
    sz, sy, sx = pose.scale
    q = torch.as_tensor(np.asarray(points, dtype=np.float64))
    # _to_ct subtracts the terms one after the other: undo them in reverse order, each by
    # fixed-point iteration of u = v + sin(u·k + φ)·a
    for k, phase, amp in reversed(render._elastic_terms(pose)):
        kd, ad = k.double(), amp.double()
        u = q.clone()
        for _ in range(50):
            nxt = q + torch.sin(u @ kd + phase).unsqueeze(-1) * ad
            done = float((nxt - u).abs().max()) < 1e-7
            u = nxt
            if done:
                break
        q = u
    q = q * torch.tensor([sx, sy, sz], dtype=torch.float64)
    rot = render._rot(pose).double()
    return (q @ rot.T).numpy()


def apparent_rotation(params: dict[str, Any], lm: Landmarks | None = None) -> float:
    """Degrees the patient must turn about the long axis for the medial clavicle ends to lie
    symmetric about the spinous processes (signed; positive: left side anterior).

    With X (left) and Y (anterior) sums S_X = X_R + X_L − 2·X_S, S_Y likewise, a further turn
    by −θ with tan θ = S_X / S_Y makes the projected ends equidistant from the spinous line.
    """
    lm = lm or ct_landmarks()
    pts = positioned(np.array([lm.clavicle_right, lm.clavicle_left, lm.spinous]), params)
    sx_ = pts[0, 0] + pts[1, 0] - 2.0 * pts[2, 0]
    sy_ = pts[0, 1] + pts[1, 1] - 2.0 * pts[2, 1]
    return -math.degrees(math.atan2(sx_, sy_))


def apparent_tilt(params: dict[str, Any], lm: Landmarks | None = None) -> float:
    """Degrees of lordotic (+) / kyphotic (−) projection of the upper thorax.

    Two parts, both what makes the clavicles project high or low against the apices:
    - the patient: the turn of the apex → medial-clavicle vector in the sagittal plane
      against the reference pose (tilt, with habitus scale and elastic warp);
    - the beam: at the apices' height h above the central ray a cone beam runs at atan(h/SID)
      to the axial plane; cephalad through the patient from the front on an AP film
      (lordotic), from the back on a PA (kyphotic). Referred to a standard PA at 180 cm, so
      that a straight patient on a standard PA reads 0; an AP at 110 cm adds ≈ 10°.
    """
    lm = lm or ct_landmarks()
    mid = (np.array(lm.clavicle_right) + np.array(lm.clavicle_left)) / 2.0
    ref = np.array([lm.apex, mid])
    pts = positioned(ref, params)

    def angle(a: Any, b: Any) -> float:  # sagittal direction of apex → clavicle heads
        return math.atan2(float(b[2] - a[2]), float(b[1] - a[1]))

    patient = math.degrees(angle(pts[0], pts[1]) - angle(ref[0], ref[1]))
    pose = pose_of(params)
    h = float((pts[0, 2] + pts[1, 2]) / 2.0) - pose.center_mm[1]
    sid = pose.sid_mm
    s = 1.0 if pose.view_position == "AP" else -1.0
    beam = math.degrees(s * math.atan(h / sid) + math.atan(h / STANDARD_SID_MM))
    return patient + beam
