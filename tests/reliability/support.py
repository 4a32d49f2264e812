"""Load and fault machinery shared by tests/integration/test_reliability_*.py and
scripts/reliability: mixed images, modalities that re-send until acknowledged, and the
node's memory as the kernel counts it.

The node and the PACS are the node engineer's fixtures (tests/integration/nodeproc.py,
tests/conftest.py's Orthanc); the delivery check is test_delivery.assert_delivered_once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE

from tests.conftest import DX_PRESENTATION, radiograph

SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)
SIZES_CI = ((128, 128), (256, 200), (384, 320))
SIZES_FULL = ((256, 256), (512, 420), (1024, 1024), (2048, 1680))


def mixed_images(
    n: int, *, seed: int, sizes: Sequence[tuple[int, int]] = SIZES_CI
) -> list[Dataset]:
    """``n`` radiographs of mixed sizes, a fifth each in five transfer syntaxes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows, columns = rng.choice(list(sizes))
        ds = radiograph(rows=rows, columns=columns, seed=seed * 100_000 + i)
        syntax = SYNTAXES[i % len(SYNTAXES)]
        if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        out.append(ds)
    return out


@dataclass
class Modality:
    """A modality that sends its images over one association and re-sends (new
    association, backoff) whatever did not get a success status, like a real one."""

    port: int
    images: list[Dataset]
    ae_title: str = "MODALITY"
    acknowledged: dict[str, int] = field(default_factory=dict)  # SOP UID → times acked
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0  # associations lost or refused
    latencies_ms: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for syntax in SYNTAXES:
            ae.add_requested_context(DX_PRESENTATION, syntax)
        return ae

    def pending(self) -> list[Dataset]:
        return [ds for ds in self.images if str(ds.SOPInstanceUID) not in self.acknowledged]

    def run_once(self) -> None:
        """One association: send what is pending until done or the association breaks."""
        assoc = self._ae().associate("127.0.0.1", self.port, ae_title="QCNODE")
        if not assoc.is_established:
            self.failures += 1
            return
        try:
            for ds in self.pending():
                if self.stop.is_set():
                    break
                t0 = time.perf_counter()
                try:
                    status = assoc.send_c_store(ds)
                except (RuntimeError, OSError, ValueError):
                    self.failures += 1
                    return
                code = int(status.get("Status", -1)) if status else -1
                self.statuses[code] = self.statuses.get(code, 0) + 1
                if code == 0:
                    uid = str(ds.SOPInstanceUID)
                    self.acknowledged[uid] = self.acknowledged.get(uid, 0) + 1
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                elif not assoc.is_established:
                    self.failures += 1
                    return
        finally:
            if assoc.is_established:
                assoc.release()

    def run(self, deadline_s: float = 600.0) -> None:
        end = time.monotonic() + deadline_s
        backoff = 0.2
        while self.pending() and not self.stop.is_set() and time.monotonic() < end:
            before = len(self.acknowledged)
            self.run_once()
            if self.pending() and len(self.acknowledged) == before:
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 3.0)
            else:
                backoff = 0.2

    def start(self, deadline_s: float = 600.0) -> Modality:
        self.thread = threading.Thread(target=self.run, args=(deadline_s,), daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class MemoryWatch:
    """Samples a process's RSS every ``step`` seconds (the peak outlives restarts)."""

    def __init__(self, step: float = 0.2) -> None:
        self.step = step
        self.peak_kib = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            pid = self.pid
            if pid is None:
                continue
            try:
                self.peak_kib = max(self.peak_kib, memory_kib(pid).get("VmHWM", 0))
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
