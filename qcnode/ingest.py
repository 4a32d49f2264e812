"""Ingest: the Verification and Storage SCP (DESIGN §3).

The C-STORE handler is thin on purpose: pynetdicom streams the dataset to a file in
``data_dir/tmp`` (chunked receive, never decoded), the handler reads only the header,
fsyncs and renames the file into place, commits the instance and its job row, wakes the
worker and answers success. Everything slow (decoding, the model) happens in the worker.
Every refusal is a named failure status, a log line and an audit row; never a silent drop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qcnode import audit
from qcnode.audit import Auditor
from qcnode.config import Settings
from qcnode.db import QUEUED, AuditEvent, Instance, Job
from qcnode.errors import ConfigError, DecodeError, StorageError
from qcnode.groupcommit import GroupCommit
from qcnode.ingestheader import CHEST_SOP_CLASSES, header_text, instance_row, is_chest
from qcnode.netio import (
    assoc_socket,
    guard_reactor_polls,
    receive_error,
    set_nodelay,
    start_chunked_receive,
    stop_chunked_receive,
    tune_acceptor,
)
from qcnode.store import FileStore, start_writeback

log = logging.getLogger(__name__)

# Named C-STORE statuses (PS3.4 B.2.3; 0xA7xx out of resources, 0xCxxx cannot understand)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_TOO_LARGE = 0xA701
DISK_FULL = 0xA702
IMAGE_TOO_LARGE = 0xA703
CANNOT_UNDERSTAND = 0xC000
NOT_A_CHEST_IMAGE = 0xC001

VERIFICATION = "1.2.840.10008.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STORAGE_SOP_CLASSES = (*CHEST_SOP_CLASSES, SECONDARY_CAPTURE)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent by old units)
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
)
# Start writing a streaming dataset to disk every this many bytes (see Ingest._on_data)
WRITEBACK_CHUNK = 2 * 1024 * 1024


class SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's server with SO_REUSEPORT (``ingest_processes > 1``): every ingest
    process binds the same port and the kernel deals each new connection to one of them.
    pynetdicom's own ``server_bind`` ignores socketserver's ``allow_reuse_port``."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _allowed(entries: tuple[str, ...], ae_title: str, address: str) -> bool:
    """Allow list entries are ``AE`` or ``AE@ADDRESS``; empty list: anyone."""
    if not entries:
        return True
    for entry in entries:
        ae, _, host = entry.strip().partition("@")
        if ae == ae_title and (not host or host == address):
            return True
    return False


class Ingest:
    """The Storage SCP. ``on_stored`` is called after each committed instance (wakes the
    in-process worker); it must not block."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: FileStore,
        on_stored: Callable[[], None] | None = None,
        read_sessions: sessionmaker[Session] | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # the duplicate check only reads: on SQLite it must not queue for the write lock
        self.read_sessions = read_sessions or sessions
        self.auditor = auditor
        self.store = store
        self._rows = GroupCommit(sessions=sessions)
        self.on_stored = on_stored or (lambda: None)
        self.server: ThreadedAssociationServer | None = None
        self._started = False
        self._lock = threading.Lock()
        self.stored = 0

    # --- lifecycle -----------------------------------------------------------------

    def make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs from the peer
        ae.maximum_associations = s.max_associations
        ae.network_timeout = 60
        ae.dimse_timeout = 120
        ae.acse_timeout = 30
        ae.add_supported_context(VERIFICATION)
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        return ae

    def start(self) -> tuple[str, int]:
        """Start listening (non-blocking); returns the bound (address, port)."""
        # Chunked receive: pynetdicom writes the incoming dataset straight to a temporary
        # file; putting that file in data_dir/tmp makes keeping it a rename, not a copy.
        # (process-wide, as pynetdicom has no per-AE option: qcnode.netio)
        start_chunked_receive(str(self.store.tmp))  # a failed write answers 0xA700
        guard_reactor_polls()  # pynetdicom's paused-reactor race (qcnode.netio)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_DATA_RECV, self._on_data),
        ]
        ae = self.make_ae()
        self._started = True
        address = (self.settings.bind_address, self.settings.port)
        if self.settings.ingest_processes > 1:
            # ae.start_server(block=False) with our server class: the same steps
            server = ae.make_server(
                address,
                evt_handlers=handlers,
                ssl_context=self._tls(),
                server_class=SharedPortServer,
            )
            threading.Thread(
                target=make_target(server.serve_forever), name="AcceptorServer", daemon=True
            ).start()
            ae._servers.append(server)  # ae.active_associations counts its associations
        else:
            started = ae.start_server(
                address, block=False, evt_handlers=handlers, ssl_context=self._tls()
            )
            assert started is not None
            server = started
        self.server = server
        host, port = server.server_address[:2]
        log.info(
            "listening as %s on %s:%s",
            self.settings.ae_title,
            host,
            port,
            extra={"ae_title": self.settings.ae_title, "port": port},
        )
        return str(host), int(port)

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert_file is None and s.tls_key_file is None:
            return None
        if s.tls_cert_file is None or s.tls_key_file is None:
            raise ConfigError("DICOM TLS needs both tls_cert_file and tls_key_file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
            if s.tls_ca_file is not None:
                context.load_verify_locations(cafile=str(s.tls_ca_file))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"DICOM TLS: {exc}") from exc
        return context

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        # pynetdicom's and tempfile's settings are process-wide: the last ingest to stop
        # gives them back (qcnode.netio)
        with self._lock:
            started, self._started = self._started, False
        if started:
            stop_chunked_receive()

    # --- association events --------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        set_nodelay(assoc_socket(event.assoc))
        tune_acceptor(event.assoc)  # bulk reads, no polling sleeps (qcnode.netio)

    def _on_requested(self, event: evt.Event) -> None:
        """Calling-AE allow list (optionally with peer address) and per-AE limits."""
        assoc = event.assoc
        primitive: Any = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        if not _allowed(self.settings.allowed_calling_aes, calling, address):
            log.warning(
                "rejected association from %s at %s: calling AE not allowed", calling, address
            )
            self._audit("association_rejected", calling, address, "calling AE not allowed")
            self._syslog_security(calling, address, "calling AE not allowed")
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, calling AE not recognised
            assoc.kill()  # waits until the reject is on the wire, as pynetdicom's own path
            return
        same = [
            a
            for a in assoc.ae.active_associations
            if a is not assoc
            and a.is_acceptor
            and a.is_established
            and a.requestor.ae_title.strip() == calling
        ]
        if len(same) >= self.settings.max_associations_per_ae:
            log.warning("rejected association from %s: per-AE association limit", calling)
            self._audit("association_rejected", calling, address, "per-AE association limit")
            self._syslog_security(calling, address, "per-AE association limit")
            assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, local limit exceeded
            assoc.kill()

    def _on_established(self, event: evt.Event) -> None:
        log.info(
            "association from %s at %s",
            event.assoc.requestor.ae_title.strip(),
            event.assoc.requestor.address,
        )

    def _on_data(self, event: evt.Event) -> None:
        """While a large dataset streams in, start its writeback every few MB (the file
        is pynetdicom's chunked-receive file; reached through its DIMSE message, which
        pynetdicom 3.0 does not expose publicly: without it this is a no-op)."""
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        file = getattr(message, "_data_set_file", None)
        if file is None:
            return
        try:
            written = file.tell()
            done = getattr(file, "_qcnode_writeback", 0)
            if written - done >= WRITEBACK_CHUNK:
                start_writeback(file.fileno(), done, written - done)
                file._qcnode_writeback = written
        except (OSError, ValueError):  # closed meanwhile
            return

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    # --- C-STORE -------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int:
        """The C-STORE handler; it never raises: pynetdicom would answer 0xC211 and leave
        the received file open in data_dir/tmp (RELIABILITY finding 21)."""
        try:
            return self._store(event)
        except Exception:
            log.exception("C-STORE handler failed")
            received = Path(getattr(event.request, "_dataset_path", None) or "")
            if received.name and received.is_file():  # not kept: refuse it, keep the file
                self.store.reject(received, "handler")
                return CANNOT_UNDERSTAND
            return OUT_OF_RESOURCES  # may or may not be kept: the modality sends again

    def _store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        address = str(assoc.requestor.address)
        request: Any = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        sop_class = str(request.AffectedSOPClassUID or "")
        received = Path(event.dataset_path)
        failed = receive_error(request)
        if failed is not None:  # the disk filled (or a limit hit) while it streamed in
            received.unlink(missing_ok=True)
            log.error("cannot write a dataset from %s while receiving it: %s", calling, failed)
            return self._refuse(
                OUT_OF_RESOURCES,
                f"write failed during reception: {failed.strerror or failed}",
                calling,
                address,
                0,
            )
        try:
            size = received.stat().st_size
        except OSError as exc:
            log.error("received dataset vanished before it was kept: %s", exc)
            return OUT_OF_RESOURCES

        if size > self.settings.max_dataset_bytes:
            return self._refuse(
                DATASET_TOO_LARGE, "dataset larger than max_dataset_bytes", calling, address, size
            )
        if self.store.free_bytes() < self.settings.min_free_disk_bytes:
            return self._refuse(
                DISK_FULL, "free disk below min_free_disk_bytes", calling, address, size
            )

        try:
            from qcnode.imaging import read_dataset

            header = read_dataset(received, stop_before_pixels=True)
        except Exception as exc:  # DecodeError, and whatever else a hostile header raises
            if not isinstance(exc, DecodeError):
                log.warning("unreadable header from %s: %s: %s", calling, type(exc).__name__, exc)
            self.store.reject(received, "unreadable")
            return self._refuse(
                CANNOT_UNDERSTAND, "dataset cannot be parsed", calling, address, size
            )
        try:
            same = (
                header.get("SOPInstanceUID") == sop_uid and header.get("SOPClassUID") == sop_class
            )
        except Exception:  # an element pydicom cannot convert on access
            same = False
        if not same:
            # truncated or inconsistent: the dataset is not what the request announced
            self.store.reject(received, "mismatch")
            return self._refuse(
                CANNOT_UNDERSTAND, "SOP Class/Instance UID not as requested", calling, address, size
            )

        try:
            body_part = header_text(header, "BodyPartExamined", 16).upper()
        except Exception:
            body_part = ""
        applicable = is_chest(sop_class, body_part)
        if (
            not applicable
            and self.settings.non_chest == "refuse"
            and sop_class in CHEST_SOP_CLASSES
        ):
            return self._refuse(NOT_A_CHEST_IMAGE, "not a chest radiograph", calling, address, size)

        with self.read_sessions() as session:
            existing = session.execute(
                select(Instance.id, Instance.path).where(Instance.sop_instance_uid == sop_uid)
            ).first()
        if existing is not None:
            if self.store.same_content(existing.path, received):
                log.info("duplicate instance from %s acknowledged, not stored again", calling)
                return SUCCESS
            return self._replace(existing.id, received, sop_uid, calling, address)

        try:
            row = instance_row(header, sop_uid, sop_class, calling, address, applicable)
        except Exception:  # any header value pydicom cannot convert: refuse, keep the file
            log.exception("unusable header from %s", calling)
            self.store.reject(received, "header")
            return self._refuse(
                CANNOT_UNDERSTAND, "header values cannot be used", calling, address, size
            )
        rows, columns = row["rows"], row["columns"]
        if sop_class in CHEST_SOP_CLASSES and rows * columns > self.settings.max_pixels:
            return self._refuse(
                IMAGE_TOO_LARGE, f"image of {rows}x{columns} pixels", calling, address, size
            )
        try:
            placed = self.store.place(received, sop_uid)
            row["path"], row["size_bytes"] = placed.path, placed.size
            instance_id = self._commit(row)
            placed.wait()  # file and directory fsyncs ran while the row was committed
        except (StorageError, OSError) as exc:
            log.error("cannot keep an instance from %s: %s", calling, exc)
            return OUT_OF_RESOURCES
        size = placed.size
        if instance_id is None:
            return SUCCESS  # a concurrent duplicate won the race: same SOP instance, kept once
        with self._lock:
            self.stored += 1
        self.on_stored()
        if self.auditor is not None:
            self.auditor.emit(
                "transferred",
                outcome=audit.SUCCESS,
                source=(calling, address),
                destination=(self.settings.ae_title, ""),
                instances=(audit.Instance(row["study_instance_uid"], sop_class, sop_uid),),
            )
        log.info(
            "stored instance #%d (%s, %.1f MB) from %s in %.0f ms",
            instance_id,
            row["modality"] or "?",
            size / 1e6,
            calling,
            (time.perf_counter() - started) * 1000,
            extra={"instance_id": instance_id, "calling_ae": calling, "bytes": size},
        )
        return SUCCESS

    def _replace(
        self,
        instance_id: int,
        received: Path,
        sop_uid: str,
        calling: str,
        address: str,
    ) -> int:
        """Same SOP Instance UID, different bytes (a corrected image, or a file damaged by a
        power cut before it was acknowledged): keep the new bytes and QC again."""
        try:
            placed = self.store.place(received, sop_uid)
            placed.wait()
            with self.sessions.begin() as session:
                job = session.scalar(select(Job).where(Job.instance_id == instance_id))
                if job is not None:
                    job.state, job.lease_until, job.attempts = QUEUED, None, 0
                session.add(
                    AuditEvent(
                        kind="instance_replaced",
                        instance_id=instance_id,
                        calling_ae=calling[:16],
                        peer_address=address[:64],
                        message="same SOP Instance UID, new content: stored and queued again",
                    )
                )
        except (StorageError, OSError, SQLAlchemyError) as exc:
            log.error("cannot replace instance #%d: %s", instance_id, exc)
            return OUT_OF_RESOURCES
        log.warning("instance #%d re-sent with different content: replaced", instance_id)
        self.on_stored()
        return SUCCESS

    def _commit(self, row: dict[str, Any]) -> int | None:
        """Insert the instance and its job durably, in a batch with any C-STORE of
        another association that is committing at the same time (qcnode.groupcommit)."""
        return self._rows.commit(row)

    def _refuse(self, status: int, why: str, calling: str, address: str, size: int) -> int:
        log.warning(
            "refused an instance from %s (0x%04X): %s",
            calling,
            status,
            why,
            extra={"status": status, "calling_ae": calling, "bytes": size},
        )
        self._audit("store_refused", calling, address, why, status=status, bytes=size)
        if self.auditor is not None:
            self.auditor.emit(
                "transferred",
                outcome=audit.MINOR_FAILURE,
                source=(calling, address),
                destination=(self.settings.ae_title, ""),
                description=f"refused 0x{status:04X}: {why}",
            )
        return status

    def _syslog_security(self, calling: str, address: str, why: str) -> None:
        if self.auditor is not None:
            self.auditor.emit(
                "security",
                outcome=audit.MINOR_FAILURE,
                source=(calling, address),
                destination=(self.settings.ae_title, ""),
                action="E",
                description=f"association rejected: {why}",
            )

    def _audit(self, kind: str, calling: str, address: str, message: str, **detail: Any) -> None:
        try:
            with self.sessions.begin() as session:
                session.add(
                    AuditEvent(
                        kind=kind,
                        calling_ae=calling[:16],
                        peer_address=address[:64],
                        message=message,
                        detail=detail,
                    )
                )
        except SQLAlchemyError as exc:  # the audit must never take the node down
            log.error("cannot write audit event %s: %s", kind, exc)
