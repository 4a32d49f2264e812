"""``qcnode bench --what report``: build times per result object kind, real inputs."""

from __future__ import annotations

from pathlib import Path

from qcnode.bench import bench_report
from qcnode.config import Settings

SYNTH = Path(__file__).parents[1] / "data" / "synth"


def test_report_bench_times_every_kind_on_model_masks() -> None:
    frontal = sorted(SYNTH.glob("*-v00.dcm"))[0]
    out = bench_report(Settings(), repeats=2, files=[frontal])
    assert out["masks"].startswith("model ")  # the shipped model, as in the node
    (row,) = out["images"]
    assert row["image"].startswith(frontal.stem)
    for kinds in ("sr", "sc", "gsps", "kos", "sr+sc"):
        assert row[f"{kinds}_median_ms"] > 0, kinds
