"""`qcnode eval` on a tiny labelled set built from phantoms: accuracy, sens/spec, families."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qcnode import evaluate
from qcnode.config import Settings
from qcnode.records import View
from qcnode.rules import CATALOGUE
from qcnode.testing import frontal_phantom, lateral_phantom, phantom_dataset


def _sample(
    out: Path, sid: str, view: View, masks: dict[str, np.ndarray], problems: dict[str, str]
) -> None:
    vp = "PA" if view is View.FRONTAL else "LL"
    phantom_dataset(masks, view_position=vp).save_as(out / f"{sid}.dcm", enforce_file_format=True)
    np.savez_compressed(out / f"{sid}_masks.npz", **masks)
    rules = {
        r: {"status": problems.get(r, "pass"), "value": None, "unit": None}
        for r in CATALOGUE[view]
        if r not in ("positioning.orientation", "metadata.spacing") or view is View.FRONTAL
    }
    truth = {"id": sid, "view": view.value, "rules": rules, "params": {}}
    (out / f"{sid}.json").write_text(json.dumps(truth))


def _options(set_dir: Path) -> evaluate.EvalOptions:
    return evaluate.EvalOptions(eval_set=set_dir, real=None, limit=None, json=True)


def test_eval_reports_per_rule_accuracy_and_families(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate, "_load_predictors", lambda _s: ([], "no model in this test"))
    monkeypatch.setattr(evaluate, "DEFAULT_REAL", tmp_path / "absent")
    good = frontal_phantom()
    cut = frontal_phantom()
    cut["field"][:65] = False
    _sample(tmp_path, "a", View.FRONTAL, good, {})
    _sample(
        tmp_path, "b", View.FRONTAL, cut, {"completeness.apices": "fail", "organs.lungs": "fail"}
    )
    # truth says the rotation is bad, the rules will not see it: one false negative
    _sample(tmp_path, "c", View.FRONTAL, good, {"positioning.rotation": "fail"})
    _sample(tmp_path, "d", View.LATERAL, lateral_phantom(), {})
    assert evaluate.eval_command(Settings(), _options(tmp_path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 4
    assert "no model in this test" in report["note"]
    exact = report["modes"]["exact masks (rules only)"]
    frontal = exact["frontal"]
    assert frontal["images"] == 3
    apices = frontal["rules"]["completeness.apices"]
    assert apices == {**apices, "n": 3, "accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    rot = frontal["rules"]["positioning.rotation"]
    assert rot["fn"] == 1 and rot["sensitivity"] == 0.0 and rot["accuracy"] == pytest.approx(2 / 3)
    fam = frontal["families"]["completeness"]
    assert fam["true_failure_rate"] == pytest.approx(1 / 3)
    assert fam["predicted_failure_rate"] == pytest.approx(1 / 3)
    pos = frontal["families"]["positioning"]
    assert pos["difference"] == pytest.approx(-1 / 3)
    n_rules = len(frontal["rules"])
    expected_mean = (n_rules - 1 + 2 / 3) / n_rules
    assert frontal["mean_rule_accuracy"] == pytest.approx(expected_mean)
    assert frontal["median_qc_ms"] > 0
    assert exact["lateral"]["mean_rule_accuracy"] == 1.0


def test_eval_text_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(evaluate, "_load_predictors", lambda _s: ([], "none"))
    monkeypatch.setattr(evaluate, "DEFAULT_REAL", tmp_path / "absent")
    _sample(tmp_path, "a", View.FRONTAL, frontal_phantom(), {})
    options = dataclasses.replace(_options(tmp_path), json=False)
    assert evaluate.eval_command(Settings(), options) == 0
    text = capsys.readouterr().out
    assert "mean rule accuracy 100.00 %" in text
    assert "completeness.apices" in text


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert evaluate.dice(a, b) is None
    a[:2] = True
    b[1:3] = True
    assert evaluate.dice(a, b) == pytest.approx(0.5)


def test_default_set_is_the_newest_evaluation_set_never_a_training_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DESIGN §6: without --set, eval-v2 then eval-v1; with neither, a readable error that
    says how to make one, not the scores of a training set."""
    from qcnode.cli import main

    monkeypatch.setattr(evaluate, "_load_predictors", lambda _s: ([], "no model in this test"))
    monkeypatch.setattr(evaluate, "DEFAULT_REAL", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)
    for train in ("train-v1", "train-v5r"):
        (tmp_path / "data/synth" / train).mkdir(parents=True)
        _sample(tmp_path / "data/synth" / train, "t", View.FRONTAL, frontal_phantom(), {})
    assert main(["eval", "--json"]) == 2
    assert evaluate.default_set() is None
    out, err = capsys.readouterr()
    assert out == ""  # no report: nothing was scored
    assert "Traceback" not in err
    assert "qcnode: error: no evaluation set: data/synth/eval-v2 or data/synth/eval-v1" in err
    assert "qcnode synth --out data/synth/eval-v2 --split eval --seed 2001" in err
    assert "--set DIR" in err
    for name in ("eval-v1", "eval-v2"):
        (tmp_path / "data/synth" / name).mkdir()
        _sample(tmp_path / "data/synth" / name, name, View.FRONTAL, frontal_phantom(), {})
    assert main(["eval", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["set"] == str(Path("data/synth/eval-v2")) and report["samples"] == 1
    assert report["note"] == "model pass skipped: no model in this test"
    (tmp_path / "data/synth/eval-v2").rename(tmp_path / "data/synth/old-v2")
    assert evaluate.default_set() == Path("data/synth/eval-v1")
