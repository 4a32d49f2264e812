"""DicomSender against Orthanc: association reuse, an object the PACS was not offered,
and an unreachable destination."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import pytest

from qcnode.config import Destination
from qcnode.errors import DeliveryError
from qcnode.send import SOP_CLASS_NOT_SUPPORTED, DicomSender
from tests.conftest import SECONDARY_CAPTURE, Orthanc, free_port, radiograph, write


def test_store_reuse_and_refusals(tmp_path: Path, orthanc: Orthanc) -> None:
    dest = Destination(ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port)
    sender = DicomSender(ae_title="QCNODE")
    scs = [
        write(
            radiograph(rows=16, columns=16, sop_class=SECONDARY_CAPTURE, modality="OT"),
            tmp_path / f"{i}.dcm",
        )
        for i in range(3)
    ]
    try:
        assert [sender.store(dest, p) for p in scs] == [0, 0, 0]
        assoc = sender._assocs[f"{dest.ae_title}@127.0.0.1:{dest.port}"]
        assert assoc.is_established  # one association for all three
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        dx = write(radiograph(rows=16, columns=16), tmp_path / "dx.dcm")  # not a result class
        assert sender.store(dest, dx) == SOP_CLASS_NOT_SUPPORTED
        assert assoc.is_established
        assert sender.store(dest, scs[0]) == 0  # again: the PACS keeps it once
        rle = radiograph(rows=16, columns=16, sop_class=SECONDARY_CAPTURE, modality="OT")
        rle.compress("1.2.840.10008.1.2.5")
        assert sender.store(dest, write(rle, tmp_path / "rle.dcm")) == 0  # sent as RLE
    finally:
        sender.close()
    assert orthanc.count() == 4
    down = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    with pytest.raises(DeliveryError):
        DicomSender(ae_title="QCNODE").store(down, scs[0])
    gc.collect()  # nothing left to collect: the refused connection's socket was closed
