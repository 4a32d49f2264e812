"""Audit trail to syslog in the IHE ATNA style (optional; the audit_events table is always on).

Each event is a DICOM Audit Message (PS3.15 A.5) in an RFC 5424 syslog message, sent over
UDP or TCP (RFC 6587 octet counting) by a background thread, so that a slow or absent
audit repository never delays a C-STORE. Messages carry identifiers (AE titles, addresses,
Study/SOP Instance UIDs), never patient names or IDs.

Events: DICOM Instances Transferred (110104) for every kept image, refusal and delivery;
Security Alert (110113) for a rejected association; Application Activity (110100) when
the node starts and stops.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from qcnode.config import Settings
from qcnode.errors import ConfigError

log = logging.getLogger(__name__)

# EventOutcomeIndicator (PS3.15 A.5.1)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8
PRI = 10 * 8 + 5  # facility authpriv (10), severity notice (5)
MSGID = "IHE+RFC-3881"

_CODES = {
    "transferred": ("110104", "DICOM Instances Transferred"),
    "security": ("110113", "Security Alert"),
    "activity": ("110100", "Application Activity"),
}


@dataclass(frozen=True)
class Instance:
    """What an event is about: ids only."""

    study_uid: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def _code(parent: ET.Element, tag: str, code: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})


def audit_message(
    kind: str,
    *,
    outcome: int,
    source: tuple[str, str],
    destination: tuple[str, str],
    audit_source: str,
    instances: tuple[Instance, ...] = (),
    action: str = "C",
    description: str = "",
    when: dt.datetime | None = None,
) -> bytes:
    """The DICOM Audit Message XML; source and destination are (AE title, address)."""
    code, meaning = _CODES[kind]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": (when or dt.datetime.now(dt.UTC)).isoformat(),
            "EventOutcomeIndicator": str(outcome),
        },
    )
    _code(ident, "EventID", code, meaning)
    if kind == "activity":
        start = description != "stop"
        _code(
            ident,
            "EventTypeCode",
            "110120" if start else "110121",
            "Application Start" if start else "Application Stop",
        )
    for (user, address), requestor, role in (
        (source, True, ("110153", "Source Role ID")),
        (destination, False, ("110152", "Destination Role ID")),
    ):
        attrs = {"UserID": user or "-", "UserIsRequestor": "true" if requestor else "false"}
        if address:
            attrs |= {"NetworkAccessPointID": address, "NetworkAccessPointTypeCode": "2"}
        participant = ET.SubElement(root, "ActiveParticipant", attrs)
        _code(participant, "RoleIDCode", *role)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source})
    studies: dict[str, list[Instance]] = {}
    for inst in instances:
        studies.setdefault(inst.study_uid, []).append(inst)
    for study_uid, members in studies.items():
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        desc = ET.SubElement(obj, "ParticipantObjectDescription")
        for sop_class in sorted({m.sop_class_uid for m in members if m.sop_class_uid}):
            sop = ET.SubElement(
                desc,
                "SOPClass",
                {
                    "UID": sop_class,
                    "NumberOfInstances": str(sum(m.sop_class_uid == sop_class for m in members)),
                },
            )
            for m in members:
                if m.sop_class_uid == sop_class and m.sop_instance_uid:
                    ET.SubElement(sop, "Instance", {"UID": m.sop_instance_uid})
    if description and kind != "activity":
        ET.SubElement(root, "ParticipantObjectDetail", {"type": "reason", "value": description})
    return ET.tostring(root, encoding="utf-8")


class Auditor:
    """Sends audit messages to a syslog collector (``udp://`` or ``tcp://host:port``)."""

    def __init__(self, *, url: str, ae_title: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise ConfigError(f"audit_syslog must be udp://host:port or tcp://host:port: {url!r}")
        self.scheme = parts.scheme
        self.address = (parts.hostname, parts.port or 514)
        self.ae_title = ae_title
        self.hostname = socket.gethostname()[:255] or "-"
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> Auditor | None:
        if not settings.audit_syslog:
            return None
        return cls(url=settings.audit_syslog, ae_title=settings.ae_title)

    def emit(self, kind: str, **fields: object) -> None:
        """Queue one event (never blocks; a full queue drops the event with a warning)."""
        xml = audit_message(kind, audit_source=self.ae_title, **fields)  # type: ignore[arg-type]
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        header = f"<{PRI}>1 {stamp} {self.hostname} qcnode {os.getpid()} {MSGID} - "
        try:
            self._queue.put_nowait(header.encode("ascii") + b"\xef\xbb\xbf" + xml)
        except queue.Full:
            log.warning("audit syslog queue full: an audit message was dropped")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sock: socket.socket | None = None
        while True:
            message = self._queue.get()
            if message is None:
                break
            try:
                if self.scheme == "udp":
                    if sock is None:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.sendto(message, self.address)
                else:
                    if sock is None:
                        sock = socket.create_connection(self.address, timeout=5)
                    sock.sendall(str(len(message)).encode() + b" " + message)  # RFC 6587
            except OSError as exc:
                log.warning("audit syslog %s:%s unreachable: %s", *self.address, exc)
                if sock is not None:
                    sock.close()
                    sock = None
        if sock is not None:
            sock.close()
