"""QCEngine: one batched predict call, verdicts, not_applicable, errors that do not stop a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from qcnode.engine import QCEngine, chest_header, family_verdicts
from qcnode.errors import ModelError
from qcnode.records import (
    DecodedImage,
    Family,
    ModelInfo,
    Prediction,
    Status,
    Verdict,
    View,
)
from qcnode.testing import FakePredictor, frontal_phantom, lateral_phantom, phantom_image


def _engine(view: View = View.FRONTAL, masks: dict | None = None) -> tuple[QCEngine, FakePredictor]:
    m = masks if masks is not None else frontal_phantom()
    fake = FakePredictor(source=lambda _i: (view, m))
    return QCEngine(predictor=fake, batch_size=4), fake


def test_run_batches_one_predict_call_and_fills_timings() -> None:
    engine, fake = _engine()
    images = [phantom_image(frontal_phantom(), uid=f"1.2.3.{i}") for i in range(3)]
    results = engine.run(images, decode_ms=[1.0, 2.0, 3.0])
    assert fake.calls == [3]
    assert [r.sop_instance_uid for r in results] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    for r, d in zip(results, (1.0, 2.0, 3.0), strict=True):
        assert r.verdict is Verdict.PASS
        assert set(r.timings_ms) == {"decode", "model", "rules", "total"}
        assert r.timings_ms["decode"] == d
        assert r.timings_ms["total"] == pytest.approx(
            r.timings_ms["decode"] + r.timings_ms["model"] + r.timings_ms["rules"]
        )
        assert r.timings_ms["rules"] > 0
        assert set(r.families) == set(Family)


def test_verdict_is_the_worst_finding_and_families_their_own() -> None:
    m = frontal_phantom()
    m["field"][:65] = False  # apices cut: completeness fails
    engine, _ = _engine(masks=m)
    (r,) = engine.run([phantom_image(m, deviation_index=2.0)])  # DI warns
    assert r.verdict is Verdict.FAIL
    assert r.families[Family.COMPLETENESS] is Verdict.FAIL
    assert r.families[Family.EXPOSURE] is Verdict.WARN
    assert r.families[Family.METADATA] is Verdict.PASS
    assert family_verdicts(r.findings) == dict(r.families)


def test_non_chest_header_is_not_applicable_without_the_model() -> None:
    engine, fake = _engine()
    ct = phantom_image(frontal_phantom(), modality="CT", uid="1.1")
    knee = phantom_image(frontal_phantom(), body_part="KNEE", uid="1.2")
    chest = phantom_image(frontal_phantom(), uid="1.3")
    results = engine.run([ct, knee, chest])
    assert fake.calls == [1]
    assert [r.verdict for r in results] == [
        Verdict.NOT_APPLICABLE,
        Verdict.NOT_APPLICABLE,
        Verdict.PASS,
    ]
    assert results[0].findings == ()
    assert all(v is Verdict.NOT_APPLICABLE for v in results[0].families.values())


def test_view_other_is_not_applicable_never_a_fail() -> None:
    engine, _ = _engine(view=View.OTHER)
    (r,) = engine.run([phantom_image(frontal_phantom())])
    assert r.verdict is Verdict.NOT_APPLICABLE
    assert r.view is View.OTHER


def test_lateral_runs_the_lateral_catalogue() -> None:
    from qcnode.rules import CATALOGUE

    engine, _ = _engine(view=View.LATERAL, masks=lateral_phantom())
    (r,) = engine.run([phantom_image(lateral_phantom(), view_position="LL")])
    assert [f.rule for f in r.findings] == list(CATALOGUE[View.LATERAL])
    assert r.verdict is Verdict.PASS


class _Broken:
    info = ModelInfo("broken", "0", "0" * 64)

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]:
        raise ModelError("weights mismatch")


def test_model_failure_gives_error_results_not_an_exception() -> None:
    engine = QCEngine(predictor=_Broken())
    results = engine.run(
        [phantom_image(frontal_phantom()), phantom_image(frontal_phantom(), modality="CT")]
    )
    assert results[0].verdict is Verdict.ERROR
    assert results[0].error is not None and "weights mismatch" in results[0].error
    assert results[1].verdict is Verdict.NOT_APPLICABLE


def test_chest_header() -> None:
    img = phantom_image(frontal_phantom())
    assert chest_header(img.meta)
    assert chest_header(replace(img.meta, modality="", body_part=""))
    assert not chest_header(replace(img.meta, modality="MR"))
    assert not chest_header(replace(img.meta, body_part="ABDOMEN"))


def test_spacing_missing_uses_anatomy_and_warns() -> None:
    engine, _ = _engine()
    (r,) = engine.run([phantom_image(frontal_phantom(), spacing_mm=None)])
    spacing = next(f for f in r.findings if f.rule == "metadata.spacing")
    assert spacing.status is Status.WARN
    assert r.verdict is Verdict.WARN


def test_mismatched_mask_shape_is_an_error_result() -> None:
    m = {k: np.zeros((10, 10), bool) for k in frontal_phantom()}
    engine, _ = _engine(masks=m)
    (r,) = engine.run([phantom_image(frontal_phantom())])
    assert r.verdict is Verdict.ERROR
