"""The ATNA-style audit trail: DICOM Audit Messages in RFC 5424 syslog over UDP."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from pynetdicom import AE

from qcnode.config import Settings
from qcnode.node import Node
from tests.conftest import DX_PRESENTATION, free_port, radiograph, wait_for


def test_store_rejection_and_activity_reach_syslog(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(0.2)
    messages: list[bytes] = []

    def receive() -> int:
        try:
            while True:
                messages.append(collector.recv(65536))
        except TimeoutError:
            return len(messages)

    settings = Settings(
        data_dir=tmp_path,
        bind_address="127.0.0.1",
        port=free_port(),
        workers=0,
        web_port=0,
        allowed_calling_aes=("MODALITY",),
        audit_syslog=f"udp://127.0.0.1:{collector.getsockname()[1]}",
    )
    node = Node(settings=settings)
    node.start()
    try:
        ds = radiograph(rows=32, columns=32)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(DX_PRESENTATION, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", settings.port, ae_title="QCNODE")
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context("1.2.840.10008.1.1")
        assert stranger.associate("127.0.0.1", settings.port, ae_title="QCNODE").is_rejected
        wait_for(lambda: receive() >= 3, 10, "three audit messages")
    finally:
        node.close()
        collector.close()
    events = {}
    for raw in messages:
        header, _, body = raw.partition(b"\xef\xbb\xbf")
        assert header.startswith(b"<85>1 ") and b" qcnode " in header and b"IHE+RFC-3881" in header
        root = ET.fromstring(body)
        code = root.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]
        events.setdefault(code, []).append(root)
    assert set(events) >= {"110100", "110104", "110113"}  # activity, transferred, alert
    (stored,) = events["110104"]
    assert (
        stored.find("ParticipantObjectIdentification").get("ParticipantObjectID")
        == ds.StudyInstanceUID
    )  # type: ignore[union-attr]
    users = {p.get("UserID") for p in stored.iter("ActiveParticipant")}
    assert users == {"MODALITY", "QCNODE"}
    assert b"Test^Synthetic" not in b"".join(messages)  # no patient name
    (alert,) = events["110113"]
    assert {p.get("UserID") for p in alert.iter("ActiveParticipant")} == {"STRANGER", "QCNODE"}
