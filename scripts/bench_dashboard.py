#!/usr/bin/env python
"""Dashboard response times over a synthetic history (docs/dashboard.md, "Speed").

Seeds N images (with 12 findings each) into a fresh database through the node's schema,
serves the dashboard with uvicorn and times each page (median of 3 after one warm-up).
Usage: .venv/bin/python scripts/bench_dashboard.py [--images 20000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

from qcnode import db
from qcnode.config import Settings
from qcnode.web import create_app
from qcnode.web.server import serving

RULES = (
    "completeness.apices",
    "completeness.costophrenic",
    "completeness.lateral_walls",
    "completeness.collimation",
    "organs.lungs",
    "organs.heart",
    "exposure.noise",
    "exposure.contrast",
    "positioning.rotation",
    "positioning.scapulae",
    "positioning.inspiration",
    "metadata.view",
)
PATHS = (
    "/",
    "/?page=200",
    "/?verdict=fail",
    "/?family=positioning",
    "/?rule=positioning.rotation",
    "/?station=DR-3&verdict=fail",
    "/stats",
    "/stats?bucket=week",
    "/node",
    "/metrics",
    "/worklist.csv?verdict=fail",
)


def seed(settings: Settings, n: int) -> None:
    """One image every 15 minutes; each rule passes 90 %, warns 6 %, fails 4 % of the time."""
    rng = random.Random(0)
    start = dt.datetime(2026, 1, 1)
    instances, results, findings = [], [], []
    for i in range(1, n + 1):
        at = start + dt.timedelta(minutes=15 * i)
        instances.append(
            {
                "id": i,
                "sop_instance_uid": f"2.25.{i}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
                "path": f"instances/{i}.dcm",
                "received_at": at,
                "station_name": f"DR-{rng.randint(1, 12)}",
                "operators_name": f"Op^{rng.randint(1, 40)}",
                "manufacturer": rng.choice(["ACME", "Globex"]),
                "study_date": at.date(),
                "view_position": "PA",
            }
        )
        status = {r: rng.choices(["pass", "warn", "fail"], [90, 6, 4])[0] for r in RULES}
        verdict = max(status.values(), key=["pass", "warn", "fail"].index)
        fam = {
            f: max(
                (s for r, s in status.items() if r.startswith(f + ".")),
                key=["pass", "warn", "fail"].index,
            )
            for f in ("completeness", "organs", "exposure", "positioning", "metadata")
        }
        results.append(
            {
                "id": i,
                "instance_id": i,
                "view": "frontal",
                "verdict": verdict,
                **{f"verdict_{f}": v for f, v in fam.items()},
                "timings_ms": {"total": rng.uniform(50, 400)},
                "created_at": at + dt.timedelta(seconds=rng.uniform(0.2, 3)),
            }
        )
        for rule, st in status.items():
            findings.append(
                {
                    "result_id": i,
                    "rule": rule,
                    "family": rule.split(".")[0],
                    "status": st,
                    "value": 1.0,
                    "unit": "mm",
                    "threshold": 5.0,
                    "message": rule,
                    "geometry": [],
                }
            )
    engine = db.make_engine(settings)
    with engine.begin() as conn:
        conn.execute(insert(db.Instance), instances)
        conn.execute(insert(db.Result), results)
        conn.execute(insert(db.Finding), findings)
    engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    args = ap.parse_args()
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=args.database_url)
    db.upgrade(settings)
    t0 = time.perf_counter()
    seed(settings, args.images)
    print(f"seeded {args.images} images in {time.perf_counter() - t0:.1f} s ({settings.database})")
    app = create_app(settings, engine_or_session_factory=db.make_engine(settings, readonly=True))
    with serving(app) as url, httpx.Client(base_url=url, timeout=600) as client:
        for path in PATHS:
            client.get(path).raise_for_status()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                r = client.get(path)
                times.append(time.perf_counter() - t)
            print(
                f"{path:32s} {r.status_code} {len(r.content):>9d} B  "
                f"median {statistics.median(times) * 1000:6.0f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
