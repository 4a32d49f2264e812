"""The long fuzz run behind ``scripts/fuzz`` (not collected by pytest).

Runs the hypothesis strategies of tests/fuzz/dicom_inputs.py against the targets of
tests/fuzz/harness.py in chunks, recording every crash (and continuing) instead of
stopping at the first. Writes ``summary-<target>.json`` under ``--out`` after every chunk
(a checkpoint: a killed run keeps its figures) and the first input of each crash kind.

    scripts/fuzz --target decode --inputs 100000      # decode → normalise → rules
    scripts/fuzz --target rules --inputs 20000        # rules on drawn images and masks
    scripts/fuzz --target cstore --inputs 2000        # C-STORE to a running node
    scripts/fuzz --target ingest --inputs 100000      # the C-STORE handler alone
    scripts/fuzz --target report --inputs 5000        # decode → rules → SR/SC → dciodvfy
    scripts/fuzz --target cstore-real --inputs 3000   # a real node process + Orthanc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.dicom_inputs import hostile_file
from tests.fuzz.harness import ROOT, CrashBook, decode_file, report_file, run_rules
from tests.fuzz.strategies_rules import drawn_image, mask_plan

CHUNK = 500


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def decode_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    path = scratch / "input.dcm"

    @_settings(n)
    @given(data=hostile_file(), plan=mask_plan())
    def one(data: bytes, plan: Any) -> None:
        book.tried += 1
        path.write_bytes(data)
        try:
            image = decode_file(path)
            if image is not None and image.pixels.size <= 1024 * 1024:
                run_rules(image, plan)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic in a codec is a BaseException
            book.record(exc, data)

    one()


def report_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    path = scratch / "input.dcm"

    @_settings(n)
    @given(data=hostile_file(), plan=mask_plan())
    def one(data: bytes, plan: Any) -> None:
        book.tried += 1
        path.write_bytes(data)
        try:
            built = report_file(path, plan)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            book.record(exc, data)
        else:
            book.objects += built

    one()


def rules_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    @_settings(n)
    @given(image=drawn_image(), plan=mask_plan(), language=st.sampled_from(["en", "zh"]))
    def one(image: Any, plan: Any, language: str) -> None:
        book.tried += 1
        try:
            run_rules(image, plan, language=language)
        except Exception as exc:
            book.record(exc, None)

    one()


def cstore_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    from tests.fuzz.cstore import CStoreTarget

    target = CStoreTarget.shared(scratch)

    @_settings(n)
    @given(data=hostile_file())
    def one(data: bytes) -> None:
        book.tried += 1
        try:
            target.send(data)
        except Exception as exc:
            book.record(exc, data)

    one()
    for exc in target.drain_node_errors():
        book.record(exc, None)


_INGEST: Any = None  # the IngestTarget of an ``ingest`` run (one node at a time, recycled)


def ingest_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    global _INGEST
    from tests.fuzz.ingest_target import MODES, IngestTarget

    if _INGEST is None:
        _INGEST = IngestTarget(scratch)
    target = _INGEST

    @_settings(n)
    @given(data=hostile_file(), mode=st.sampled_from(MODES))
    def one(data: bytes, mode: str) -> None:
        book.tried += 1
        try:
            target.send(data, mode)
        except Exception as exc:
            book.record(exc, data)

    one()


def ingest_figures() -> dict[str, Any]:
    """What the ingest target counted: C-STOREs that reached the node, by status and mode."""
    t = _INGEST
    if t is None:
        return {}
    return {
        "c_stores_sent": t.sent,
        "statuses": {f"0x{k:04X}": v for k, v in sorted(t.statuses.items())},
        "modes": dict(t.modes),
        "nodes_audited": t.nodes,
        "handled_tracebacks": dict(t.handled_tracebacks.most_common(20)),
    }


_REAL: Any = None  # the RealNodeTarget of a ``cstore-real`` run


def cstore_real_chunk(book: CrashBook, n: int, scratch: Path) -> None:
    global _REAL
    from tests.fuzz.realnode import RealNodeTarget

    if _REAL is None:
        _REAL = RealNodeTarget(scratch)
    target = _REAL

    @_settings(n)
    @given(data=hostile_file())
    def one(data: bytes) -> None:
        book.tried += 1
        try:
            target.send(data)
        except Exception as exc:
            book.record(exc, data)

    one()
    for failure in target.log_errors():
        book.record(failure, None)


def real_figures() -> dict[str, Any]:
    t = _REAL
    if t is None:
        return {}
    return {
        "c_stores_sent": t.sent,
        "statuses": {f"0x{k:04X}": v for k, v in sorted(t.statuses.items())},
        "acknowledged": len(set(t.acknowledged)),
        "node_restarts": t.restarts,
    }


TARGETS: dict[str, Callable[[CrashBook, int, Path], None]] = {
    "decode": decode_chunk,
    "rules": rules_chunk,
    "cstore": cstore_chunk,
    "ingest": ingest_chunk,
    "report": report_chunk,
    "cstore-real": cstore_real_chunk,
}


def _progress(target: str, book: CrashBook) -> int:
    """Inputs run so far; for ``ingest``, C-STOREs that reached the node (an input whose
    file meta the SCU cannot read is generated but never sent)."""
    if target == "ingest":
        return int(_INGEST.sent) if _INGEST is not None else 0
    if target == "cstore-real":
        return int(_REAL.sent) if _REAL is not None else 0
    return book.tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="decode")
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="stop after this long (0: no limit)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "fuzz")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    book = CrashBook(directory=out / f"crashes-{args.target}")
    generator_errors: list[str] = []
    started = time.monotonic()
    summary_path = out / f"summary-{args.target}.json"
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        while _progress(args.target, book) < args.inputs:
            left = args.inputs - _progress(args.target, book)
            try:
                TARGETS[args.target](book, min(CHUNK, left), Path(tmp))
            except Exception as exc:  # the generator itself failed: note it, go on
                generator_errors.append(f"{type(exc).__name__}: {exc}"[:300])
                if len(generator_errors) > 200:
                    raise
            elapsed = time.monotonic() - started
            summary = {
                "target": args.target,
                "finished": False,  # true only once the run ended by itself (not killed)
                "seconds": round(elapsed, 1),
                "inputs_per_second": round(book.tried / max(elapsed, 1e-9), 1),
                **book.summary(),
                **ingest_figures(),
                **real_figures(),
                "generator_errors": generator_errors,
            }
            summary_path.write_text(json.dumps(summary, indent=2))
            print(
                f"{args.target}: {book.tried} inputs, {summary['crashing_inputs']} crashing"
                f" ({summary['distinct_crashes']} kinds), {elapsed:.0f} s",
                flush=True,
            )
            if args.seconds and elapsed > args.seconds:
                break
        if args.target == "cstore":
            from tests.fuzz.cstore import CStoreTarget

            CStoreTarget.close_shared()
        if _INGEST is not None:
            for failure in _INGEST.close():  # the last node's orphan audit
                book.record(failure, None)
        delivery: dict[str, Any] = {}
        if _REAL is not None:  # QC and delivery of everything acknowledged, then the checks
            delivery, failures = _REAL.finish()
            for failure in failures:
                book.record(failure, None)
            _REAL.close()
    summary = json.loads(summary_path.read_text())
    summary.update(book.summary(), finished=True, seconds=round(time.monotonic() - started, 1))
    if delivery:
        summary["delivery"] = delivery
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 1 if book.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
