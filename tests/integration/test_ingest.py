"""Ingest against real peers: DCMTK echoscu/storescu and a pynetdicom SCU as the modality.

The node runs in-process with no workers (ingest only); what was kept is checked on disk
and in the database.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from sqlalchemy import func, select

from qcnode.config import Settings
from qcnode.db import AuditEvent, Instance, Job, make_engine, make_sessions
from qcnode.imaging import read_dataset
from qcnode.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_TOO_LARGE,
    DISK_FULL,
    IMAGE_TOO_LARGE,
    NOT_A_CHEST_IMAGE,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from qcnode.node import Node
from tests.conftest import (
    CT,
    SECONDARY_CAPTURE,
    dcmtk_env,
    free_port,
    need,
    radiograph,
    storescu,
    write,
)
from tests.conftest import (
    DX_PRESENTATION as DX,
)

REALCXR = Path(__file__).resolve().parents[3] / "shared" / "data" / "realcxr" / "dicom"


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(**overrides: Any) -> Node:
        settings = Settings(
            **{
                "data_dir": tmp_path / "node",
                "bind_address": "127.0.0.1",
                "port": free_port(),
                "workers": 0,
                "web_port": 0,
                **overrides,
            }
        )
        node = Node(settings=settings)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close()


def rows(node: Node) -> list[Instance]:
    engine = make_engine(node.settings, readonly=True)
    with make_sessions(engine)() as s:
        out = list(s.scalars(select(Instance).order_by(Instance.id)))
        assert s.scalar(select(func.count()).select_from(Job)) == len(out)
    engine.dispose()
    return out


def audit(node: Node, kind: str) -> list[AuditEvent]:
    engine = make_engine(node.settings, readonly=True)
    with make_sessions(engine)() as s:
        out = list(s.scalars(select(AuditEvent).where(AuditEvent.kind == kind)))
    engine.dispose()
    return out


def scu_store(port: int, ds_or_path: Any, *, calling: str = "PYSCU", contexts: Any = None) -> int:
    ae = AE(ae_title=calling)
    ds = read_dataset(ds_or_path) if isinstance(ds_or_path, Path) else ds_or_path
    if isinstance(ds_or_path, Path) and not _config.STORE_SEND_CHUNKED_DATASET:
        ds_or_path = ds
    if contexts is None:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    else:
        for c in contexts:
            ae.add_requested_context(*c)
    assoc = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds_or_path)
        return int(status.Status)
    finally:
        assoc.release()


def test_echo_and_store_with_dcmtk(start_node, make_radiograph) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    port = node.address[1]
    echo = subprocess.run(
        [need("echoscu"), "-aec", "QCNODE", "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    files = [make_radiograph(rows=300, columns=200, seed=i) for i in range(3)]
    run = storescu(port, files)
    assert run.returncode == 0, run.stderr
    kept = rows(node)
    assert [r.sop_instance_uid for r in kept] == [pydicom.dcmread(f).SOPInstanceUID for f in files]
    for row, f in zip(kept, files, strict=True):
        stored = pydicom.dcmread(node.settings.data_dir / row.path)
        original = pydicom.dcmread(f)
        assert stored.PixelData == original.PixelData
        assert row.calling_ae == "MODALITY"
        assert row.station_name == "ROOM1" and row.operators_name == "Tech^One"
        assert row.study_date is not None and row.study_date.year == 2026
        assert row.applicable and row.rows == 300 and row.columns == 200
    # a duplicate SOP Instance UID is acknowledged and kept once
    again = storescu(port, files[:1])
    assert again.returncode == 0, again.stderr
    assert len(rows(node)) == 3
    assert not list((node.settings.data_dir / "tmp").iterdir())


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
)
def test_transfer_syntaxes_kept_as_sent(start_node, tmp_path, syntax) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    ds = radiograph(rows=128, columns=96)
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path = write(ds, tmp_path / "in.dcm")
    options = {
        DeflatedExplicitVRLittleEndian: ("--propose-deflated",),
        RLELossless: ("--propose-rle",),
        JPEGLSLossless: ("--propose-jls-lossless",),
        JPEG2000Lossless: ("--propose-j2k-lossless",),
    }.get(syntax, ("--propose-implicit",))
    run = storescu(node.address[1], [path], options=options)
    assert run.returncode == 0, run.stderr
    (row,) = rows(node)
    assert row.transfer_syntax_uid == syntax
    stored = pydicom.dcmread(node.settings.data_dir / row.path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert (stored.pixel_array == radiograph(rows=128, columns=96).pixel_array).all()


def test_real_jpeg_baseline_and_j2k_files(start_node) -> None:  # type: ignore[no-untyped-def]
    files = sorted(REALCXR.glob("*.dcm")) if REALCXR.is_dir() else []
    if not files:
        pytest.skip("shared realcxr DICOMs not present")
    node = start_node()
    for f in files:  # each in its own transfer syntax (JPEG baseline, J2K, ...)
        assert scu_store(node.address[1], f) == SUCCESS
    kept = rows(node)
    sent = {read_dataset(f).SOPInstanceUID: read_dataset(f) for f in files}  # one is a copy
    assert {r.sop_instance_uid: r.transfer_syntax_uid for r in kept} == {
        uid: ds.file_meta.TransferSyntaxUID for uid, ds in sent.items()
    }


def test_refusals_have_named_statuses(start_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = start_node(max_dataset_bytes=200_000, non_chest="refuse")
    port = node.address[1]
    assert scu_store(port, radiograph(rows=64, columns=64)) == SUCCESS
    assert scu_store(port, radiograph(rows=400, columns=400)) == DATASET_TOO_LARGE
    knee = radiograph(rows=64, columns=64, body_part="KNEE")
    assert scu_store(port, knee) == NOT_A_CHEST_IMAGE
    bomb = radiograph(rows=64, columns=64)
    bomb.Rows = bomb.Columns = 20000  # a header that would decode to 1.6 GB
    assert scu_store(port, bomb) == IMAGE_TOO_LARGE
    # Secondary Capture is accepted but not evaluated
    sc = radiograph(rows=64, columns=64, sop_class=SECONDARY_CAPTURE, modality="OT")
    assert scu_store(port, sc) == SUCCESS
    kept = rows(node)
    assert [r.applicable for r in kept] == [True, False]
    assert {e.detail["status"] for e in audit(node, "store_refused")} == {
        DATASET_TOO_LARGE,
        NOT_A_CHEST_IMAGE,
        IMAGE_TOO_LARGE,
    }


def test_non_chest_kept_by_default(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    assert scu_store(node.address[1], radiograph(rows=64, columns=64, body_part="HAND")) == SUCCESS
    (row,) = rows(node)
    assert not row.applicable and row.body_part == "HAND"


def test_disk_guard(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(min_free_disk_bytes=1 << 62)
    assert scu_store(node.address[1], radiograph(rows=64, columns=64)) == DISK_FULL
    assert rows(node) == []


@contextlib.contextmanager
def tiny_filesystem(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` (a real file system that fills up; needs mount rights)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_disk_full_during_reception_answers_out_of_resources(  # type: ignore[no-untyped-def]
    start_node, make_radiograph, tmp_path
) -> None:
    """No free-space guard, and the disk fills while a dataset streams in (a real ENOSPC
    on a small tmpfs): storescu gets 0xA700 (not an abort) for that image, the partial
    file is removed and audited, and the node keeps serving."""
    big = make_radiograph(rows=2000, columns=2000, seed=1)  # 8 MB
    small = make_radiograph(rows=64, columns=64, seed=2)
    with tiny_filesystem(tmp_path / "tiny", 16) as tiny:
        node = start_node(data_dir=tiny / "node", min_free_disk_bytes=0)
        free = os.statvfs(tiny).f_bavail * os.statvfs(tiny).f_frsize
        (tiny / "filler").write_bytes(b"\0" * (free - (3 << 20)))  # leave 3 MB
        run = storescu(node.address[1], [big], options=("-v",))
        out = (run.stdout + run.stderr).lower()
        assert "store response (refused: outofresources)" in out, out
        assert "abort" not in out, out
        assert storescu(node.address[1], [small]).returncode == 0  # still serving
        kept = rows(node)
        assert [r.sop_instance_uid for r in kept] == [pydicom.dcmread(small).SOPInstanceUID]
        assert not list((node.settings.data_dir / "tmp").iterdir())
        (refused,) = audit(node, "store_refused")
        assert refused.detail["status"] == OUT_OF_RESOURCES
        assert "write failed" in refused.message
        node.close()


def test_an_unexpected_handler_error_is_a_named_status(start_node, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A bug or a hostile header the checks did not foresee: the handler still answers
    (0xC000, not pynetdicom's 0xC211) and moves the file to rejected/, not left in tmp."""
    node = start_node()

    def broken() -> int:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(node.ingest.store, "free_bytes", broken)
    assert scu_store(node.address[1], radiograph(rows=64, columns=64)) == CANNOT_UNDERSTAND
    assert not list((node.settings.data_dir / "tmp").iterdir())
    assert [p.suffix for p in (node.settings.data_dir / "rejected").iterdir()] == [".handler"]
    monkeypatch.undo()
    assert scu_store(node.address[1], radiograph(rows=64, columns=64)) == SUCCESS


def test_unsupported_sop_class_is_not_negotiated(start_node, make_radiograph) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    ct = make_radiograph(sop_class=CT, modality="CT", rows=32, columns=32)
    run = storescu(node.address[1], [ct])
    assert run.returncode != 0
    assert "no presentation context" in (run.stderr + run.stdout).lower()
    # the node keeps serving
    assert storescu(node.address[1], [make_radiograph(rows=32, columns=32)]).returncode == 0
    assert len(rows(node)) == 1


def test_truncated_datasets(start_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Raw bytes as sent (chunked send): a cut header is refused, cut pixels are kept."""
    node = start_node()
    port = node.address[1]
    good = write(radiograph(rows=128, columns=128), tmp_path / "good.dcm")
    data = good.read_bytes()
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(data[: len(data) - 5000])
    ds = pydicom.dcmread(good)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    header_only = write(ds, tmp_path / "h.dcm").read_bytes()
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(header_only[:400] + b"\x10\x00\x10\x00PN\xff\x7f")  # absurd length
    contexts = [(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)]
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assert scu_store(port, cut_pixels, contexts=contexts) == SUCCESS
        assert scu_store(port, cut_header, contexts=contexts) == CANNOT_UNDERSTAND
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert len(rows(node)) == 1
    assert list((node.settings.data_dir / "rejected").iterdir())


def test_calling_ae_allow_list(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(allowed_calling_aes=("MODALITY", "PYSCU@127.0.0.1"))
    port = node.address[1]
    assert scu_store(port, radiograph(rows=32, columns=32), calling="PYSCU") == SUCCESS
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert assoc.is_rejected
    assert audit(node, "association_rejected")


def test_per_ae_association_limit(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(max_associations_per_ae=1)
    port = node.address[1]
    ae = AE(ae_title="BUSY")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert first.is_established
    second = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert second.is_rejected
    first.release()
    third = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert third.is_established
    third.release()


def test_same_uid_new_content_replaces_and_requeues(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    port = node.address[1]
    first = radiograph(rows=64, columns=64, seed=1)
    assert scu_store(port, first) == SUCCESS
    assert scu_store(port, first) == SUCCESS  # identical: a no-op
    assert not audit(node, "instance_replaced")
    second = radiograph(rows=64, columns=64, seed=2, sop_uid=first.SOPInstanceUID)
    assert scu_store(port, second) == SUCCESS
    (row,) = rows(node)
    assert pydicom.dcmread(node.settings.data_dir / row.path).PixelData == second.PixelData
    assert len(audit(node, "instance_replaced")) == 1


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def test_dicom_tls_with_client_certificates(start_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Mutual TLS: a modality with a certificate from our CA stores; one without cannot."""
    import socket
    import ssl

    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name in ("node", "modality"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    node = start_node(
        tls_cert_file=d / "node.crt", tls_key_file=d / "node.key", tls_ca_file=d / "ca.crt"
    )

    def context(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / "ca.crt"))
        ctx.check_hostname = False
        if with_cert:
            ctx.load_cert_chain(d / "modality.crt", d / "modality.key")
        return ctx

    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(DX, "1.2.840.10008.1.2.1")
    port = node.address[1]
    assoc = ae.associate("127.0.0.1", port, ae_title="QCNODE", tls_args=(context(True), None))
    assert assoc.is_established
    assert int(assoc.send_c_store(radiograph(rows=32, columns=32)).Status) == SUCCESS
    assoc.release()
    # without a client certificate the node ends the TLS session before any DICOM
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context(False).wrap_socket(raw) as tls,
    ):
        try:
            tls.sendall(b"\x01\x00")
            answer = tls.recv(1)  # a timeout here (the node waiting for more) fails the test
        except ssl.SSLError:  # "certificate required" alert, or the node hung up
            answer = b""
        assert answer == b""
    assert len(rows(node)) == 1


def test_tcp_nodelay_and_concurrent_modalities(start_node, make_radiograph) -> None:  # type: ignore[no-untyped-def]
    import socket
    import threading

    node = start_node()
    port = node.address[1]
    ae = AE(ae_title="PEEK")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="QCNODE")
    server_side = [a for a in node.ingest.server.ae.active_associations if a.is_acceptor]
    assert server_side
    sock = server_side[0].dul.socket.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assoc.release()
    # four modalities at once: every image kept, no database lock errors
    batches = [
        [make_radiograph(rows=128, columns=128, seed=10 * m + i) for i in range(5)]
        for m in range(4)
    ]
    runs: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda b=b, m=m: runs.append(storescu(port, b, calling=f"MOD{m}")))
        for m, b in enumerate(batches)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert len(rows(node)) == 20


def test_total_association_limit(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(max_associations=1)
    port = node.address[1]
    first_ae, second_ae = AE(ae_title="ONE"), AE(ae_title="TWO")
    for ae in (first_ae, second_ae):
        ae.add_requested_context("1.2.840.10008.1.1")
    first = first_ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert first.is_established
    second = second_ae.associate("127.0.0.1", port, ae_title="QCNODE")
    assert second.is_rejected
    first.release()
