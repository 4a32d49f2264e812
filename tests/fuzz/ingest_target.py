"""The C-STORE handler fuzz target at volume: the node's real Storage SCP, alone.

``qcnode.ingest`` runs in this process exactly as ``qcnode serve`` starts it (``Node`` with
no worker and no sender: chunked receive into ``data_dir/tmp``, header read, refusals,
group commit, fsync, rename), and a pynetdicom SCU sends each hostile input to it over a
loopback association, bytes unchanged (chunked send). Without the worker (decode, model,
report: tests/fuzz/cstore.py and the decode target cover those) a C-STORE takes
milliseconds, which is what makes 100 000 inputs possible on a shared 2-core CPU.

Besides new instances, the fuzzer re-sends the previous input unchanged (duplicate), sends
new bytes under the previous SOP Instance UID (replacement) and sends a request whose SOP
Instance UID is not the dataset's (mismatch), so that every branch of the handler is hit.

A *crash* (a NodeFailure) is any of:

* the handler raised (pynetdicom logs "Exception in the handler" and answers 0xC211), or
  answered a status that is not one of ingest's named ones;
* no C-STORE response: the association was aborted or the node stopped answering;
* acknowledged but not kept: success without a database row and its file, or a refusal
  that lost an instance acknowledged earlier under the same SOP Instance UID;
* refused but kept: a refusal that left a row for a never-acknowledged instance;
* an orphan, found when the node is audited (every ``recycle`` inputs and at the end): a
  file under ``instances/`` without its row, a row without its file, or a leftover
  reception file in ``tmp/``;
* the process dies (the run's summary then stays unfinished; scripts/fuzz reports it).

A traceback that ingest logs while answering a named refusal (its designed catch-all for a
header value pydicom cannot convert) is counted apart ("handled tracebacks"), not a crash.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import select

from qcnode.config import Settings
from qcnode.db import Instance, make_engine, make_sessions
from qcnode.ingest import (
    STORAGE_SOP_CLASSES,
    SUCCESS,
    TRANSFER_SYNTAXES,
    VERIFICATION,
)
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay
from qcnode.node import Node
from tests.conftest import free_port
from tests.fuzz.cstore import NAMED_STATUSES, NodeFailure
from tests.fuzz.dicom_inputs import PLACEHOLDER_SOP_UID, with_new_uid

MODES = ("new", "new", "new", "new", "new", "duplicate", "replace", "mismatch")


def _file_meta_uid(path: Path) -> str:
    try:
        return str(read_file_meta_info(path).get("MediaStorageSOPInstanceUID", ""))
    except Exception:  # unreadable: the SCU will not send it either
        return ""


class _HandlerRecords(logging.Handler):
    """pynetdicom's handler-exception lines, and ingest's logged tracebacks."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.raised: list[str] = []
        self.tracebacks: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        with self._guard:
            if record.name.startswith("pynetdicom") and "Exception in the handler" in text:
                exc = record.exc_info[1] if record.exc_info else None
                self.raised.append(f"{type(exc).__name__}: {exc}" if exc else text)
            elif record.name.startswith("qcnode") and record.exc_info:
                exc = record.exc_info[1]
                self.tracebacks.append(f"{record.name}: {text}: {type(exc).__name__}")

    def drain(self) -> tuple[list[str], list[str]]:
        with self._guard:
            out = (self.raised, self.tracebacks)
            self.raised, self.tracebacks = [], []
        return out


class IngestTarget:
    """A running ingest-only node and one SCU association to it (re-opened when dropped)."""

    def __init__(
        self, root: Path, *, max_dataset_bytes: int = 8 * 1024 * 1024, recycle: int = 5000
    ) -> None:
        self.root = root
        self.max_dataset_bytes = max_dataset_bytes
        self.recycle = recycle
        self.records = _HandlerRecords()
        logging.getLogger().addHandler(self.records)
        guard_reactor_polls()  # as the sender (qcnode.netio)
        self.ae = AE(ae_title="FUZZSCU")
        self.ae.add_requested_context(VERIFICATION)
        for uid in STORAGE_SOP_CLASSES:  # one context per syntax: each is accepted alone
            for syntax in TRANSFER_SYNTAXES:
                self.ae.add_requested_context(uid, syntax)
        self.ae.dimse_timeout = 60
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.modes: Counter[str] = Counter()
        self.handled_tracebacks: Counter[str] = Counter()
        self.nodes = 0
        self.scratch = root / "inputs"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._previous: tuple[bytes, str] | None = None
        self._start_node()

    # --- the node ------------------------------------------------------------------

    def _start_node(self) -> None:
        self.nodes += 1
        self.settings = Settings(
            data_dir=self.root / f"node{self.nodes}",
            bind_address="127.0.0.1",
            port=free_port(),
            web_port=0,
            workers=0,
            max_dataset_bytes=self.max_dataset_bytes,
            min_free_disk_bytes=0,
            destinations=(),
        )
        self.node = Node(settings=self.settings)
        self.node.start(senders=False)
        assert self.node.address is not None
        self.port = self.node.address[1]
        self.engine = make_engine(self.settings, readonly=True)
        self.sessions = make_sessions(self.engine)
        self.assoc: Association | None = None
        self.acknowledged: set[str] = set()
        self.sent_here = 0
        self._previous = None

    def _stop_node(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None
        self.node.close()
        self.engine.dispose()

    def _association(self) -> Association:
        if self.assoc is None or not self.assoc.is_established:
            assoc = self.ae.associate("127.0.0.1", self.port, ae_title="QCNODE")
            if not assoc.is_established:
                raise NodeFailure("the node refused or did not answer an association")
            set_nodelay(assoc_socket(assoc))  # as a DCMTK modality: no Nagle stalls
            self.assoc = assoc
        return self.assoc

    # --- one input -----------------------------------------------------------------

    def _prepare(self, data: bytes, mode: str) -> tuple[bytes, str, str]:
        """The bytes to send, their SOP Instance UID and the mode actually used."""
        previous = self._previous
        if mode == "duplicate" and previous is not None:
            return previous[0], previous[1], mode
        if mode == "replace" and previous is not None:
            uid = previous[1]
            return data.replace(PLACEHOLDER_SOP_UID.encode(), uid.encode()), uid, mode
        at = data.find(PLACEHOLDER_SOP_UID.encode())
        if at < 0:  # a mutation hit the UID: send() reads the one in the file meta
            return data, "", "new"
        fresh, uid = with_new_uid(data)
        if mode == "mismatch" and at >= 0:  # the file meta's UID (the request's) only
            return data[:at] + uid.encode() + data[at + len(uid) :], uid, mode
        return fresh, uid, "new"

    def send(self, data: bytes, mode: str = "new") -> int | None:
        """C-STORE one input; its status, or None when the SCU could not send it (no
        readable file meta, or no accepted context for its SOP class: not the node's
        doing). Raises NodeFailure for a crash (module docstring)."""
        if self.sent_here >= self.recycle:
            failures = self.audit()
            self._stop_node()
            shutil.rmtree(self.settings.data_dir, ignore_errors=True)
            self._start_node()
            if failures:
                raise failures[0]
        data, uid, mode = self._prepare(data, mode)
        path = self.scratch / "input.dcm"
        path.write_bytes(data)
        uid = uid or _file_meta_uid(path)
        assoc = self._association()
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            status = assoc.send_c_store(path)
        except (AttributeError, ValueError, KeyError, EOFError, OSError):
            return None
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
        self.sent += 1
        self.sent_here += 1
        self.modes[mode] += 1
        raised, tracebacks = self.records.drain()
        for line in tracebacks:
            self.handled_tracebacks[line[:160]] += 1
        if "Status" not in status:
            self.assoc = None
            raise NodeFailure("no C-STORE response (association aborted or timed out)")
        code = int(status.Status)
        self.statuses[code] += 1
        if raised:
            raise NodeFailure(f"the C-STORE handler raised: {raised[0]}"[:300])
        if code not in NAMED_STATUSES:
            raise NodeFailure(f"unexpected C-STORE status 0x{code:04X}")
        self._previous = (data, uid)
        self._check_kept(uid, code)
        return code

    def _check_kept(self, uid: str, code: int) -> None:
        with self.sessions() as s:
            rel = s.scalar(select(Instance.path).where(Instance.sop_instance_uid == uid))
        kept = rel is not None and (self.settings.data_dir / rel).is_file()
        if code == SUCCESS:
            if not kept:
                raise NodeFailure("acknowledged but not kept (no row or no file)")
            self.acknowledged.add(uid)
        elif uid in self.acknowledged:
            if not kept:
                raise NodeFailure("a refusal lost an instance acknowledged earlier")
        elif rel is not None:
            raise NodeFailure(f"refused (0x{code:04X}) but kept a row")

    # --- orphans -------------------------------------------------------------------

    def audit(self) -> list[NodeFailure]:
        """Files against rows, and leftover reception files (nothing is in flight now)."""
        data_dir = self.settings.data_dir
        with self.sessions() as s:
            rows = {str(p) for p in s.scalars(select(Instance.path))}
        files = {str(p.relative_to(data_dir)) for p in (data_dir / "instances").rglob("*.dcm")}
        leftovers = [p.name for p in (data_dir / "tmp").iterdir() if p.is_file()]
        out = []
        if files - rows:
            out.append(NodeFailure(f"orphan: {len(files - rows)} instance file(s) without a row"))
        if rows - files:
            out.append(NodeFailure(f"orphan: {len(rows - files)} row(s) without their file"))
        if leftovers:
            out.append(NodeFailure(f"orphan: {len(leftovers)} leftover reception file(s) in tmp"))
        return out

    def echo_ok(self) -> bool:
        status = self._association().send_c_echo()
        return "Status" in status and int(status.Status) == 0

    def close(self) -> list[NodeFailure]:
        """The final audit, then stop; the audit's failures (orphans) are returned."""
        failures = self.audit()
        self._stop_node()
        logging.getLogger().removeHandler(self.records)
        return failures
