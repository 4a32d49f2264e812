"""The long load and fault runs behind ``scripts/reliability`` (figures for
docs/RELIABILITY.md). Real processes: the node (``qcnode serve`` with the fake model, see
tests/integration/node_launcher.py), Orthanc as the PACS, pynetdicom modalities.

    scripts/reliability load --modalities 8 --per 200
    scripts/reliability kills --kills 20
    scripts/reliability pacs-down --down-seconds 180
    scripts/reliability db-lock --lock-seconds 45
    scripts/reliability disk-full
    scripts/reliability memory --per 3 --side 4900

Each scenario prints and writes ``.cache/reliability/<scenario>.json``: what was sent,
acknowledged, lost, given up, duplicated or missing at the PACS, the node's peak RSS and
the timings. Exit status 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_delivery import node_settings
from tests.integration.test_reliability_faults import (
    fill,
    kill_pacs,
    small_filesystem,
    sqlite_locked,
)
from tests.reliability.support import (
    NOTHING_LOST,
    SIZES_CI,
    SIZES_FULL,
    CountingOrthanc,
    MemoryWatch,
    Modality,
    delivery_figures,
    mixed_images,
    nothing_lost,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "reliability"


@contextmanager
def world(
    root: Path, qc_process: bool = False, **extra: Any
) -> Iterator[tuple[NodeProcess, CountingOrthanc, MemoryWatch]]:
    """Orthanc + a fake-model node on free ports, memory watched; torn down afterwards.
    ``qc_process``: QC in serve's child process, as ``qcnode serve`` runs by default."""
    (root / "orthanc").mkdir(parents=True)
    pacs = CountingOrthanc(
        ae_title="ORTHANC", dicom_port=free_port(), http_port=free_port(), root=root / "orthanc"
    )
    pacs.start()
    settings = {**node_settings(root, pacs), "lease_seconds": 10, **extra}
    node = NodeProcess(root / "n", fake_model=True, qc_process=qc_process, **settings)
    node.start()
    watch = MemoryWatch()
    assert node.proc is not None
    watch.pid = node.proc.pid
    try:
        yield node, pacs, watch
    finally:
        watch.close()
        node.stop()
        if pacs.process is not None:
            pacs.stop()


def modalities(port: int, count: int, per: int, seed: int, sizes: Any) -> list[Modality]:
    return [
        Modality(
            port=port, images=mixed_images(per, seed=seed + m, sizes=sizes), ae_title=f"MOD{m}"
        )
        for m in range(count)
    ]


def sent_uids(mods: list[Modality]) -> list[str]:
    return [str(ds.SOPInstanceUID) for m in mods for ds in m.images]


def modality_figures(mods: list[Modality], seconds: float) -> dict[str, Any]:
    lat = sorted(x for m in mods for x in m.latencies_ms)
    statuses: dict[str, int] = {}
    for m in mods:
        for code, n in m.statuses.items():
            key = "no response" if code < 0 else f"0x{code:04X}"
            statuses[key] = statuses.get(key, 0) + n
    return {
        "modalities": len(mods),
        "images": sum(len(m.images) for m in mods),
        "bytes": sum(len(ds.PixelData) for m in mods for ds in m.images),
        "acknowledged": sum(len(m.acknowledged) for m in mods),
        "never_acknowledged": sum(len(m.pending()) for m in mods),
        "statuses": statuses,
        "associations_lost_or_refused": sum(m.failures for m in mods),
        "send_seconds": round(seconds, 1),
        "ingest_images_per_s": round(len(lat) / max(seconds, 1e-9), 1),
        "c_store_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "c_store_ms_p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
    }


def run_and_wait(mods: list[Modality], deadline_s: float) -> float:
    t0 = time.monotonic()
    for m in mods:
        m.start(deadline_s=deadline_s)
    for m in mods:
        m.join(deadline_s + 60)
    return time.monotonic() - t0


def scenario_load(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    sizes = SIZES_FULL if args.sizes == "full" else SIZES_CI
    with world(root) as (node, pacs, watch):
        mods = modalities(node.port, args.modalities, args.per, 1000, sizes)
        t0 = time.monotonic()
        seconds = run_and_wait(mods, args.deadline)
        figures = delivery_figures(node, pacs, sent_uids(mods), timeout=args.deadline)
        e2e = time.monotonic() - t0
        return {
            **modality_figures(mods, seconds),
            **figures,
            "all_delivered_seconds": round(e2e, 1),
            "delivered_images_per_s": round(figures["evaluated"] / e2e, 2),
            "node_peak_rss_mib": round(watch.peak_kib / 1024, 1),
        }


def scenario_kills(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with world(root, qc_process=args.workers_in == "process") as (node, pacs, watch):
        mods = modalities(node.port, args.modalities, args.per, 2000, SIZES_CI)
        t0 = time.monotonic()
        for m in mods:
            m.start(deadline_s=args.deadline)
        delays = []
        for _ in range(args.kills):
            delay = rng.uniform(0.3, args.max_delay)
            time.sleep(delay)  # a random moment: ingest, QC or delivery may be mid-way
            node.kill(tree=True)  # serve and its QC child at once: the whole node dies
            delays.append(round(delay, 2))
            node.start()
        for m in mods:
            m.join(args.deadline + 60)
        seconds = time.monotonic() - t0
        figures = delivery_figures(node, pacs, sent_uids(mods), timeout=args.deadline)
        releases = [
            (int(a), int(b))
            for a, b in re.findall(
                r"requeued (\d+) job\(s\) left running by a dead worker on this host"
                r" \((\d+) interrupted by the whole node's end",
                node.log(),
            )
        ]
        return {
            **modality_figures(mods, seconds),
            **figures,
            "jobs_requeued_at_restarts": sum(a for a, _ in releases),
            "of_which_not_counted_node_died": sum(b for _, b in releases),
            "workers_in": args.workers_in,
            "kills": len(delays),
            "kill_delays_s": delays,
            "node_peak_rss_mib": round(watch.peak_kib / 1024, 1),
        }


def scenario_pacs_down(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    with world(root) as (node, pacs, watch):
        mods = modalities(node.port, args.modalities, args.per, 3000, SIZES_CI)
        for m in mods:
            m.start(deadline_s=args.deadline)
        time.sleep(2.0)
        kill_pacs(pacs)
        down_at = time.monotonic()
        for m in mods:
            m.join(args.deadline + 60)
        time.sleep(max(0.0, args.down_seconds - (time.monotonic() - down_at)))
        down = time.monotonic() - down_at
        pacs.start()
        back = time.monotonic()
        figures = delivery_figures(node, pacs, sent_uids(mods), timeout=args.deadline)
        return {
            **modality_figures(mods, down),
            **figures,
            "pacs_down_seconds": round(down, 1),
            "failed_delivery_attempts_logged": node.log().count("delivery to ORTHANC"),
            "all_delivered_seconds_after_back": round(time.monotonic() - back, 1),
            "node_peak_rss_mib": round(watch.peak_kib / 1024, 1),
        }


def scenario_db_lock(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    with world(root) as (node, pacs, watch):
        mods = modalities(node.port, args.modalities, args.per, 4000, SIZES_CI)
        t0 = time.monotonic()
        with sqlite_locked(node.settings.data_dir / "qcnode.sqlite"):
            for m in mods:
                m.start(deadline_s=args.deadline)
            time.sleep(args.lock_seconds)
        for m in mods:
            m.join(args.deadline + 60)
        figures = delivery_figures(node, pacs, sent_uids(mods), timeout=args.deadline)
        return {
            **modality_figures(mods, time.monotonic() - t0),
            **figures,
            "lock_seconds": args.lock_seconds,
            "node_peak_rss_mib": round(watch.peak_kib / 1024, 1),
        }


def scenario_disk_full(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for guard in (True, False):
        sub = root / ("guard" if guard else "enospc")
        sub.mkdir()
        with small_filesystem(sub / "small", 64) as small:
            extra = {
                "data_dir": str(small / "node"),
                "min_free_disk_bytes": (4 << 20) if guard else 0,
            }
            with world(sub, **extra) as (node, pacs, _watch):
                filler = fill(small, leave_bytes=3 << 20)
                mods = modalities(node.port, 2, args.per, 5000, ((1024, 1024),))
                for m in mods:
                    m.run_once()
                while_full = modality_figures(mods, 1.0)
                filler.unlink()
                run_and_wait(mods, args.deadline)
                figures = delivery_figures(node, pacs, sent_uids(mods), timeout=args.deadline)
                out["guard" if guard else "real_enospc"] = {
                    "while_full": while_full,
                    "after": modality_figures(mods, 1.0),
                    **figures,
                }
    return out


def scenario_memory(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Ingest only: peak RSS before and after receiving large datasets (chunked receive)."""
    from tests.conftest import radiograph, storescu, write
    from tests.reliability.support import memory_kib

    node = NodeProcess(
        root / "n",
        fake_model=True,
        data_dir=str(root / "node"),
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        workers=0,
        min_free_disk_bytes=0,
    )
    node.start()
    try:
        assert node.proc is not None
        big = radiograph(rows=args.side, columns=args.side, seed=1)
        paths = []
        for i in range(args.per):
            big.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1176.8.{i}"
            big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
            paths.append(write(big, root / f"big{i}.dcm"))
        before = memory_kib(node.proc.pid)
        t0 = time.monotonic()
        run = storescu(node.port, paths)
        seconds = time.monotonic() - t0
        after = memory_kib(node.proc.pid)
        return {
            "datasets": len(paths),
            "dataset_mib": round(paths[0].stat().st_size / 2**20, 1),
            "storescu_exit": run.returncode,
            "seconds": round(seconds, 1),
            "peak_rss_before_mib": round(before["VmHWM"] / 1024, 1),
            "peak_rss_after_mib": round(after["VmHWM"] / 1024, 1),
            "peak_rss_growth_mib": round((after["VmHWM"] - before["VmHWM"]) / 1024, 1),
            "lost": 0 if run.returncode == 0 else len(paths),
        }
    finally:
        node.stop()


SCENARIOS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "load": scenario_load,
    "kills": scenario_kills,
    "pacs-down": scenario_pacs_down,
    "db-lock": scenario_db_lock,
    "disk-full": scenario_disk_full,
    "memory": scenario_memory,
}


def lost_anything(figures: dict[str, Any]) -> bool:
    if "lost" not in figures:
        return any(lost_anything(v) for v in figures.values() if isinstance(v, dict))
    if "acknowledged" not in figures:  # memory: storescu's exit status says it
        return bool(figures["lost"])
    return nothing_lost(figures) != NOTHING_LOST or figures.get("never_acknowledged", 0) > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="long load and fault runs (figures)")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--modalities", type=int, default=8)
    parser.add_argument("--per", type=int, default=200, help="images per modality")
    parser.add_argument("--sizes", choices=["ci", "full"], default="full")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--max-delay", type=float, default=4.0, help="kills: longest gap (s)")
    parser.add_argument(
        "--workers-in",
        choices=["process", "threads"],
        default="process",
        help="kills: QC in serve's child process (serve's default) or threads in serve",
    )
    parser.add_argument("--down-seconds", type=float, default=180.0)
    parser.add_argument("--lock-seconds", type=float, default=45.0)
    parser.add_argument("--deadline", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--side", type=int, default=4900, help="memory: rows = columns")
    parser.add_argument("--name", default="", help="figures file name (default: the scenario)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcnode-reliability-") as tmp:
        started = time.monotonic()
        figures = SCENARIOS[args.scenario](args, Path(tmp))
    result = {
        "scenario": args.scenario,
        "arguments": vars(args),
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": "2-core CPU, no GPU (shared)",
        **figures,
    }
    path = OUT / f"{args.name or args.scenario}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 1 if lost_anything(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
