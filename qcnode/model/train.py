"""``qcnode train``: seeded, reproducible, resumable training of a QCNet variant.

A step's batch (which samples, which augmentation) is a pure function of (seed, step), so a
run resumed from a checkpoint continues exactly as if it had not stopped. Checkpoints go to
``--out`` (default runs/<variant>-<recipe>/) every ``checkpoint_every`` steps; the final
weights are written there too and, with ``--ship``, copied next to the registry with an entry
carrying checksum, recipe, data and code version and the evaluation metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from qcnode.errors import QcnodeError
from qcnode.model import data as datamod
from qcnode.model import metrics, preprocess
from qcnode.model.augment import augment, augment_pair
from qcnode.model.infer import WeightsMeta, resolve_device, save_weights
from qcnode.model.network import QCNet, build, parse_variant
from qcnode.model.recipes import RECIPES, Recipe
from qcnode.model.registry import WEIGHTS_DIR, ModelEntry, load_registry
from qcnode.records import STRUCTURES

log = logging.getLogger(__name__)


def git_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def loss_fn(
    logits: torch.Tensor,
    view_logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    views: torch.Tensor,
    view_weight: float,
    factors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice per (sample, structure), masked by channel weight; CE for the view.

    ``factors`` (C,) scale structures up without scaling the others down: the normaliser is
    the unfactored weight sum."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum(dim=(2, 3))
    denom = probs.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (denom + 1)
    scaled = weight if factors is None else weight * factors
    mask_loss = ((bce + dice) * scaled).sum() / weight.sum().clamp(min=1.0)
    view_loss = F.cross_entropy(view_logits, views, label_smoothing=0.05)
    total = mask_loss + view_weight * view_loss
    return total, {"mask": float(mask_loss.detach()), "view": float(view_loss.detach())}


def distill_loss(
    logits: torch.Tensor,
    view_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_view: torch.Tensor,
    weight: torch.Tensor,
    factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE against the teacher's mask probabilities per (sample, channel), weighted as
    ``loss_fn`` weights the truth, plus the KL divergence from its view probabilities."""
    soft = torch.sigmoid(teacher_logits)
    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(dim=(2, 3))
    # minus the teacher's own entropy: 0 when the student agrees, whatever the teacher's doubt
    floor = F.binary_cross_entropy_with_logits(teacher_logits, soft, reduction="none").mean(
        dim=(2, 3)
    )
    scaled = weight if factors is None else weight * factors
    mask_term = ((bce - floor) * scaled).sum() / weight.sum().clamp(min=1.0)
    view_term = F.kl_div(
        F.log_softmax(view_logits, dim=1),
        F.log_softmax(teacher_view, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return mask_term + view_term


def _batch_index(
    seed: int, step: int, n_train: int, n_neg: int, batch: int, p_negative: float
) -> list[tuple[bool, int]]:
    rng = np.random.default_rng([seed, step])
    out = []
    for _ in range(batch):
        neg = n_neg > 0 and rng.random() < p_negative
        out.append((neg, int(rng.integers(n_neg if neg else n_train))))
    return out


def _gather(pack: datamod.Pack, index: Sequence[int]) -> dict[str, torch.Tensor]:
    return {
        "canvas": pack.canvas[list(index)].float(),
        "valid": pack.valid(index),
        "masks": pack.masks(index),
        "views": pack.views[list(index)],
        "weight": pack.channel_weight[list(index)],
    }


def gather_batch(
    train: datamod.Pack,
    negatives: datamod.Pack | None,
    *,
    seed: int,
    step: int,
    recipe: Recipe,
) -> dict[str, torch.Tensor]:
    """The samples of ``step``, not yet augmented: canvas, valid, masks, views, weight."""
    picks = _batch_index(
        seed, step, len(train), len(negatives) if negatives else 0, recipe.batch, recipe.p_negative
    )
    parts = []
    for neg, i in picks:
        src = negatives if neg and negatives is not None else train
        parts.append(_gather(src, [i]))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def augment_batch(
    batch: dict[str, torch.Tensor], *, seed: int, step: int, recipe: Recipe
) -> dict[str, torch.Tensor]:
    """``gather_batch``'s output augmented on whatever device it lives on (draws from a CPU
    generator seeded by (seed, step), so the same on every device up to float rounding)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if recipe.distill > 0 and recipe.augment.p_opacity > 0:
        # the teacher's view of the same films, the 2D opacities left out
        x, plain, masks = augment_pair(
            batch["canvas"], batch["valid"], batch["masks"], cfg=recipe.augment, generator=g
        )
        extra = {"x_plain": plain}
    else:
        x, masks = augment(
            batch["canvas"], batch["valid"], batch["masks"], cfg=recipe.augment, generator=g
        )
        extra = {"x_plain": x} if recipe.distill > 0 else {}
    return {"x": x, "masks": masks, "views": batch["views"], "weight": batch["weight"], **extra}


def make_batch(
    train: datamod.Pack,
    negatives: datamod.Pack | None,
    *,
    seed: int,
    step: int,
    recipe: Recipe,
) -> dict[str, torch.Tensor]:
    """The augmented batch of ``step``: a pure function of (seed, step)."""
    batch = gather_batch(train, negatives, seed=seed, step=step, recipe=recipe)
    return augment_batch(batch, seed=seed, step=step, recipe=recipe)


def _lr(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = min((step - recipe.warmup) / max(1, recipe.steps - recipe.warmup), 1.0)
    cycle = min(int(progress * recipe.cycles), recipe.cycles - 1)
    local = progress * recipe.cycles - cycle
    peak = recipe.lr * recipe.cycle_decay**cycle
    return float(peak * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * local))))


def cycle_ends(recipe: Recipe) -> list[int]:
    """Steps (counted from 1) after which each cosine cycle ends: the next step restarts."""
    span = recipe.steps - recipe.warmup
    return [recipe.warmup - (-span * (k + 1) // recipe.cycles) for k in range(recipe.cycles)]


def structure_factors(recipe: Recipe, names: Sequence[str] = STRUCTURES) -> torch.Tensor:
    """(C,) loss factor per mask channel from ``recipe.structure_weight``."""
    factors = torch.ones(len(names))
    for name, w in recipe.structure_weight:
        factors[list(names).index(name)] = w
    return factors


def distill_channels(recipe: Recipe, names: Sequence[str]) -> torch.Tensor:
    """(C,) 1 for each channel the distillation term covers, 0 for ``recipe.distill_skip``."""
    if unknown := sorted(set(recipe.distill_skip) - set(names)):
        raise QcnodeError(f"recipe {recipe.name}: distill_skip names no channel: {unknown}")
    return torch.tensor([0.0 if n in recipe.distill_skip else 1.0 for n in names])


def _data_version(root: Path, ids: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:12]
    ready = " (READY)" if (root / "READY").exists() else " (incomplete)"
    return f"{root.name}: {len(ids)} samples, ids sha256 {digest}{ready}"


@dataclass
class TrainResult:
    weights: Path
    meta: WeightsMeta
    data_version: str
    seconds: float
    final_loss: float
    val: dict[str, Any]
    code_version: str = "unknown"
    init_sha256: str = ""


def train(
    *,
    variant: str,
    data_dirs: Sequence[Path],
    out: Path,
    recipe: Recipe,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    cache_base: Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    stop_after: int | None = None,
    init: Path | None = None,
) -> TrainResult:
    """Train (or resume) ``variant``; ``stop_after`` ends this run early at that step, as an
    interruption would (the schedule is still the recipe's)."""
    code_version = git_version()  # at the start: the code that trains, not what ships later
    torch.manual_seed(seed)
    torch.set_num_threads(recipe.threads)
    dev = resolve_device(device)
    per_dir = [(d, datamod.read_synthetic(d, limit=limit)) for d in data_dirs]
    samples = [s for _, found in per_dir for s in found]
    if not samples:
        raise QcnodeError(f"no samples under {', '.join(map(str, data_dirs))}")
    cache = datamod.cache_dir(cache_base)

    def held(s: datamod.Sample) -> bool:
        return datamod.held_out_pose(s.id)

    holdout = recipe.val_count > 0
    val_samples = [s for s in samples if holdout and held(s)][: recipe.val_count]
    train_samples = [s for s in samples if not (holdout and held(s))]
    train_pack = datamod.load_pack(
        train_samples, cache=cache, progress=progress, desc="train", lungs=recipe.lungs
    )
    negatives = None
    if recipe.p_negative > 0:
        negatives = datamod.dedupe(
            datamod.load_pack(
                datamod.read_negatives(held_out=False),
                cache=cache,
                progress=progress,
                desc="neg",
                lungs=recipe.lungs,  # the same channels as the chest samples (all empty)
            )
        )
    val_pack = (
        datamod.load_pack(
            val_samples, cache=cache, progress=progress, desc="val", lungs=recipe.lungs
        )
        if val_samples
        else None
    )
    data_version = " + ".join(_data_version(d, [s.id for s in found]) for d, found in per_dir)
    log.info("training %s on %d samples (%s)", variant, len(train_pack), data_version)

    names = datamod.channels(recipe.lungs)
    if recipe.train_only not in ("", "view", "refine", "decoder"):
        raise QcnodeError(f"recipe {recipe.name}: unknown train_only {recipe.train_only!r}")
    if recipe.train_only and init is None:
        raise QcnodeError(f"recipe {recipe.name} trains a head alone: it needs --init")
    refine_only = recipe.train_only == "refine"
    decoder_only = recipe.train_only == "decoder"
    model: QCNet = build(variant, names, recipe.refine)
    init_sha = ""
    if init is not None:  # a second stage: start from trained weights (recorded)
        from qcnode.model.infer import read_weights
        from qcnode.model.registry import sha256_file

        init_meta, state = read_weights(init)
        if init_meta.variant != variant:
            raise QcnodeError(f"--init {init} holds {init_meta.variant}, not {variant}")
        if init_meta.refine and init_meta.refine != recipe.refine:
            raise QcnodeError(f"--init {init} refines {init_meta.refine}, not {recipe.refine}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("refiner.") for k in missing):
            raise QcnodeError(f"--init {init} does not fit {variant}: {missing + unexpected}")
        init_sha = sha256_file(init)
    model = model.to(dev)
    # The anatomy-based scale's reference (lung width at the input spacing): a student of a
    # teacher keeps the teacher's, so films without a header spacing are scaled as before.
    reference = datamod.lung_widths_mm(train_pack)
    teacher: QCNet | None = None
    if recipe.distill > 0:
        if init is None or recipe.train_only:
            raise QcnodeError(
                f"recipe {recipe.name} distils the --init network into all of itself: it "
                "needs --init and trains everything"
            )
        reference = dict(init_meta.reference_lung_width_mm)
        teacher = build(variant, names, recipe.refine)
        teacher.load_state_dict(model.state_dict())
        teacher = teacher.to(dev).eval().requires_grad_(False)
    head_only = recipe.train_only == "view"
    if refine_only:
        assert model.refiner is not None  # recipe.refine is checked by build()
        trained = list(model.refiner.parameters())
    elif decoder_only:  # the encoder and so the view head stay bit-identical
        trained = [*model.up.parameters(), *model.masks.parameters()]
        if model.refiner is not None:
            trained += list(model.refiner.parameters())
    else:
        trained = list(model.view.parameters() if head_only else model.parameters())
    for p in model.parameters():
        p.requires_grad_(not (head_only or refine_only or decoder_only))
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=recipe.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "last.pt"
    start = 0
    identity = {"variant": variant, "recipe": recipe.name, "seed": seed, "data": data_version}
    if init_sha:
        identity["init"] = init_sha
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["identity"] != identity:
            raise QcnodeError(f"cannot resume {ckpt}: it was {state['identity']}, now {identity}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        log.info("resumed from step %d", start)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", ckpt)

    factors = structure_factors(recipe, names).to(dev)
    kd_keep = distill_channels(recipe, names).to(dev)
    t0 = time.monotonic()
    loss_value = float("nan")
    history: list[dict[str, Any]] = []
    end = recipe.steps if stop_after is None else min(recipe.steps, stop_after)
    bar = tqdm(range(start, end), initial=start, total=recipe.steps, disable=not progress)
    for step in bar:
        model.train()
        if head_only or refine_only:  # frozen batch-norm statistics too
            model.eval()
            (model.view if head_only else model.refiner).train()  # type: ignore[union-attr]
        elif decoder_only:
            model.eval()
            for part in (model.up, model.masks, model.refiner):
                if part is not None:
                    part.train()
        torch.manual_seed(seed * 1_000_003 + step)  # dropout: same draws after a resume
        batch = make_batch(train_pack, negatives, seed=seed, step=step, recipe=recipe)
        for group in opt.param_groups:
            group["lr"] = _lr(recipe, step)
        if head_only:
            view_loss = F.cross_entropy(
                model.view_logits(batch["x"].to(dev)),
                batch["views"].to(dev),
                label_smoothing=0.05,
            )
            loss, parts = view_loss, {"mask": 0.0, "view": float(view_loss.detach())}
        else:
            logits, view_logits = model(batch["x"].to(dev), upsample=False)
            target = F.avg_pool2d(batch["masks"], 2).to(dev)  # area fractions at the logits' grid
            weight = batch["weight"].to(dev)
            if refine_only:  # only the refined channels depend on what trains
                assert model.refiner is not None
                idx = model.refiner.channels
                logits, target, weight = logits[:, idx], target[:, idx], weight[:, idx]
            loss, parts = loss_fn(
                logits,
                view_logits,
                target,
                weight,
                batch["views"].to(dev),
                0.0 if refine_only or decoder_only else recipe.view_weight,
                None if refine_only else factors,
            )
            if teacher is not None:
                with torch.no_grad():
                    t_logits, t_view = teacher(batch["x_plain"].to(dev), upsample=False)
                kd = distill_loss(logits, view_logits, t_logits, t_view, kd_keep * weight, factors)
                loss = recipe.truth_weight * loss + recipe.distill * kd
                parts["distill"] = float(kd.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        history.append({"step": step, "loss": loss_value, **parts})
        bar.set_postfix(
            loss=f"{loss_value:.3f}", mask=f"{parts['mask']:.3f}", view=f"{parts['view']:.3f}"
        )
        done = step + 1
        if done % recipe.checkpoint_every == 0 or done in (recipe.steps, end):
            _save_checkpoint(ckpt, model, opt, done, identity)
        if recipe.cycles > 1 and done in cycle_ends(recipe)[:-1]:  # a restart: keep a snapshot
            snap_meta = WeightsMeta(
                variant=variant,
                input_size=preprocess.INPUT_SIZE,
                spacing_mm=preprocess.SPACING_MM,
                reference_lung_width_mm=reference,
                structures=names,
                refine=recipe.refine,
            )
            save_weights(out / f"{variant}-step{done}.pt", model, snap_meta)
            model.to(dev)
        if val_pack is not None and (done % recipe.eval_every == 0 or done == recipe.steps):
            val = metrics.evaluate_pack(model, val_pack, device=dev)
            log.info("step %d val %s", done, json.dumps(metrics.summary(val)))
    with (out / "history.jsonl").open("a", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")

    meta = WeightsMeta(
        variant=variant,
        input_size=preprocess.INPUT_SIZE,
        spacing_mm=preprocess.SPACING_MM,
        reference_lung_width_mm=reference,
        structures=names,
        refine=recipe.refine,
    )
    weights = out / f"{variant}.pt"
    save_weights(weights, model.cpu(), meta)
    val_result = metrics.summary(metrics.evaluate_pack(model, val_pack)) if val_pack else {}
    return TrainResult(
        weights=weights,
        meta=meta,
        data_version=data_version,
        seconds=time.monotonic() - t0,
        final_loss=loss_value,
        val=val_result,
        code_version=code_version,
        init_sha256=init_sha,
    )


def _save_checkpoint(
    path: Path, model: QCNet, opt: torch.optim.Optimizer, step: int, identity: dict[str, Any]
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "identity": identity},
        tmp,
    )
    tmp.replace(path)


def ship(
    result: TrainResult,
    *,
    name: str,
    recipe: Recipe,
    seed: int,
    metrics_doc: dict[str, Any],
    make_default: bool,
    weights_dir: Path = WEIGHTS_DIR,
    previous: dict[str, Any] | None = None,
) -> ModelEntry:
    """Copy trained weights next to the registry and record them (checksum, provenance)."""
    try:
        parse_variant(name)
    except ValueError:
        pass
    else:  # `--model qcnet_d10_w3` must never silently mean one particular training run
        raise QcnodeError(f"{name} is an architecture name: ship weights under another name")
    target = weights_dir / f"{name}.pt"
    shutil.copyfile(result.weights, target)
    from qcnode.model.registry import sha256_file

    recipe_doc = {k: v for k, v in asdict(recipe).items() if k != "augment"} | {
        "seed": seed,
        "train_seconds": round(result.seconds),
        "final_loss": result.final_loss,
    }
    if result.init_sha256:
        recipe_doc["init_sha256"] = result.init_sha256
    if previous:
        recipe_doc["previous_stage"] = previous
    entry = ModelEntry(
        name=name,
        file=target.name,
        sha256=sha256_file(target),
        variant=result.meta.variant,
        version=f"1.0.0+{sha256_file(target)[:8]}",
        input_size=result.meta.input_size,
        spacing_mm=result.meta.spacing_mm,
        structures=result.meta.structures,
        views=("frontal", "lateral", "other"),
        reference_lung_width_mm=result.meta.reference_lung_width_mm,
        recipe=recipe_doc,
        data_version=result.data_version,
        code_version=result.code_version,
        metrics=metrics_doc,
    )
    load_registry(weights_dir / "registry.toml").with_entry(entry, make_default=make_default).save(
        weights_dir / "registry.toml"
    )
    return entry


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """``qcnode train``'s flags (DESIGN §9), built once by qcnode.cli; the defaults are the
    parser's."""

    variant: str
    data: tuple[Path, ...]  # empty: data/synth/train-v1
    device: str  # cpu | cuda
    recipe: str  # a RECIPES key
    out: Path | None  # None: runs/VARIANT-RECIPE
    resume: bool
    seed: int
    steps: int | None  # overrides the recipe's (None or 0: the recipe's)
    limit: int | None
    init: Path | None
    ship: bool
    name: str | None  # with ship; None: VARIANT_<sha256[:8]> of the weights
    default: bool


def train_command(options: TrainOptions) -> int:
    recipe = RECIPES.get(options.recipe)
    if recipe is None:
        raise QcnodeError(f"unknown recipe {options.recipe!r}; known: {', '.join(RECIPES)}")
    if options.steps:
        recipe = replace(recipe, steps=int(options.steps))
    data_dirs = list(options.data or [Path("data/synth/train-v1")])
    out = options.out or Path("runs") / f"{options.variant}-{recipe.name}"
    seed = options.seed
    result = train(
        variant=options.variant,
        data_dirs=data_dirs,
        out=out,
        recipe=recipe,
        seed=seed,
        device=options.device,
        resume=options.resume,
        limit=options.limit,
        init=options.init,
    )
    minutes = result.seconds / 60
    print(f"weights: {result.weights} ({minutes:.1f} min, loss {result.final_loss:.4f})")
    if result.val:
        print(f"validation (held-out synthetic): {json.dumps(result.val)}")
    if options.ship:
        previous = None
        if result.init_sha256:  # keep the first stage's recipe in the record
            for e in load_registry().entries.values():
                if e.sha256 == result.init_sha256:
                    previous = dict(e.recipe)
        from qcnode.model.registry import sha256_file

        name = options.name or f"{options.variant}_{sha256_file(result.weights)[:8]}"
        entry = ship(
            result,
            name=name,
            recipe=recipe,
            seed=seed,
            metrics_doc={"validation": result.val},
            make_default=options.default,
            previous=previous,
        )
        print(f"registered {entry.name} sha256 {entry.sha256}")
    return 0
