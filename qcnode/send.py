"""The sender: delivers the transactional outbox to each destination by C-STORE.

One dispatcher thread per destination (a PACS that is down never delays another). A
dispatcher claims due rows with a short lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several nodes can share an outbox), sends them over one reused association, and marks
each row sent or schedules a retry with exponential backoff; after
``send_max_attempts`` a row is a dead letter (logged, audited, listed by
``qcnode outbox``). Result UIDs are deterministic, so a resend after a crash between the
PACS's success and our commit replaces instead of duplicating at the PACS.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from qcnode import audit
from qcnode.audit import Auditor
from qcnode.config import Destination, Settings
from qcnode.db import (
    DEAD,
    PENDING,
    SENT,
    AuditEvent,
    Clock,
    Instance,
    Outbox,
    Result,
    ResultObject,
    utcnow,
)
from qcnode.errors import DeliveryError
from qcnode.netio import assoc_socket, guard_reactor_polls, set_nodelay
from qcnode.store import FileStore
from qcnode.worker import destination_key

log = logging.getLogger(__name__)

# Result object SOP classes proposed to a destination
RESULT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
)
RESULT_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SC_COMPRESSED_SYNTAXES = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50")  # RLE, JPEG baseline
CLAIM_LEASE = dt.timedelta(seconds=60)
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4: what we record when no context was accepted
MAX_BACKOFF_SECONDS = 600.0


class Sender(Protocol):
    """The transport seam: DicomSender here, FakeSender in qcnode.testing."""

    def store(self, destination: Destination, path: Path) -> int:
        """C-STORE one file; the DICOM status. Raises DeliveryError when the destination
        cannot be reached (no association)."""
        ...

    def idle(self, destination: Destination) -> None:
        """Nothing more to send for now: the association may be released."""
        ...

    def close(self) -> None: ...


def is_delivered(status: int) -> bool:
    """Success and warnings (0xB000-range coercions) count as delivered."""
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF or status == 0x0107


def _close_even_if_shutdown_fails(self: AssociationSocket) -> None:
    sock = self.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _fix_refused_connection_leak() -> None:
    """pynetdicom 3.0.4 skips ``close()`` when ``shutdown()`` fails, which it always does
    for a refused connection: while a PACS is down every retry would leak a socket until
    the garbage collector finds it. Close it in any case (idempotent)."""
    if AssociationSocket._shutdown_socket is not _close_even_if_shutdown_fails:
        AssociationSocket._shutdown_socket = _close_even_if_shutdown_fails  # type: ignore[method-assign]


class DicomSender:
    """C-STORE SCU with one reused association per destination and TCP_NODELAY."""

    def __init__(self, *, ae_title: str, timeout: float = 30.0) -> None:
        _fix_refused_connection_leak()
        guard_reactor_polls()  # pynetdicom's paused-reactor race (qcnode.netio)
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0
        self.ae.acse_timeout = timeout
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        for uid in RESULT_SOP_CLASSES:
            self.ae.add_requested_context(uid, list(RESULT_TRANSFER_SYNTAXES))
        # a compressed overlay (sc_compression) needs its own contexts: pynetdicom sends
        # compressed pixels only under exactly their transfer syntax
        for syntax in SC_COMPRESSED_SYNTAXES:
            self.ae.add_requested_context(SECONDARY_CAPTURE, syntax)
        self._assocs: dict[str, Association] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def _assoc(self, dest: Destination) -> Association:
        key = destination_key(dest)
        assoc = self._assocs.get(key)
        if assoc is not None and assoc.is_established:
            return assoc
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda e: set_nodelay(assoc_socket(e.assoc)))]
        assoc = self.ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            evt_handlers=handlers,
            tls_args=self._tls(dest),
        )
        if not assoc.is_established:
            raise DeliveryError(f"no association with {key}")
        self._assocs[key] = assoc
        return assoc

    def _tls(self, dest: Destination) -> tuple[ssl.SSLContext, str] | None:
        """DICOM TLS (BCP 195: TLS 1.2+) when the destination names a CA file. The PACS
        certificate must chain to that CA; its host name is not checked (PACS are often
        addressed by IP), but sent for SNI."""
        if dest.tls_ca_file is None:
            return None
        key = destination_key(dest)
        if key not in self._contexts:
            try:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
                context.load_verify_locations(cafile=str(dest.tls_ca_file))
                context.check_hostname = False
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                if dest.tls_cert_file is not None and dest.tls_key_file is not None:
                    context.load_cert_chain(dest.tls_cert_file, dest.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise DeliveryError(f"TLS settings of {key}: {exc}") from exc
            self._contexts[key] = context
        return self._contexts[key], dest.host

    def store(self, destination: Destination, path: Path) -> int:
        assoc = self._assoc(destination)
        try:
            status = assoc.send_c_store(path)
        except ValueError as exc:  # no accepted presentation context for this object
            log.warning("%s did not accept this object: %s", destination_key(destination), exc)
            return SOP_CLASS_NOT_SUPPORTED
        except (RuntimeError, OSError) as exc:
            assoc.abort()
            raise DeliveryError(f"C-STORE to {destination_key(destination)}: {exc}") from exc
        if "Status" not in status:  # no response: connection lost, timed out, aborted
            assoc.abort()
            raise DeliveryError(f"no C-STORE response from {destination_key(destination)}")
        return int(status.Status)

    def idle(self, destination: Destination) -> None:
        assoc = self._assocs.pop(destination_key(destination), None)
        if assoc is not None and assoc.is_established:
            assoc.release()

    def close(self) -> None:
        for key in list(self._assocs):
            assoc = self._assocs.pop(key)
            if assoc.is_established:
                assoc.release()


def backoff_seconds(settings: Settings, attempts: int) -> float:
    return float(
        min(settings.send_backoff_seconds * 2 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS)
    )


class Dispatcher:
    """Delivers one destination's outbox rows."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: FileStore,
        sender: Sender,
        destination: Destination,
        clock: Clock = utcnow,
        batch: int = 32,
        idle_release_seconds: float = 5.0,
        auditor: Auditor | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.sender = sender
        self.destination = destination
        self.key = destination_key(destination)
        self.clock = clock
        self.batch = batch
        self.idle_release_seconds = idle_release_seconds
        self.wake = threading.Event()
        self.sent = 0
        self.auditor = auditor

    def run(self, stop: threading.Event, poll_seconds: float = 0.5) -> None:
        log.info("sender for %s started", self.key)
        last_work = time.monotonic()
        connected = False
        while not stop.is_set():
            try:
                n = self.run_once()
            except Exception:
                log.exception("sender loop error for %s; retrying", self.key)
                n = 0
                stop.wait(1.0)
            if n:
                last_work, connected = time.monotonic(), True
                continue
            if connected and time.monotonic() - last_work > self.idle_release_seconds:
                self.sender.idle(self.destination)
                connected = False
            self.wake.wait(poll_seconds)
            self.wake.clear()
        self.sender.idle(self.destination)

    def _claim(self) -> list[tuple[int, str, int]]:
        now = self.clock()
        with self.sessions.begin() as session:
            rows = session.execute(
                select(Outbox.id, ResultObject.path, Outbox.attempts)
                .join(ResultObject, ResultObject.id == Outbox.object_id)
                .where(
                    Outbox.destination == self.key,
                    Outbox.state == PENDING,
                    Outbox.next_attempt_at <= now,
                )
                .order_by(Outbox.id)
                .limit(self.batch)
                .with_for_update(skip_locked=True, of=Outbox)
            ).all()
            if rows:
                session.execute(
                    update(Outbox)
                    .where(Outbox.id.in_([r[0] for r in rows]))
                    .values(next_attempt_at=now + CLAIM_LEASE)
                )
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def run_once(self) -> int:
        """Send what is due; returns how many rows were delivered."""
        claimed = self._claim()
        delivered = 0
        for i, (row_id, rel, attempts) in enumerate(claimed):
            try:
                status = self.sender.store(self.destination, self.store.absolute(rel))
            except DeliveryError as exc:
                # The destination is unreachable: every claimed row waits for the backoff.
                for other_id, _, other_attempts in claimed[i:]:
                    self._failed(other_id, other_attempts + 1, str(exc))
                return delivered
            if is_delivered(status):
                self._sent(row_id)
                delivered += 1
            else:
                self._failed(row_id, attempts + 1, f"status 0x{status:04X}")
        return delivered

    def _audit(self, session: Session, row_id: int, outcome: int, reason: str = "") -> None:
        if self.auditor is None:
            return
        row = session.execute(
            select(
                Instance.study_instance_uid,
                ResultObject.sop_class_uid,
                ResultObject.sop_instance_uid,
            )
            .select_from(Outbox)
            .join(ResultObject, ResultObject.id == Outbox.object_id)
            .join(Result, Result.id == ResultObject.result_id)
            .join(Instance, Instance.id == Result.instance_id)
            .where(Outbox.id == row_id)
        ).first()
        if row is None:
            return
        self.auditor.emit(
            "transferred",
            outcome=outcome,
            source=(self.settings.ae_title, ""),
            destination=(self.destination.ae_title, f"{self.destination.host}"),
            instances=(audit.Instance(row[0], row[1], row[2]),),
            description=reason,
        )

    def _sent(self, row_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(Outbox)
                .where(Outbox.id == row_id)
                .values(state=SENT, sent_at=self.clock(), last_error=None)
            )
            self._audit(session, row_id, audit.SUCCESS)
        self.sent += 1
        log.debug("delivered outbox row #%d to %s", row_id, self.key)

    def _failed(self, row_id: int, attempts: int, error: str) -> None:
        dead = attempts >= self.settings.send_max_attempts
        delay = backoff_seconds(self.settings, attempts)
        with self.sessions.begin() as session:
            session.execute(
                update(Outbox)
                .where(Outbox.id == row_id)
                .values(
                    state=DEAD if dead else PENDING,
                    attempts=attempts,
                    last_error=error[:2000],
                    next_attempt_at=self.clock() + dt.timedelta(seconds=delay),
                )
            )
            if dead:
                self._audit(session, row_id, audit.SERIOUS_FAILURE, f"dead letter: {error}")
                session.add(
                    AuditEvent(
                        kind="dead_letter",
                        message=f"outbox row #{row_id} to {self.key}: {error}"[:2000],
                        detail={"outbox_id": row_id, "destination": self.key, "attempts": attempts},
                    )
                )
        if dead:
            log.error(
                "dead letter: outbox row #%d to %s after %d attempts: %s",
                row_id,
                self.key,
                attempts,
                error,
                extra={"outbox_id": row_id, "destination": self.key},
            )
        else:
            log.warning(
                "delivery to %s failed (attempt %d, retry in %.1f s): %s",
                self.key,
                attempts,
                delay,
                error,
            )


def reset_leases(sessions: sessionmaker[Session]) -> None:
    """At start-up: rows claimed by a sender that died are due again now. This also cuts
    short the backoff of failed rows (one early retry); a resend of the same deterministic
    UID is harmless at the PACS."""
    with sessions.begin() as session:
        session.execute(
            update(Outbox)
            .where(Outbox.state == PENDING, Outbox.next_attempt_at > utcnow())
            .values(next_attempt_at=utcnow())
        )


# --- qcnode outbox ---------------------------------------------------------------------


def outbox_summary(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Counts per destination and state, and the dead letters."""
    with sessions() as session:
        counts = session.execute(
            select(Outbox.destination, Outbox.state, func.count()).group_by(
                Outbox.destination, Outbox.state
            )
        ).all()
        dead = session.execute(
            select(
                Outbox.id,
                Outbox.destination,
                Outbox.attempts,
                Outbox.last_error,
                ResultObject.kind,
                ResultObject.sop_instance_uid,
            )
            .join(ResultObject, ResultObject.id == Outbox.object_id)
            .where(Outbox.state == DEAD)
            .order_by(Outbox.id)
        ).all()
    summary: dict[str, dict[str, int]] = {}
    for destination, state, n in counts:
        summary.setdefault(destination, {})[state] = int(n)
    return {
        "destinations": summary,
        "dead_letters": [
            {
                "id": r[0],
                "destination": r[1],
                "attempts": r[2],
                "error": r[3],
                "kind": r[4],
                "sop_instance_uid": r[5],
            }
            for r in dead
        ],
    }


def retry_dead(sessions: sessionmaker[Session], *, clock: Clock = utcnow) -> int:
    """Dead letters become pending again, due now, with a fresh attempt count."""
    with sessions.begin() as session:
        result = session.execute(
            update(Outbox)
            .where(Outbox.state == DEAD)
            .values(state=PENDING, attempts=0, next_attempt_at=clock(), last_error=None)
        )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, kw_only=True)
class OutboxOptions:
    """``qcnode outbox``'s flags (DESIGN §9), built once by qcnode.cli."""

    retry_dead: bool  # queue dead letters again before listing
    json: bool  # the summary as JSON instead of lines


def outbox_command(settings: Settings, options: OutboxOptions) -> int:
    """``qcnode outbox [--json] [--retry-dead]``: delivery state and dead letters."""
    from qcnode.db import make_engine, make_sessions, upgrade

    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_sessions(engine)
    try:
        if options.retry_dead:
            n = retry_dead(sessions)
            print(f"{n} dead letter(s) queued again; a running node sends them now")
        summary = outbox_summary(sessions)
    finally:
        engine.dispose()
    if options.json:
        print(json.dumps(summary, indent=2))
        return 0
    if not summary["destinations"]:
        print("outbox is empty")
    for destination, states in sorted(summary["destinations"].items()):
        parts = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        print(f"{destination}: {parts}")
    for d in summary["dead_letters"]:
        print(
            f"dead letter #{d['id']} {d['kind']} {d['sop_instance_uid']} -> {d['destination']}"
            f" after {d['attempts']} attempts: {d['error']}"
        )
    return 0
