"""Prometheus metrics read from the database at scrape time.

Counting in the database rather than in process-local counters keeps the numbers right
when ingest and workers run as N separate processes (scale-out, DESIGN §2) and across
restarts: every scrape sees the whole node. Each app gets its own CollectorRegistry (no
module globals), so tests and several apps in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from qcnode import __version__

# Seconds. QC on CPU is ~0.1-1 s per image; end-to-end adds queueing and delivery.
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (seconds), as Prometheus wants them."""

    cumulative: tuple[int, ...]  # one per LATENCY_BUCKETS entry
    count: int
    sum_seconds: float


EMPTY_HISTOGRAM = Histogram(cumulative=(0,) * len(LATENCY_BUCKETS), count=0, sum_seconds=0.0)


@dataclass(frozen=True)
class MetricsSnapshot:
    received: int = 0
    checked_by_verdict: Mapping[str, int] = field(default_factory=dict)
    findings: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # rule, fam, st
    qc_latency: Histogram = EMPTY_HISTOGRAM  # decode to verdict (the worker's total)
    e2e_latency: Histogram = EMPTY_HISTOGRAM  # received to result stored
    jobs_by_state: Mapping[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    outbox_by_state: Mapping[str, int] = field(default_factory=dict)
    outbox_retries: int = 0


class DatabaseCollector(Collector):
    """Yields the node's metrics from a fresh snapshot on every scrape."""

    def __init__(self, *, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self._snapshot()
        info = InfoMetricFamily("qcnode", "qcnode build information")
        info.add_metric([], {"version": __version__})
        yield info

        yield CounterMetricFamily(
            "qcnode_images_received", "DICOM instances received and stored", value=s.received
        )
        checked = CounterMetricFamily(
            "qcnode_images_checked", "Images QC'd, by image verdict", labels=["verdict"]
        )
        for verdict, n in sorted(s.checked_by_verdict.items()):
            checked.add_metric([verdict], n)
        yield checked

        findings = CounterMetricFamily(
            "qcnode_findings",
            "Rule findings by rule, family and status (verdicts by rule)",
            labels=["rule", "family", "status"],
        )
        for (rule, family, status), n in sorted(s.findings.items()):
            findings.add_metric([rule, family, status], n)
        yield findings

        for name, doc, hist in (
            ("qcnode_qc_duration_seconds", "QC time per image, decode to verdict", s.qc_latency),
            (
                "qcnode_end_to_end_seconds",
                "Time from C-STORE receipt to stored QC result",
                s.e2e_latency,
            ),
        ):
            buckets = [
                (_le(b), float(c)) for b, c in zip(LATENCY_BUCKETS, hist.cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(hist.count)))
            yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum_seconds)

        yield GaugeMetricFamily(
            "qcnode_queue_depth", "Jobs waiting or running", value=s.queue_depth
        )
        jobs = GaugeMetricFamily("qcnode_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(s.jobs_by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        outbox = GaugeMetricFamily(
            "qcnode_outbox_messages", "Outbox entries by state", labels=["state"]
        )
        for state, n in sorted(s.outbox_by_state.items()):
            outbox.add_metric([state], n)
        yield outbox
        yield CounterMetricFamily(
            "qcnode_outbox_retries",
            "Delivery attempts beyond the first, summed over the outbox",
            value=s.outbox_retries,
        )


def _le(bound: float) -> str:
    return repr(float(bound))


def build_registry(snapshot: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    """A registry with the node's metrics and this process's CPU/memory/platform metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(snapshot=snapshot))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def histogram(values_seconds: Iterable[float]) -> Histogram:
    """Bucket raw latencies; used where the database returns rows, not bucket counts."""
    counts = [0] * len(LATENCY_BUCKETS)
    total, n = 0.0, 0
    for v in values_seconds:
        n += 1
        total += v
        for i, bound in enumerate(LATENCY_BUCKETS):
            if v <= bound:
                counts[i] += 1
    return Histogram(cumulative=tuple(counts), count=n, sum_seconds=total)
