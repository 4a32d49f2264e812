"""Batch augmentation on canvases (DESIGN §6, the SyntheX list), then ``standardise``.

Geometric (applied to image, valid region and masks alike): affine (rotation, isotropic and
anisotropic scale, shear, shift) plus a smooth elastic warp. Intensity (image only): contrast
curves (gamma / log / sigmoid), brightness, inversion, Gaussian blur or unsharp sharpening,
2-4x pooling, Gaussian noise, coarse dropout boxes. Synthetic-to-real transfer depends on
this randomisation far more than on the network, so it is strong by design.

All randomness comes from the ``torch.Generator`` passed in (a CPU generator, also when the
batch lives on a GPU: draws stay on the CPU and tensors follow the batch's device), so a
step's batch is a pure function of (seed, step), which makes training reproducible and
resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcnode.model.preprocess import standardise


@dataclass(frozen=True)
class AugmentConfig:
    p_geometric: float = 0.9
    rotate_deg: float = 8.0
    scale: tuple[float, float] = (0.8, 1.2)
    aniso: float = 0.1
    shear: float = 0.08
    shift: float = 0.12  # fraction of the canvas
    elastic: float = 0.02  # normalised displacement amplitude (~2.5 px at 256)
    p_invert: float = 0.1
    p_curve: float = 0.8
    p_blur: float = 0.25
    p_sharpen: float = 0.25
    sharpen_sigma: tuple[float, float] = (1.0, 3.0)  # px at 1.75 mm; large = multi-scale look
    p_pool: float = 0.2
    p_noise: float = 0.5
    noise: float = 0.05
    p_dropout: float = 0.3
    p_lines: float = 0.3  # wires, tubes, ECG leads: thin bright or dark curves
    # Histogram equalisation blended in: real films' processing leaves the mediastinum
    # mid-grey where a DRR's is near white (docs/SYNTH.md "What still differs").
    p_equalize: float = 0.0
    # A film cut deep on one side (session 8): the image and every mask end at a line
    # `cut_depth` of the image's extent in from its top, bottom, left or right edge. The
    # generator's windows rarely cut this deep; on real films cropped through an apex or a
    # wall the network stopped its lungs short of the new border (docs/MODEL.md).
    p_cut: float = 0.0
    cut_depth: tuple[float, float] = (0.04, 0.3)
    # Dense regions blended towards white (session 10): consolidation, effusion, a heavy soft
    # tissue shadow. Bedside films of one NIH patient with white lower halves were read as
    # laterals; the DRRs of one healthy CT never show such a film.
    p_opacity: float = 0.0
    opacity: tuple[float, float] = (0.3, 0.85)


NONE = AugmentConfig(
    p_geometric=0.0,
    p_invert=0.0,
    p_curve=0.0,
    p_blur=0.0,
    p_sharpen=0.0,
    p_pool=0.0,
    p_noise=0.0,
    p_dropout=0.0,
    p_lines=0.0,
)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Global histogram equalisation of one image: each pixel -> its value's quantile (ties
    share one value, so a flat padded border stays flat)."""
    flat = x.flatten()
    ranks = torch.searchsorted(flat.sort().values, flat, right=True)
    return (ranks.to(x.dtype) / flat.numel()).reshape(x.shape)


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _p(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _cut(stack: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(B, 1 + 1 + C, S, S) canvas, valid, masks: zero all of them beyond a cut line."""
    out = stack.clone()
    for i in range(stack.shape[0]):
        if not _p(g, cfg.p_cut):
            continue
        side = int(torch.randint(4, (), generator=g))
        depth = _u(g, *cfg.cut_depth)
        rows = torch.nonzero(stack[i, 1].any(dim=1)).flatten()
        cols = torch.nonzero(stack[i, 1].any(dim=0)).flatten()
        if rows.numel() < 8 or cols.numel() < 8:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if side == 0:
            out[i, :, : r0 + round(depth * (r1 - r0))] = 0
        elif side == 1:
            out[i, :, r1 - round(depth * (r1 - r0)) :] = 0
        elif side == 2:
            out[i, :, :, : c0 + round(depth * (c1 - c0))] = 0
        else:
            out[i, :, :, c1 - round(depth * (c1 - c0)) :] = 0
    return out


def _geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Warp (B, C, S, S) with one random affine + elastic field per sample."""
    b, _, s, _ = x.shape
    thetas = []
    for _ in range(b):
        if not _p(g, cfg.p_geometric):
            thetas.append(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
            continue
        a = math.radians(_u(g, -cfg.rotate_deg, cfg.rotate_deg))
        z = _u(g, *cfg.scale)
        zx, zy = z * _u(g, 1 - cfg.aniso, 1 + cfg.aniso), z * _u(g, 1 - cfg.aniso, 1 + cfg.aniso)
        sh = _u(g, -cfg.shear, cfg.shear)
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        shear = torch.tensor([[1.0, sh], [0.0, 1.0]])
        lin = rot @ shear @ torch.diag(torch.tensor([1 / zx, 1 / zy]))
        t = torch.tensor([_u(g, -cfg.shift, cfg.shift), _u(g, -cfg.shift, cfg.shift)]) * 2
        thetas.append(torch.cat([lin, t[:, None]], dim=1))
    theta = torch.stack(thetas).to(x.device)
    grid = F.affine_grid(theta, [b, 1, s, s], align_corners=False)
    if cfg.elastic > 0:
        coarse = (torch.randn((b, 2, 5, 5), generator=g) * cfg.elastic).to(x.device)
        field = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def _lines(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """1-4 random quadratic curves, 1-3 px wide, drawn bright (wires) or dark."""
    s = x.shape[-1]
    canvas = torch.zeros_like(x)
    t = torch.linspace(0, 1, 4 * s)
    for _ in range(int(torch.randint(1, 5, (), generator=g))):
        p = torch.rand((3, 2), generator=g) * s
        pts = (
            (1 - t)[:, None] ** 2 * p[0]
            + 2 * ((1 - t) * t)[:, None] * p[1]
            + t[:, None] ** 2 * p[2]
        )
        idx = pts.long().clamp(0, s - 1).to(x.device)
        canvas[..., idx[:, 1], idx[:, 0]] = 1.0
    width = int(torch.randint(1, 4, (), generator=g))
    if width > 1:
        canvas = F.max_pool2d(canvas, width, stride=1, padding=width // 2)[..., :s, :s]
    value = _u(g, 0.0, 1.0) if _p(g, 0.3) else _u(g, 0.85, 1.2)
    return torch.where(canvas > 0, torch.full_like(x, value), x)


def _opacity(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """1-3 smooth dense blobs inside the body, mostly low in the film (where effusion and
    soft tissue lie), blended towards white: x + (1 - x) * a * field."""
    s = x.shape[-1]
    axis = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    field = torch.zeros(s, s)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        cy, cx = _u(g, 0.35, 1.0), _u(g, 0.15, 0.85)
        sy, sx = _u(g, 0.08, 0.3), _u(g, 0.08, 0.3)
        blob = torch.exp(-0.5 * ((axis[:, None] - cy) / sy) ** 2 - 0.5 * ((axis - cx) / sx) ** 2)
        field = torch.maximum(field, blob)
    a = _u(g, *cfg.opacity)
    body = (_blur(x, 3.0) > 0.1).float()  # inside the patient, not the air around
    return x + (1 - x) * a * field.to(x.device) * body


def _intensity(
    img: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, *, opacity: bool = True
) -> torch.Tensor:
    """One (1, 1, S, S) image in [0, 1]-ish raw units. ``opacity=False`` makes the opacity's
    draws but leaves it out: the rest of the image gets the same transforms (``augment_pair``)."""
    x = img.clamp(0, 1)
    if cfg.p_opacity > 0 and _p(g, cfg.p_opacity):  # no draws otherwise: old batches stay
        dense = _opacity(x, cfg, g)
        if opacity:
            x = dense
    if _p(g, cfg.p_invert):
        x = 1 - x
    if _p(g, cfg.p_curve):
        kind = int(torch.randint(0, 3, (), generator=g))
        if kind == 0:
            x = x.pow(_u(g, 0.6, 1.6))
        elif kind == 1:
            k = _u(g, 2.0, 20.0)
            x = torch.log1p(k * x) / math.log1p(k)
        else:
            k, c = _u(g, 4.0, 12.0), _u(g, 0.35, 0.65)
            lo, hi = 1 / (1 + math.exp(k * c)), 1 / (1 + math.exp(-k * (1 - c)))
            x = (torch.sigmoid(k * (x - c)) - lo) / (hi - lo)
    if cfg.p_equalize > 0 and _p(g, cfg.p_equalize):
        a = _u(g, 0.3, 1.0)
        x = (1 - a) * x + a * equalize(x)
    x = x * _u(g, 0.6, 1.4) + _u(g, -0.1, 0.1)  # brightness / offset
    if _p(g, cfg.p_blur):
        x = _blur(x, _u(g, 0.5, 1.5))
    elif _p(g, cfg.p_sharpen):
        x = x + _u(g, 0.5, 1.5) * (x - _blur(x, _u(g, *cfg.sharpen_sigma)))
    if _p(g, cfg.p_pool):
        k = int(torch.randint(2, 5, (), generator=g))
        x = F.interpolate(F.avg_pool2d(x, k, ceil_mode=True), size=x.shape[-2:], mode="bilinear")
    if _p(g, cfg.p_noise):
        x = x + torch.randn(x.shape, generator=g).to(x.device) * _u(g, 0.005, cfg.noise)
    if _p(g, cfg.p_lines):
        x = _lines(x, g)
    if _p(g, cfg.p_dropout):
        s = x.shape[-1]
        for _ in range(int(torch.randint(1, 5, (), generator=g))):
            h, w = int(_u(g, 0.04, 0.2) * s), int(_u(g, 0.04, 0.2) * s)
            top, left = int(_u(g, 0, s - h)), int(_u(g, 0, s - w))
            x[..., top : top + h, left : left + w] = _u(g, 0.0, 1.0)
    return x


def _warped(
    canvas: torch.Tensor,
    valid: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The geometric part, image, valid region and masks alike: (image, valid, masks)."""
    stack = torch.cat([canvas.float(), valid.float(), masks.float()], dim=1)
    if cfg.p_cut > 0:  # no draws otherwise: older recipes keep their batches
        stack = _cut(stack, cfg, g)
    if cfg.p_geometric > 0:
        stack = _geometric(stack, cfg, g)
    return stack[:, :1], stack[:, 1:2] > 0.5, (stack[:, 2:] > 0.5).float()


def augment(
    canvas: torch.Tensor,
    valid: torch.Tensor,
    masks: torch.Tensor,
    *,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,S,S) raw canvas, (B,1,S,S) valid, (B,C,S,S) masks -> network input, masks."""
    img, val, msk = _warped(canvas, valid, masks, cfg, generator)
    if cfg.p_curve > 0 or cfg.p_noise > 0 or cfg.p_invert > 0 or cfg.p_opacity > 0:
        img = torch.cat([_intensity(img[i : i + 1], cfg, generator) for i in range(img.shape[0])])
    return standardise(img, val), msk


def augment_pair(
    canvas: torch.Tensor,
    valid: torch.Tensor,
    masks: torch.Tensor,
    *,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``augment`` twice from one set of draws: (with the dense opacities, without them,
    masks). Both images share every other transform, so a teacher network shown the second
    tells a student shown the first what the film under the opacity holds (recipe
    ``distill``). The first image is exactly ``augment``'s."""
    if cfg.p_opacity <= 0:
        raise ValueError("augment_pair needs p_opacity > 0 (without it both images are one)")
    img, val, msk = _warped(canvas, valid, masks, cfg, generator)
    dense, plain = [], []
    for i in range(img.shape[0]):
        state = generator.get_state()
        dense.append(_intensity(img[i : i + 1], cfg, generator))
        after = generator.get_state()
        generator.set_state(state)
        plain.append(_intensity(img[i : i + 1], cfg, generator, opacity=False))
        if not torch.equal(generator.get_state(), after):  # the two passes drew alike
            raise AssertionError("augment_pair: the plain pass drew differently")
    return standardise(torch.cat(dense), val), standardise(torch.cat(plain), val), msk
