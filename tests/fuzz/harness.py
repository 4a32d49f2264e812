"""Fuzz targets and crash bookkeeping, shared by the CI fuzz tests and scripts/fuzz.

A *crash* is any exception other than a qcnode.errors.QcnodeError subclass escaping a
stage that the node calls, or a broken output contract (decoded pixels not float32 in
[0, 1] with the header's shape; a finding value that is not finite). The targets mirror
what the worker does with a received file: ``read_dataset`` → ``decode_dataset`` (the
worker catches only DecodeError/UnsupportedInput) → the model (FakePredictor, masks drawn
by the fuzzer) → ``qcnode.rules.evaluate`` → the ``--json`` contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcnode.errors import QcnodeError
from qcnode.imaging import decode_dataset, read_dataset
from qcnode.records import STRUCTURES, BoolMask, DecodedImage, Prediction, View
from qcnode.rules import evaluate, load_config
from qcnode.rules.config import RulesConfig
from qcnode.testing import FakePredictor, frontal_phantom, lateral_phantom

ROOT = Path(__file__).resolve().parents[2]


class ContractViolation(AssertionError):
    """A stage returned, but what it returned breaks its contract."""


# Crashes already reported to the node engineer (.cache/requests-to-node.md), each with a
# strict-xfail regression test in tests/fuzz/test_fuzz_known.py. A signature is the
# exception type and the qcnode frame it escaped from. The CI fuzz tests fail on anything
# else; when a fix lands the xfail test passes, fails as strict, and the entry goes.
KNOWN: dict[str, str] = {}


def decode_file(path: Path) -> DecodedImage | None:
    """The worker's decode of a kept file; None when it refuses it with a QcnodeError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on odd values; the node runs so too
        try:
            ds = read_dataset(path)
            image = decode_dataset(ds)
        except QcnodeError:
            return None
    check_decoded(image)
    return image


def check_decoded(image: DecodedImage) -> None:
    pixels = image.pixels
    if pixels.dtype != np.float32 or pixels.ndim != 2:
        raise ContractViolation(f"pixels {pixels.dtype} {pixels.shape}, want 2-D float32")
    if pixels.shape != (image.meta.rows, image.meta.columns):
        raise ContractViolation(
            f"pixels {pixels.shape} but header {image.meta.rows}x{image.meta.columns}"
        )
    if not bool(np.all(np.isfinite(pixels))):
        raise ContractViolation("decoded pixels contain NaN or infinity")
    if pixels.size and (float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0):
        raise ContractViolation("decoded pixels outside [0, 1]")
    if image.spacing_mm is not None and not all(
        math.isfinite(v) and v > 0 for v in image.spacing_mm
    ):
        raise ContractViolation(f"unusable spacing {image.spacing_mm}")


def _resize_nearest(mask: BoolMask, shape: tuple[int, int]) -> BoolMask:
    rows = (np.arange(shape[0]) * mask.shape[0] // max(shape[0], 1)).clip(0, mask.shape[0] - 1)
    cols = (np.arange(shape[1]) * mask.shape[1] // max(shape[1], 1)).clip(0, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


@dataclass(frozen=True)
class MaskPlan:
    """How the fake model answers: a view, and per structure keep/empty/full/noise/shift."""

    view: View
    edits: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    spacing_mm: tuple[float, float] | None = None  # the model's estimate when the header has none


def masks_for(image: DecodedImage, plan: MaskPlan) -> dict[str, BoolMask]:
    shape = image.pixels.shape
    phantom = lateral_phantom() if plan.view is View.LATERAL else frontal_phantom()
    rng = np.random.default_rng(plan.seed)
    out: dict[str, BoolMask] = {}
    for name in STRUCTURES:
        base = phantom.get(name)
        mask = _resize_nearest(base, shape) if base is not None else np.zeros(shape, dtype=bool)
        edit = plan.edits.get(name, "keep")
        if edit == "empty":
            mask = np.zeros(shape, dtype=bool)
        elif edit == "full":
            mask = np.ones(shape, dtype=bool)
        elif edit == "noise":
            mask = rng.random(shape) < 0.3
        elif edit == "shift":
            mask = np.roll(mask, (shape[0] // 3, -shape[1] // 4), axis=(0, 1))
        elif edit == "pixel":
            mask = np.zeros(shape, dtype=bool)
            mask[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = True
        out[name] = mask
    return out


_RULES: RulesConfig | None = None


def rules_config() -> RulesConfig:
    global _RULES
    if _RULES is None:
        _RULES = load_config()
    return _RULES


def run_rules(image: DecodedImage, plan: MaskPlan, *, language: str = "en") -> tuple[Any, ...]:
    """FakePredictor (the plan's masks) → rules; checks the findings' JSON contract."""
    predictor = FakePredictor(
        source=lambda img: (plan.view, masks_for(img, plan)), spacing_mm=plan.spacing_mm
    )
    failed = _RuleFailures()
    rules_log = logging.getLogger("qcnode.rules")
    rules_log.addHandler(failed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (prediction,) = predictor.predict([image])
            try:
                findings = evaluate(image, prediction, config=rules_config(), language=language)
            except QcnodeError:
                return ()
    finally:
        rules_log.removeHandler(failed)
    if failed.errors:  # evaluate() turns a rule's exception into not_evaluable: still a bug
        raise failed.errors[0]
    check_findings(findings)
    return findings


class _RuleFailures(logging.Handler):
    """Exceptions that qcnode.rules logged and swallowed ("rule failed")."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def check_findings(findings: tuple[Any, ...]) -> None:
    for f in findings:
        for name in ("value", "threshold"):
            v = getattr(f, name)
            if v is not None and not math.isfinite(float(v)):
                raise ContractViolation(f"{f.rule}: {name} is {v}")
        for g in f.geometry:
            if not all(math.isfinite(float(c)) for p in g.points for c in p):
                raise ContractViolation(f"{f.rule}: geometry has a non-finite point")
    json.dumps([f.to_json() for f in findings], allow_nan=False)


def prediction_for(image: DecodedImage, plan: MaskPlan) -> Prediction:
    predictor = FakePredictor(source=lambda img: (plan.view, masks_for(img, plan)))
    return predictor.predict([image])[0]


def known(sig: str) -> str:
    """Why a crash signature is known (its request), or "" (KNOWN keys are prefixes)."""
    return next((why for prefix, why in KNOWN.items() if sig.startswith(prefix)), "")


# --- crash bookkeeping (scripts/fuzz) -------------------------------------------------------


def signature(exc: BaseException) -> str:
    """Exception type + the innermost qcnode frame (or the innermost frame at all)."""
    if type(exc).__name__ == "NodeFailure":  # tests.fuzz.cstore: the message says what
        text = re.sub(r"#\d+", "#N", str(exc))
        return "NodeFailure: " + re.sub(r"'[^']*'", "'…'", text)[:160]
    if isinstance(exc, ContractViolation):  # where the contract broke, not where we noticed
        return f"ContractViolation: {str(exc).split(' is ')[0].split(' contain')[0][:60]}"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/qcnode/" in f.filename and "/tests/" not in f.filename]
    frame = (ours or frames or [None])[-1]
    where = f"{Path(frame.filename).name}:{frame.name}" if frame is not None else "?"
    return f"{type(exc).__name__} @ {where}"


@dataclass
class CrashBook:
    """Counts inputs and distinct crashes; keeps the first input of each crash kind."""

    directory: Path
    tried: int = 0
    crashes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    objects: int = 0  # result objects built and validated (report target)

    def record(self, exc: BaseException, data: bytes | None) -> str:
        sig = signature(exc)
        self.crashes[sig] = self.crashes.get(sig, 0) + 1
        if sig not in self.examples:
            self.messages[sig] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if data is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha1(sig.encode()).hexdigest()[:12] + ".dcm"
                (self.directory / name).write_bytes(data)
                self.examples[sig] = str(self.directory / name)
            else:
                self.examples[sig] = ""
        return sig

    def summary(self) -> dict[str, Any]:
        return {
            "inputs": self.tried,
            **({"objects_built_and_valid": self.objects} if self.objects else {}),
            "crashing_inputs": sum(self.crashes.values()),
            "distinct_crashes": len(self.crashes),
            "crashes": [
                {
                    "signature": sig,
                    "count": n,
                    "message": self.messages.get(sig, ""),
                    "example": self.examples.get(sig, ""),
                    "known": known(sig),
                }
                for sig, n in sorted(self.crashes.items(), key=lambda kv: -kv[1])
            ],
        }


# --- report objects (finding 19) -------------------------------------------------------------

# Identity attributes the report copies verbatim (the PACS files results by them): an
# invalid value there is the source's, and the only dciodvfy error a result may inherit.
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
)


def report_file(path: Path, plan: MaskPlan) -> int:
    """What the worker does with a kept file, up to its result objects: decode, QC (engine
    with the plan's masks), SR + SC for an evaluated image, each checked with dciodvfy.
    Only inputs ingest keeps count (a storage SOP class whose UIDs match the file meta).
    Returns the number of objects built; raises on a crash or an invalid object."""
    from qcnode.engine import QCEngine
    from qcnode.ingest import STORAGE_SOP_CLASSES
    from qcnode.records import Verdict
    from qcnode.report import build_results
    from qcnode.report.validate import dciodvfy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = read_dataset(path)
            meta = source.file_meta
            if (
                source.get("SOPClassUID") not in STORAGE_SOP_CLASSES
                or source.get("SOPClassUID") != meta.get("MediaStorageSOPClassUID")
                or source.get("SOPInstanceUID") != meta.get("MediaStorageSOPInstanceUID")
            ):
                return 0  # ingest refuses it (0xC000)
            image = decode_dataset(source)
        except QcnodeError:
            return 0
        except Exception:  # a header value ingest cannot read: refused there too
            return 0
        if image.pixels.size > 1024 * 1024:
            return 0
        predictor = FakePredictor(
            source=lambda img: (plan.view, masks_for(img, plan)), spacing_mm=plan.spacing_mm
        )
        engine = QCEngine(predictor=predictor, rules=rules_config())
        (result,) = engine.run([image])
        if result.verdict not in (Verdict.PASS, Verdict.WARN, Verdict.FAIL):
            return 0
        (prediction,) = predictor.predict([image])
        objects = build_results(source, image, prediction, result, objects=("sr", "sc"))
    for obj in objects:
        errors = [e for e in dciodvfy(obj).errors if not any(k in e for k in IDENTITY_KEYWORDS)]
        if errors:
            raise ContractViolation(f"{obj.Modality} invalid: {errors[0][:200]}")
    return len(objects)
