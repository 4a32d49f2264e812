"""Fuzzing the C-STORE handler alone (tests/fuzz/ingest_target.py) in CI: hostile datasets,
duplicates, replacements and UID mismatches sent to the node's real Storage SCP.

Every input must get a named status with the instance kept exactly when it was
acknowledged, the handler must never raise, and the audit must find no orphan file or
row. scripts/fuzz --target ingest runs the same for 100 000 inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from qcnode.ingest import CANNOT_UNDERSTAND, SUCCESS
from tests.conftest import DX_PRESENTATION, free_port, radiograph
from tests.fuzz.dicom_inputs import PLACEHOLDER_SOP_UID, encode, hostile_file, with_new_uid
from tests.fuzz.ingest_target import MODES, IngestTarget
from tests.fuzz.test_fuzz_pipeline import CI
from tests.integration.nodeproc import NodeProcess

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, in the node's threads


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestTarget]:
    t = IngestTarget(tmp_path_factory.mktemp("ingest"), recycle=80)  # one recycle in CI
    yield t
    failures = t.close()
    assert not failures, failures


@settings(CI, max_examples=150)
@given(data=hostile_file(), mode=st.sampled_from(MODES))
def test_hostile_inputs_get_named_statuses_and_nothing_acknowledged_is_lost(
    target: IngestTarget, data: bytes, mode: str
) -> None:
    target.send(data, mode)  # raises NodeFailure on any crash kind


def test_the_handler_was_exercised_and_leaves_no_orphans(target: IngestTarget) -> None:
    assert target.sent >= 120
    assert target.nodes >= 2  # the recycle audited a first node
    assert target.statuses[SUCCESS] >= 10 and target.statuses[CANNOT_UNDERSTAND] >= 5
    assert {"new", "duplicate", "replace", "mismatch"} <= set(target.modes)
    assert not target.audit()
    assert target.echo_ok()


def _valid() -> bytes:
    ds = radiograph(rows=32, columns=32, sop_uid=PLACEHOLDER_SOP_UID)
    return encode(ds)


def test_modes_do_what_they_say(target: IngestTarget) -> None:
    assert target.send(_valid(), "new") == SUCCESS
    uid = target._previous[1]  # type: ignore[index]
    assert target.send(b"", "duplicate") == SUCCESS  # the same bytes again
    assert target._previous[1] == uid  # type: ignore[index]
    assert target.send(_valid(), "replace") == SUCCESS  # new bytes, same UID
    assert target.send(_valid(), "mismatch") == CANNOT_UNDERSTAND


def test_unknown_vr_in_columns_gets_a_named_refusal_and_leaves_no_file(tmp_path: Path) -> None:
    """From scripts/fuzz --target ingest: Columns with an unknown VR (bytes 0x55 0xB1) made
    the handler raise (0xC211) and left the received file, still open, in data_dir/tmp.
    Sent to a node process, so that the leaked file stays in that process."""
    data, _ = with_new_uid(_valid())
    bad = data.replace(b"\x28\x00\x11\x00US", b"\x28\x00\x11\x00\x55\xb1", 1)
    assert bad != data
    node = NodeProcess(
        tmp_path / "n",
        fake_model=True,
        data_dir=str(tmp_path / "node"),
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        workers=0,
    )
    node.start()
    try:
        (tmp_path / "bad.dcm").write_bytes(bad)
        ae = AE(ae_title="FUZZSCU")
        ae.add_requested_context(DX_PRESENTATION, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="QCNODE")
        assert assoc.is_established
        chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
        try:
            status = int(assoc.send_c_store(tmp_path / "bad.dcm").Status)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked
            assoc.release()
        leftovers = list((tmp_path / "node" / "tmp").iterdir())
    finally:
        node.stop()
    assert status == CANNOT_UNDERSTAND, f"0x{status:04X}"  # 0xC211: the handler raised
    assert not leftovers, leftovers
