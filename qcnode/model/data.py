"""Training data: synthetic samples, real negatives for the `other` view, and a tensor cache.

Every sample goes through ``preprocess.to_canvas`` once (decode, fixed physical scale) and is
cached under ``.cache/qcnode/model/`` as a raw canvas (float16), its valid rectangle, packed
mask bits and the view label, so an epoch costs no DICOM decoding. Augmentation happens
later, on batches (see augment.py).

Negatives for `other` are real non-chest images: the CT/MR/US/NM/extremity-CR/secondary
captures that pydicom's test files and the pydicom-data package carry. Never chest films:
the WG04 RG1 chest PA (also used in realcxr) is excluded by name, and nothing under
/work/shared/data/realcxr is ever read here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from qcnode.errors import QcnodeError
from qcnode.model import preprocess
from qcnode.model.network import VIEWS
from qcnode.records import STRUCTURES, VISIBLE_LUNGS, View

log = logging.getLogger(__name__)

CACHE_VERSION = 3
# Mask channels that say nothing on a non-chest image (a hand radiograph has a body and an
# exposed field): not supervised for the real negatives.
UNKNOWN_ON_NEGATIVES = ("body", "field")
_LUNGS = (STRUCTURES.index("lung_right"), STRUCTURES.index("lung_left"))

# Chest films in the test-file libraries: never negatives (and RG1 is an evaluation image).
_EXCLUDE = ("RG1_",)
# Held out from training (whole groups: every encoding of the same picture) to report
# `other` accuracy on unseen real negatives.
HELD_OUT_NEGATIVES = ("CT_small", "MR_small", "US1_", "examples_", "color3d_")


@dataclass(frozen=True)
class Sample:
    id: str
    view: View
    image: Path
    masks: Path | None  # None: no structure in the image (real negatives)


@dataclass
class Pack:
    """A cached set in memory: N canvases, valid rectangles, packed masks, labels."""

    ids: list[str]
    canvas: torch.Tensor  # (N, 1, S, S) float16 raw [0, 1]
    rect: torch.Tensor  # (N, 4) int: top, left, height, width
    bits: npt.NDArray[np.uint8]  # (N, C, S*S/8) packed masks
    views: torch.Tensor  # (N,) int64 index into VIEWS
    channel_weight: torch.Tensor  # (N, C) float: 0 where the channel is not supervised
    scale: torch.Tensor  # (N,) float: mm per canvas pixel (SPACING_MM unless shrunk to fit)

    def __len__(self) -> int:
        return len(self.ids)

    def masks(self, index: Sequence[int]) -> torch.Tensor:
        size = self.canvas.shape[-1]
        unpacked = np.unpackbits(self.bits[list(index)], axis=-1, count=size * size)
        return torch.from_numpy(unpacked.reshape(len(index), -1, size, size)).float()

    def valid(self, index: Sequence[int]) -> torch.Tensor:
        size = self.canvas.shape[-1]
        out = torch.zeros((len(index), 1, size, size), dtype=torch.float32)
        for j, i in enumerate(index):
            t, left, h, w = self.rect[i].tolist()
            out[j, :, t : t + h, left : left + w] = 1.0
        return out

    @staticmethod
    def concat(packs: Sequence[Pack]) -> Pack:
        return Pack(
            ids=[i for p in packs for i in p.ids],
            canvas=torch.cat([p.canvas for p in packs]),
            rect=torch.cat([p.rect for p in packs]),
            bits=np.concatenate([p.bits for p in packs]),
            views=torch.cat([p.views for p in packs]),
            channel_weight=torch.cat([p.channel_weight for p in packs]),
            scale=torch.cat([p.scale for p in packs]),
        )


def read_synthetic(root: Path, *, limit: int | None = None) -> list[Sample]:
    """Samples listed in ``root/manifest.jsonl`` whose files are all present."""
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise QcnodeError(f"no manifest.jsonl in {root}: not a synthetic data set")
    out: list[Sample] = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        image, masks = root / doc["dcm"], root / doc["masks"]
        if image.is_file() and masks.is_file():
            out.append(Sample(id=str(doc["id"]), view=View(doc["view"]), image=image, masks=masks))
        if limit is not None and len(out) >= limit:
            break
    return out


def held_out_pose(sample_id: str) -> bool:
    """The validation hold-out of a training set: ~1 in 20 poses, with every 2D variant of a
    held-out 3D render, so that no anatomy is shared with training."""
    pose = sample_id.rsplit("-v", 1)[0]
    return int(hashlib.sha1(pose.encode()).hexdigest(), 16) % 20 == 0


def negative_files() -> list[Path]:
    """Non-chest DICOM images in pydicom's test files and the pydicom-data package."""
    import pydicom.data  # here, not at the top: a packed set trains without pydicom

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # the pydicom-data package

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        log.warning("pydicom-data is not installed: fewer negatives for the `other` view")
    files = sorted(p for r in roots for p in r.glob("*.dcm"))
    return [p for p in files if not p.name.startswith(_EXCLUDE)]


def read_negatives(*, held_out: bool) -> list[Sample]:
    samples = []
    for path in negative_files():
        if path.stem.startswith(HELD_OUT_NEGATIVES) != held_out:
            continue
        samples.append(Sample(id=f"neg-{path.stem}", view=View.OTHER, image=path, masks=None))
    return samples


# Lung target definitions: the full 3D-lung projection (data v1), the lungs as a radiograph
# shows them, cut at the diaphragm silhouette (`qcnode synth --visible-lungs`, data v2), or
# both: STRUCTURES with projected lungs plus the VISIBLE_LUNGS channels.
LUNG_TARGETS = ("projection", "visible", "both")


def channels(lungs: str) -> tuple[str, ...]:
    """The mask channels a network trained on ``lungs`` targets outputs."""
    return STRUCTURES + VISIBLE_LUNGS if lungs == "both" else STRUCTURES


def _load_masks(path: Path, lungs: str = "projection") -> npt.NDArray[np.bool_]:
    with np.load(path) as z:
        if lungs != "projection" and "lung_right_visible" not in z.files:
            raise QcnodeError(f"{path} has no visible-lung masks (made without --visible-lungs)")
        suffix = "_visible" if lungs == "visible" else ""
        names = [
            name + suffix if name in ("lung_right", "lung_left") else name for name in STRUCTURES
        ]
        if lungs == "both":
            names += list(VISIBLE_LUNGS)
        return np.stack([z[name].astype(bool) for name in names])


def _encode(sample: Sample, size: int, lungs: str = "projection") -> dict[str, np.ndarray] | None:
    """Decode and place one sample on the canvas; None when it cannot serve (too small...)."""
    from qcnode.imaging import decode  # pydicom: only where DICOM files are read

    n_channels = len(channels(lungs))
    try:
        img = decode(sample.image)
    except QcnodeError as exc:
        log.debug("skipping %s: %s", sample.id, exc)
        return None
    rows, cols = img.pixels.shape
    if min(rows, cols) < 32 or not np.isfinite(img.pixels).all() or img.pixels.std() < 1e-3:
        return None
    spacing = img.spacing_mm or preprocess.guessed_spacing(rows, cols)
    canvas, frame = preprocess.to_canvas(img.pixels, spacing, size=size)
    weight = np.ones(n_channels, dtype=np.float32)
    if sample.masks is not None:
        masks = _load_masks(sample.masks, lungs)
        if masks.shape[1:] != (rows, cols):
            log.warning("masks of %s do not match its image; skipped", sample.id)
            return None
        target = preprocess.masks_to_canvas(masks, frame, size=size) > 0.5
    else:
        target = torch.zeros((n_channels, size, size), dtype=torch.bool)
        for name in UNKNOWN_ON_NEGATIVES:
            weight[STRUCTURES.index(name)] = 0.0
    return {
        "canvas": canvas.numpy().astype(np.float16),
        "rect": np.array([frame.top, frame.left, frame.height, frame.width], dtype=np.int64),
        "bits": np.packbits(target.numpy().reshape(n_channels, -1), axis=-1),
        "view": np.array(VIEWS.index(sample.view), dtype=np.int64),
        "weight": weight,
        "scale": np.array(frame.input_spacing_mm, dtype=np.float32),
    }


def cache_dir(base: Path | None = None) -> Path:
    key = f"v{CACHE_VERSION}-{preprocess.INPUT_SIZE}px-{preprocess.SPACING_MM}mm"
    return (base or Path(".cache")) / "qcnode" / "model" / key


def _cache_name(sample: Sample, lungs: str = "projection") -> str:
    key = str(sample.image.resolve())
    if sample.masks is not None:  # masks re-derived in place (a new truth) make a new item
        st = sample.masks.stat()
        key += f"|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    # negatives have no lungs: one 16-channel item serves both lung definitions
    plain = lungs == "projection" or (sample.masks is None and lungs == "visible")
    tag = "" if plain else f"-{lungs}"
    return f"{sample.id}-{digest}{tag}.npz"


def _combined(cache: Path, sample: Sample) -> dict[str, np.ndarray] | None:
    """A ``both`` item from the cached projection and visible items, without decoding."""
    a, b = cache / _cache_name(sample, "projection"), cache / _cache_name(sample, "visible")
    if sample.masks is None or not (a.is_file() and b.is_file()):
        return None
    with np.load(a) as za, np.load(b) as zb:
        item = {k: za[k] for k in za.files}
        # the visible item's first two channels are its lungs (STRUCTURES order)
        item["bits"] = np.concatenate([za["bits"], zb["bits"][:2]])
        item["weight"] = np.concatenate([za["weight"], zb["weight"][:2]])
    return item


def load_pack(
    samples: Iterable[Sample],
    *,
    cache: Path,
    size: int = preprocess.INPUT_SIZE,
    progress: bool = True,
    desc: str = "cache",
    lungs: str = "projection",
    workers: int = 1,
) -> Pack:
    """Every sample as a cached canvas (computing the missing ones), stacked in memory.

    ``lungs`` picks the lung target definition (LUNG_TARGETS); ``workers`` > 1 computes the
    missing items in that many processes first (a many-core GPU host packing fresh data)."""
    if lungs not in LUNG_TARGETS:
        raise QcnodeError(f"unknown lung target {lungs!r}; known: {', '.join(LUNG_TARGETS)}")
    cache.mkdir(parents=True, exist_ok=True)
    items, ids = [], []
    sample_list = list(samples)
    if workers > 1:
        _fill_cache(sample_list, cache=cache, size=size, lungs=lungs, workers=workers)
    for s in tqdm(sample_list, desc=desc, disable=not progress, unit="img"):
        path = cache / _cache_name(s, lungs)
        item: dict[str, np.ndarray] | None = None
        if path.is_file():
            with np.load(path) as z:
                item = {k: z[k] for k in z.files}
        elif lungs == "both" and (item := _combined(cache, s)) is not None:
            pass
        else:
            item = _encode(s, size, lungs)
            if item is None:
                continue
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **item)  # type: ignore[arg-type]  # numpy stub quirk
            tmp.replace(path)
        items.append(item)
        ids.append(s.id)
    if not items:
        raise QcnodeError("no usable samples")
    return Pack(
        ids=ids,
        canvas=torch.from_numpy(np.stack([i["canvas"] for i in items])),
        rect=torch.from_numpy(np.stack([i["rect"] for i in items])),
        bits=np.stack([i["bits"] for i in items]),
        views=torch.from_numpy(np.stack([i["view"] for i in items])),
        channel_weight=torch.from_numpy(np.stack([i["weight"] for i in items])),
        scale=torch.from_numpy(np.stack([i["scale"] for i in items])),
    )


def _cache_one(job: tuple[Sample, str, int, str]) -> None:
    sample, cache, size, lungs = job
    path = Path(cache) / _cache_name(sample, lungs)
    if path.is_file():
        return
    item = _encode(sample, size, lungs)
    if item is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **item)  # type: ignore[arg-type]  # numpy stub quirk
        tmp.replace(path)


def _fill_cache(
    samples: Sequence[Sample], *, cache: Path, size: int, lungs: str, workers: int
) -> None:
    jobs = [(s, str(cache), size, lungs) for s in samples]
    with mp.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_cache_one, jobs, chunksize=8):
            pass


def dedupe(pack: Pack) -> Pack:
    """Drop canvases that repeat another (one picture in several transfer syntaxes), so that
    each distinct negative gets the same share of batches."""
    seen: set[bytes] = set()
    keep: list[int] = []
    for i in range(len(pack)):
        small = torch.nn.functional.adaptive_avg_pool2d(pack.canvas[i].float(), 16)
        key = (small * 15).round().to(torch.uint8).numpy().tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return Pack(
        ids=[pack.ids[i] for i in keep],
        canvas=pack.canvas[keep],
        rect=pack.rect[keep],
        bits=pack.bits[keep],
        views=pack.views[keep],
        channel_weight=pack.channel_weight[keep],
        scale=pack.scale[keep],
    )


def lung_widths_mm(pack: Pack) -> dict[str, float]:
    """Median extent of the lungs along the columns per view, in mm (the anatomy scale)."""
    out: dict[str, float] = {}
    for v, view in enumerate(VIEWS):
        if view == View.OTHER:
            continue
        idx = [i for i in range(len(pack)) if int(pack.views[i]) == v]
        widths = []
        for start in range(0, len(idx), 64):
            chunk = idx[start : start + 64]
            lungs = pack.masks(chunk)[:, list(_LUNGS)].amax(dim=1)  # (n, S, S)
            cols = (lungs.sum(dim=1) >= 3).numpy()
            for i, row in zip(chunk, cols, strict=True):
                nz = np.flatnonzero(row)
                if nz.size:
                    widths.append((nz[-1] - nz[0] + 1) * float(pack.scale[i]))
        if widths:
            out[str(view)] = float(np.median(widths))
    return out


PACK_FORMAT = "qcnode-pack-1"
# Canvases travel as 9-bit values by default (steps of 0.2 % of the range), row differences
# split into byte planes and LZMA: ~30 KB per 256 x 256 canvas. 8 bit (255 levels, ~23 KB)
# fits 1 600 training images into the 64 MiB a GPU host is sent; its 0.4 % step is below
# the synthetic images' pixel noise (0.3-1.2 % measured on canvases), so it dithers.
PACK_LEVELS = 511


# "none" skips LZMA: a pack written and read on the same (GPU) host, where compressing
# thousands of canvases would cost minutes of lent device time and nothing travels.
PACK_CODECS = ("lzma", "none")


def _compress(data: bytes, codec: str) -> bytes:
    return lzma.compress(data) if codec == "lzma" else data


def _decompress(data: bytes, codec: str) -> bytes:
    return lzma.decompress(data) if codec == "lzma" else data


def _planes(delta: npt.NDArray[np.int16], codec: str) -> tuple[bytes, bytes]:
    b = delta.view(np.uint8).reshape(*delta.shape, 2)
    return (
        _compress(np.ascontiguousarray(b[..., 0]).tobytes(), codec),
        _compress(np.ascontiguousarray(b[..., 1]).tobytes(), codec),
    )


def save_pack_file(
    pack: Pack,
    path: Path,
    *,
    structures: Sequence[str],
    levels: int = PACK_LEVELS,
    codec: str = "lzma",
) -> None:
    """A whole cached set in one file, for a training host without the DICOM set."""
    if codec not in PACK_CODECS:
        raise QcnodeError(f"unknown pack codec {codec!r}; known: {', '.join(PACK_CODECS)}")
    q = torch.round(pack.canvas.float()[:, 0].clamp(0, 1) * levels).to(torch.int16)
    delta = torch.diff(q, dim=-1, prepend=torch.zeros_like(q[..., :1])).numpy()
    low, high = _planes(delta, codec)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        format=np.array(PACK_FORMAT),
        codec=np.array(codec),
        levels=np.array(levels),
        shape=np.array(delta.shape),
        low=np.frombuffer(low, dtype=np.uint8),
        high=np.frombuffer(high, dtype=np.uint8),
        ids=np.array(pack.ids),
        structures=np.array(list(structures)),
        rect=pack.rect.numpy(),
        bits=np.frombuffer(_compress(np.ascontiguousarray(pack.bits).tobytes(), codec), np.uint8),
        bits_shape=np.array(pack.bits.shape),
        views=pack.views.numpy(),
        weight=pack.channel_weight.numpy(),
        scale=pack.scale.numpy(),
    )


def load_pack_file(path: Path) -> tuple[Pack, tuple[str, ...]]:
    """A set written by ``save_pack_file`` and its mask channel names."""
    with np.load(path) as z:
        if "format" not in z.files or str(z["format"]) != PACK_FORMAT:
            raise QcnodeError(f"{path} is not a qcnode training pack ({PACK_FORMAT})")
        shape = tuple(int(n) for n in z["shape"])
        codec = str(z["codec"]) if "codec" in z.files else "lzma"  # packs before the option
        planes = np.stack(
            [
                np.frombuffer(_decompress(z[k].tobytes(), codec), dtype=np.uint8).reshape(shape)
                for k in ("low", "high")
            ],
            axis=-1,
        )
        delta = np.ascontiguousarray(planes).view(np.int16)[..., 0]
        q = np.cumsum(delta, axis=-1, dtype=np.int32)
        canvas = torch.from_numpy((q / float(z["levels"])).astype(np.float16))[:, None]
        pack = Pack(
            ids=[str(i) for i in z["ids"]],
            canvas=canvas,
            rect=torch.from_numpy(z["rect"]),
            bits=np.frombuffer(_decompress(z["bits"].tobytes(), codec), dtype=np.uint8).reshape(
                tuple(int(n) for n in z["bits_shape"])
            ),
            views=torch.from_numpy(z["views"]),
            channel_weight=torch.from_numpy(z["weight"]),
            scale=torch.from_numpy(z["scale"]),
        )
        return pack, tuple(str(n) for n in z["structures"])
