"""A C-STORE storm: many tiny datasets over many short associations from several
concurrent pynetdicom requestors, against the node's real ingest in its own process.

Built to chase RELIABILITY finding 23 (a C-STORE now and then never answered). It counts,
per C-STORE, whether a response came; with ``--unguarded`` the requestors run pynetdicom
3.0.4's reactor as shipped (qcnode.netio's paused-reactor guard removed), which is how the
race was reproduced (about 1 response lost in 4 000 with 4 requestor threads in one process
on the shared 2-core machine). At the end every SOP instance that got a success must have
its row in the node's database (nothing acknowledged lost).

    PYTHONPATH=. .venv/bin/python -m tests.reliability.storm --threads 4 --stores 20000
    ... --scp bare --stores 200000      # the network path alone: ingest's tuned acceptor
    ... --scp bare --unguarded --stores 40000   # the race, as before the fix

``--scp ingest`` (default) checks at the end that every acknowledged instance has its row.
Figures go to ``.cache/reliability/storm-<scp>[-unguarded].json``; exit status 1 when a response
was lost or an acknowledged instance is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse import DIMSEServiceProvider
from sqlalchemy import create_engine, text

from qcnode import netio
from qcnode.config import Settings
from qcnode.ingestheader import CHEST_SOP_CLASSES
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".cache" / "reliability"
CR = CHEST_SOP_CLASSES[0]

# The node: ingest only (no worker, no sender), as `serve` starts it, in its own process
NODE = """
import sys, time
from pathlib import Path
from qcnode.config import Settings
from qcnode.node import Node
s = Settings(data_dir=Path(sys.argv[1]), bind_address="127.0.0.1", port=int(sys.argv[2]),
             web_port=0, workers=0, min_free_disk_bytes=0, destinations=(),
             max_associations=64, max_associations_per_ae=64)
node = Node(settings=s)
node.start(senders=False)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

# Or the network path alone: pynetdicom's SCP with ingest's socket tuning (qcnode.netio)
# and a handler that answers success at once (about ten times the C-STOREs per second)
BARE = """
import sys, time
from pynetdicom import AE, evt
from qcnode.ingest import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay, tune_acceptor
guard_reactor_polls()
def on_open(event):
    set_nodelay(assoc_socket(event.assoc))
    tune_acceptor(event.assoc)
ae = AE(ae_title="QCNODE")
ae.maximum_pdu_size = 0
ae.maximum_associations = 64
ae.network_timeout = 60
for uid in STORAGE_SOP_CLASSES:
    ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, lambda event: 0x0000)]
ae.start_server(("127.0.0.1", int(sys.argv[2])), block=False, evt_handlers=handlers)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def tiny(side: int = 8) -> Dataset:
    """A valid CR chest image of ``side``² pixels (a few hundred bytes): every C-STORE
    costs the network path, the handler, one fsync and one commit, and little else."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientName = "CR", "CHEST", "STORM^TEST"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(side * side * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class _PynetdicomLog(logging.Handler):
    """pynetdicom's warnings and errors, counted by message."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[str] = Counter()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.counts[record.getMessage()[:80]] += 1


class Requestor:
    """One thread: associations of ``per_assoc`` C-STOREs each until ``stores`` are sent;
    a new instance every ``new_every`` stores, re-sends (duplicates) in between."""

    def __init__(self, port: int, name: str, stores: int, per_assoc: int, timeout: float):
        self.port, self.name, self.stores, self.per_assoc = port, name, stores, per_assoc
        self.timeout = timeout
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.no_response: list[str] = []
        self.associations = 0
        self.acknowledged: set[str] = set()

    def run(self, new_every: int) -> None:
        ae = AE(ae_title=self.name)
        ae.add_requested_context(CR, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.network_timeout = 30
        ae.dimse_timeout = self.timeout
        ds = tiny()
        while self.sent < self.stores:
            assoc = ae.associate("127.0.0.1", self.port, ae_title="QCNODE")
            if not assoc.is_established:
                time.sleep(0.5)
                continue
            self.associations += 1
            set_nodelay(assoc_socket(assoc))
            for _ in range(min(self.per_assoc, self.stores - self.sent)):
                if self.sent % new_every == 0:
                    ds.SOPInstanceUID = generate_uid()
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                status = assoc.send_c_store(ds)
                self.sent += 1
                if "Status" not in status:
                    self.no_response.append(f"{time.strftime('%H:%M:%S')} #{self.sent}")
                    break  # pynetdicom aborted the association: open another
                self.statuses[int(status.Status)] += 1
                if int(status.Status) == 0x0000:
                    self.acknowledged.add(str(ds.SOPInstanceUID))
            if assoc.is_established:
                assoc.release()


def storm(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    if args.unguarded:  # pynetdicom as shipped: what finding 23 was
        DIMSEServiceProvider.get_msg = netio._get_msg  # type: ignore[method-assign]
    else:
        guard_reactor_polls()
    log = _PynetdicomLog()
    logging.getLogger("pynetdicom").addHandler(log)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = NODE if args.scp == "ingest" else BARE
    node = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", code, str(root / "node"), str(port)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert node.stdout is not None and node.stdout.readline().strip() == b"ready"
        per_thread = args.stores // args.threads
        requestors = [
            Requestor(port, f"STORM{i}", per_thread, args.per_assoc, args.timeout)
            for i in range(args.threads)
        ]
        threads = [
            threading.Thread(target=r.run, args=(args.new_every,), daemon=True) for r in requestors
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            done = sum(r.sent for r in requestors)
            print(f"{time.monotonic() - t0:.0f} s: {done} C-STOREs", flush=True)
        seconds = time.monotonic() - t0
    finally:
        node.terminate()
        node.wait(30)
        if node.stdout is not None:
            node.stdout.close()
        logging.getLogger("pynetdicom").removeHandler(log)
    acknowledged = set().union(*(r.acknowledged for r in requestors))
    kept = acknowledged
    if args.scp == "ingest":
        engine = create_engine(Settings(data_dir=root / "node").database)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid FROM instances"))
            kept = {row[0] for row in rows}
        engine.dispose()
    statuses: Counter[int] = sum((r.statuses for r in requestors), Counter())
    return {
        "guarded": not args.unguarded,
        "scp": args.scp,
        "threads": args.threads,
        "c_stores_sent": sum(r.sent for r in requestors),
        "associations": sum(r.associations for r in requestors),
        "statuses": {f"0x{k:04X}": v for k, v in sorted(statuses.items())},
        "no_response": sum(len(r.no_response) for r in requestors),
        "no_response_at": [x for r in requestors for x in r.no_response][:50],
        "instances_acknowledged": len(acknowledged),
        "acknowledged_not_kept": len(acknowledged - kept),
        "pynetdicom_log": dict(log.counts),
        "seconds": round(seconds, 1),
        "c_stores_per_second": round(sum(r.sent for r in requestors) / seconds, 1),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--stores", type=int, default=100_000, help="C-STOREs in all")
    parser.add_argument("--per-assoc", type=int, default=200, help="C-STOREs per association")
    parser.add_argument("--new-every", type=int, default=4, help="a new instance every N")
    parser.add_argument("--timeout", type=float, default=10.0, help="requestors' DIMSE timeout")
    parser.add_argument(
        "--scp", choices=["ingest", "bare"], default="ingest", help="bare: the network path alone"
    )
    parser.add_argument("--unguarded", action="store_true", help="pynetdicom's reactor as shipped")
    parser.add_argument("--name", default="")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcnode-storm-") as tmp:
        figures = storm(args, Path(tmp))
    name = args.name or f"storm-{args.scp}" + ("-unguarded" if args.unguarded else "")
    (OUT / f"{name}.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 1 if figures["no_response"] or figures["acknowledged_not_kept"] else 0


if __name__ == "__main__":
    sys.exit(main())
