"""DICOM TLS and access control checked with DCMTK as the peer (issue 8).

The node's own tests (test_ingest.py) use pynetdicom and Python's ssl; here the other side
is DCMTK (storescu/echoscu/storescp, OpenSSL 3, BCP 195 profiles), with certificates the
test makes: what a site's modalities and PACS actually run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE

from qcnode.config import Destination, Settings
from qcnode.node import EngineAnalyzer, Node, ReportBuilder
from qcnode.records import View
from qcnode.testing import FakePredictor, frontal_phantom
from tests.conftest import dcmtk_env, free_port, need, radiograph, wait_for, write
from tests.integration.test_ingest import _openssl, rows, start_node

__all__ = ["start_node"]  # the node engineer's fixture, reused


def make_pki(d: Path) -> Path:
    """A CA and three leaf certificates signed by it (node, modality, pacs), CN=localhost."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=qcnode-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name in ("node", "modality", "pacs"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    # a stranger: a certificate from another CA
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=localhost", "-keyout", "stranger.key", "-out", "stranger.crt", cwd=d)  # fmt: skip
    return d


def dcmtk(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need(program), *args],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
        check=False,
    )


def tls_node(start_node, pki: Path):  # type: ignore[no-untyped-def]
    return start_node(
        tls_cert_file=pki / "node.crt", tls_key_file=pki / "node.key", tls_ca_file=pki / "ca.crt"
    )


@pytest.mark.parametrize("profile", ["+py", "+px", "+pz"], ids=["bcp195-nd", "bcp195", "bcp195-ex"])
def test_storescu_tls_with_each_bcp195_profile(start_node, tmp_path, profile) -> None:  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    node = tls_node(start_node, pki)
    image = write(radiograph(rows=64, columns=64), tmp_path / "a.dcm")
    run = dcmtk(
        "storescu", "+tls", str(pki / "modality.key"), str(pki / "modality.crt"),
        "+cf", str(pki / "ca.crt"), profile, "-aet", "MODALITY", "-aec", "QCNODE",
        "127.0.0.1", str(node.address[1]), str(image),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(rows(node)) == 1


def test_storescu_without_a_trusted_certificate_is_refused(start_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    node = tls_node(start_node, pki)
    port = str(node.address[1])
    image = write(radiograph(rows=64, columns=64), tmp_path / "a.dcm")
    attempts = {
        "anonymous TLS": ("+tla", "+cf", str(pki / "ca.crt")),
        "other CA": (
            "+tls",
            str(pki / "stranger.key"),
            str(pki / "stranger.crt"),
            "+cf",
            str(pki / "ca.crt"),
        ),
        "plain TCP": (),
    }
    for why, options in attempts.items():
        run = dcmtk("storescu", *options, "-aec", "QCNODE", "127.0.0.1", port, str(image))
        assert run.returncode != 0, why
    assert rows(node) == []
    # and the node still serves a trusted modality afterwards
    ok = dcmtk(
        "storescu", "+tls", str(pki / "modality.key"), str(pki / "modality.crt"),
        "+cf", str(pki / "ca.crt"), "-aec", "QCNODE", "127.0.0.1", port, str(image),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_refusal_reasons_as_dcmtk_reports_them(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(allowed_calling_aes=("MODALITY", "BUSY"), max_associations_per_ae=1)
    port = str(node.address[1])
    stranger = dcmtk("echoscu", "-v", "-aet", "STRANGER", "-aec", "QCNODE", "127.0.0.1", port)
    text = (stranger.stdout + stranger.stderr).lower()
    assert stranger.returncode != 0
    assert "rejected permanent" in text and "calling ae title not recognized" in text, text
    # per-AE limit: BUSY already holds one association
    ae = AE(ae_title="BUSY")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.address[1], ae_title="QCNODE")
    assert held.is_established
    try:
        busy = dcmtk("echoscu", "-v", "-aet", "BUSY", "-aec", "QCNODE", "127.0.0.1", port)
        text = (busy.stdout + busy.stderr).lower()
        assert busy.returncode != 0
        assert "rejected transient" in text and "local limit exceeded" in text, text
        # another allowed AE is not affected by BUSY's limit
        other = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "QCNODE", "127.0.0.1", port)
        assert other.returncode == 0, other.stdout + other.stderr
    finally:
        held.release()


def test_results_delivered_over_tls_to_a_dcmtk_storescp(tmp_path: Path) -> None:
    """The sender side: a PACS (DCMTK storescp +tls, requiring a client certificate from
    our CA) receives the SR and SC over TLS. Specifies the settings asked for: per
    destination ``tls_ca_file`` (turns TLS on, verifies the PACS) and optionally
    ``tls_cert_file``/``tls_key_file`` (mutual)."""
    pki = make_pki(tmp_path / "pki")
    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    scp = subprocess.Popen(
        [need("storescp"), "+tls", str(pki / "pacs.key"), str(pki / "pacs.crt"),
         "+cf", str(pki / "ca.crt"), "-aet", "TLSPACS", "-od", str(received), str(pacs_port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    node: Node | None = None
    try:
        destination = Destination(
            ae_title="TLSPACS",
            host="127.0.0.1",
            port=pacs_port,
            tls_ca_file=pki / "ca.crt",  # type: ignore[call-arg]
            tls_cert_file=pki / "node.crt",  # type: ignore[call-arg]
            tls_key_file=pki / "node.key",  # type: ignore[call-arg]
        )
        settings = Settings(
            data_dir=tmp_path / "node", bind_address="127.0.0.1", port=free_port(), web_port=0,
            destinations=(destination,), min_free_disk_bytes=0,
        )  # fmt: skip
        predictor = FakePredictor(
            source=lambda img: (View.FRONTAL, frontal_phantom(img.pixels.shape))
        )
        node = Node(
            settings=settings,
            analyzer_factory=lambda: EngineAnalyzer(predictor=predictor, settings=settings),
            builder=ReportBuilder(settings=settings),
        )
        node.start()
        assert node.address is not None
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.address[1], ae_title="QCNODE")
        assert int(assoc.send_c_store(radiograph(rows=64, columns=64)).Status) == 0
        assoc.release()
        wait_for(lambda: len(list(received.iterdir())) >= 2, 60, "SR and SC at the TLS PACS")
    finally:
        if node is not None:
            node.close()
        scp.terminate()
        scp.wait(10)
