"""The GPU recipe: several variants trained at once on one batch stream, from packed sets.

On a GPU host the batches (decode-free canvases, CPU augmentation in worker processes) are
the bottleneck, not the network: every extra variant fed the same batches costs only its own
GPU time, so the whole depth x width grid trains in the time of one. Batches are the same
pure function of (seed, step) as in ``train.train``, so a grid run is reproducible with the
step count it records (``--minutes`` turns a time budget into that count after a short
calibration, before the warm-up ends, so the schedule never changes mid-run).

The host needs no DICOM set and no pydicom: ``pack`` writes the training, validation and
negative sets as three compact files (see ``data.save_pack_file``) that travel with the repo.

    python -m qcnode.model.grid pack --data data/synth/train-v1 --out .gpu/packs
    python -m qcnode.model.grid train --packs .gpu/packs --out runs/grid --minutes 6 \\
        --variant qcnet_d15_w3 --variant qcnet_d10_w1 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from qcnode.errors import QcnodeError
from qcnode.model import data as datamod
from qcnode.model import metrics, preprocess
from qcnode.model.infer import WeightsMeta, read_weights, resolve_device, save_weights
from qcnode.model.network import QCNet, build
from qcnode.model.recipes import RECIPES, Recipe
from qcnode.model.registry import WEIGHTS_DIR, ModelEntry, load_registry, sha256_file
from qcnode.model.train import (
    _lr,
    augment_batch,
    gather_batch,
    loss_fn,
    make_batch,
    structure_factors,
)

log = logging.getLogger(__name__)

PACK_FILES = ("train.npz", "val.npz", "neg.npz")
CALIBRATION_STEPS = 30  # timed to turn --minutes into a step count (inside the warm-up)
# Share of the workers' ideal batch rate (workers / one batch's time in the main process)
# assumed sustainable: an assumption, not a measurement (the H100 run of session 3 sustained
# 4.3 steps/s where its GPU-bound calibration said 7.0; its batch time was not recorded).
DATA_EFFICIENCY = 0.6
# A run past its budget by this factor stops at the next step, as an interruption would
# (the weights are saved; the record says how many steps ran).
OVERRUN = 1.08


def export_packs(
    data_dirs: Sequence[Path],
    out: Path,
    *,
    recipe: Recipe,
    include_negatives: bool = True,
    cache_base: Path | None = None,
    levels: int = datamod.PACK_LEVELS,
    codec: str = "lzma",
    workers: int = 1,
) -> dict[str, int]:
    """Write train/val/negative packs with the split ``train.train`` uses.

    ``workers`` > 1 decodes in that many processes; ``codec`` "none" for a pack that never
    travels (made on the GPU host from data synthesised there)."""
    samples = [s for d in data_dirs for s in datamod.read_synthetic(d)]
    if not samples:
        raise QcnodeError(f"no samples under {', '.join(map(str, data_dirs))}")
    cache = datamod.cache_dir(cache_base)
    val = [s for s in samples if datamod.held_out_pose(s.id)][: recipe.val_count]
    held = {s.id for s in val}
    train = [s for s in samples if s.id not in held and not datamod.held_out_pose(s.id)]
    names = datamod.channels(recipe.lungs)
    sizes = {}
    sets = [("train.npz", train), ("val.npz", val)]
    if include_negatives:
        sets.append(("neg.npz", datamod.read_negatives(held_out=False)))
    for fname, items in sets:
        if not items:
            continue
        pack = datamod.load_pack(
            items, cache=cache, desc=fname, lungs=recipe.lungs, progress=False, workers=workers
        )
        if fname == "neg.npz":
            pack = datamod.dedupe(pack)
        datamod.save_pack_file(pack, out / fname, structures=names, levels=levels, codec=codec)
        sizes[fname] = len(pack)
    (out / "packs.json").write_text(
        json.dumps(
            {
                "data": [str(d) for d in data_dirs],
                "lungs": recipe.lungs,
                "sizes": sizes,
                "lung_width_mm": datamod.lung_widths_mm(
                    datamod.load_pack_file(out / "train.npz")[0]
                ),
            },
            indent=1,
        )
    )
    return sizes


class _Batches(Dataset[dict[str, torch.Tensor]]):
    """Step -> its batch (augmented unless ``augmented`` is False: then the training device
    augments it); workers compute them in parallel, order kept."""

    def __init__(
        self,
        train: datamod.Pack,
        negatives: datamod.Pack | None,
        *,
        seed: int,
        recipe: Recipe,
        start: int,
        end: int,
        augmented: bool = True,
    ) -> None:
        self.train, self.negatives, self.seed, self.recipe = train, negatives, seed, recipe
        self.start, self.end, self.augmented = start, end, augmented

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        make = make_batch if self.augmented else gather_batch
        return make(
            self.train, self.negatives, seed=self.seed, step=self.start + i, recipe=self.recipe
        )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _batches(ds: _Batches, workers: int, pin: bool) -> Iterator[dict[str, torch.Tensor]]:
    if workers <= 0:
        yield from (ds[i] for i in range(len(ds)))
        return
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        worker_init_fn=_worker_init,
        persistent_workers=False,
    )
    yield from loader


def widen(model: QCNet, state: dict[str, torch.Tensor], source: Sequence[str]) -> None:
    """Load 16-channel weights into a model with more channels: the new visible-lung
    channels start as copies of the projected lungs."""
    head_w, head_b = state["masks.weight"], state["masks.bias"]
    new_w = model.masks.weight.detach().clone()
    assert model.masks.bias is not None
    new_b = model.masks.bias.detach().clone()
    for c, name in enumerate(model.structures):
        base = name.removesuffix("_visible")
        if base in source:
            new_w[c] = head_w[list(source).index(base)]
            new_b[c] = head_b[list(source).index(base)]
    state = dict(state) | {"masks.weight": new_w, "masks.bias": new_b}
    model.load_state_dict(state)


def _variant(label: str) -> str:
    """``qcnet_d15_w3:ft`` -> ``qcnet_d15_w3``: a tag tells apart two runs of one variant."""
    return label.partition(":")[0]


@dataclass
class GridResult:
    label: str
    variant: str
    weights: Path
    steps: int
    seconds: float
    final_loss: float
    val: dict[str, Any]
    init: str


def train_grid(
    *,
    variants: Sequence[str],
    packs: Path,
    out: Path,
    recipe: Recipe,
    seed: int = 0,
    device: str = "auto",
    minutes: float | None = None,
    init: dict[str, Path] | None = None,
    progress: bool = True,
    snapshot_every_s: float = 60.0,
    augment_on: str = "workers",
) -> list[GridResult]:
    """Train ``variants`` (labels: a variant name, optionally ``:tag``) on the same batches;
    weights (``<variant>[-tag].pt``), history and validation go under ``out``.

    ``augment_on`` "device": workers only gather samples and the training device augments
    them (the same draws; for a host whose CPUs cannot keep up with its GPU)."""
    if augment_on not in ("workers", "device"):
        raise QcnodeError(f"augment_on must be workers or device, not {augment_on!r}")
    on_device = augment_on == "device"
    torch.manual_seed(seed)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train_pack, names = datamod.load_pack_file(packs / "train.npz")
    if names != datamod.channels(recipe.lungs):
        raise QcnodeError(f"{packs} holds channels for other lungs than recipe {recipe.name}")
    val_pack, negatives = None, None
    if recipe.val_count and (packs / "val.npz").is_file():
        val_pack = datamod.load_pack_file(packs / "val.npz")[0]
    if recipe.p_negative > 0:
        negatives = datamod.load_pack_file(packs / "neg.npz")[0]
    described = packs / "packs.json"
    info = json.loads(described.read_text()) if described.is_file() else {}
    widths = info.get("lung_width_mm") or datamod.lung_widths_mm(train_pack)
    log.info("grid %s on %d samples (%s)", ",".join(variants), len(train_pack), info.get("data"))

    models: dict[str, QCNet] = {}
    inits: dict[str, str] = {}
    for v in variants:
        m = build(_variant(v), names)
        if init and v in init:
            meta, state = read_weights(init[v])
            if meta.structures == names:
                m.load_state_dict(state)
            else:
                widen(m, state, meta.structures)
            inits[v] = str(init[v].name)
        m.to(dev)
        m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stub lacks it
        models[v] = m
    opts = {
        v: torch.optim.AdamW(m.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        for v, m in models.items()
    }
    factors = structure_factors(recipe, names).to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    out.mkdir(parents=True, exist_ok=True)

    def step_all(step: int, batch: dict[str, torch.Tensor], rec: Recipe) -> dict[str, float]:
        if on_device:
            moved = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            batch = augment_batch(moved, seed=seed, step=step, recipe=rec)
        x = batch["x"].to(dev, non_blocking=True).to(memory_format=torch.channels_last)
        target = F.avg_pool2d(batch["masks"].to(dev, non_blocking=True), 2)
        weight = batch["weight"].to(dev, non_blocking=True)
        views = batch["views"].to(dev, non_blocking=True)
        losses = {}
        for v, m in models.items():
            m.train()
            for group in opts[v].param_groups:
                group["lr"] = _lr(rec, step)
            with autocast:
                logits, view_logits = m(x, upsample=False)
            loss, _ = loss_fn(
                logits.float(), view_logits.float(), target, weight, views, rec.view_weight, factors
            )
            opts[v].zero_grad(set_to_none=True)
            loss.backward()
            opts[v].step()
            losses[v] = loss.detach()
        return {v: float(t) for v, t in losses.items()}

    def snapshot(tag: str) -> dict[str, Path]:
        paths = {}
        for v, m in models.items():
            meta = WeightsMeta(
                variant=_variant(v),
                input_size=preprocess.INPUT_SIZE,
                spacing_mm=preprocess.SPACING_MM,
                reference_lung_width_mm=widths,
                structures=names,
            )
            paths[v] = out / f"{v.replace(':', '-')}{tag}.pt"
            tmp = paths[v].with_suffix(".tmp")  # a copier never sees half a file
            save_weights(tmp, m, meta)
            tmp.replace(paths[v])
            m.to(dev)
        return paths

    t0 = time.monotonic()
    history: list[dict[str, Any]] = []
    steps = recipe.steps
    start = 0
    if minutes is not None:
        calib = min(CALIBRATION_STEPS, recipe.warmup)
        if calib < 10:
            raise QcnodeError("--minutes needs a recipe with a warm-up of >= 10 steps")
        ds = _Batches(
            train_pack,
            negatives,
            seed=seed,
            recipe=recipe,
            start=0,
            end=calib,
            augmented=not on_device,
        )
        t_calib = time.monotonic()
        for step, batch in enumerate(_batches(ds, recipe.workers, cuda)):
            if step == 5:
                if cuda:
                    torch.cuda.synchronize()
                t_calib = time.monotonic()
            history.append({"step": step, **step_all(step, batch, recipe)})
        if cuda:
            torch.cuda.synchronize()
        gpu_rate = (calib - 5) / (time.monotonic() - t_calib)
        # The workers' prefetched batches flatter the calibration window (seen on an H100:
        # 7.0 steps/s calibrated, 4.3 sustained), so the batch supply is timed on its own.
        t_batch = time.monotonic()
        (gather_batch if on_device else make_batch)(
            train_pack, negatives, seed=seed, step=0, recipe=recipe
        )
        data_rate = max(1, recipe.workers) / (time.monotonic() - t_batch) * DATA_EFFICIENCY
        rate = min(gpu_rate, data_rate)
        left = minutes * 60 - (time.monotonic() - t0)
        steps = max(calib + 1, int(calib + rate * left * 0.95))
        log.info(
            "calibration: GPU %.2f, batches %.2f steps/s -> %d steps", gpu_rate, data_rate, steps
        )
        start = calib
    rec = replace(recipe, steps=steps)
    ds = _Batches(
        train_pack,
        negatives,
        seed=seed,
        recipe=rec,
        start=start,
        end=steps,
        augmented=not on_device,
    )
    last_snap = time.monotonic()
    loss_now: dict[str, float] = {}
    ran = start
    for i, batch in enumerate(_batches(ds, rec.workers, cuda)):
        step = start + i
        if minutes is not None and time.monotonic() - t0 > minutes * 60 * OVERRUN:
            log.warning("time budget spent: stopping at step %d of %d", step, steps)
            break
        loss_now = step_all(step, batch, rec)
        history.append({"step": step, **loss_now})
        ran = step + 1
        if progress and (step % 100 == 0 or step == steps - 1):
            elapsed = time.monotonic() - t0
            print(
                f"step {step + 1}/{steps} {elapsed:.0f}s "
                + " ".join(f"{v.removeprefix('qcnet_')}={x:.3f}" for v, x in loss_now.items()),
                flush=True,
            )
        if time.monotonic() - last_snap > snapshot_every_s:
            snapshot("")
            last_snap = time.monotonic()
    seconds = time.monotonic() - t0
    final = snapshot("")
    with (out / "history.jsonl").open("w", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    results = []
    for v, m in models.items():
        val = metrics.summary(metrics.evaluate_pack(m, val_pack, device=dev)) if val_pack else {}
        results.append(
            GridResult(
                label=v,
                variant=_variant(v),
                weights=final[v],
                steps=ran,
                seconds=seconds,
                final_loss=loss_now.get(v, float("nan")),
                val=val,
                init=inits.get(v, ""),
            )
        )
    doc = {
        "recipe": {k: v for k, v in asdict(rec).items() if k != "augment"},
        "steps_planned": steps,
        "steps_run": ran,
        "seed": seed,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "packs": info,
        "results": [asdict(r) | {"weights": r.weights.name} for r in results],
    }
    (out / "grid.json").write_text(json.dumps(doc, indent=1))
    return results


def ship_weights(
    weights: Path,
    *,
    name: str,
    file: str,
    recipe_doc: dict[str, Any],
    data_version: str,
    code_version: str,
    metrics_doc: dict[str, Any],
    make_default: bool,
    weights_dir: Path | None = None,
) -> ModelEntry:
    """Copy a grid run's weights next to the registry under ``file`` and record them."""
    target_dir = weights_dir or WEIGHTS_DIR
    target = target_dir / file
    shutil.copyfile(weights, target)
    meta, _ = read_weights(target)
    sha = sha256_file(target)
    entry = ModelEntry(
        name=name,
        file=file,
        sha256=sha,
        variant=meta.variant,
        version=f"1.2.0+{sha[:8]}",
        input_size=meta.input_size,
        spacing_mm=meta.spacing_mm,
        structures=meta.structures,
        views=("frontal", "lateral", "other"),
        reference_lung_width_mm=meta.reference_lung_width_mm,
        recipe=recipe_doc,
        data_version=data_version,
        code_version=code_version,
        metrics={k: v for k, v in metrics_doc.items() if v is not None},
    )
    registry_file = target_dir / "registry.toml"
    load_registry(registry_file).with_entry(entry, make_default=make_default).save(registry_file)
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qcnode.model.grid")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write train/val/negative packs from synthetic sets")
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipe", default="gpu")
    p.add_argument(
        "--levels", type=int, default=datamod.PACK_LEVELS, help="canvas grey levels (255: 8 bit)"
    )
    p.add_argument("--codec", choices=datamod.PACK_CODECS, default="lzma")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument("--no-negatives", action="store_true", help="train and val packs only")
    t = sub.add_parser("train", help="train several variants on one batch stream")
    t.add_argument("--packs", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--variant", action="append", required=True)
    t.add_argument("--recipe", default="gpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--minutes", type=float, help="time budget; sets the step count")
    t.add_argument("--steps", type=int, help="override the recipe's step count")
    t.add_argument("--workers", type=int, help="override the recipe's batch workers")
    t.add_argument("--init", action="append", default=[], help="VARIANT=weights.pt")
    t.add_argument(
        "--augment-on",
        choices=["workers", "device"],
        default="workers",
        help="where batches are augmented (device: the GPU, for hosts short of CPUs)",
    )
    h = sub.add_parser("ship", help="register a grid run's weights file (copied to the repo)")
    h.add_argument("--weights", type=Path, required=True)
    h.add_argument("--name", required=True, help="registry name")
    h.add_argument("--file", required=True, help="file name next to the registry")
    h.add_argument("--recipe", default="gpu")
    h.add_argument("--run", type=Path, required=True, help="JSON: how the run went (steps...)")
    h.add_argument("--eval-json", type=Path, help="python -m qcnode.model.report --json-out")
    h.add_argument("--default", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    recipe = RECIPES.get(args.recipe)
    if recipe is None:
        raise SystemExit(f"unknown recipe {args.recipe!r}; known: {', '.join(RECIPES)}")
    if args.cmd == "ship":
        from qcnode.model.report import headline

        run = json.loads(args.run.read_text())
        doc = {k: v for k, v in asdict(recipe).items() if k != "augment"}
        doc |= {"augment": "LONG_AUGMENT"} | run.get("recipe", {})
        metrics_doc = headline(json.loads(args.eval_json.read_text())) if args.eval_json else {}
        entry = ship_weights(
            args.weights,
            name=args.name,
            file=args.file,
            recipe_doc=doc,
            data_version=str(run["data_version"]),
            code_version=str(run["code_version"]),
            metrics_doc=metrics_doc,
            make_default=args.default,
        )
        print(f"registered {entry.name}: {entry.file} sha256 {entry.sha256}")
        return 0
    if args.cmd == "pack":
        sizes = export_packs(
            args.data,
            args.out,
            recipe=recipe,
            levels=args.levels,
            codec=args.codec,
            workers=args.workers,
            include_negatives=not args.no_negatives,
        )
        print(json.dumps(sizes))
        return 0
    if args.steps:
        recipe = replace(recipe, steps=args.steps)
    if args.workers is not None:
        recipe = replace(recipe, workers=args.workers)
    init = {}
    for item in args.init:
        name, _, path = item.partition("=")
        init[name] = Path(path)
    results = train_grid(
        variants=args.variant,
        packs=args.packs,
        out=args.out,
        recipe=recipe,
        seed=args.seed,
        device=args.device,
        minutes=args.minutes,
        init=init,
        augment_on=args.augment_on,
    )
    for r in results:
        print(json.dumps(asdict(r) | {"weights": str(r.weights)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
