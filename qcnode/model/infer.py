"""Inference: the real Predictor (DESIGN §5) behind the ``qcnode.records.Predictor`` seam.

One forward pass per ``predict`` call for the whole list. Images without a usable header
spacing get a second pass at the anatomy-based scale (see preprocess), batched as well.
A registered ensemble is one network to everything here: ``LogitMean`` averages its members'
logits before the clean-up, the view softmax and the anatomy-based scale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from qcnode.errors import ModelError
from qcnode.model import preprocess
from qcnode.model.network import VIEWS, LogitMean, QCNet, build
from qcnode.model.registry import (
    ModelEntry,
    Registry,
    ensemble_info,
    load_registry,
    mean_reference_widths,
    sha256_file,
)
from qcnode.records import MODEL_CHANNELS, STRUCTURES, DecodedImage, ModelInfo, Prediction, View

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "qcnode-qcnet-1"
_LUNGS = (STRUCTURES.index("lung_right"), STRUCTURES.index("lung_left"))
_FIELD = STRUCTURES.index("field")
# Lungs whose outermost column is this close (canvas px, 1.75 mm each; the network stops a
# cut lung a few px short of the cut) to the exposed field's or the image's side are cut
# there: their width is only a lower bound.
CUT_SIDE_PX = 5


def single_objects(structures: tuple[str, ...]) -> tuple[int, ...]:
    """Channels that are one connected object each (largest component kept, holes filled).
    Ribs are many objects and stay as predicted."""
    return tuple(i for i, name in enumerate(structures) if not name.startswith("ribs_posterior"))


SECOND_PASS_TOLERANCE = 0.05  # rerun when the anatomy-based scale differs by more than 5 %
# A header spacing that makes the lungs this much smaller/larger than the reference is not
# believed (e.g. a detector pitch copied onto a downsampled matrix): anatomy decides then.
# Session 11 (rules-cal5-f/l + train-v4, train split; anatomy scale / header scale): correct
# headers read 0.76-1.44 frontal, 0.76-2.28 lateral; headers 2x too coarse 0.46-0.58, which
# the old lower bound 0.5 let through. 0.67 lies between; the upper bound keeps 2.0 (laterals
# with correct headers reach it; the too-fine ones mostly fail SMALLEST_CHEST_FIELD_MM).
IMPLAUSIBLE_HEADER_RATIO = (0.67, 2.0)
# A header spacing that makes the whole field smaller than this (mm) cannot be a chest film's
# detector: such a header is not used (``_chest_sized``), the size guess starts instead.
SMALLEST_CHEST_FIELD_MM = 250.0


@dataclass(frozen=True)
class WeightsMeta:
    """What a weights file says about itself (also recorded in the registry)."""

    variant: str
    input_size: int
    spacing_mm: float
    reference_lung_width_mm: Mapping[str, float]
    structures: tuple[str, ...] = STRUCTURES  # mask channels, one of MODEL_CHANNELS
    refine: tuple[str, ...] = ()  # channels with a refiner (network.Refiner)


def save_weights(path: Path, model: QCNet, meta: WeightsMeta) -> str:
    """Write weights (state dict + meta) and return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": WEIGHTS_FORMAT,
            "variant": meta.variant,
            "input_size": meta.input_size,
            "spacing_mm": meta.spacing_mm,
            "structures": list(model.structures),
            "refine": list(model.refine),
            "views": [str(v) for v in VIEWS],
            "reference_lung_width_mm": dict(meta.reference_lung_width_mm),
            # float16 on disk halves the file; load_state_dict casts back to float32
            "state_dict": {
                k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
                for k, v in model.state_dict().items()
            },
        },
        path,
    )
    return sha256_file(path)


def read_weights(path: Path) -> tuple[WeightsMeta, dict[str, torch.Tensor]]:
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ModelError(f"cannot read weights {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != WEIGHTS_FORMAT:
        raise ModelError(f"{path} is not a qcnode weights file ({WEIGHTS_FORMAT})")
    structures = tuple(str(n) for n in raw["structures"])
    if structures not in MODEL_CHANNELS:
        raise ModelError(f"{path} was trained for other structures")
    meta = WeightsMeta(
        variant=str(raw["variant"]),
        input_size=int(raw["input_size"]),
        spacing_mm=float(raw["spacing_mm"]),
        reference_lung_width_mm={
            str(k): float(v) for k, v in raw["reference_lung_width_mm"].items()
        },
        structures=structures,
        refine=tuple(str(n) for n in raw.get("refine", ())),
    )
    return meta, raw["state_dict"]


@dataclass(frozen=True)
class CanvasOutput:
    """One image's network outputs on the input canvas, before the masks go to source
    pixels (kept by calibration scripts to try other operating points cheaply)."""

    frame: preprocess.Frame
    mask_logits: torch.Tensor  # (C, size, size), the entry's mask_bias included
    view_logits: torch.Tensor  # (len(VIEWS),)
    spacing_mm: tuple[float, float]
    spacing_estimated: bool


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


class TorchPredictor:
    """QCNet (or an ensemble's LogitMean) behind the Predictor protocol. Thread-compatible:
    one call at a time."""

    def __init__(
        self,
        *,
        model: QCNet | LogitMean,
        meta: WeightsMeta,
        info: ModelInfo,
        device: torch.device,
        mask_bias: Mapping[str, float] | None = None,
    ) -> None:
        if meta.input_size != preprocess.INPUT_SIZE or meta.spacing_mm != preprocess.SPACING_MM:
            raise ModelError(
                f"weights expect {meta.input_size} px at {meta.spacing_mm} mm; this code "
                f"prepares {preprocess.INPUT_SIZE} px at {preprocess.SPACING_MM} mm"
            )
        self._model = model.to(device).eval()
        self._meta = meta
        self._info = info
        self._device = device
        self._single = single_objects(meta.structures)
        bias = mask_bias or {}
        unknown = sorted(set(bias) - set(meta.structures))
        if unknown:
            raise ModelError(f"mask_bias names channels the weights lack: {unknown}")
        self._bias = torch.tensor([float(bias.get(n, 0.0)) for n in meta.structures])[:, None, None]

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def device(self) -> torch.device:
        return self._device

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw network outputs for a prepared (B, 1, S, S) batch, on the CPU."""
        # no_grad, not inference_mode: callers update these tensors in place (mask_bias, the
        # second pass), which inference tensors refuse, and copying a batch of logits costs
        # as much as the clean-up of an image
        with torch.no_grad():
            masks, views = self._model(batch.to(self._device))
        return masks.float().cpu(), views.float().cpu()

    def _pass(
        self, images: Sequence[DecodedImage], spacings: Sequence[tuple[float, float]]
    ) -> tuple[list[preprocess.Frame], torch.Tensor, torch.Tensor]:
        prepared = [
            preprocess.prepare(im.pixels, sp) for im, sp in zip(images, spacings, strict=True)
        ]
        batch = torch.stack([p[0] for p in prepared])
        masks, views = self.forward(batch)
        return [p[1] for p in prepared], masks.add_(self._bias), views  # a fresh tensor

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]:
        return [self.prediction(c) for c in self.canvas(images)]

    def canvas(self, images: Sequence[DecodedImage]) -> list[CanvasOutput]:
        """The network's outputs on the input canvas (mask logits with the entry's
        ``mask_bias`` added), after the anatomy-based second pass where one is needed."""
        if not images:
            return []
        header = [_chest_sized(im) for im in images]
        spacings = [
            sp or preprocess.guessed_spacing(*im.pixels.shape)
            for sp, im in zip(header, images, strict=True)
        ]
        estimated = [sp is None for sp in header]
        frames, masks, views = self._pass(images, spacings)
        redo = self._anatomy_spacing(frames, masks, views, estimated)
        for i in redo:
            estimated[i] = True
        if redo:
            idx = sorted(redo)
            f2, m2, v2 = self._pass([images[i] for i in idx], [redo[i] for i in idx])
            for j, i in enumerate(idx):
                spacings[i], frames[i] = redo[i], f2[j]
                masks[i], views[i] = m2[j], v2[j]
        return [
            CanvasOutput(
                frame=frames[i],
                mask_logits=masks[i],
                view_logits=views[i],
                spacing_mm=(float(spacings[i][0]), float(spacings[i][1])),
                spacing_estimated=estimated[i],
            )
            for i in range(len(images))
        ]

    def prediction(self, out: CanvasOutput) -> Prediction:
        """Source-pixel masks and the view from canvas outputs (clean-up, then bilinear)."""
        probs = torch.softmax(out.view_logits, dim=0)
        names = self._meta.structures
        view = VIEWS[int(probs.argmax())]
        logits = out.mask_logits
        if view == View.FRONTAL:
            logits = split_sides(logits, names)
        source = preprocess.logits_to_source(clean_logits(logits, self._single), out.frame)
        return Prediction(
            view=view,
            view_probabilities={v: float(probs[k]) for k, v in enumerate(VIEWS)},
            masks={name: source[c] for c, name in enumerate(STRUCTURES)},
            spacing_mm=out.spacing_mm,
            spacing_estimated=out.spacing_estimated,
            extra_masks={n: source[c] for c, n in enumerate(names) if c >= len(STRUCTURES)},
        )

    def _anatomy_spacing(
        self,
        frames: Sequence[preprocess.Frame],
        masks: torch.Tensor,
        views: torch.Tensor,
        estimated: Sequence[bool],
    ) -> dict[int, tuple[float, float]]:
        """The scale at which the lungs span the reference width learnt from the training
        data (per view): for images without header spacing, and for headers whose spacing
        makes the anatomy implausibly small or large."""
        redo: dict[int, tuple[float, float]] = {}
        low, high = IMPLAUSIBLE_HEADER_RATIO
        for i, frame in enumerate(frames):
            view = VIEWS[int(views[i].argmax())]
            reference = self._meta.reference_lung_width_mm.get(str(view))
            if view == View.OTHER or reference is None:
                continue
            new = preprocess.spacing_from_lung_width(lung_width_px(masks[i]), frame, reference)
            if new is None:
                continue
            factor = new[1] / frame.spacing_mm[1]
            if estimated[i] and abs(factor - 1) > SECOND_PASS_TOLERANCE:
                redo[i] = new
            elif not estimated[i] and factor > high and lungs_cut_sideways(masks[i], frame):
                # Small-looking lungs that a shutter or the border cuts: the header stands.
                continue
            elif not estimated[i] and not low <= factor <= high:
                log.info("header spacing implausible for the anatomy (x%.2f): estimating", factor)
                redo[i] = new
        return redo


def _chest_sized(image: DecodedImage) -> tuple[float, float] | None:
    """The header's spacing, or None where it makes the film smaller than any chest field.

    Such a header (a downsampled copy that kept the detector's spacing, a wrong tag) shrank
    the film to a few centimetres on the canvas: the network then called real laterals
    frontal and drew no lungs. Without it the film starts from the size guess and the
    anatomy pass sets the scale, as for a header without spacing (metadata.spacing warns)."""
    sp = image.spacing_mm
    if sp is None:
        return None
    field_mm = max(image.pixels.shape[0] * sp[0], image.pixels.shape[1] * sp[1])
    if field_mm < SMALLEST_CHEST_FIELD_MM:
        log.info("header spacing gives a %.0f mm field: estimating the scale", field_mm)
        return None
    return sp


_CROSS = ndimage.generate_binary_structure(2, 1)  # label's default, built once


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` (same 4-connected background), on the mask's bounding
    box with one labelling pass: 3-10x cheaper, and it runs per channel per image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask.copy()
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    # the box's background with a one-pixel ring around it (np.pad costs more than the label)
    free = np.ones((rows[-1] - rows[0] + 3, cols[-1] - cols[0] + 3), dtype=bool)
    np.logical_not(mask[box], out=free[1:-1, 1:-1])
    background, n = ndimage.label(free, _CROSS)
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True  # mask pixels
    outside[background[0, 0]] = True  # the padding ring: everything around the box
    out = mask.copy()
    out[box] |= ~outside[background[1:-1, 1:-1]]
    return out


def clean_logits(logits: torch.Tensor, single: Sequence[int] | None = None) -> torch.Tensor:
    """Canvas logits with specks removed and holes filled for single-object structures.

    Done on the 256 x 256 canvas (cheap) by moving logits across zero, so the bilinear
    return to source pixels still draws smooth contours. Each channel is labelled on the
    bounding box of its positive pixels only (every change lies inside it; raster order and
    so the labels' order are those of the whole canvas): most structures are small.
    """
    out = logits.clone()
    arr = out.numpy()  # shares memory with ``out``; numpy's boolean indexing is far cheaper
    positive: np.ndarray = np.greater(arr, 0)  # all at once; edits touch one channel
    pos_rows: np.ndarray = np.logical_or.reduce(positive, axis=2)
    pos_cols: np.ndarray = np.logical_or.reduce(positive, axis=1)
    for c in single_objects(STRUCTURES) if single is None else single:
        rows = np.flatnonzero(pos_rows[c])
        if rows.size == 0:
            continue
        cols = np.flatnonzero(pos_cols[c])
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        channel, pos = arr[c][box], positive[c][box]  # views: edits land in ``out``
        labels, n = ndimage.label(pos, _CROSS)
        keep = pos
        if n > 1:  # specks: all but the largest component go below zero
            sizes = np.bincount(labels.ravel())[1:]
            keep = labels == (int(np.argmax(sizes)) + 1)
            drop = pos & ~keep
            channel[drop] = -np.maximum(np.abs(channel[drop]), 0.5)
        channel[fill_holes(keep) & ~pos] = 0.5
    return out


# Left/right pairs on a frontal film, as channel names (the visible lungs when present).
SIDE_PAIRS: tuple[tuple[str, str], ...] = (
    ("lung_right", "lung_left"),
    ("lung_right_visible", "lung_left_visible"),
    ("clavicle_right", "clavicle_left"),
    ("scapula_right", "scapula_left"),
    ("humerus_right", "humerus_left"),
    ("ribs_posterior_right", "ribs_posterior_left"),
)
_MIN_SPINE_ROWS = 10
HEART_SIDE_PX = 6  # heart centre this far (10 mm) left of the midline: a mirrored film
# Within this distance of the midline the pairs stay as drawn: a rotated patient's medial
# clavicle end or a lung's medial edge can cross the spine's line (positioning.rotation
# reads exactly those ends).
SIDE_MARGIN_PX = 12  # 21 mm
# A pair is repaired only when this share of its pixels beyond the margin lies on the side
# the other channel holds: synthetic films come out clean, confused real films do not.
MIXED_SIDES = 0.1


def midline(logits: torch.Tensor, names: Sequence[str]) -> npt.NDArray[np.float64] | None:
    """Per canvas row, the column of the body's midline on a frontal film: a straight line
    fitted through the spine's row centres (a tilted film has a tilted spine), else the
    middle of the lungs' column extent; None without either."""
    size = logits.shape[-1]
    rows = np.arange(logits.shape[-2], dtype=np.float64)
    if "spine" in names:
        spine = (logits[names.index("spine")] > 0).numpy()
        counts = spine.sum(axis=1)
        ys = np.flatnonzero(counts >= 2)
        if ys.size >= _MIN_SPINE_ROWS:
            xs = (spine[ys] * np.arange(size)).sum(axis=1) / counts[ys]
            slope, offset = np.polyfit(ys.astype(np.float64), xs, 1)
            return offset + slope * rows
    lungs = (logits[[names.index(n) for n in ("lung_right", "lung_left")]] > 0).any(dim=0)
    cols = np.flatnonzero(lungs.sum(dim=0).numpy() >= 3)
    if cols.size == 0:
        return None
    return np.full(rows.shape, (cols[0] + cols[-1]) / 2.0)


def split_sides(logits: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Frontal canvas logits with each mixed-up left/right pair (SIDE_PAIRS) put on opposite
    sides of the midline. On real films the network often paints one lung's channel over
    both lungs or splits one lung between the channels. A pair is mixed when MIXED_SIDES of
    its pixels beyond SIDE_MARGIN_PX of the midline lie on the other channel's side; a clean
    pair stays as drawn (every synthetic film), even when wholly swapped. The sides follow
    the film's hanging as a radiographer reads it and as positioning.orientation decides it:
    the patient's right on the image left, unless the heart lies clearly on the image left of
    the midline (a mirrored film keeps anatomical labels). Beyond the margin each side then
    gets the union of the pair and the other channel is pushed below zero there."""
    line = midline(logits, names)
    if line is None:
        return logits
    arr = logits.numpy()
    columns = np.arange(arr.shape[-1])[None, :]
    image_left = columns < line[:, None]
    far = np.abs(columns - line[:, None]) > SIDE_MARGIN_PX  # near the midline: as drawn
    pairs = [
        (names.index(right_name), names.index(left_name))
        for right_name, left_name in SIDE_PAIRS
        if right_name in names and left_name in names
    ]
    if not pairs:
        return logits
    on_left, on_right = {}, {}  # per channel, positive pixels beyond the margin per side
    for ch in {ch for pair in pairs for ch in pair}:
        beyond = (arr[ch] > 0) & far
        on_left[ch] = np.count_nonzero(beyond & image_left)  # far cheaper than a bool sum
        on_right[ch] = np.count_nonzero(beyond) - on_left[ch]
    mixed = []
    for r, c in pairs:
        keep = on_left[r] + on_right[c]
        swap = on_left[c] + on_right[r]
        if min(keep, swap) > MIXED_SIDES * (keep + swap):
            mixed.append((r, c))
    if not mixed:
        return logits
    offset = 0.0
    if "heart" in names:
        ys, xs = np.nonzero(arr[names.index("heart")] > 0)
        if ys.size:
            offset = float(xs.mean() - line[round(ys.mean())])
    right_side = image_left if offset > -HEART_SIDE_PX else ~image_left
    out = logits.clone()
    new = out.numpy()
    for r, c in mixed:
        both = np.maximum(arr[r], arr[c])
        low = np.minimum(np.minimum(arr[r], arr[c]), -0.5)
        new[r] = np.where(far, np.where(right_side, both, low), arr[r])
        new[c] = np.where(far, np.where(right_side, low, both), arr[c])
    return out


def lung_width_px(mask_logits: torch.Tensor) -> float:
    """Extent along the columns of the union of both lungs on the canvas (robust to specks)."""
    lungs = (mask_logits[list(_LUNGS)] > 0).any(dim=0)
    per_column = lungs.sum(dim=0).numpy()
    columns = np.flatnonzero(per_column >= 3)
    if columns.size == 0:
        return 0.0
    return float(columns[-1] - columns[0] + 1)


def lungs_cut_sideways(mask_logits: torch.Tensor, frame: preprocess.Frame) -> bool:
    """Whether the lungs' column extent ends at the exposed field's or the image's side, so
    that their width understates the anatomy (a lateral cut by an anterior shutter)."""
    lungs = ((mask_logits[list(_LUNGS)] > 0).any(dim=0).sum(dim=0) >= 3).numpy()
    cols = np.flatnonzero(lungs)
    if cols.size == 0:
        return False
    field = np.flatnonzero(((mask_logits[_FIELD] > 0).sum(dim=0) >= 3).numpy())
    lo, hi = frame.left, frame.left + frame.width - 1
    if field.size:
        lo, hi = max(lo, int(field[0])), min(hi, int(field[-1]))
    return bool(cols[0] - lo <= CUT_SIDE_PX or hi - cols[-1] <= CUT_SIDE_PX)


# glibc mallopt parameters (malloc.h) and the values that keep the network's activations on
# the heap: by default every large activation is a fresh mmap whose pages fault in again on each
# forward (batch of 8 at 1 thread on the 2-core VM: 29.5 -> 21.6 ms per image). The process
# keeps up to ~1 GiB of freed heap instead of returning it.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_HEAP_SETTINGS = (
    (_M_MMAP_THRESHOLD, 256 << 20),
    (_M_TRIM_THRESHOLD, 1 << 30),
    (_M_TOP_PAD, 256 << 20),
)


@functools.cache
def keep_heap() -> bool:
    """Tune glibc's allocator for repeated forwards, once per process (False where the C
    library is not glibc: nothing changes there)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    done = all(mallopt(option, value) == 1 for option, value in _HEAP_SETTINGS)
    log.debug("allocator tuned for inference: %s", done)
    return done


def load_predictor(
    name: str | None = None,
    *,
    device: str = "auto",
    weights_path: Path | None = None,
    registry_path: Path | None = None,
) -> TorchPredictor:
    """The registry's model ``name`` (default when None), checksum-verified; a registered
    ensemble loads each member (each checksum-verified) behind one ``LogitMean``.

    ``weights_path`` loads a weights file directly (tests, a model being evaluated); its
    sha256 is then computed, not checked. Raises ModelError for anything unusable.
    """
    model: QCNet | LogitMean
    bias: Mapping[str, float] = {}
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise ModelError(f"weights file {path} does not exist")
        sha = sha256_file(path)
        meta, state = read_weights(path)
        info = ModelInfo(name=name or path.stem, version=f"file-{sha[:12]}", sha256=sha)
        model = _built(meta, state, path)
    else:
        registry = load_registry(registry_path)
        if registry.is_ensemble(name):
            ensemble = registry.ensemble(name)
            members = registry.members(ensemble)
            loaded = [load_entry(registry, entry) for entry in members]
            meta = ensemble_meta(ensemble.name, [m for _, m in loaded])
            # members' mask_bias is not applied: an operating point belongs to one
            # network's logits, and the ensemble's mean logits are another network's
            model = LogitMean(members=[net for net, _ in loaded])
            info = ensemble_info(ensemble, members)
        else:
            entry = registry.get(name)
            model, meta = load_entry(registry, entry)
            info = ModelInfo(name=entry.name, version=entry.version, sha256=entry.sha256)
            bias = entry.mask_bias
    keep_heap()
    log.info("model loaded", extra={"model": info.name, "sha256": info.sha256[:12]})
    return TorchPredictor(
        model=model, meta=meta, info=info, device=resolve_device(device), mask_bias=bias
    )


def _built(meta: WeightsMeta, state: dict[str, torch.Tensor], path: Path) -> QCNet:
    try:
        model = build(meta.variant, meta.structures, meta.refine)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"weights {path} do not fit variant {meta.variant}: {exc}") from exc
    return model


def load_entry(registry: Registry, entry: ModelEntry) -> tuple[QCNet, WeightsMeta]:
    """A registry entry's network, its file checked against the entry's sha256 and meta."""
    path = registry.verified_path(entry)
    meta, state = read_weights(path)
    if meta.variant != entry.variant:
        raise ModelError(f"{path} holds {meta.variant}, registry says {entry.variant}")
    if meta.structures != entry.structures:
        raise ModelError(f"{path} has other mask channels than its registry entry")
    return _built(meta, state, path), meta


def ensemble_meta(name: str, metas: Sequence[WeightsMeta]) -> WeightsMeta:
    """One WeightsMeta for an ensemble: the members' files must agree on input size,
    spacing and mask channels (ModelError otherwise); reference lung widths are averaged
    (they must agree within REFERENCE_WIDTH_TOLERANCE)."""
    first = metas[0]
    for m in metas[1:]:
        for what in ("input_size", "spacing_mm", "structures"):
            if getattr(m, what) != getattr(first, what):
                raise ModelError(
                    f"ensemble {name!r}: member weights {first.variant} and {m.variant} "
                    f"differ in {what} ({getattr(first, what)} vs {getattr(m, what)})"
                )
    widths = mean_reference_widths(name, [(m.variant, m.reference_lung_width_mm) for m in metas])
    return WeightsMeta(
        variant="+".join(m.variant for m in metas),
        input_size=first.input_size,
        spacing_mm=first.spacing_mm,
        reference_lung_width_mm=widths,
        structures=first.structures,
    )
