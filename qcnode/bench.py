"""``qcnode bench``: measured speed (DESIGN §7) — model per variant, QC per image, node.

model: median forward time per image (batch 1) for every ``qcnet_d*_w*`` variant (or the
``--variants`` given, registered ensembles included) at each thread count, batched
images/s, and for the configured model (``QCNODE_MODEL``, else the registry's default) the
whole ``predict`` (resample, forward, masks back to source pixels) on a real-size radiograph.
qc: median decode-to-verdict time per image through the same engine ``qcnode check`` uses.
report: median time to build the result objects (SR, SC, GSPS, KOS) of one image.
ingest / e2e: delegated to ``qcnode.node_bench`` and ``qcnode.e2e_bench`` (the node's own
benchmarks; e2e on real chest radiographs, failing when any stage is skipped).

Every report names the machine (CPU count, load average before/after: this machine is
shared, and a busy neighbour shows up in the numbers) and the torch device.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcnode.config import Settings
from qcnode.errors import ModelError

if TYPE_CHECKING:
    import torch
    from pydicom import Dataset

    from qcnode.records import DecodedImage, Prediction, QCResult
    from qcnode.report import ReportOptions

log = logging.getLogger(__name__)


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpu": gpu,
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _stats(ms: Sequence[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "median_ms": round(statistics.median(s), 2),
        "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))], 2),
        "min_ms": round(s[0], 2),
    }


def bench_variants(
    variants: Sequence[str],
    *,
    threads: Sequence[int],
    repeats: int,
    batch: int,
    device: str,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Forward time per image for each variant (weights do not change the speed).

    ``precision`` "bf16" runs the network under CUDA autocast (bfloat16 convolutions), with
    channels-last memory: how a GPU host would serve a batch."""
    import contextlib

    import torch

    from qcnode.model.infer import resolve_device
    from qcnode.model.network import count_parameters
    from qcnode.model.preprocess import INPUT_SIZE

    dev = resolve_device(device)
    rows = []
    before = torch.get_num_threads()
    try:
        for name in variants:
            model = _network(name).eval().to(dev)
            one = torch.randn(1, 1, INPUT_SIZE, INPUT_SIZE, device=dev)
            many = torch.randn(batch, 1, INPUT_SIZE, INPUT_SIZE, device=dev)
            half = precision == "bf16" and dev.type == "cuda"
            if half:
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                one = one.to(memory_format=torch.channels_last)
                many = many.to(memory_format=torch.channels_last)

            def run(x: torch.Tensor, m: torch.nn.Module = model, half: bool = half) -> None:
                cast = (
                    torch.autocast("cuda", dtype=torch.bfloat16)
                    if half
                    else contextlib.nullcontext()
                )
                with torch.inference_mode(), cast:
                    m(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            for n in threads if dev.type == "cpu" else [before]:
                torch.set_num_threads(n)
                single = _stats(_timed(functools.partial(run, one), repeats))
                batched = _timed(functools.partial(run, many), max(3, repeats // 4), warmup=1)
                rows.append(
                    {
                        "variant": name,
                        "device": str(dev),
                        "precision": "bf16" if half else "fp32",
                        "threads": n,
                        "parameters": count_parameters(model),
                        **single,
                        f"batch{batch}_images_per_s": round(
                            batch * 1000.0 / statistics.median(batched), 1
                        ),
                    }
                )
                log.info("bench %s", rows[-1])
    finally:
        torch.set_num_threads(before)
    return rows


def _network(name: str) -> torch.nn.Module:
    """A variant with random weights (speed does not depend on them), a registered model's
    own network (its channels and refiner, from its weights file), or a registered
    ensemble's ``LogitMean`` of its members' variants (random weights)."""
    from qcnode.model.infer import load_entry
    from qcnode.model.network import LogitMean, build, parse_variant
    from qcnode.model.registry import load_registry

    try:
        parse_variant(name)
    except ValueError:
        registry = load_registry()
        if not registry.is_ensemble(name):
            return load_entry(registry, registry.get(name))[0]
        members = registry.members(registry.ensemble(name))
        return LogitMean(members=[build(m.variant, m.structures) for m in members])
    return build(name)


def _sample_radiograph() -> Path | None:
    """A real-size chest radiograph that ships with the dev dependencies (WG04 RG1)."""
    try:
        import data_store  # pydicom-data

        path = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
        return path if path.is_file() else None
    except ImportError:
        return None


def bench_predict(settings: Settings, *, repeats: int, threads: int) -> dict[str, Any]:
    """The shipped default's whole ``predict`` on one real-size radiograph, with spacing."""
    import dataclasses

    import torch

    from qcnode.imaging import decode
    from qcnode.model import load_predictor

    path = _sample_radiograph()
    if path is None:
        return {"skipped": "pydicom-data (RG1_UNCR.dcm) is not installed"}
    image = decode(path)
    image = dataclasses.replace(image, spacing_mm=image.spacing_mm or (0.2, 0.2))
    predictor = load_predictor(settings.model or None, device=settings.device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ms = _timed(lambda: predictor.predict([image]), repeats, warmup=2)
    finally:
        torch.set_num_threads(before)
    return {
        "model": predictor.info.name,
        "image": f"{path.name} {image.pixels.shape[0]}x{image.pixels.shape[1]}",
        "threads": threads,
        **_stats(ms),
    }


def bench_qc(settings: Settings, *, repeats: int, files: Sequence[Path] = ()) -> dict[str, Any]:
    """Decode-to-verdict per image through the ``qcnode check`` engine (one image a call)."""
    from qcnode.engine import load_engine
    from qcnode.imaging import decode

    paths = list(files) or [p for p in [_sample_radiograph()] if p is not None]
    synth = Path("data/synth/eval-v1")
    if not files and synth.is_dir():
        paths += sorted(synth.glob("*.dcm"))[:8]
    if not paths:
        return {"skipped": "no sample radiographs"}
    engine = load_engine(settings)
    totals: list[float] = []
    parts: dict[str, list[float]] = {"decode": [], "model": [], "rules": []}
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            image = decode(p)
            decode_ms = (time.perf_counter() - t0) * 1000.0
            result = engine.run([image], decode_ms=[decode_ms])[0]
            totals.append((time.perf_counter() - t0) * 1000.0)
            for k in parts:
                parts[k].append(float(result.timings_ms.get(k, 0.0)))
    return {
        "model": engine.model_info.name,
        "images": len(paths),
        "runs": len(totals),
        **_stats(totals),
        **{f"{k}_median_ms": round(statistics.median(v), 2) for k, v in parts.items()},
    }


ReportInput = tuple[str, "Dataset", "DecodedImage", "Prediction", "QCResult"]


def _report_inputs(settings: Settings, files: Sequence[Path]) -> tuple[str, list[ReportInput]]:
    """(mask source, [(name, header, image, prediction, result)]) for the report bench.

    The shipped model and the rule engine give the masks and findings, as in the node;
    without a loadable model the hand-made example masks and findings stand in (the
    report names which)."""
    from qcnode.engine import QCEngine
    from qcnode.imaging import decode_dataset, read_dataset
    from qcnode.report.examples import example_prediction, example_result
    from qcnode.rules import load_config

    engine: QCEngine | None = None
    try:
        from qcnode.model import load_predictor

        predictor = load_predictor(settings.model or None, device=settings.device)
        engine = QCEngine(
            predictor=predictor, rules=load_config(settings.rules_file), language=settings.language
        )
    except (ImportError, ModelError) as exc:
        log.warning("report bench without a model (%s): example masks and findings", exc)
    out: list[ReportInput] = []
    for path in files:
        source = read_dataset(path)
        image = decode_dataset(source)
        found: Prediction | None = None
        if engine is not None:  # as the node: a film found turned gets the second look
            ((found, result),) = engine.analyze([image])
        if found is None:
            found, result = example_prediction(image), example_result(image)
        out.append((path.stem, source, image, found, result))
    return (f"model {engine.model_info.name}" if engine else "example masks"), out


def bench_report(settings: Settings, *, repeats: int, files: Sequence[Path] = ()) -> dict[str, Any]:
    """Median time to build the result objects of one image, per kind and for the node's
    default (SR + SC), on RG1 (real CR, 1955x1841) and a synthetic frontal."""
    from qcnode.report import ReportOptions

    paths = list(files) or [p for p in [_sample_radiograph()] if p is not None]
    if not files:
        for folder in (Path("data/synth/eval-v1"), Path("tests/data/synth")):
            frontal = next(iter(sorted(folder.glob("*-v00.dcm"))), None)
            if frontal is not None:
                paths.append(frontal)
                break
    if not paths:
        return {"skipped": "no sample radiographs"}
    masks, inputs = _report_inputs(settings, paths)
    options = ReportOptions.from_settings(settings, kos_when="always")
    quiet = logging.getLogger("highdicom")  # as the node runs it: its INFO lines cost time
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        rows = [_report_row(*item, options=options, repeats=repeats) for item in inputs]
    finally:
        quiet.setLevel(level)
    return {"masks": masks, "verdicts": [str(i[4].verdict) for i in inputs], "images": rows}


def _report_row(
    name: str,
    source: Dataset,
    image: DecodedImage,
    prediction: Prediction,
    result: QCResult,
    *,
    options: ReportOptions,
    repeats: int,
) -> dict[str, Any]:
    from qcnode.report import build_results

    row: dict[str, Any] = {"image": f"{name} {image.pixels.shape[0]}x{image.pixels.shape[1]}"}
    for kinds in (("sr",), ("sc",), ("gsps",), ("kos",), ("sr", "sc")):
        build = functools.partial(
            build_results, source, image, prediction, result, objects=kinds, options=options
        )
        ms = _timed(build, repeats, warmup=2)
        row["+".join(kinds) + "_median_ms"] = _stats(ms)["median_ms"]
    return row


def _print_model(rows: Sequence[dict[str, Any]]) -> None:
    w = max([15, *(len(str(r["variant"])) + 2 for r in rows)])  # registered names are longer
    print(
        f"{'variant':<{w}}{'device':<8}{'threads':>8}{'params':>10}{'median ms':>11}"
        f"{'p90 ms':>9}{'images/s (batch)':>18}"
    )
    for r in rows:
        ips = next(v for k, v in r.items() if k.endswith("_images_per_s"))
        print(
            f"{r['variant']:<{w}}{r['device']:<8}{r['threads']:>8}{r['parameters']:>10}"
            f"{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}{ips:>18.1f}"
        )


def _check_model_name(name: str) -> None:
    """UnknownModel for a configured model name the registry does not know (a typo, a bare
    architecture name): the benches below would report the configured model as skipped
    after minutes of timing. A weights path (the node accepts one) is left to them."""
    if not name or name.endswith((".pt", ".pth")) or "/" in name:
        return
    from qcnode.model.registry import load_registry

    load_registry().resolve(name)


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """``qcnode bench``'s flags (DESIGN §9), built once by qcnode.cli; the defaults are the
    parser's. Lists stay the text given, read by bench_command as before."""

    what: str  # model | qc | report | ingest | e2e | all
    variants: str | None  # comma-separated; None: every qcnet_d*_w* variant
    threads: str  # comma-separated CPU thread counts ("": 1,2)
    repeats: int  # timed runs per measurement (0: 30)
    json: bool  # one JSON object instead of the text report


def bench_command(settings: Settings, options: BenchOptions) -> int:
    from qcnode.model.network import variant_names

    _check_model_name(settings.model)
    what = options.what
    repeats = int(options.repeats or 30)
    threads = [int(t) for t in (options.threads or "1,2").split(",")]
    variants = options.variants
    names = variants.split(",") if variants else variant_names()
    report: dict[str, Any] = {"machine": machine()}
    if what in ("model", "all"):
        report["model"] = bench_variants(
            names, threads=threads, repeats=repeats, batch=8, device=settings.device
        )
        try:
            report["predict"] = bench_predict(settings, repeats=max(5, repeats // 3), threads=1)
        except ModelError as exc:
            report["predict"] = {"skipped": str(exc)}
    if what in ("qc", "all"):
        try:
            report["qc"] = bench_qc(settings, repeats=max(1, repeats // 10))
        except ModelError as exc:
            report["qc"] = {"skipped": str(exc)}
    if what in ("report", "all"):
        report["report"] = bench_report(settings, repeats=max(5, repeats // 3))
    if what in ("ingest", "e2e", "all"):
        try:
            from qcnode.node_bench import run as node_bench
        except ImportError as exc:
            report[what if what != "all" else "node"] = {
                "skipped": f"node benchmarks are not available ({exc})"
            }
        else:
            report.update(node_bench(settings, what=what))
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if options.json:
        print(json.dumps(report, indent=1))
        return 0
    m = report["machine"]
    print(
        f"machine: {m['cpu_count']} CPUs ({m['processor']}), GPU {m['gpu'] or 'none'}, "
        f"torch {m['torch']}, load {m['load_average']} -> {m['load_average_after']}"
    )
    if "model" in report:
        _print_model(report["model"])
        print(f"predict (default model, whole image): {json.dumps(report['predict'])}")
    for key in ("qc", "report", "ingest", "e2e", "node"):
        if key in report:
            print(f"{key}: {json.dumps(report[key])}")
    return 0
