#!/usr/bin/env python3
"""Regenerate docs/report_*.png (overlay SC pixels) and docs/SR_example.txt (dsrdump).

Inputs, best available first, and the picture says which (model name in the banner):
- masks: the shipped model (``qcnode.model.load_predictor``) when it loads; otherwise the
  synthetic sample's ground-truth masks (``<id>_masks.npz`` beside its DICOM); for RG1
  without a model, qcnode.report.examples' hand-made masks;
- findings: always the real rule engine (``qcnode.rules.evaluate``) on those masks.

Usage: .venv/bin/python scripts/report_docs.py [--synth data/synth/DIR] [--out docs]
       [--weights FILE]   (a weights file instead of the registry's default model)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

from qcnode.engine import family_verdicts
from qcnode.errors import QcnodeError
from qcnode.imaging import decode, read_dataset
from qcnode.records import DecodedImage, ModelInfo, Prediction, QCResult, View, worst
from qcnode.report import ReportOptions, build_overlay_sc, build_sr
from qcnode.report.examples import example_prediction
from qcnode.report.overlay import save_png
from qcnode.report.validate import assert_valid, dsrdump
from qcnode.rules import evaluate, load_config

GROUND_TRUTH = ModelInfo(name="ground-truth masks", version="synthetic", sha256="-")
HAND_MADE = ModelInfo(name="hand-made example masks", version="no model", sha256="-")


def _model(weights: Path | None):  # type: ignore[no-untyped-def]
    try:
        load = importlib.import_module("qcnode.model").load_predictor
        return load(None, device="cpu", weights_path=weights)
    except (ImportError, AttributeError, QcnodeError) as exc:
        print(f"no model ({exc}); using ground-truth / example masks", file=sys.stderr)
        return None


def _truth(dcm: Path, image: DecodedImage) -> Prediction | None:
    npz = dcm.with_name(dcm.stem + "_masks.npz")
    meta = dcm.with_suffix(".json")
    if not npz.exists():
        return None
    view = View(json.loads(meta.read_text())["view"]) if meta.exists() else View.FRONTAL
    with np.load(npz) as z:
        masks = {k: z[k].astype(bool) for k in z.files}
    return Prediction(
        view=view,
        view_probabilities={view: 1.0},
        masks=masks,
        spacing_mm=image.spacing_mm or (1.0, 1.0),
    )


def _find(synth: Path, view: str) -> Path | None:
    for meta in sorted(synth.rglob("*.json")):
        try:
            if json.loads(meta.read_text()).get("view") == view:
                dcm = meta.with_suffix(".dcm")
                if dcm.exists():
                    return dcm
        except (ValueError, OSError):
            continue
    return None


def render(path: Path, name: str, out: Path, predictor, language: str) -> Path:  # type: ignore[no-untyped-def]
    header = read_dataset(path, stop_before_pixels=True)
    image = decode(path)
    if predictor is not None:
        prediction, model = predictor.predict([image])[0], predictor.info
    else:
        truth = _truth(path, image)
        prediction, model = (
            (truth, GROUND_TRUTH) if truth else (example_prediction(image), HAND_MADE)
        )
    findings = tuple(evaluate(image, prediction, config=load_config(), language=language))
    result = QCResult(
        sop_instance_uid=image.meta.sop_instance_uid,
        view=prediction.view,
        verdict=worst(findings),
        families=family_verdicts(findings),
        findings=findings,
        model=model,
    )
    options = ReportOptions(language=language)
    sc = build_overlay_sc(header, image, prediction, result, options=options)
    assert_valid(sc)
    png = out / f"report_{name}.png"
    save_png(sc.pixel_array, png)
    print(f"{png}: {path.name}, masks from {model.name}, verdict {result.verdict}")
    if name == "synth_frontal" or (name == "rg1" and not (out / "SR_example.txt").exists()):
        sr = build_sr(header, result, options=options)
        assert_valid(sr)
        (out / "SR_example.txt").write_text(dsrdump(sr), encoding="utf-8")
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth", type=Path, default=Path("data/synth"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--weights", type=Path, help="a weights file instead of the registry")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    predictor = _model(args.weights)
    from pydicom.data import get_testdata_file

    render(Path(str(get_testdata_file("RG1_UNCR.dcm"))), "rg1", args.out, predictor, "en")
    for view in ("frontal", "lateral"):
        dcm = _find(args.synth, view)
        if dcm is None:
            print(f"no synthetic {view} sample under {args.synth}", file=sys.stderr)
            continue
        render(dcm, f"synth_{view}", args.out, predictor, "en")
        if view == "frontal":
            render(dcm, "synth_frontal_zh", args.out, predictor, "zh")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
