#!/usr/bin/env python
"""Rule accuracy at other operating points of the model: per-channel logit offsets
(``mask_bias`` in the weights registry) swept on canvas outputs kept by
``scripts/cache_predictions.py --logits``, one channel group at a time.

    .venv/bin/python scripts/sweep_bias.py SET LOGITS [--group lungs=-1,-0.5,0.5] \
        [--config NAME:lungs=0.5,clavicles=1] [--view frontal] [--json OUT]

Every configuration goes through the predictor's own path (``TorchPredictor.prediction``:
clean-up, bilinear return to source pixels) and the engine with the shipped rules, so the
numbers are what the node would report at that operating point. The offsets are added to
the entry's current ``mask_bias`` (the logits were kept with it). For calibration sets
(train split) only: choosing on the evaluation set would be fitting to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from cache_predictions import load_canvas

from qcnode.config import load_settings
from qcnode.engine import QCEngine
from qcnode.evaluate import ViewStats, load_masks, load_samples, score
from qcnode.imaging import decode
from qcnode.model import load_predictor
from qcnode.records import DecodedImage, ModelInfo, Prediction, View
from qcnode.rules import load_config

GROUPS: dict[str, tuple[str, ...]] = {
    "lungs": ("lung_right", "lung_left"),
    "heart": ("heart",),
    "clavicles": ("clavicle_right", "clavicle_left"),
    "scapulae": ("scapula_right", "scapula_left"),
    "spine": ("spine",),
    "ribs": ("ribs_posterior_right", "ribs_posterior_left"),
    "sternum": ("sternum",),
    "humeri": ("humerus_right", "humerus_left"),
    "trachea": ("trachea",),
}


class GivenPredictor:
    """Answers with predictions made beforehand (keyed by SOP Instance UID)."""

    def __init__(self, *, info: ModelInfo, given: Mapping[str, Prediction]) -> None:
        self.info = info
        self._given = given

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]:
        return [self._given[im.meta.sop_instance_uid] for im in images]


def parse_offsets(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        group, value = part.split("=")
        for name in GROUPS[group]:
            out[name] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("logits_dir", type=Path)
    ap.add_argument("--group", action="append", default=[], help="GROUP=v1,v2,... (one at a time)")
    ap.add_argument("--config", action="append", default=[], help="NAME:GROUP=v,GROUP=v")
    ap.add_argument("--view", choices=("frontal", "lateral"), default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    configs: dict[str, dict[str, float]] = {"base": {}}
    for spec in args.group:
        group, values = spec.split("=")
        for v in values.split(","):
            configs[f"{group}{float(v):+g}"] = parse_offsets(f"{group}={v}")
    for spec in args.config:
        name, offsets = spec.split(":")
        configs[name] = parse_offsets(offsets)
    predictor = load_predictor(None, device="cpu")
    structures = predictor._meta.structures
    rules = load_config(load_settings().rules_file)
    samples = [
        s
        for s in load_samples(args.set_dir)
        if s.view is not View.OTHER and (args.view is None or s.view.value == args.view)
        if (args.logits_dir / f"{s.id}.npz").is_file()
    ][: args.limit]
    stats: dict[str, dict[str, ViewStats]] = {name: defaultdict(ViewStats) for name in configs}
    for i, s in enumerate(samples):
        if i % 50 == 0:
            print(f"{i}/{len(samples)}", file=sys.stderr, flush=True)
        image = decode(s.dcm)
        truth = load_masks(s.masks)
        canvas = load_canvas(args.logits_dir / f"{s.id}.npz")
        for name, offsets in configs.items():
            bias = torch.tensor([offsets.get(n, 0.0) for n in structures])[:, None, None]
            out = type(canvas)(
                frame=canvas.frame,
                mask_logits=canvas.mask_logits + bias,
                view_logits=canvas.view_logits,
                spacing_mm=canvas.spacing_mm,
                spacing_estimated=canvas.spacing_estimated,
            )
            pred = predictor.prediction(out)
            given = {image.meta.sop_instance_uid: pred}
            engine = QCEngine(
                predictor=GivenPredictor(info=predictor.info, given=given), rules=rules
            )
            (result,) = engine.run([image])
            score(stats[name], s, result, truth, dict(pred.masks))
    summary = {n: {v: st.summary() for v, st in sorted(by.items())} for n, by in stats.items()}
    if args.json:
        args.json.write_text(
            json.dumps({"set": str(args.set_dir), "configs": configs, "summary": summary})
        )
    base = summary["base"]
    for view, b in base.items():
        print(
            f"\n{view} ({b['images']} films): base mean rule accuracy "
            f"{100 * b['mean_rule_accuracy']:.2f} %"
        )
        for name in configs:
            if name == "base":
                continue
            c = summary[name][view]
            moved = [
                f"dice {k} {c['dice'][k]['mean'] - v['mean']:+.4f}"
                for k, v in b["dice"].items()
                if k in c["dice"] and abs(c["dice"][k]["mean"] - v["mean"]) > 5e-5
            ]
            for rule, r in c["rules"].items():
                d = (r["accuracy"] or 0) - (b["rules"][rule]["accuracy"] or 0)
                if abs(d) > 1e-9:
                    moved.append(f"{rule} {100 * d:+.2f}")
            print(
                f"  {name:16s} {100 * c['mean_rule_accuracy']:.2f} "
                f"({100 * (c['mean_rule_accuracy'] - b['mean_rule_accuracy']):+.3f}): "
                + ", ".join(moved)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
