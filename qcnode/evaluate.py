"""`qcnode eval`: the study's tables, measured on the labelled synthetic set and real films.

Two passes over the synthetic set (``<id>.dcm``, ``<id>_masks.npz``, ``<id>.json`` truth):

- ``exact``: the rules on the exact masks (FakePredictor) — the accuracy of the rules
  themselves, independent of the network;
- ``model:<name>``: the shipped network end to end (decode → model → rules), when weights
  are available — the number comparable with the study's 98.32 % / 98.49 %.

Per rule: accuracy, sensitivity, specificity with "positive" = a QC problem (warn or fail;
the study's 不合格), plus the exact-status agreement. A rule the engine calls
``not_evaluable`` counts as "no problem flagged". Per family: predicted vs true failure rate.
Timing: median decode→verdict per image. Dice per structure for the model pass.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcnode.config import Settings
from qcnode.engine import QCEngine, family_verdicts
from qcnode.errors import QcnodeError, UnknownModel
from qcnode.records import (
    STRUCTURES,
    BoolMask,
    DecodedImage,
    Family,
    Finding,
    Predictor,
    QCResult,
    Status,
    Verdict,
    View,
)
from qcnode.rules import load_config
from qcnode.rules.catalogue import family_of
from qcnode.testing import FakePredictor

log = logging.getLogger(__name__)

# the evaluation sets, newest first; never a training set (DESIGN §6: training and evaluation
# sets come from disjoint seeds and CT regions, and a score on training films flatters)
DEFAULT_SETS = (Path("data/synth/eval-v2"), Path("data/synth/eval-v1"))
# how eval-v2 was made (docs/SYNTH.md, session 4): frontals, then laterals into the same folder
MAKE_EVAL_SET = (
    "qcnode synth --out data/synth/eval-v2 --split eval --seed 2001 --view frontal --count 2000"
    " --variants-per-pose 10 --visible-lungs --scapulae-in-body --no-ready",
    "qcnode synth --out data/synth/eval-v2 --split eval --seed 2002 --view lateral --count 1400"
    " --variants-per-pose 10 --visible-lungs",
)
DEFAULT_REAL = Path("/work/shared/data/realcxr")
PROBLEM = frozenset({"warn", "fail"})


# ---- samples --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    id: str
    view: View
    dcm: Path
    masks: Path
    truth: dict[str, Any]


def load_samples(set_dir: Path, limit: int | None = None) -> list[Sample]:
    """Samples of a synthetic set, in id order (every ``<id>.json`` with its files)."""
    out: list[Sample] = []
    for tj in sorted(set_dir.glob("*.json")):
        if tj.name == "manifest.json":
            continue
        try:
            truth = json.loads(tj.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(truth, dict) or "rules" not in truth:
            continue
        sid = str(truth.get("id", tj.stem))
        dcm, masks = set_dir / f"{sid}.dcm", set_dir / f"{sid}_masks.npz"
        if not dcm.is_file():
            continue
        out.append(Sample(sid, View(truth.get("view", "other")), dcm, masks, truth))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_masks(path: Path) -> dict[str, BoolMask]:
    with np.load(path) as npz:
        return {k: np.asarray(npz[k], dtype=bool) for k in npz.files}


def dice(a: BoolMask, b: BoolMask) -> float | None:
    """Dice coefficient; None when both are empty (nothing to compare)."""
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int((a & b).sum()) / s


# ---- statistics -----------------------------------------------------------------------------


@dataclass
class RuleStats:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    exact: int = 0
    not_evaluable: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def add(self, predicted: str, truth: str) -> None:
        p, t = predicted in PROBLEM, truth in PROBLEM
        self.tp += p and t
        self.fp += p and not t
        self.tn += (not p) and (not t)
        self.fn += (not p) and t
        self.exact += predicted == truth
        self.not_evaluable += predicted == "not_evaluable"

    def summary(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "accuracy": (self.tp + self.tn) / n if n else None,
            "sensitivity": self.tp / (self.tp + self.fn) if self.tp + self.fn else None,
            "specificity": self.tn / (self.tn + self.fp) if self.tn + self.fp else None,
            "status_agreement": self.exact / n if n else None,
            "positives": self.tp + self.fn,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "not_evaluable": self.not_evaluable,
        }


@dataclass
class ViewStats:
    rules: dict[str, RuleStats] = field(default_factory=lambda: defaultdict(RuleStats))
    families_pred: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    families_true: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    images: int = 0
    times_ms: list[float] = field(default_factory=list)
    view_correct: int = 0
    dice: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        rules = {r: s.summary() for r, s in sorted(self.rules.items())}
        accs = [v["accuracy"] for v in rules.values() if v["accuracy"] is not None]
        fams = {}
        for fam in Family:
            if fam.value not in self.families_true and fam.value not in self.families_pred:
                continue
            p = self.families_pred[fam.value] / self.images if self.images else 0.0
            t = self.families_true[fam.value] / self.images if self.images else 0.0
            fams[fam.value] = {
                "predicted_failure_rate": p,
                "true_failure_rate": t,
                "difference": p - t,
            }
        return {
            "images": self.images,
            "errors": self.errors,
            "view_accuracy": self.view_correct / self.images if self.images else None,
            "mean_rule_accuracy": sum(accs) / len(accs) if accs else None,
            "median_qc_ms": statistics.median(self.times_ms) if self.times_ms else None,
            "rules": rules,
            "families": fams,
            "dice": {
                k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(self.dice.items())
            },
        }


def score(
    stats: dict[str, ViewStats],
    sample: Sample,
    result: QCResult,
    masks: dict[str, BoolMask] | None,
    predicted_masks: dict[str, BoolMask] | None,
) -> None:
    """Add one sample's result to the per-view statistics."""
    view = sample.view
    st = stats[view.value]
    st.images += 1
    st.times_ms.append(result.timings_ms.get("total", 0.0))
    if result.verdict is Verdict.ERROR:
        st.errors += 1
    if view is View.OTHER:
        st.view_correct += result.verdict is Verdict.NOT_APPLICABLE
        return
    st.view_correct += result.view is view
    truth_rules: dict[str, Any] = sample.truth.get("rules", {})
    found: dict[str, Finding] = {f.rule: f for f in result.findings}
    shared = [r for r in truth_rules if r in found or result.view is not view]
    for rule in shared:
        t = str(truth_rules[rule]["status"])
        if t == "not_evaluable":
            continue
        p = str(found[rule].status) if rule in found else "pass"
        st.rules[rule].add(p, t)
    # families over the rules both sides know
    pred_fam = family_verdicts([f for f in result.findings if f.rule in truth_rules])
    true_fam: dict[str, bool] = defaultdict(bool)
    for rule, v in truth_rules.items():
        if rule in found or result.view is not view:
            true_fam[family_of(rule).value] |= v["status"] in PROBLEM
    for fam in {family_of(r).value for r in shared}:
        st.families_true[fam] += true_fam[fam]
        st.families_pred[fam] += pred_fam.get(Family(fam), Verdict.PASS) in (
            Verdict.WARN,
            Verdict.FAIL,
        )
    if masks is not None and predicted_masks is not None:
        for name in STRUCTURES:
            if name in masks and name in predicted_masks:
                d = dice(masks[name], predicted_masks[name])
                if d is not None:
                    st.dice[name].append(d)


# ---- passes ---------------------------------------------------------------------------------


def _decode(path: Path) -> tuple[DecodedImage, float]:
    from qcnode.imaging import decode

    t0 = time.perf_counter()
    img = decode(path)
    return img, (time.perf_counter() - t0) * 1000.0


def exact_pass(
    samples: Sequence[Sample], settings: Settings, progress: bool = False
) -> Iterator[tuple[Sample, QCResult]]:
    """The rules on exact masks: FakePredictor answers with the sample's own masks."""
    rules = load_config(settings.rules_file)
    for i, s in enumerate(samples):
        if progress and i % 50 == 0:
            print(f"  exact {i}/{len(samples)}", file=sys.stderr)
        try:
            image, ms = _decode(s.dcm)
            masks = load_masks(s.masks)
        except (QcnodeError, OSError, ValueError) as exc:
            log.warning("sample %s unreadable: %s", s.id, exc)
            continue
        fake = FakePredictor(source={image.meta.sop_instance_uid: (s.view, masks)})
        engine = QCEngine(predictor=fake, rules=rules, language=settings.language)
        (result,) = engine.run([image], decode_ms=[ms])
        yield s, result


def model_pass(
    samples: Sequence[Sample],
    settings: Settings,
    predictor: Predictor,
    batch: int = 8,
    progress: bool = False,
) -> Iterator[tuple[Sample, QCResult, dict[str, BoolMask], dict[str, BoolMask]]]:
    """Decode → model (batched) → rules, keeping the predicted masks for Dice."""
    engine = QCEngine(
        predictor=predictor, rules=load_config(settings.rules_file), language=settings.language
    )
    for start in range(0, len(samples), batch):
        if progress:
            print(f"  model {start}/{len(samples)}", file=sys.stderr)
        chunk = samples[start : start + batch]
        images, dec_ms, kept = [], [], []
        for s in chunk:
            try:
                img, ms = _decode(s.dcm)
            except QcnodeError as exc:
                log.warning("sample %s unreadable: %s", s.id, exc)
                continue
            images.append(img)
            dec_ms.append(ms)
            kept.append(s)
        if not images:
            continue
        # the node's pipeline: a film found turned gets the engine's second look
        for s, (pred, result) in zip(kept, engine.analyze(images, decode_ms=dec_ms), strict=True):
            masks = load_masks(s.masks) if s.masks.is_file() else {}
            predicted = {} if pred is None else {k: np.asarray(v) for k, v in pred.masks.items()}
            yield s, result, masks, predicted


# ---- real radiographs -------------------------------------------------------------------------


def real_images(real_dir: Path) -> list[tuple[Path, Path | None]]:
    """(image, human lung mask or None) for every real film under realcxr."""
    out: list[tuple[Path, Path | None]] = []
    for sub in ("frontal", "extra_frontal_nomask", "lateral"):
        for p in sorted((real_dir / sub).glob("*.png")):
            if p.stem.endswith("_lungs"):
                continue
            mask = p.with_name(f"{p.stem}_lungs.png")
            out.append((p, mask if mask.is_file() else None))
    out.extend((p, None) for p in sorted((real_dir / "dicom").glob("*")) if p.is_file())
    return out


def real_pass(real_dir: Path, settings: Settings, predictor: Predictor) -> list[dict[str, Any]]:
    """Findings per real film, with lung Dice where a human mask exists."""
    from PIL import Image

    engine = QCEngine(
        predictor=predictor, rules=load_config(settings.rules_file), language=settings.language
    )
    rows: list[dict[str, Any]] = []
    for path, mask_path in real_images(real_dir):
        try:
            img, ms = _decode(path)
        except QcnodeError as exc:
            rows.append(
                {"file": str(path.relative_to(real_dir)), "verdict": "error", "error": str(exc)}
            )
            continue
        ((pred, result),) = engine.analyze([img])  # the node's pipeline, second look included
        model_ms, rules_ms = result.timings_ms["model"], result.timings_ms["rules"]
        row: dict[str, Any] = {
            "file": str(path.relative_to(real_dir)),
            "view": str(result.view),
            "verdict": str(result.verdict),
            "families": {str(k): str(v) for k, v in result.families.items()},
            "problems": [
                {
                    "rule": f.rule,
                    "status": str(f.status),
                    "value": f.value,
                    "unit": f.unit,
                    "message": f.message,
                }
                for f in result.findings
                if f.status in (Status.WARN, Status.FAIL)
            ],
            "qc_ms": ms + model_ms + rules_ms,
        }
        if mask_path is not None and pred is not None:
            with Image.open(mask_path) as im:
                human = np.asarray(im.convert("L")) > 127
            lungs = np.asarray(pred.masks["lung_right"]) | np.asarray(pred.masks["lung_left"])
            if human.shape == lungs.shape:
                row["lung_dice"] = dice(human, lungs)
                if (fields := pred.lung_fields()) is not None:
                    row["lung_field_dice"] = dice(human, fields)
        rows.append(row)
    return rows


# ---- command ----------------------------------------------------------------------------------


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()}-core CPU ({platform.processor() or 'cpu'})"


def _pct(v: float | None) -> str:
    return "  -   " if v is None else f"{100 * v:6.2f}"


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"qcnode eval — set {report['set']} ({report['samples']} samples), {report['machine']}"
    ]
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    for mode, views in report["modes"].items():
        lines.append("")
        lines.append(f"== {mode} ==")
        for view, v in views.items():
            lines.append(
                f"[{view}] images {v['images']}  view acc {_pct(v['view_accuracy'])} %  "
                f"mean rule accuracy {_pct(v['mean_rule_accuracy'])} %  "
                f"median QC {v['median_qc_ms'] or 0:.1f} ms/image  errors {v['errors']}"
            )
            if v["rules"]:
                lines.append(
                    f"  {'rule':<32} {'n':>5} {'acc %':>7} {'sens %':>7} "
                    f"{'spec %':>7} {'pos':>5} {'status=':>7}"
                )
            for rule, r in v["rules"].items():
                lines.append(
                    f"  {rule:<32} {r['n']:>5} {_pct(r['accuracy']):>7} "
                    f"{_pct(r['sensitivity']):>7} {_pct(r['specificity']):>7} "
                    f"{r['positives']:>5} {_pct(r['status_agreement']):>7}"
                )
            if v["families"]:
                lines.append(
                    f"  {'family':<14} {'pred fail %':>11} {'true fail %':>11} {'diff':>7}"
                )
            for fam, f in v["families"].items():
                lines.append(
                    f"  {fam:<14} {_pct(f['predicted_failure_rate']):>11} "
                    f"{_pct(f['true_failure_rate']):>11} {100 * f['difference']:+7.2f}"
                )
            if v["dice"]:
                lines.append(
                    "  dice: " + ", ".join(f"{k} {d['mean']:.3f}" for k, d in v["dice"].items())
                )
    if report.get("real"):
        lines.append("")
        lines.append("== real radiographs ==")
        for r in report["real"]:
            probs = "; ".join(f"{p['rule']} {p['status']}" for p in r.get("problems", []))
            dice_txt = f" lung dice {r['lung_dice']:.3f}" if r.get("lung_dice") is not None else ""
            if r.get("lung_field_dice") is not None:
                dice_txt += f" / field {r['lung_field_dice']:.3f}"
            lines.append(
                f"  {r['file']:<48} {r.get('view', '-'):<8} {r['verdict']:<15}"
                f"{dice_txt}  {probs or r.get('error', '')}"
            )
        d = [r["lung_dice"] for r in report["real"] if r.get("lung_dice") is not None]
        if d:
            lines.append(f"  mean lung Dice vs human masks: {np.mean(d):.3f} (n={len(d)})")
        f = [r["lung_field_dice"] for r in report["real"] if r.get("lung_field_dice") is not None]
        if f:
            lines.append(
                f"  mean lung-field Dice (visible-lung channels) vs human masks: "
                f"{np.mean(f):.3f} (n={len(f)})"
            )
    return "\n".join(lines)


def _load_predictors(settings: Settings) -> tuple[list[Predictor], str]:
    """The predictor(s) to evaluate: the configured/default model, or every registered
    variant with ``--model all``. An empty list and the reason when none can be loaded;
    a ``--model`` the registry does not know (UnknownModel) raises: a wrong name is the
    user's mistake, and a skipped model pass would hide it."""
    try:
        from qcnode.model import load_predictor
        from qcnode.model.registry import load_registry
    except ImportError as exc:
        return [], f"the model package is not available: {exc}"
    try:
        names: list[str | None] = [settings.model or None]
        if settings.model == "all":
            names = list(load_registry().names())  # ensembles included
        return [load_predictor(n, device=settings.device) for n in names], ""
    except QcnodeError as exc:
        if settings.model and isinstance(exc, UnknownModel):
            raise
        return [], str(exc)


def default_set() -> Path | None:
    """The first evaluation set of :data:`DEFAULT_SETS` that exists (relative to the working
    directory); None when there is none. Never falls back to a training set."""
    return next((d for d in DEFAULT_SETS if d.is_dir()), None)


def no_eval_set_message() -> str:
    """What to do when ``qcnode eval`` has no ``--set`` and no evaluation set exists."""
    looked = " or ".join(str(d) for d in DEFAULT_SETS)
    return (
        f"no evaluation set: {looked} not found under {Path.cwd()}. Make one (docs/SYNTH.md) "
        f"with\n  {MAKE_EVAL_SET[0]}\n  {MAKE_EVAL_SET[1]}\nor name one with --set DIR. "
        "A training set is never used by default: training and evaluation sets are disjoint "
        "(DESIGN §6)."
    )


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """``qcnode eval``'s flags (DESIGN §9), built once by qcnode.cli; the defaults are the
    parser's. ``--model`` is not here: it is a setting (``Settings.model``)."""

    eval_set: Path | None  # --set; None: the newest default evaluation set
    real: Path | None  # None: DEFAULT_REAL when it exists
    limit: int | None  # the first N samples of the set
    json: bool  # one JSON object instead of the tables


def eval_command(settings: Settings, options: EvalOptions) -> int:
    """Print the study's tables (or one JSON object with --json)."""
    set_dir: Path | None = options.eval_set
    note = ""
    if set_dir is None:
        set_dir = default_set()
        if set_dir is None:
            if options.real is None:
                raise QcnodeError(no_eval_set_message())
            note = "no synthetic evaluation set: real films only"
    samples = (
        load_samples(set_dir, options.limit) if set_dir is not None and set_dir.is_dir() else []
    )
    progress = not options.json
    modes: dict[str, dict[str, Any]] = {}
    predictors, why = _load_predictors(settings)  # before the exact pass: a wrong name fails now
    if samples:
        stats: dict[str, ViewStats] = defaultdict(ViewStats)
        for s, r in exact_pass(samples, settings, progress=progress):
            score(stats, s, r, None, None)
        modes["exact masks (rules only)"] = {k: v.summary() for k, v in sorted(stats.items())}
    for one in predictors if samples else []:
        stats = defaultdict(ViewStats)
        for s, r, m, pm in model_pass(samples, settings, one, progress=progress):
            score(stats, s, r, m, pm)
        modes[f"model {one.info.name}"] = {k: v.summary() for k, v in sorted(stats.items())}
    if not predictors:
        note = (note + "; " if note else "") + f"model pass skipped: {why}"
    predictor = predictors[0] if predictors else None
    real_dir: Path | None = options.real or (DEFAULT_REAL if DEFAULT_REAL.is_dir() else None)
    real = real_pass(real_dir, settings, predictor) if predictor and real_dir else []
    report = {
        "set": None if set_dir is None else str(set_dir),
        "samples": len(samples),
        "machine": _machine(),
        "note": note,
        "modes": modes,
        "real": real,
    }
    if options.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0 if samples or real else 1
