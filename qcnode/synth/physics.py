"""Detector physics and vendor-style processing: line integrals → stored pixel values.

Polychromatic Beer–Lambert over a Kramers-like spectrum (water and cortical bone have
different energy dependence, so bone contrast falls with kVp), scatter as a blurred fraction
of the primary, motion/detector blur, grid lines, Poisson (Gaussian-approximated) quantum
noise at a dose set by the deviation index plus electronic noise, log, then histogram
normalisation over the exposed field, multi-scale contrast enhancement, a sigmoid tone curve,
gamma, a VOI window (which can clip: saturation) and 12–14-bit quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

_E = np.array([20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150], np.float64)
# Linear attenuation (1/cm): water (1.0 g/cm3) and cortical bone (1.92 g/cm3), after NIST XCOM.
_MU_WATER = np.array(
    [
        0.810,
        0.376,
        0.268,
        0.227,
        0.206,
        0.193,
        0.184,
        0.177,
        0.171,
        0.166,
        0.161,
        0.157,
        0.153,
        0.150,
    ]
)
_MU_BONE = np.array(
    [7.68, 2.55, 1.28, 0.814, 0.605, 0.50, 0.428, 0.39, 0.357, 0.34, 0.325, 0.31, 0.295, 0.284]
)

# Automatic exposure control: at DI = 0 the median signal over the exposed field receives this
# many quanta per mm² (whatever the patient's thickness, as an AEC chamber does). Lower than a
# real detector's so that the coarse 1.4 mm pixels keep the relative noise of a finely
# sampled radiograph.
QUANTA_PER_MM2_AT_TARGET = 300.0


def spectrum(kvp: float) -> tuple[npt.NDArray[np.float64], ...]:
    """Energy-integrating weights over _E for a tube at `kvp` with ~3 mm Al filtration."""
    w = np.clip(kvp - _E, 0.0, None) * np.exp(-((32.0 / _E) ** 3)) * _E
    w = w / w.sum()
    return w, _MU_WATER, _MU_BONE


@dataclass(frozen=True)
class Exposure:
    """2D physics and processing parameters of one variant (all recorded in the truth)."""

    kvp: float = 110.0
    deviation_index: float = 0.0
    scatter_fraction: float = 0.3  # scatter-to-primary ratio reaching the detector
    electronic_noise: float = 3.0  # quanta-equivalent per pixel
    motion_blur_mm: float = 0.0
    motion_angle_deg: float = 0.0
    extra_blur_mm: float = 0.0  # Gaussian sigma on top of the detector MTF
    grid_lines: float = 0.0  # relative modulation of a fine line pattern
    grid_period_px: float = 2.7
    mse_strength: float = 0.6  # multi-scale contrast enhancement: low-frequency damping
    unsharp: float = 0.6
    tone_slope: float = 5.0
    gamma: float = 1.0
    contrast_scale: float = 1.0  # <1 flattens the displayed range (a low-contrast image)
    window_low: float = 0.0  # VOI window on the processed [0, 1] image; >0 clips lungs black
    window_high: float = 1.0  # <1 clips dense regions white
    bits_stored: int = 12
    # Realism (v1.13, `--realism`): bone path length and dose multipliers. The CT's 2.5 mm
    # slices spread the thin rib and clavicle cortices (partial volume), so the DRR's bones
    # read fainter than on a film; and the 1.4 mm pixels were given a film's fine-pixel noise,
    # which a real film reduced to this pitch does not have.
    bone_scale: float = 1.0
    dose_scale: float = 1.0


def _gauss_kernel(sigma_px: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma_px))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma_px, 1e-3)) ** 2)
    return k / k.sum()


def _quantile(vals: torch.Tensor, q: float) -> float:
    return float(torch.quantile(vals[:: max(1, vals.numel() // 20000)], q))


def gaussian(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; img (H, W).

    Wide kernels run on a pooled copy and are upsampled (they only carry low frequencies).
    """
    if sigma_px <= 0.05:
        return img
    if sigma_px > 8.0 and min(img.shape) >= 32:
        f = int(sigma_px // 4)
        h, w = img.shape
        small = F.avg_pool2d(img[None, None], f, ceil_mode=True)[0, 0]
        small = gaussian(small, math.sqrt(max(sigma_px**2 - f**2 / 4.0, 1.0)) / f)
        return F.interpolate(small[None, None], size=(h, w), mode="bilinear")[0, 0]
    k = _gauss_kernel(sigma_px)
    r = k.numel() // 2
    h, w = img.shape
    x = img[None, None]
    if r >= min(h, w):
        return torch.full_like(img, float(img.mean()))
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[0, 0]


def _motion(img: torch.Tensor, length_px: float, angle_deg: float) -> torch.Tensor:
    if length_px < 1.0:
        return img
    n = math.ceil(length_px) | 1
    k = torch.zeros(n, n)
    c = n // 2
    a = math.radians(angle_deg)
    for s in np.linspace(-length_px / 2, length_px / 2, 4 * n):
        k[round(c + s * math.sin(a)), round(c + s * math.cos(a))] += 1.0
    k = k / k.sum()
    x = F.pad(img[None, None], (c, c, c, c), mode="replicate")
    return F.conv2d(x, k[None, None])[0, 0]


def detect(
    water_cm: npt.NDArray[np.float32],
    bone_cm: npt.NDArray[np.float32],
    field: npt.NDArray[np.bool_],
    exp: Exposure,
    pitch_mm: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Relative signal (H, W) after attenuation, scatter, blur, grid: (noisy, noise-free).

    Order matters for sharpness: motion blur acts on the patient's transmission only; the
    system blur (`extra_blur_mm` and the 0.35 px detector spread) on everything, the
    collimator's shadow included.
    """
    w, mu_w, mu_b = spectrum(exp.kvp)
    water = torch.from_numpy(water_cm)
    bone = torch.from_numpy(bone_cm) * float(exp.bone_scale)
    trans = torch.zeros_like(water)
    for wi, mw, mb in zip(w, mu_w, mu_b, strict=True):
        if wi > 0:
            trans += float(wi) * torch.exp(-(float(mw) * water + float(mb - 1.04 * mw) * bone))
    # The patient moves, the collimator does not: motion blurs the patient's transmission
    # before the field multiplies it, so the shutter edge keeps only the system blur below
    # (focal spot, detector). Up to v1.11 it was blurred after, and the synthetic shutter
    # edge widened with the patient's motion (docs/RULES.md, exposure.sharpness).
    trans = _motion(trans, exp.motion_blur_mm / pitch_mm, exp.motion_angle_deg)
    fld = torch.from_numpy(field.astype(np.float32))
    primary = trans * fld
    spread = gaussian(primary, 40.0 / pitch_mm)
    gain = float(primary.mean() / max(float(spread.mean()), 1e-6))
    scatter = exp.scatter_fraction * spread * gain
    signal = primary + scatter * (0.3 + 0.7 * gaussian(fld, 15.0 / pitch_mm))
    signal = gaussian(signal, math.hypot(0.35, exp.extra_blur_mm / pitch_mm))
    if exp.grid_lines > 0:
        cols = torch.arange(signal.shape[1], dtype=torch.float32)
        signal = signal * (
            1.0 - exp.grid_lines * torch.cos(2 * math.pi * cols / exp.grid_period_px)
        )
    vals = signal[fld > 0] if bool((fld > 0).any()) else signal.flatten()
    reference = max(_quantile(vals, 0.3), 1e-6)  # the attenuated part, not direct exposure
    n0 = (
        QUANTA_PER_MM2_AT_TARGET
        * exp.dose_scale
        * pitch_mm**2
        * 10 ** (exp.deviation_index / 10.0)
        / reference
    )
    quanta = signal * n0
    g = torch.from_numpy(rng.standard_normal(quanta.shape).astype(np.float32))
    e = torch.from_numpy(rng.standard_normal(quanta.shape).astype(np.float32))
    noisy = quanta + torch.sqrt(torch.clamp(quanta, min=0.0)) * g + exp.electronic_noise * e
    clean = torch.clamp(quanta, min=0.5) / float(n0)
    return (torch.clamp(noisy, min=0.5) / float(n0)).numpy(), clean.numpy()


def process(
    rel: npt.NDArray[np.float32],
    field: npt.NDArray[np.bool_],
    exp: Exposure,
    pitch_mm: float,
    *,
    norm: tuple[float, ...] | None = None,
) -> tuple[npt.NDArray[np.float32], tuple[float, ...]]:
    """Relative intensity → displayed [0, 1] (MONOCHROME2 sense) before quantisation.

    Returns the image and the (low, high) log-domain normalisation, so a noise-free twin can
    be processed with exactly the same mapping.
    """
    p = torch.from_numpy(-np.log(rel))
    f = torch.from_numpy(field)
    levels: list[float] = list(norm) if norm is not None else []
    if not levels:
        vals = p[f] if bool(f.any()) else p.flatten()
        lo = _quantile(vals, 0.02)
        hi = _quantile(vals, 0.995)
        levels = [lo, max(hi, lo + 1e-3)]
    lo, hi = levels[0], levels[1]
    x = (p - lo) / (hi - lo)
    base = gaussian(x, 60.0 / pitch_mm)
    x = x - exp.mse_strength * (base - float(base[f].mean() if bool(f.any()) else base.mean()))
    x = x + exp.unsharp * (x - gaussian(x, 3.0 / pitch_mm))
    y = torch.sigmoid(exp.tone_slope * (x - 0.5))
    if len(levels) == 2:  # auto-window the tone-mapped field: direct exposure black
        vals = y[f] if bool(f.any()) else y.flatten()
        levels += [_quantile(vals, 0.005), _quantile(vals, 0.998)]
    y = (y - levels[2]) / max(levels[3] - levels[2], 1e-3)
    y = torch.clamp(y, 0.0, 1.0) ** exp.gamma
    y = 0.5 + (y - 0.5) * exp.contrast_scale
    y = (y - exp.window_low) / max(exp.window_high - exp.window_low, 1e-3)
    y = torch.where(f, y, torch.full_like(y, 0.97))  # shutters: unexposed, shown white
    return torch.clamp(y, 0.0, 1.0).numpy().astype(np.float32), tuple(levels)


def quantise(y: npt.NDArray[np.float32], bits: int) -> npt.NDArray[np.uint16]:
    top = (1 << bits) - 1
    return np.asarray(np.round(y * top), dtype=np.uint16)
