"""Command line (DESIGN §9). Builds the frozen Settings once and hands them to each command.

Each command's implementation lives in its stage module and is imported lazily, so that
``qcnode check`` does not import the web stack and ``qcnode serve`` starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from qcnode import __version__
from qcnode.config import Settings, load_settings
from qcnode.errors import QcnodeError

_O = TypeVar("_O")

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcnode", description=__doc__)
    p.add_argument("--version", action="version", version=f"qcnode {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file (etc/qcnode.toml)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the node (ingest, worker, sender, web)")
    s.add_argument("--data-dir", type=Path)
    s.add_argument("--ae-title")
    s.add_argument("--port", type=int)
    s.add_argument("--destination", action="append", metavar="AE@HOST:PORT")
    s.add_argument("--web-port", type=int)
    s.add_argument(
        "--ingest-processes",
        type=int,
        metavar="N",
        help="receive in N processes on the port (SO_REUSEPORT; setting ingest_processes)",
    )

    sub.add_parser("worker", parents=[common], help="run QC workers only (scale-out)")

    c = sub.add_parser("check", parents=[common], help="QC DICOM files or folders offline")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--model", help="registry name of the model")
    c.add_argument("--language", choices=["en", "zh"])
    c.add_argument("paths", nargs="+", type=Path)

    y = sub.add_parser("synth", parents=[common], help="render synthetic radiographs from CT")
    y.add_argument("--out", type=Path, required=True)
    y.add_argument("--count", type=int, default=100)
    y.add_argument("--view", choices=["frontal", "lateral", "both"], default="both")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--split", choices=["train", "eval"], default="train")
    y.add_argument("--workers", type=int, default=1)
    y.add_argument("--variants-per-pose", type=int, default=8, help="2D variants per 3D render")
    y.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: auto)")
    y.add_argument("--pitch-mm", type=float, default=1.4, help="detector pixel pitch (mm)")
    y.add_argument("--no-ready", action="store_true", help="do not write READY (a part of a set)")
    y.add_argument("--minutes", type=float, help="time budget: stop after the pose that passes it")
    y.add_argument(
        "--visible-lungs",
        action="store_true",
        help="also write the lung fields: lungs cut at the diaphragm (frontals also at the "
        "mediastinal column)",
    )
    y.add_argument(
        "--scapulae-in-body",
        action="store_true",
        help="shorten lateral scapula shifts so the scapula stays inside the body outline",
    )
    y.add_argument(
        "--realism",
        action="store_true",
        help="denser bones and more dose per sample (v1.13; training sets, docs/SYNTH.md)",
    )
    y.add_argument(
        "--realism-plain",
        type=float,
        default=0.0,
        metavar="P",
        help="with --realism: this share of samples keeps the plain look (v1.14)",
    )
    y.add_argument(
        "--clavicles-down",
        type=float,
        default=0.0,
        metavar="P",
        help="this share of frontals gets clavicles lowered as in a standing PA (v1.15)",
    )
    y.add_argument(
        "--opacities",
        type=float,
        default=0.0,
        metavar="P",
        help="this share of chest renders gets effusions, consolidations or white-outs in 3D "
        "(v1.17; training sets: the rule truth does not model them)",
    )
    y.add_argument(
        "--opacity-texture",
        type=float,
        default=0.0,
        metavar="P",
        help="with --opacities: this share of the opacities is patchy (v1.18)",
    )

    t = sub.add_parser("train", parents=[common], help="train a model variant")
    t.add_argument("--variant", default="qcnet_d15_w3")
    t.add_argument("--data", type=Path, action="append", help="data set folder (repeatable)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--recipe", default="cpu", help="cpu | gpu | tiny")
    t.add_argument("--out", type=Path)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, help="override the recipe's step count")
    t.add_argument("--limit", type=int, help="use the first N samples of each manifest")
    t.add_argument("--init", type=Path, help="start from these weights (a second stage)")
    t.add_argument("--ship", action="store_true", help="copy weights to the registry")
    t.add_argument(
        "--name",
        help="with --ship: the registry name (default VARIANT_<sha256[:8]>; never the bare "
        "variant, which names an architecture)",
    )
    t.add_argument("--default", action="store_true", help="with --ship: make it the default")

    e = sub.add_parser("eval", parents=[common], help="the study's tables, measured")
    e.add_argument("--json", action="store_true")
    e.add_argument("--model", help="registry name of the model")
    e.add_argument("--set", type=Path, dest="eval_set")
    e.add_argument("--real", type=Path, help="folder of real radiographs (realcxr)")
    e.add_argument("--limit", type=int)

    b = sub.add_parser("bench", parents=[common], help="speed: model, QC, ingest")
    b.add_argument("--json", action="store_true")
    b.add_argument("--what", default="all", help="model | qc | report | ingest | e2e | all")
    b.add_argument("--variants", help="comma-separated model variants (default: all)")
    b.add_argument("--threads", default="1,2", help="CPU thread counts to time, e.g. 1,2")
    b.add_argument("--repeats", type=int, default=30, help="timed runs per measurement")

    o = sub.add_parser("outbox", parents=[common], help="delivery state and dead letters")
    o.add_argument("--json", action="store_true")
    o.add_argument("--retry-dead", action="store_true", help="queue dead letters again")

    d = sub.add_parser("db", parents=[common], help="database maintenance")
    dsub = d.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", parents=[common], help="apply Alembic migrations")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "ae_title": getattr(args, "ae_title", None),
        "port": getattr(args, "port", None),
        "destinations": getattr(args, "destination", None),
        "web_port": getattr(args, "web_port", None),
        "ingest_processes": getattr(args, "ingest_processes", None),
        "model": getattr(args, "model", None),
        "language": getattr(args, "language", None),
        "verbose": True if args.verbose else None,
    }
    return load_settings(args.config, overrides)


def _options(cls: type[_O], args: argparse.Namespace, **given: Any) -> _O:
    """A command's frozen options from its parsed flags (DESIGN §8: commands get a frozen
    object, not the Namespace): each field is the flag of the same name, unless ``given``."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(**{f.name: given.get(f.name, getattr(args, f.name)) for f in fields})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = _settings(args)
        return _dispatch(args, settings)
    except QcnodeError as exc:
        log.debug("command failed", exc_info=True)  # the traceback with -v only
        print(f"qcnode: error: {exc}", file=sys.stderr)  # one line for the user
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    if cmd == "serve":
        from qcnode.node import serve

        return serve(settings)
    if cmd == "worker":
        from qcnode.node import run_worker

        return run_worker(settings)
    if cmd == "check":
        from qcnode.engine import check_command

        return check_command(settings, paths=args.paths, as_json=args.json)
    if cmd == "synth":
        from qcnode.synth.cli import SynthOptions, synth_command

        return synth_command(_options(SynthOptions, args))
    if cmd == "train":
        from qcnode.model.train import TrainOptions, train_command

        return train_command(_options(TrainOptions, args, data=tuple(args.data or ())))
    if cmd == "eval":
        from qcnode.evaluate import EvalOptions, eval_command

        return eval_command(settings, _options(EvalOptions, args))
    if cmd == "bench":
        from qcnode.bench import BenchOptions, bench_command

        return bench_command(settings, _options(BenchOptions, args))
    if cmd == "outbox":
        from qcnode.send import OutboxOptions, outbox_command

        return outbox_command(settings, _options(OutboxOptions, args))
    if cmd == "db":
        from qcnode.db import upgrade

        upgrade(settings)
        return 0
    raise AssertionError(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
