"""`qcnode synth`: generate a synthetic dataset (pool of 3D renders × 2D variants).

Resumable: poses already in the folder's manifest are skipped, so an interrupted run can be
restarted with the same arguments. Writes `READY` when the requested count is reached.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qcnode.errors import ConfigError
from qcnode.synth import ct as ctmod
from qcnode.synth import generate, truth

log = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}


@dataclass(frozen=True, kw_only=True)
class SynthOptions:
    """``qcnode synth``'s flags (DESIGN §9), built once by qcnode.cli; the defaults are the
    parser's. A 0 for ``variants_per_pose``, ``threads`` or ``pitch_mm`` means the
    built-in value, as on the command line."""

    out: Path
    count: int
    view: str  # frontal | lateral | both
    seed: int
    split: str  # train | eval
    workers: int
    variants_per_pose: int
    threads: int
    pitch_mm: float
    no_ready: bool
    minutes: float | None  # time budget; None (or 0): none
    visible_lungs: bool
    scapulae_in_body: bool
    realism: bool
    realism_plain: float
    clavicles_down: float = 0.0
    opacities: float = 0.0
    opacity_texture: float = 0.0


def _init(threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE["ct"] = ctmod.load()
    _STATE["thr"] = truth.load_thresholds()


def _pool_init(threads: int) -> None:
    """A pool worker's initializer, which must not raise: the pool replaces a worker whose
    initializer raised by another that raises again, without end. The error is kept and
    raised by the worker's tasks instead; the pool hands it to the parent, where the command
    line reports a QcnodeError (an unusable CT) in one line."""
    try:
        _init(threads)
    except Exception as exc:
        _STATE["init_error"] = exc


def _work(
    job: tuple[generate.Plan, int, str],
) -> tuple[int, list[dict[str, Any]], dict[str, float]]:
    if "init_error" in _STATE:
        raise _STATE["init_error"]
    plan, index, out = job
    lines, timings = generate.make_pose_samples(_STATE["ct"], plan, index, Path(out), _STATE["thr"])
    return index, lines, timings


def _done_poses(manifest: Path, prefix: str) -> tuple[set[int], int]:
    """Poses of this run (ids starting with `prefix`) already written, and their chest samples.

    Several runs (e.g. frontal and lateral halves of an evaluation set, with different seeds)
    may share one folder and manifest.
    """
    poses: set[int] = set()
    n = 0
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if not str(rec["id"]).startswith(prefix):
                    continue
                poses.add(int(rec["pose"]))
                n += rec["view"] != "other"
    return poses, n


def synth_command(options: SynthOptions) -> int:
    # before any output, and in this process: a pool worker whose initializer raises is
    # replaced by another that raises again, without end
    ctmod.require_ct()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    per_pose = options.variants_per_pose or 8
    pitch = float(options.pitch_mm or generate.BIG.pitch_mm)
    plan = generate.Plan(
        split=options.split,
        seed=options.seed,
        view=options.view,
        variants_per_pose=per_pose,
        detector=replace(generate.BIG, pitch_mm=pitch, depth_step_mm=max(2.5, pitch)),
        visible_lungs=options.visible_lungs,
        scapulae_in_body=options.scapulae_in_body,
        realism=options.realism,
        realism_plain=float(options.realism_plain),
        clavicles_down=float(options.clavicles_down),
        opacities=float(options.opacities),
        opacity_texture=float(options.opacity_texture),
    )
    if not 0.0 <= plan.realism_plain <= 1.0 or (plan.realism_plain and not plan.realism):
        raise ConfigError("--realism-plain takes a share in [0, 1] and needs --realism")
    if not 0.0 <= plan.clavicles_down <= 1.0:
        raise ConfigError("--clavicles-down takes a share in [0, 1]")
    if not 0.0 <= plan.opacities <= 1.0:
        raise ConfigError("--opacities takes a share in [0, 1]")
    if not 0.0 <= plan.opacity_texture <= 1.0 or (plan.opacity_texture and not plan.opacities):
        raise ConfigError("--opacity-texture takes a share in [0, 1] and needs --opacities")
    manifest = out / "manifest.jsonl"
    done, have = _done_poses(manifest, f"{options.split}-s{options.seed}-")
    # `count` is chest samples; `other` poses (≈15 %) come on top. Stops once count is reached.
    n_poses = math.ceil(options.count / per_pose / (1.0 - plan.other_fraction)) + 5
    todo = [] if have >= options.count else [i for i in range(n_poses) if i not in done]
    workers = max(1, options.workers)
    threads = max(1, options.threads or (1 if workers > 1 else 2))
    (out / "recipe.json").write_text(
        json.dumps(
            {
                "split": options.split,
                "seed": options.seed,
                "view": options.view,
                "count": options.count,
                "variants_per_pose": per_pose,
                "pitch_mm": pitch,
                "visible_lungs": plan.visible_lungs,
                "lung_field": generate.LUNG_FIELD_REVISION if plan.visible_lungs else None,
                "scapulae_in_body": plan.scapulae_in_body,
                "realism": plan.realism,
                "realism_plain": plan.realism_plain,
                "clavicles_down": plan.clavicles_down,
                "opacities": plan.opacities,
                "opacity_texture": plan.opacity_texture,
                "generator": "qcnode.synth v1.18",
            },
            indent=1,
        )
    )
    t0 = time.perf_counter()
    # A time budget (GPU hosts: synthesise as much as fits, then train): whole poses only.
    minutes = options.minutes
    deadline = t0 + 60.0 * minutes if minutes else None
    renders = written = 0
    render_s = variants_s = 0.0
    jobs = [(plan, i, str(out)) for i in todo]
    pool = None
    if workers == 1:
        _init(threads)
        results: Iterator[tuple[int, list[dict[str, Any]], dict[str, float]]] = map(_work, jobs)
    else:
        # once, here: workers that each found no cache would each prepare the CT
        ctmod.ensure_prepared()
        pool = mp.get_context("spawn").Pool(workers, initializer=_pool_init, initargs=(threads,))
        results = pool.imap_unordered(_work, jobs)
    try:
        with manifest.open("a") as fh:
            for index, lines, timings in results:
                for line in lines:
                    fh.write(json.dumps({**line, "pose": index}) + "\n")
                fh.flush()
                have += sum(line["view"] != "other" for line in lines)  # `other` come on top
                written += len(lines)
                renders += 1
                render_s += timings["render_s"]
                variants_s += timings["variants_s"]
                log.info("pose %d done: %d samples", index, have)
                print(
                    f"pose {index}: {have} samples, render {timings['render_s']:.1f}s, "
                    f"variants {timings['variants_s']:.1f}s",
                    flush=True,
                )
                if have >= options.count:
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    log.info("time budget spent: %d samples", have)
                    break
    finally:
        if pool is not None:  # also when a task raised: no worker left behind
            pool.terminate()
    wall = time.perf_counter() - t0
    stats = {
        "samples": have,
        "renders_this_run": renders,
        "wall_s": round(wall, 1),
        "renders_per_s": round(renders / render_s, 4) if render_s else None,
        "variants_per_s": round(written / variants_s, 3) if variants_s else None,
        "torch_threads": threads,
        "workers": workers,
    }
    (out / f"stats_{options.split}_s{options.seed}.json").write_text(json.dumps(stats, indent=1))
    if have >= options.count and not options.no_ready:
        (out / "READY").write_text(json.dumps(stats) + "\n")
    print(json.dumps(stats))
    return 0
