"""The C-STORE fuzz target: hostile bytes sent by a pynetdicom SCU to a running node.

The node runs in-process with its worker (FakePredictor, phantom masks: instant), the
real report builder and a FakeSender as the destination, so a hostile image goes all the
way: ingest → queue → decode → model → rules → SR/SC → outbox. Bytes are sent as they are
(pynetdicom chunked send: the dataset after the file meta is not re-encoded).

What counts as a crash:
* a C-STORE status that is not one of ingest's named statuses (0xC211 is pynetdicom's
  answer when the handler raised), an aborted association, a node that stops answering;
* an ERROR log record with a traceback from the node (worker loop error, a report that
  could not be built, a handler exception);
* a kept instance whose job does not finish.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import func, select

from qcnode.config import Destination, Settings
from qcnode.db import DONE, Instance, Job, make_engine, make_sessions
from qcnode.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_TOO_LARGE,
    DISK_FULL,
    IMAGE_TOO_LARGE,
    NOT_A_CHEST_IMAGE,
    OUT_OF_RESOURCES,
    STORAGE_SOP_CLASSES,
    SUCCESS,
    TRANSFER_SYNTAXES,
    VERIFICATION,
)
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay
from qcnode.node import EngineAnalyzer, Node, ReportBuilder
from qcnode.records import View
from qcnode.testing import FakePredictor, FakeSender, frontal_phantom
from tests.conftest import free_port, wait_for
from tests.fuzz.dicom_inputs import with_new_uid

NAMED_STATUSES = {
    SUCCESS,
    OUT_OF_RESOURCES,
    DATASET_TOO_LARGE,
    DISK_FULL,
    IMAGE_TOO_LARGE,
    CANNOT_UNDERSTAND,
    NOT_A_CHEST_IMAGE,
}


class NodeFailure(AssertionError):
    """What the node did wrong with one input (see the module docstring)."""


class _ErrorRecords(logging.Handler):
    """Collects ERROR records with a traceback (or pynetdicom's handler-exception line)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("qcnode", "pynetdicom")):
            return  # the fuzzer's own encoders log too
        if record.name == "qcnode.ingest" and record.getMessage().startswith("unusable header"):
            return  # ingest's designed refusal (0xC000, audited): handled, not a crash
        if record.exc_info or "Exception in the handler" in record.getMessage():
            with self._lock2:
                self.records.append(record)

    def drain(self) -> list[logging.LogRecord]:
        with self._lock2:
            out, self.records = self.records, []
        return out


def _phantom(img):  # type: ignore[no-untyped-def]
    return View.FRONTAL, frontal_phantom(img.pixels.shape)


class CStoreTarget:
    """A running node and one SCU association to it (re-opened when the node drops it)."""

    _shared: ClassVar[CStoreTarget | None] = None

    def __init__(self, root: Path, *, max_dataset_bytes: int = 8 * 1024 * 1024) -> None:
        self.settings = Settings(
            data_dir=root / "node",
            bind_address="127.0.0.1",
            port=free_port(),
            web_port=0,
            workers=1,
            batch_size=4,
            batch_max_wait_ms=5,
            lease_seconds=30,
            max_dataset_bytes=max_dataset_bytes,
            min_free_disk_bytes=0,
            destinations=(Destination(ae_title="FAKEPACS", host="127.0.0.1", port=1),),
        )
        self.sender = FakeSender()
        predictor = FakePredictor(source=_phantom)
        self.node = Node(
            settings=self.settings,
            analyzer_factory=lambda: EngineAnalyzer(predictor=predictor, settings=self.settings),
            builder=ReportBuilder(settings=self.settings),
            sender=self.sender,
        )
        self.errors = _ErrorRecords()
        logging.getLogger().addHandler(self.errors)
        self.node.start()
        assert self.node.address is not None
        self.port = self.node.address[1]
        guard_reactor_polls()  # as the sender (qcnode.netio)
        self.ae = AE(ae_title="FUZZSCU")
        self.ae.add_requested_context(VERIFICATION)
        for uid in STORAGE_SOP_CLASSES:  # one context per syntax: each is accepted alone
            for syntax in TRANSFER_SYNTAXES:
                self.ae.add_requested_context(uid, syntax)
        self.assoc: Association | None = None
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.scratch = root / "inputs"
        self.scratch.mkdir(parents=True, exist_ok=True)

    @classmethod
    def shared(cls, root: Path) -> CStoreTarget:
        if cls._shared is None:
            cls._shared = cls(root)
        return cls._shared

    @classmethod
    def close_shared(cls) -> None:
        if cls._shared is not None:
            cls._shared.close()
            cls._shared = None

    def _association(self) -> Association:
        if self.assoc is None or not self.assoc.is_established:
            assoc = self.ae.associate("127.0.0.1", self.port, ae_title="QCNODE")
            if not assoc.is_established:
                raise NodeFailure("the node refused or did not answer an association")
            set_nodelay(assoc_socket(assoc))  # as a DCMTK modality: no Nagle stalls
            self.assoc = assoc
        return self.assoc

    def send(self, data: bytes) -> int | None:
        """C-STORE one input as raw bytes; the status, or None when the SCU itself could
        not send it (the file meta pynetdicom needs is unreadable: not the node's fault)."""
        data, _ = with_new_uid(data)
        path = self.scratch / "input.dcm"
        path.write_bytes(data)
        assoc = self._association()
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            status = assoc.send_c_store(path)
        except (AttributeError, ValueError, KeyError, EOFError, OSError):
            return None  # no usable file meta, or no accepted context for its SOP class
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
        self.sent += 1
        if "Status" not in status:
            self.assoc = None
            raise NodeFailure("no C-STORE response (association aborted or timed out)")
        code = int(status.Status)
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if code not in NAMED_STATUSES:
            raise NodeFailure(f"unexpected C-STORE status 0x{code:04X}")
        return code

    def unfinished_jobs(self) -> int:
        engine = make_engine(self.settings, readonly=True)
        try:
            with make_sessions(engine)() as s:
                return int(
                    s.scalar(select(func.count()).select_from(Job).where(Job.state != DONE)) or 0
                )
        finally:
            engine.dispose()

    def kept(self) -> int:
        engine = make_engine(self.settings, readonly=True)
        try:
            with make_sessions(engine)() as s:
                return int(s.scalar(select(func.count()).select_from(Instance)) or 0)
        finally:
            engine.dispose()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the worker has finished every kept instance."""
        wait_for(lambda: self.unfinished_jobs() == 0, timeout, "the worker to finish every job")

    def drain_node_errors(self) -> list[NodeFailure]:
        """The node's tracebacks since the last call, as failures (worker, report, handler)."""
        try:
            self.settle()
        except AssertionError as exc:
            return [NodeFailure(str(exc))]
        out = []
        for record in self.errors.drain():
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text = f"{text}: {type(exc).__name__}: {exc}"
            out.append(NodeFailure(f"{record.name}: {text}"[:500]))
        return out

    def echo_ok(self) -> bool:
        assoc = self._association()
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.node.close()
        logging.getLogger().removeHandler(self.errors)
        time.sleep(0)
