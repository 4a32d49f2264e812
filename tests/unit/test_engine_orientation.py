"""The engine's second look: a film found turned is predicted again on its pixels turned
back upright, measured on that second prediction, and drawn in the source's pixels."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from qcnode.engine import QCEngine
from qcnode.errors import ModelError
from qcnode.records import BoolMask, DecodedImage, Finding, Status, View
from qcnode.rules.messages import template
from qcnode.testing import FakePredictor, frontal_phantom, lateral_phantom, phantom_image

Masks = dict[str, BoolMask]


def _turn(masks: Mapping[str, BoolMask], axes: tuple[int, ...]) -> Masks:
    return {k: np.ascontiguousarray(np.flip(v, axes)) for k, v in masks.items()}


def _by_rule(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


def _deep_scapulae(masks: Masks) -> Masks:
    """The upright phantom with both scapulae 40 px into the lungs (5 px in the original):
    what a network that is not mirror-symmetric may read on a mirrored film."""
    m = dict(masks)
    for side, cols in (("right", (40, 100)), ("left", (300, 360))):
        s = np.zeros_like(m[f"scapula_{side}"])
        s[90:201, cols[0] : cols[1] + 1] = True
        m[f"scapula_{side}"] = s
    return m


class _Scripted:
    """A callable mask source: the upright phantom's masks for the upright pixels, and a
    worse (deep scapulae) reading of the mirrored film for the mirrored pixels; it keeps
    every image it is asked about."""

    def __init__(self, upright: DecodedImage, view_second: View = View.FRONTAL) -> None:
        self.upright_px = upright.pixels
        self.mirrored_px = np.ascontiguousarray(upright.pixels[:, ::-1])
        self.view_second = view_second
        self.seen: list[np.ndarray] = []

    def __call__(self, image: DecodedImage) -> tuple[View, Masks]:
        self.seen.append(image.pixels)
        if np.array_equal(image.pixels, self.mirrored_px):
            return View.FRONTAL, _turn(_deep_scapulae(frontal_phantom()), (1,))
        if np.array_equal(image.pixels, self.upright_px):
            return self.view_second, frontal_phantom()
        raise AssertionError("the fake was asked about pixels it does not know")


def _mirrored_setup(
    view_second: View = View.FRONTAL,
) -> tuple[DecodedImage, DecodedImage, _Scripted, FakePredictor]:
    upright = phantom_image(frontal_phantom(), uid="1.2.3.1")
    mirrored = phantom_image(frontal_phantom(), uid="1.2.3.2")
    source = _Scripted(upright, view_second)
    mirrored = DecodedImage(pixels=source.mirrored_px, spacing_mm=(1.0, 1.0), meta=mirrored.meta)
    return upright, mirrored, source, FakePredictor(source=source)


def test_a_mirrored_film_is_measured_on_the_model_pass_over_the_pixels_turned_back() -> None:
    upright, mirrored, source, fake = _mirrored_setup()
    engine = QCEngine(predictor=fake)
    ((pred, r),) = engine.analyze([mirrored])
    # two model passes: the film as hung, then its pixels turned back upright
    assert fake.calls == [1, 1]
    assert np.array_equal(source.seen[0], mirrored.pixels)
    assert np.array_equal(source.seen[1], np.fliplr(mirrored.pixels))
    f = _by_rule(r.findings)
    o = f["positioning.orientation"]
    assert o.status is Status.FAIL
    assert o.message == template("positioning.orientation", "mirrored", "en")
    # every other finding is the correctly hung film's
    hung = FakePredictor(source=lambda _i: (View.FRONTAL, frontal_phantom()))
    (ref,) = QCEngine(predictor=hung).run([upright])
    want = _by_rule(ref.findings)
    for rule, finding in f.items():
        if rule != "positioning.orientation":  # the same film, measured the same: exactly
            assert (finding.status, finding.value, finding.message) == (
                want[rule].status,
                want[rule].value,
                want[rule].message,
            ), rule
    # the first look alone (the rules turning the mirrored reading) flags the scapulae:
    # the second look is what makes the difference
    (first,) = FakePredictor(source=source).predict([mirrored])
    old, _ = engine.result(mirrored, first)
    assert _by_rule(old.findings)["positioning.scapulae"].status is Status.FAIL
    assert f["positioning.scapulae"].status is Status.PASS
    # geometry in the source's pixels: the left lung's apex, on the image right of the
    # film turned back (cols 230..340), comes back on the left of the mirrored source
    w = mirrored.pixels.shape[1]
    apex = next(g for g in f["completeness.apices"].geometry if g.label.startswith("left"))
    apex_up = next(g for g in want["completeness.apices"].geometry if g.label.startswith("left"))
    assert apex_up.points[0][0] == pytest.approx((230 + 340) / 2)
    assert apex.points[0] == pytest.approx((w - 1 - apex_up.points[0][0], apex_up.points[0][1]))
    assert apex.points[0][0] < w / 2
    for rule, finding in f.items():
        for g, g_up in zip(finding.geometry, want[rule].geometry, strict=True):
            assert g.label == g_up.label
            back = [(w - 1 - x, y) for x, y in g_up.points]
            assert np.allclose(g.points, back), (rule, g.label)
    # the prediction handed to the report is the second one, on the source's pixels
    assert pred is not None
    for name, mask in frontal_phantom().items():
        assert np.array_equal(np.asarray(pred.masks[name]), np.fliplr(mask)), name


def test_an_upright_film_costs_one_model_pass() -> None:
    upright, _, _, fake = _mirrored_setup()
    ((pred, r),) = QCEngine(predictor=fake).analyze([upright])
    assert fake.calls == [1]
    assert _by_rule(r.findings)["positioning.orientation"].status is Status.PASS
    assert pred is not None and np.array_equal(pred.masks["heart"], frontal_phantom()["heart"])


@pytest.mark.parametrize(
    ("axes", "key", "view"),
    [
        ((0, 1), "upside_down", View.FRONTAL),
        ((0,), "flipped", View.FRONTAL),
        ((0,), "flipped", View.LATERAL),  # laterals: apex-down is detected, never mirroring
    ],
)
def test_turned_films_keep_the_first_looks_orientation(
    axes: tuple[int, ...], key: str, view: View
) -> None:
    masks = frontal_phantom() if view is View.FRONTAL else lateral_phantom()
    vp = "PA" if view is View.FRONTAL else "LL"
    upright = phantom_image(masks, view_position=vp, uid="9.1")
    turned = DecodedImage(
        pixels=np.ascontiguousarray(np.flip(upright.pixels, axes)),
        spacing_mm=upright.spacing_mm,
        meta=upright.meta,
    )
    # a mapping fake answers the turned-back pixels with its masks turned back
    fake = FakePredictor(source={"9.1": (view, _turn(masks, axes))})
    ((pred, r),) = QCEngine(predictor=fake).analyze([turned])
    assert fake.calls == [1, 1]
    f = _by_rule(r.findings)
    assert f["positioning.orientation"].message == template("positioning.orientation", key, "en")
    (ref,) = QCEngine(predictor=FakePredictor(source={"9.1": (view, masks)})).run([upright])
    h, w = upright.pixels.shape
    for rule, finding in _by_rule(ref.findings).items():
        if rule == "positioning.orientation":
            continue
        assert (f[rule].status, f[rule].value) == (finding.status, finding.value), rule
        for g, g_up in zip(f[rule].geometry, finding.geometry, strict=True):
            back = [
                (w - 1 - x if 1 in axes else x, h - 1 - y if 0 in axes else y)
                for x, y in g_up.points
            ]
            assert np.allclose(g.points, back), (rule, g.label)
    assert pred is not None and np.array_equal(pred.masks["heart"], np.flip(masks["heart"], axes))


def test_a_second_look_that_reads_another_view_leaves_the_first_look() -> None:
    _, mirrored, source, fake = _mirrored_setup(view_second=View.LATERAL)
    engine = QCEngine(predictor=fake)
    ((pred, r),) = engine.analyze([mirrored])
    assert fake.calls == [1, 1]
    assert r.view is View.FRONTAL
    (first,) = FakePredictor(source=source).predict([mirrored])
    old, _ = engine.result(mirrored, first)
    assert r.findings == old.findings  # the rules turned the first reading, as before
    assert pred is not None and np.array_equal(pred.masks["heart"], first.masks["heart"])


class _FailsSecondTime(FakePredictor):
    def predict(self, images):  # type: ignore[no-untyped-def]
        if self.calls:
            self.calls.append(len(images))
            raise ModelError("out of memory")
        return super().predict(images)


def test_a_failed_second_look_leaves_the_first_look_not_an_error() -> None:
    _, mirrored, source, _ = _mirrored_setup()
    fake = _FailsSecondTime(source=source)
    ((_, r),) = QCEngine(predictor=fake).analyze([mirrored])
    assert fake.calls == [1, 1]
    assert r.error is None
    assert _by_rule(r.findings)["positioning.orientation"].status is Status.FAIL


class _Slow(FakePredictor):
    """Sleeps ``delay`` seconds per call, so that the model time is known from below."""

    def __init__(self, delay: float, source: Callable[[DecodedImage], tuple[View, Masks]]) -> None:
        super().__init__(source=source)
        self.delay = delay

    def predict(self, images):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return super().predict(images)


def test_model_time_holds_both_passes() -> None:
    upright, mirrored, source, _ = _mirrored_setup()
    delay = 0.05
    fake = _Slow(delay, source)
    (_, ru), (_, rm) = QCEngine(predictor=fake).analyze([upright, mirrored])
    assert fake.calls == [2, 1]
    # the batch's call is shared by both films; the second look is the mirrored film's own
    assert ru.timings_ms["model"] >= 1000 * delay / 2
    assert rm.timings_ms["model"] >= 1000 * (delay / 2 + delay)
    assert rm.timings_ms["model"] > ru.timings_ms["model"] + 1000 * delay * 0.9
    assert rm.timings_ms["total"] == pytest.approx(
        sum(rm.timings_ms[k] for k in ("decode", "model", "rules"))
    )


def test_a_given_orientation_is_not_detected_again() -> None:
    """The second look (the turned-back film and its masks) comes with the first look's
    orientation: reported as given, although these upright masks would detect "upright",
    and nothing is turned again (points stay on the turned-back image)."""
    from qcnode.rules import build_subject, load_config

    masks = frontal_phantom()
    image = phantom_image(masks)
    (pred,) = FakePredictor(source=lambda _i: (View.FRONTAL, masks)).predict([image])
    cfg = load_config()
    assert build_subject(image, pred, cfg).orientation == "upright"
    s = build_subject(image, pred, cfg, orientation="mirrored")
    assert s.orientation == "mirrored"
    assert np.array_equal(s.mask("heart"), masks["heart"])
    assert s.src((60.0, 300.0)) == (300.0, 60.0)
    with pytest.raises(ValueError, match="orientation"):
        build_subject(image, pred, cfg, orientation="sideways")
