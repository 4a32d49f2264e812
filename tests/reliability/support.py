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
import urllib.error
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE

from tests.conftest import DX_PRESENTATION, Orthanc, radiograph

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


def delivery_figures(
    node: Any, pacs: Any, sources: Sequence[str], timeout: float
) -> dict[str, Any]:
    """Wait until every source has a result and the outbox is drained (or the timeout),
    then count what matters: lost (acknowledged, not kept), not yet QC'd (kept, no result
    at the timeout), results given up on, evaluated images whose
    SR/SC are missing, missing/duplicated/unexpected objects at the PACS, dead letters.

    ``node`` is a tests.integration.nodeproc.NodeProcess, ``pacs`` a conftest Orthanc.
    """
    from sqlalchemy import func, select

    from qcnode.db import DEAD, FAILED, PENDING, QUEUED, RUNNING, Instance, Job, Outbox, Result

    def rows() -> dict[str, tuple[str, str | None]]:
        found = node.query(
            select(Instance.sop_instance_uid, Result.verdict, Result.error).join(
                Result, Result.instance_id == Instance.id
            )
        )
        return {uid: (verdict, error) for uid, verdict, error in found}

    def settled() -> bool:
        """Every source has a result, no job is queued or running (a job given up stays
        given up: waiting longer cannot bring its missing objects) and the outbox is
        drained."""
        if not set(sources) <= set(rows()):
            return False
        active = node.query(
            select(func.count()).select_from(Job).where(Job.state.in_((QUEUED, RUNNING)))
        )
        pending = node.query(
            select(func.count()).select_from(Outbox).where(Outbox.state == PENDING)
        )
        return int(active[0][0]) == 0 and int(pending[0][0]) == 0

    deadline = time.monotonic() + timeout
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.5)
    results = rows()
    stored = {uid for (uid,) in node.query(select(Instance.sop_instance_uid))}
    objects = node.objects()
    expected = [uid for src in sources for _, uid in objects.get(src, [])]
    restarted = pacs.ensure_up() if isinstance(pacs, CountingOrthanc) else False
    at_pacs = [i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.instances()]
    receipts = pacs.receipts() if isinstance(pacs, CountingOrthanc) else None
    redelivery: dict[str, Any] = {}
    if receipts is not None:
        redelivery = {
            "pacs_c_stores_received": sum(receipts[u] for u in set(expected)),
            "objects_received_more_than_once": sum(1 for u in set(expected) if receipts[u] > 1),
            "extra_c_stores_of_objects_already_there": sum(
                max(0, receipts[u] - 1) for u in set(expected)
            ),
            "pacs_restarted_to_count": restarted,
        }
    evaluated = [s for s in sources if results.get(s, ("", None))[0] in ("pass", "warn", "fail")]
    dead = node.query(select(func.count()).select_from(Outbox).where(Outbox.state == DEAD))
    failed_jobs = {
        uid
        for (uid,) in node.query(
            select(Instance.sop_instance_uid)
            .join(Job, Job.instance_id == Instance.id)
            .where(Job.state == FAILED)
        )
    }
    return {
        "acknowledged": len(sources),
        "lost": sum(1 for s in sources if s not in stored),  # acknowledged, not kept
        "not_yet_qcd": sum(1 for s in sources if s in stored and s not in results),
        "evaluated": len(evaluated),
        "given_up": sum(1 for s in sources if "given up" in (results.get(s, ("", ""))[1] or "")),
        "other_errors": sum(
            1
            for s in sources
            if results.get(s, ("", None))[0] == "error" and "given up" not in (results[s][1] or "")
        ),
        "evaluated_without_sr_sc": sum(1 for s in evaluated if len(objects.get(s, [])) < 2),
        # jobs given up (failed) although a result was kept: its verdict and the objects
        # delivered before stay, the missing ones never come
        "jobs_given_up": sum(1 for s in sources if s in failed_jobs),
        "objects_expected": len(expected),
        "objects_missing_at_pacs": len(set(expected) - set(at_pacs)),
        "objects_duplicated_at_pacs": len(at_pacs) - len(set(at_pacs)),
        "objects_unexpected_at_pacs": len(set(at_pacs) - set(expected)),
        "dead_letters": int(dead[0][0]),
        **redelivery,
    }


# Orthanc keeps one instance per SOP Instance UID (OverwriteInstances false): a second
# C-STORE of an object it has is acknowledged and dropped, so its REST count can never show
# a duplicate. This Lua filter, which Orthanc calls for every received instance before
# storing it, appends the UID to a file: re-deliveries become countable.
_RECEIPT_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
   local f = io.open("{path}", "a")
   f:write(dicom.SOPInstanceUID .. "\\n")
   f:close()
   return true
end
"""


class CountingOrthanc(Orthanc):
    """The test PACS (tests/conftest.py's Orthanc, same configuration) that also logs
    every C-STORE it receives, in ``root/receipts.txt``."""

    @property
    def receipts_file(self) -> Path:
        return self.root / "receipts.txt"

    def extra_config(self) -> dict[str, Any]:
        lua = self.root / "receipts.lua"
        lua.write_text(_RECEIPT_LUA.format(path=self.receipts_file))
        return {"LuaScripts": [str(lua)]}

    def receipts(self) -> Counter[str]:
        """SOP Instance UID → how many C-STOREs of it Orthanc received."""
        if not self.receipts_file.exists():
            return Counter()
        return Counter(line for line in self.receipts_file.read_text().split() if line)

    def ensure_up(self) -> bool:
        """Restart Orthanc on its own storage when it is not answering (something else on
        the shared machine killed it); True when it had to. Its index keeps what it had."""
        try:
            self.get("/system")
            return False
        except (OSError, urllib.error.URLError):
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.start()
            return True


NOTHING_LOST = {
    "lost": 0,
    "not_yet_qcd": 0,
    "evaluated_without_sr_sc": 0,
    "objects_missing_at_pacs": 0,
    "objects_duplicated_at_pacs": 0,
    "objects_unexpected_at_pacs": 0,
    "dead_letters": 0,
}


def nothing_lost(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures that must be zero, as they are (compare with NOTHING_LOST)."""
    return {k: figures[k] for k in NOTHING_LOST}
