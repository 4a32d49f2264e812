"""The QC engine: decode → predict (one batched call) → rules → QCResult; `qcnode check`.

A film found mirrored, upside down or flipped gets a second model pass on its pixels turned
back upright (``QCEngine.analyze``).

The engine is what both the node's worker and the offline ``qcnode check`` use, so a file
checked on the command line gets exactly the verdict the node would send to PACS.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import numpy as np

from qcnode.config import Settings
from qcnode.errors import ModelError, QcnodeError
from qcnode.records import (
    DecodedImage,
    Family,
    Finding,
    Geometry,
    ImageMeta,
    ModelInfo,
    Prediction,
    Predictor,
    QCResult,
    Verdict,
    View,
    worst,
)
from qcnode.rules import assess, evaluate, load_config
from qcnode.rules.config import RulesConfig
from qcnode.rules.geometry import turn_axes

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

    def result(
        self, image: DecodedImage, prediction: Prediction, *, orientation: str | None = None
    ) -> tuple[QCResult, float]:
        """QC one image from its prediction; returns the result and the rules time (ms).

        ``orientation``: how the film hangs when the pipeline already knows (its second
        look, see ``analyze``); else the rules detect it on these masks.
        """
        t0 = time.perf_counter()
        uid = image.meta.sop_instance_uid
        if prediction.view is View.OTHER:
            return not_applicable(uid, self.model_info), 0.0
        findings = evaluate(
            image,
            prediction,
            config=self._rules,
            language=self._language,
            orientation=orientation,
        )
        return self._qc_result(uid, prediction, findings), (time.perf_counter() - t0) * 1000.0

    def _qc_result(
        self, uid: str, prediction: Prediction, findings: tuple[Finding, ...]
    ) -> QCResult:
        return QCResult(
            sop_instance_uid=uid,
            view=prediction.view,
            verdict=worst(findings),
            families=family_verdicts(findings),
            findings=findings,
            model=self.model_info,
        )

    def _predict(self, images: Sequence[DecodedImage]) -> tuple[list[Prediction], float, str]:
        """One batched model call: (predictions, ms per image, "" or why it failed)."""
        t0 = time.perf_counter()
        try:
            preds = self._predictor.predict(images)
        except QcnodeError as exc:
            preds, failure = [], f"model failed: {exc}"
        except Exception as exc:  # a model bug must not stop the run
            log.exception("predict failed")
            preds, failure = [], f"model failed: {type(exc).__name__}: {exc}"
        else:
            failure = ""
        return preds, (time.perf_counter() - t0) * 1000.0 / max(1, len(images)), failure

    def run(
        self, images: Sequence[DecodedImage], *, decode_ms: Sequence[float] | None = None
    ) -> list[QCResult]:
        """QC a batch: non-chest headers skip the model; the rest share one predict call."""
        return [r for _, r in self.analyze(images, decode_ms=decode_ms)]

    def analyze(
        self, images: Sequence[DecodedImage], *, decode_ms: Sequence[float] | None = None
    ) -> list[tuple[Prediction | None, QCResult]]:
        """QC a batch, with the prediction each result was measured on (the report draws
        its masks; None where the model did not run).

        Non-chest headers skip the model; the rest share one predict call. A film that the
        first look finds mirrored, upside down or flipped gets a second look: the model
        again on the pixels turned back upright (one more batched call, for those films
        only), because the network is not mirror-symmetric and its masks of a mirrored
        film are not its masks of the upright film mirrored. The rules then measure the
        turned-back film and that second prediction, exactly as the correctly hung film,
        report the first look's orientation, and the engine maps every geometry (and the
        returned masks) back onto the source pixels, where the overlay draws them.
        ``timings_ms["model"]`` holds both passes.
        """
        decode = list(decode_ms) if decode_ms is not None else [0.0] * len(images)
        chest = [i for i, img in enumerate(images) if chest_header(img.meta)]
        predictions: dict[int, Prediction] = {}
        model_ms = dict.fromkeys(chest, 0.0)
        rules_ms = dict.fromkeys(range(len(images)), 0.0)
        done: dict[int, QCResult] = {}
        failure = ""
        if chest:
            preds, ms, failure = self._predict([images[i] for i in chest])
            predictions = dict(zip(chest, preds, strict=True)) if not failure else {}
            model_ms = dict.fromkeys(chest, ms)
        turned: dict[int, str] = {}  # films found not upright: how they hang
        for i, first in predictions.items():
            done_i, orient, rules_ms[i] = self._first_look(images[i], first)
            if done_i is not None:
                done[i] = done_i
            else:
                turned[i] = orient
        second = self._second_look(images, predictions, turned, model_ms) if turned else {}
        out: list[tuple[Prediction | None, QCResult]] = []
        for i, image in enumerate(images):
            uid = image.meta.sop_instance_uid
            pred = predictions.get(i)
            if pred is None:
                if failure and i in chest:
                    r = error_result(uid, failure, self.model_info)
                else:
                    r = not_applicable(uid, self.model_info)
            elif i in done:
                r = done[i]
            else:
                axes = turn_axes(turned[i])
                try:
                    if i in second:  # the turned-back film, mapped back to the source
                        upright, seen = second[i]
                        pred = turned_prediction(seen, axes)
                        r, ms = self.result(upright, seen, orientation=turned[i])
                        r = result_on_source(r, axes, image.pixels.shape)
                    else:  # no usable second look: the rules turn the first reading
                        r, ms = self.result(image, pred)
                except Exception as exc:
                    log.exception("rules failed")
                    r, ms = error_result(uid, f"rules failed: {exc}", self.model_info), 0.0
                rules_ms[i] += ms
            m_ms = model_ms.get(i, 0.0)
            timings = {
                "decode": decode[i],
                "model": m_ms,
                "rules": rules_ms[i],
                "total": decode[i] + m_ms + rules_ms[i],
            }
            out.append((pred, _with_timings(r, timings)))
        return out

    def _first_look(
        self, image: DecodedImage, prediction: Prediction
    ) -> tuple[QCResult | None, str, float]:
        """(result, "upright", ms) for a film measured as it hangs; (None, orientation, ms)
        for one found turned, which waits for the second look."""
        t0 = time.perf_counter()
        uid = image.meta.sop_instance_uid
        if prediction.view is View.OTHER:
            return not_applicable(uid, self.model_info), "upright", 0.0
        try:
            a = assess(
                image,
                prediction,
                config=self._rules,
                language=self._language,
                stop_if_turned=True,
            )
        except Exception as exc:
            log.exception("rules failed")
            return error_result(uid, f"rules failed: {exc}", self.model_info), "upright", 0.0
        ms = (time.perf_counter() - t0) * 1000.0
        if a.orientation != "upright":
            return None, a.orientation, ms
        return self._qc_result(uid, prediction, a.findings), "upright", ms

    def _second_look(
        self,
        images: Sequence[DecodedImage],
        predictions: dict[int, Prediction],
        turned: dict[int, str],
        model_ms: dict[int, float],
    ) -> dict[int, tuple[DecodedImage, Prediction]]:
        """The model on the turned films' pixels turned back upright (one batched call):
        {index: (turned-back image, its prediction)}.

        A film is left out (the rules then turn its first reading, as before the second
        look existed) when the call fails or reads another view than the first look: the
        orientation was detected under the first view and the two readings cannot be mixed.
        """
        idx = list(turned)
        upright = [turned_image(images[i], turn_axes(turned[i])) for i in idx]
        preds, ms, failure = self._predict(upright)
        for i in idx:
            model_ms[i] += ms
        if failure:
            log.warning("second look at %d turned film(s) failed: %s", len(idx), failure)
            return {}
        out: dict[int, tuple[DecodedImage, Prediction]] = {}
        for i, image, pred in zip(idx, upright, preds, strict=True):
            if pred.view is not predictions[i].view:
                log.warning(
                    "second look reads view %s, first %s: the first look stands",
                    pred.view,
                    predictions[i].view,
                    extra={"sop_instance_uid": images[i].meta.sop_instance_uid},
                )
                continue
            out[i] = (image, pred)
        return out

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


def turned_image(image: DecodedImage, axes: tuple[int, ...]) -> DecodedImage:
    """The image flipped along ``axes`` (a flip keeps the shape and the spacing)."""
    if not axes:
        return image
    return replace(image, pixels=np.ascontiguousarray(np.flip(image.pixels, axes)))


def turned_prediction(prediction: Prediction, axes: tuple[int, ...]) -> Prediction:
    """The prediction's masks flipped along ``axes`` (views: no copy)."""
    if not axes:
        return prediction
    return replace(
        prediction,
        masks={k: np.flip(v, axes) for k, v in prediction.masks.items()},
        extra_masks={k: np.flip(v, axes) for k, v in prediction.extra_masks.items()},
    )


def result_on_source(result: QCResult, axes: tuple[int, ...], shape: tuple[int, ...]) -> QCResult:
    """The result with every finding's geometry flipped along ``axes`` of an image of
    ``shape`` (rows, columns): from the turned-back film onto the source pixels."""
    if not axes:
        return result
    h, w = float(shape[0]), float(shape[1])

    def back(g: Geometry) -> Geometry:
        pts = tuple(
            (w - 1 - x if 1 in axes else x, h - 1 - y if 0 in axes else y) for x, y in g.points
        )
        return replace(g, points=pts)

    findings = tuple(
        replace(f, geometry=tuple(back(g) for g in f.geometry)) for f in result.findings
    )
    return replace(result, findings=findings)


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
