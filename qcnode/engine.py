"""The QC engine: decode → predict (one batched call) → rules → QCResult; `qcnode check`.

The engine is what both the node's worker and the offline ``qcnode check`` use, so a file
checked on the command line gets exactly the verdict the node would send to PACS.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from qcnode.config import Settings
from qcnode.errors import ModelError, QcnodeError
from qcnode.records import (
    DecodedImage,
    Family,
    Finding,
    ImageMeta,
    ModelInfo,
    Prediction,
    Predictor,
    QCResult,
    Verdict,
    View,
    worst,
)
from qcnode.rules import evaluate, load_config
from qcnode.rules.config import RulesConfig

log = logging.getLogger(__name__)

CHEST_MODALITIES = frozenset({"CR", "DX", "DR", "RG", ""})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "BRUST")


def chest_header(meta: ImageMeta) -> bool:
    """False when the header says this is not a chest radiograph (other modality/body part).

    An empty modality or body part (plain pictures, sloppy modalities) is not held against
    the image: the model's view head decides then.
    """
    if meta.modality.upper() not in CHEST_MODALITIES:
        return False
    part = meta.body_part.upper()
    return not part or any(p in part for p in CHEST_BODY_PARTS)


def not_applicable(uid: str, model: ModelInfo | None, view: View = View.OTHER) -> QCResult:
    return QCResult(
        sop_instance_uid=uid,
        view=view,
        verdict=Verdict.NOT_APPLICABLE,
        families={f: Verdict.NOT_APPLICABLE for f in Family},
        findings=(),
        model=model,
    )


def error_result(uid: str, reason: str, model: ModelInfo | None) -> QCResult:
    return QCResult(
        sop_instance_uid=uid,
        view=View.OTHER,
        verdict=Verdict.ERROR,
        families={},
        findings=(),
        model=model,
        error=reason,
    )


def family_verdicts(findings: Sequence[Finding]) -> dict[Family, Verdict]:
    """Each family's verdict: its worst finding (the study's 合格/不合格 per family)."""
    out: dict[Family, Verdict] = {}
    for family in Family:
        mine = [f for f in findings if f.family is family]
        if mine:
            out[family] = worst(mine)
    return out


class QCEngine:
    """Runs QC on decoded images with one batched model call per ``run``."""

    def __init__(
        self,
        *,
        predictor: Predictor,
        rules: RulesConfig | None = None,
        language: str = "en",
        batch_size: int = 8,
    ) -> None:
        self._predictor = predictor
        self._rules = rules if rules is not None else load_config()
        self._language = language
        self._batch_size = max(1, batch_size)

    @property
    def model_info(self) -> ModelInfo:
        return self._predictor.info

    def result(self, image: DecodedImage, prediction: Prediction) -> tuple[QCResult, float]:
        """QC one image from its prediction; returns the result and the rules time (ms)."""
        t0 = time.perf_counter()
        uid = image.meta.sop_instance_uid
        if prediction.view is View.OTHER:
            return not_applicable(uid, self.model_info), 0.0
        findings = evaluate(image, prediction, config=self._rules, language=self._language)
        ms = (time.perf_counter() - t0) * 1000.0
        return (
            QCResult(
                sop_instance_uid=uid,
                view=prediction.view,
                verdict=worst(findings),
                families=family_verdicts(findings),
                findings=findings,
                model=self.model_info,
            ),
            ms,
        )

    def run(
        self, images: Sequence[DecodedImage], *, decode_ms: Sequence[float] | None = None
    ) -> list[QCResult]:
        """QC a batch: non-chest headers skip the model; the rest share one predict call."""
        decode = list(decode_ms) if decode_ms is not None else [0.0] * len(images)
        chest = [i for i, img in enumerate(images) if chest_header(img.meta)]
        predictions: dict[int, Prediction] = {}
        model_ms = 0.0
        failure: str | None = None
        if chest:
            t0 = time.perf_counter()
            try:
                preds = self._predictor.predict([images[i] for i in chest])
            except QcnodeError as exc:
                failure = f"model failed: {exc}"
            except Exception as exc:  # a model bug must not stop the run
                log.exception("predict failed")
                failure = f"model failed: {type(exc).__name__}: {exc}"
            else:
                predictions = dict(zip(chest, preds, strict=True))
            model_ms = (time.perf_counter() - t0) * 1000.0 / len(chest)
        results: list[QCResult] = []
        for i, image in enumerate(images):
            uid = image.meta.sop_instance_uid
            if i not in predictions:
                if failure is not None and i in chest:
                    r = error_result(uid, failure, self.model_info)
                else:
                    r = not_applicable(uid, self.model_info)
                rules_ms, m_ms = 0.0, (model_ms if i in chest else 0.0)
            else:
                try:
                    r, rules_ms = self.result(image, predictions[i])
                except Exception as exc:
                    log.exception("rules failed")
                    r, rules_ms = error_result(uid, f"rules failed: {exc}", self.model_info), 0.0
                m_ms = model_ms
            timings = {
                "decode": decode[i],
                "model": m_ms,
                "rules": rules_ms,
                "total": decode[i] + m_ms + rules_ms,
            }
            results.append(_with_timings(r, timings))
        return results

    def check_paths(self, paths: Iterable[Path]) -> Iterator[tuple[Path, QCResult]]:
        """Decode and QC files in batches, in input order; unreadable files are ``error``."""
        from qcnode.imaging import decode

        batch: list[tuple[Path, DecodedImage | QCResult, float]] = []

        def flush() -> Iterator[tuple[Path, QCResult]]:
            images = [b[1] for b in batch if isinstance(b[1], DecodedImage)]
            ms = [b[2] for b in batch if isinstance(b[1], DecodedImage)]
            done = iter(self.run(images, decode_ms=ms) if images else [])
            for path, item, _ in batch:
                yield path, (next(done) if isinstance(item, DecodedImage) else item)
            batch.clear()

        for path in paths:
            t0 = time.perf_counter()
            item: DecodedImage | QCResult
            try:
                item = decode(path)
            except QcnodeError as exc:
                item = error_result("", _reason(path, exc), self.model_info)
            except Exception as exc:  # a decoder bug on one file must not stop the run
                log.exception("decode failed", extra={"file": path.name})
                item = error_result("", _reason(path, exc), self.model_info)
            batch.append((path, item, (time.perf_counter() - t0) * 1000.0))
            if sum(isinstance(b[1], DecodedImage) for b in batch) >= self._batch_size:
                yield from flush()
        yield from flush()


def _reason(path: Path, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if path.name in text else f"{path.name}: {text}"


def _with_timings(r: QCResult, timings: dict[str, float]) -> QCResult:
    return QCResult(
        sop_instance_uid=r.sop_instance_uid,
        view=r.view,
        verdict=r.verdict,
        families=r.families,
        findings=r.findings,
        model=r.model,
        timings_ms=timings,
        error=r.error,
    )


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named on the command line, and every file under named folders (sorted).

    A path that does not exist is kept, so that it is reported as an error line.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            out.append(p)
    return out


def load_engine(settings: Settings) -> QCEngine:
    """The engine with the configured model (registry name or default) and rules file."""
    try:
        from qcnode.model import load_predictor
    except ImportError as exc:
        raise ModelError(f"the model package is not available: {exc}") from exc
    predictor: Predictor = load_predictor(settings.model or None, device=settings.device)
    return QCEngine(
        predictor=predictor,
        rules=load_config(settings.rules_file),
        language=settings.language,
        batch_size=settings.batch_size,
    )


def format_row(path: Path, r: QCResult) -> str:
    """Readable lines for one file: verdict, then each finding that is not a pass."""
    head = f"{r.verdict.upper():<15} {r.view:<8} {path}"
    if r.error:
        return f"{head}\n    {r.error}"
    lines = [head]
    for f in r.findings:
        if f.status.value in ("warn", "fail"):
            lines.append(f"    {f.status.upper():<5} {f.rule:<30} {f.message}")
    return "\n".join(lines)


def check_command(
    settings: Settings,
    *,
    paths: Sequence[Path],
    as_json: bool,
    out: TextIO | None = None,
    engine: QCEngine | None = None,
) -> int:
    """``qcnode check``: one JSON line (DESIGN §9) or a readable block per file; exit 0."""
    stream = out if out is not None else sys.stdout
    files = collect_files(paths)
    if not files:
        print("qcnode check: no files found", file=sys.stderr)
        return 1
    engine = engine if engine is not None else load_engine(settings)
    counts: dict[str, int] = {}
    for path, result in engine.check_paths(files):
        counts[result.verdict.value] = counts.get(result.verdict.value, 0) + 1
        if as_json:
            stream.write(json.dumps(result.to_json(path=str(path)), ensure_ascii=False) + "\n")
        else:
            stream.write(format_row(path, result) + "\n")
        stream.flush()
    if not as_json:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        stream.write(f"{len(files)} file(s): {summary}\n")
    return 0
