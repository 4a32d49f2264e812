"""Cone-beam ray marching through the prepared CT with 3D edits of known size.

Each detector pixel's ray is sampled at equal depth steps; every sample point is mapped back
through the inverse 3D edit (patient rotation and tilt, habitus scaling, a smooth elastic
warp, and — for soft tissue only — the diaphragm shift) into the CT, and the CT is read with
`grid_sample`. Line integrals of water-equivalent density and bone fraction feed the physics
(qcnode.synth.physics); label bitmasks read with nearest sampling and OR-reduced along the
ray give the structure masks, exact for the same geometry.

Detector frame: column → patient left (frontal, both PA and AP, standard display) or
posterior (lateral, anterior on the image's left); row → inferior.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from qcnode.synth.ct import BONE_BITS, BONE_CHANNELS, SOFT_BITS, PreparedCT

FRONTAL_POSITIONS = ("PA", "AP")
LATERAL_POSITIONS = ("LL", "RL")


OPACITY_KINDS = ("basal", "dependent", "blob", "whole")


@dataclass(frozen=True)
class Opacity:
    """Lung of one side filled towards water density in 3D, before projection (generator
    v1.17): the consolidations, effusions and white-outs of bedside films. Only lung voxels
    change, so the lung masks (and the lung fields a reader draws through the opacity) stay.

    kind: "basal" (upright effusion: the lung below a level that rises towards the chest
    wall, a meniscus), "dependent" (supine layering: the lung behind a coronal level),
    "blob" (consolidation: a sphere), "whole" (white-out). ``level`` is a fraction of that
    side's lung height (basal) or depth (dependent); ``center`` fractions (x, y, z) of its
    bounding box (blob). ``density``: how far from lung towards water (0..1). ``texture``
    (v1.18): patchiness, the share of the density a smooth random field (wavelengths
    8–30 mm, from ``seed``) takes away in places (alveolar and reticular opacities are
    not uniform).
    """

    kind: str
    side: str  # right | left
    density: float
    level: float = 0.0
    meniscus_mm: float = 0.0
    center: tuple[float, float, float] = (0.5, 0.5, 0.5)
    radius_mm: float = 40.0
    edge_mm: float = 8.0
    texture: float = 0.0
    seed: int = 0


def _patches(q: torch.Tensor, o: Opacity) -> torch.Tensor:
    """A smooth random field in (0, 1) over CT-frame points (…, 3): a sum of six plane waves
    of 8–30 mm wavelength through a sigmoid."""
    g = np.random.default_rng(o.seed)
    total = torch.zeros(q.shape[:-1])
    for _ in range(6):
        d = g.normal(size=3)
        k = torch.tensor(d / np.linalg.norm(d) * 2 * math.pi / g.uniform(8.0, 30.0))
        total = total + torch.sin(q @ k.float() + float(g.uniform(0, 2 * math.pi)))
    return torch.sigmoid(total)


@dataclass(frozen=True)
class Pose:
    """Everything 3D about one render. Angles in degrees, lengths in mm (patient frame).

    rotation_deg: about the long axis; positive turns the patient's left side anterior.
    tilt_deg: about the left–right axis; positive = lordotic (anterior structures move up).
    scale: habitus scaling (z, y, x) about the thorax centre.
    diaphragm_shift_mm: positive raises the diaphragm (expiration); ribs do not move.
    center_mm: where the central ray hits the patient, (x, z) in the patient frame.
    opacities: lung filled towards water density in 3D (v1.17), see Opacity.
    """

    view_position: str = "PA"
    sid_mm: float = 1800.0
    rotation_deg: float = 0.0
    tilt_deg: float = 0.0
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    elastic_mm: float = 0.0
    elastic_seed: int = 0
    diaphragm_shift_mm: float = 0.0
    center_mm: tuple[float, float] = (0.0, 0.0)
    opacities: tuple[Opacity, ...] = ()


@dataclass(frozen=True)
class Detector:
    width_mm: float = 440.0
    height_mm: float = 480.0
    pitch_mm: float = 1.0
    depth_step_mm: float = 2.0

    @property
    def shape(self) -> tuple[int, int]:
        return (
            round(self.height_mm / self.pitch_mm),
            round(self.width_mm / self.pitch_mm),
        )


@dataclass(frozen=True, eq=False)
class Projection:
    """Line integrals and masks on the detector, before any physics or 2D edit."""

    water_cm: npt.NDArray[np.float32]  # (H, W) water-equivalent path length
    bone_cm: npt.NDArray[np.float32]  # (len(BONE_CHANNELS), H, W) cortical-bone path length
    masks: dict[str, npt.NDArray[np.bool_]]  # SOFT_BITS and BONE_BITS names
    pitch_mm: float
    pose: Pose
    magnification: float  # at the thorax centre
    extra: dict[str, float] = field(default_factory=dict)


def _rot(pose: Pose) -> torch.Tensor:
    """Forward rotation (patient frame, columns x, y, z): tilt after rotation."""
    t = math.radians(pose.rotation_deg)
    a = math.radians(pose.tilt_deg)
    rz = torch.tensor(
        [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]]
    )
    rx = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]]
    )
    return rx @ rz


def _elastic_terms(pose: Pose) -> list[tuple[torch.Tensor, float, torch.Tensor]]:
    """A smooth random displacement: a few long-wavelength sinusoids (wave vector, phase, amp)."""
    if pose.elastic_mm <= 0:
        return []
    g = np.random.default_rng(pose.elastic_seed)
    terms = []
    for _ in range(4):
        direction = g.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * 2 * math.pi / g.uniform(180.0, 400.0)
        amp = g.normal(size=3) * pose.elastic_mm / 2.0
        terms.append(
            (
                torch.tensor(k, dtype=torch.float32),
                float(g.uniform(0, 2 * math.pi)),
                torch.tensor(amp, dtype=torch.float32),
            )
        )
    return terms


def _to_ct(
    p: torch.Tensor,
    pose: Pose,
    rot: torch.Tensor,
    terms: list[tuple[torch.Tensor, float, torch.Tensor]],
) -> torch.Tensor:
    """Inverse 3D edit: positioned patient point (…, 3 as x, y, z mm) → CT patient-frame mm."""
    q = p @ rot  # R^T p for row vectors
    sz, sy, sx = pose.scale
    q = q / torch.tensor([sx, sy, sz])
    for k, phase, amp in terms:
        q = q - torch.sin(q @ k + phase).unsqueeze(-1) * amp
    return q


def _diaphragm(q: torch.Tensor, ct: PreparedCT, shift: float) -> torch.Tensor:
    """Soft tissue below the dome moves up by `shift`; taper above (lungs) and at the bottom."""
    if shift == 0.0:
        return q
    z = q[..., 2]
    dome = ct.dome_right_z_mm
    bottom = -ct.origin_index[0] * ct.spacing_mm[0]
    hold_lo = dome - 40.0
    up = 120.0
    w = torch.where(
        z >= dome,
        torch.clamp(1.0 - (z - dome) / up, min=0.0),
        torch.clamp((z - bottom) / (hold_lo - bottom), 0.0, 1.0),
    )
    w = torch.where((z < dome) & (z >= hold_lo), torch.ones_like(w), w)
    out = q.clone()
    out[..., 2] = z - shift * w
    return out


def _normalise(q: torch.Tensor, ct: PreparedCT) -> torch.Tensor:
    """CT patient-frame mm → grid_sample coordinates (x→W, y→H, z→D), align_corners=True."""
    nz, ny, nx = ct.shape
    sz, sy, sx = ct.spacing_mm
    oz, oy, ox = ct.origin_index
    ix = q[..., 0] / sx + ox
    iy = q[..., 1] / sy + oy
    iz = q[..., 2] / sz + oz
    return torch.stack(
        [2 * ix / (nx - 1) - 1, 2 * iy / (ny - 1) - 1, 2 * iz / (nz - 1) - 1], dim=-1
    )


@functools.cache
def _lung_boxes(ct: PreparedCT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each lung's bounding box in the CT patient frame, (min x y z, max x y z) mm."""
    out = {}
    for side in ("right", "left"):
        bit = SOFT_BITS[f"lung_{side}"]
        m = ((ct.soft_bits.to(torch.int64) >> bit) & 1).bool()
        idx = torch.nonzero(m).float()  # (n, 3) as z, y, x
        lo, hi = idx.min(0).values, idx.max(0).values
        sp = torch.tensor(ct.spacing_mm)
        og = torch.tensor(ct.origin_index)
        out[side] = (((lo - og) * sp).flip(0), ((hi - og) * sp).flip(0))
    return out


def _sigmoid_in(d: torch.Tensor, edge_mm: float) -> torch.Tensor:
    return torch.sigmoid(d / max(edge_mm, 1e-3))


def _opacity(
    q: torch.Tensor, soft_bits: torch.Tensor, ct: PreparedCT, opacities: tuple[Opacity, ...]
) -> torch.Tensor:
    """The fraction (0..1) of the way to water density of each sample point (…, 3 as x, y, z
    CT-frame mm) under the pose's opacities; zero outside the lungs."""
    keep = torch.ones(q.shape[:-1])
    boxes = _lung_boxes(ct)
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    for o in opacities:
        lung = ((soft_bits >> SOFT_BITS[f"lung_{o.side}"]) & 1).float()
        lo, hi = boxes[o.side]
        if o.kind == "whole":
            a = torch.ones_like(x)
        elif o.kind == "basal":
            # the level rises towards the chest wall over the lateral half of the lung
            width = float(hi[0] - lo[0])
            from_wall = (x - float(lo[0])) if o.side == "right" else (float(hi[0]) - x)
            rise = torch.clamp(1.0 - from_wall / (0.5 * width), 0.0, 1.0) * o.meniscus_mm
            level = float(lo[2]) + o.level * float(hi[2] - lo[2])
            a = _sigmoid_in(level + rise - z, o.edge_mm)
        elif o.kind == "dependent":
            level = float(lo[1]) + o.level * float(hi[1] - lo[1])
            a = _sigmoid_in(level - y, o.edge_mm)
        elif o.kind == "blob":
            c = lo + torch.tensor(o.center) * (hi - lo)
            r = torch.linalg.norm(q - c, dim=-1)
            a = _sigmoid_in(o.radius_mm - r, o.edge_mm)
        else:
            raise ValueError(f"unknown opacity kind {o.kind!r}")
        if o.texture > 0:
            a = a * (1.0 - o.texture * _patches(q, o))
        keep = keep * (1.0 - o.density * a * lung)
    return 1.0 - keep


def _or_reduce(v: torch.Tensor) -> torch.Tensor:
    """Bitwise OR along the last axis (log-depth tree)."""
    while v.shape[-1] > 1:
        n = v.shape[-1]
        half = n // 2
        head = v[..., :half] | v[..., half : 2 * half]
        v = torch.cat([head, v[..., 2 * half :]], dim=-1) if n % 2 else head
    return v[..., 0]


@dataclass(frozen=True)
class _Rays:
    source: torch.Tensor  # (3,)
    pixels: torch.Tensor  # (N, 3) detector pixel positions, patient frame mm
    t: torch.Tensor  # (S,) ray parameters of the samples
    step_len: torch.Tensor  # (N,) path length per sample in mm


def _geometry(
    ct: PreparedCT, pose: Pose, det: Detector, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[_Rays, float]:
    h, w = det.shape
    # Detector-plane coordinates of the given pixels (mm from the detector centre).
    u = (cols.float() - (w - 1) / 2.0) * det.pitch_mm
    v = -(rows.float() - (h - 1) / 2.0) * det.pitch_mm
    cx, cz = pose.center_mm
    r = ct.body_radius_mm + 10.0
    vp = pose.view_position
    if vp in FRONTAL_POSITIONS:
        depth_axis = 1
        d_plane = r if vp == "PA" else -r
        src_depth = d_plane - pose.sid_mm if vp == "PA" else d_plane + pose.sid_mm
        src = torch.tensor([cx, src_depth, cz])
        px = torch.stack([cx + u, torch.full_like(u, d_plane), cz + v], dim=-1)
    elif vp in LATERAL_POSITIONS:
        depth_axis = 0
        d_plane = r if vp == "LL" else -r
        src_depth = d_plane - pose.sid_mm if vp == "LL" else d_plane + pose.sid_mm
        src = torch.tensor([src_depth, -cx, cz])  # lateral: center_mm x is anterior offset
        px = torch.stack([torch.full_like(u, d_plane), -cx - u, cz + v], dim=-1)
    else:
        raise ValueError(f"unknown view position {vp!r}")
    n = math.ceil(2 * r / det.depth_step_mm)
    depths = torch.linspace(-r, r, n)
    t = (depths - src[depth_axis]) / (d_plane - src[depth_axis])
    ray_len = torch.linalg.norm(px - src, dim=-1)
    dt = abs(float(t[1] - t[0]))
    mag = pose.sid_mm / (pose.sid_mm - r)  # thorax centre is r from the detector
    return _Rays(source=src, pixels=px, t=t, step_len=ray_len * dt), mag


def _sample(
    ct: PreparedCT,
    pose: Pose,
    rays: _Rays,
    *,
    want_masks: bool = True,
    index_volume: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    rot = _rot(pose)
    terms = _elastic_terms(pose)
    pts = rays.source + rays.t[None, :, None] * (rays.pixels - rays.source)[:, None, :]  # N,S,3
    q = _to_ct(pts, pose, rot, terms)
    q_soft = _diaphragm(q, ct, pose.diaphragm_shift_mm)
    g_bone = _normalise(q, ct)[None, None]  # 1,1,N,S,3
    g_soft = _normalise(q_soft, ct)[None, None]
    out: dict[str, torch.Tensor] = {}
    if index_volume is not None:
        idx = F.grid_sample(index_volume[None, None], g_bone, mode="nearest", align_corners=True)[
            0, 0, 0
        ]
        out["index"] = idx.round().to(torch.int64)  # N,S
        return out
    soft = F.grid_sample(ct.soft[None, None], g_soft, align_corners=True)[0, 0, 0]
    bone = F.grid_sample(ct.bone[None], g_bone, align_corners=True)[0, :, 0]
    sb = None
    if want_masks or pose.opacities:
        sb = F.grid_sample(ct.soft_bits[None, None], g_soft, mode="nearest", align_corners=True)
        sb = sb[0, 0, 0].round().to(torch.int64)  # N,S
    if pose.opacities and sb is not None:
        frac = _opacity(q_soft, sb, ct, pose.opacities)
        soft = soft + frac * torch.clamp(1.0 - soft, min=0.0)
    out["water"] = soft.sum(-1) * rays.step_len / 10.0  # cm
    out["bone"] = bone.sum(-1) * rays.step_len / 10.0
    if want_masks and sb is not None:
        bb = F.grid_sample(ct.bone_bits[None, None], g_bone, mode="nearest", align_corners=True)
        out["soft_bits"] = _or_reduce(sb)
        out["bone_bits"] = _or_reduce(bb[0, 0, 0].round().to(torch.int64))
    return out


def render(ct: PreparedCT, pose: Pose, det: Detector, *, chunk_rows: int = 32) -> Projection:
    """Line integrals and exact masks of one pose on one detector."""
    h, w = det.shape
    water = torch.zeros(h, w)
    bone = torch.zeros(len(BONE_CHANNELS), h, w)
    sbits = torch.zeros(h, w, dtype=torch.int64)
    bbits = torch.zeros(h, w, dtype=torch.int64)
    mag = 1.0
    with torch.no_grad():
        for r0 in range(0, h, chunk_rows):
            r1 = min(h, r0 + chunk_rows)
            rr, cc = torch.meshgrid(torch.arange(r0, r1), torch.arange(w), indexing="ij")
            rays, mag = _geometry(ct, pose, det, rr.reshape(-1), cc.reshape(-1))
            s = _sample(ct, pose, rays)
            water[r0:r1] = s["water"].view(r1 - r0, w)
            bone[:, r0:r1] = s["bone"].view(len(BONE_CHANNELS), r1 - r0, w)
            sbits[r0:r1] = s["soft_bits"].view(r1 - r0, w)
            bbits[r0:r1] = s["bone_bits"].view(r1 - r0, w)
    masks = {name: ((sbits >> b) & 1).bool().numpy() for name, b in SOFT_BITS.items()}
    masks.update({name: ((bbits >> b) & 1).bool().numpy() for name, b in BONE_BITS.items()})
    return Projection(
        water_cm=water.numpy(),
        bone_cm=bone.numpy(),
        masks=masks,
        pitch_mm=det.pitch_mm,
        pose=pose,
        magnification=mag,
    )


def soft_bits_along_column(
    ct: PreparedCT, pose: Pose, det: Detector, col: int
) -> npt.NDArray[np.int64]:
    """Soft-tissue label bits each pixel of one detector column sees (e.g. the liver top)."""
    h, _ = det.shape
    rr = torch.arange(h)
    cc = torch.full_like(rr, col)
    with torch.no_grad():
        rays, _ = _geometry(ct, pose, det, rr, cc)
        s = _sample(ct, pose, rays)
    return s["soft_bits"].numpy()


def rib_indices_along_column(
    ct: PreparedCT, pose: Pose, det: Detector, col: int, rows: range, *, side: str = "right"
) -> list[set[int]]:
    """Posterior rib numbers each pixel of one detector column sees (for rib counting)."""
    vol = ct.rib_index_right if side == "right" else ct.rib_index_left
    rr = torch.tensor(list(rows), dtype=torch.int64)
    cc = torch.full_like(rr, col)
    with torch.no_grad():
        rays, _ = _geometry(ct, pose, det, rr, cc)
        idx = _sample(ct, pose, rays, index_volume=vol)["index"]
    return [set(int(v) for v in torch.unique(row) if v > 0) for row in idx]
