"""Fuzzing the C-STORE path in CI: hostile datasets sent by a pynetdicom SCU to a running
node (in-process, with its worker, the real report builder and a fake destination).

Every input must get a named status (or success), the association must survive, the
worker must finish every kept instance without a traceback, and the node must still
answer C-ECHO at the end. scripts/fuzz --target cstore runs the same for thousands.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from qcnode.ingest import SUCCESS
from tests.conftest import radiograph, wait_for
from tests.fuzz.cstore import CStoreTarget, NodeFailure
from tests.fuzz.dicom_inputs import PLACEHOLDER_SOP_UID, _set, encode, hostile_file
from tests.fuzz.harness import known, signature
from tests.fuzz.test_fuzz_pipeline import CI

# The node runs in this process: pytest's "warnings are errors" would reach its threads and
# turn pydicom's warnings about odd values into exceptions a real node never sees.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CStoreTarget]:
    t = CStoreTarget(tmp_path_factory.mktemp("cstore"))
    yield t
    t.close()


def _check(exc: BaseException) -> None:
    if not known(signature(exc)):
        raise exc


@settings(CI, max_examples=60)
@given(data=hostile_file())
def test_hostile_datasets_get_named_statuses(target: CStoreTarget, data: bytes) -> None:
    try:
        target.send(data)
    except NodeFailure as exc:
        _check(exc)


def test_node_is_sound_after_the_fuzzing(target: CStoreTarget) -> None:
    for failure in target.drain_node_errors():  # settles the worker first
        _check(failure)
    assert target.echo_ok()
    assert target.sent >= 50
    assert target.statuses.get(SUCCESS, 0) >= 5  # the fuzzer reached the worker too


def _sop(ds):  # type: ignore[no-untyped-def]
    ds.SOPInstanceUID = PLACEHOLDER_SOP_UID
    ds.file_meta.MediaStorageSOPInstanceUID = PLACEHOLDER_SOP_UID
    return ds


def test_rows_with_two_values_get_a_named_refusal_and_leave_no_orphan(
    target: CStoreTarget,
) -> None:
    ds = _sop(radiograph(rows=16, columns=16))
    _set(ds, "Rows", struct.pack("<2H", 2, 3))
    before = {p.name for p in (target.settings.data_dir / "instances").rglob("*.dcm")}
    kept = target.kept()
    status = target.send(encode(ds))  # raises NodeFailure on 0xC211
    assert status is not None
    after = {p.name for p in (target.settings.data_dir / "instances").rglob("*.dcm")}
    assert len(after - before) == target.kept() - kept  # no file without its row


def test_partial_study_date_still_gets_result_objects(target: CStoreTarget) -> None:
    """Was request 5 (fixed by the report's sanitised header copy): keep it fixed."""
    target.drain_node_errors()
    before = len(target.sender.stored)
    ds = _sop(radiograph(rows=64, columns=64))
    _set(ds, "StudyDate", "2026")
    assert target.send(encode(ds)) == SUCCESS
    failures = target.drain_node_errors()
    assert not failures, failures
    wait_for(lambda: len(target.sender.stored) >= before + 2, 30, "its SR and SC delivered")


def test_one_valued_imager_pixel_spacing_still_gets_result_objects(
    target: CStoreTarget,
) -> None:
    target.drain_node_errors()
    before = len(target.sender.stored)
    ds = _sop(radiograph(rows=64, columns=64))
    _set(ds, "ImagerPixelSpacing", "0.2")  # VM 1: sloppy, and legal bytes
    assert target.send(encode(ds)) == SUCCESS
    failures = target.drain_node_errors()
    assert not failures, failures  # "cannot build result objects ... DSfloat not iterable"
    wait_for(lambda: len(target.sender.stored) >= before + 2, 30, "its SR and SC delivered")


@pytest.mark.parametrize("edit", ["unknown-vr", "no-series-uid"])
def test_odd_headers_still_get_result_objects(target: CStoreTarget, edit: str) -> None:
    """Was request 19: an element with an unknown VR, or no SeriesInstanceUID, stopped the
    SR and SC of an image that got a verdict (the report now reads a sanitised copy)."""
    target.drain_node_errors()
    before = len(target.sender.stored)
    ds = _sop(radiograph(rows=64, columns=64))
    if edit == "no-series-uid":
        del ds.SeriesInstanceUID
    data = encode(ds)
    if edit == "unknown-vr":
        data = data.replace(b"\x08\x00\x08\x00CS", b"\x08\x00\x08\x00ES", 1)  # ImageType
        assert b"\x08\x00\x08\x00ES" in data
    assert target.send(data) == SUCCESS
    failures = target.drain_node_errors()
    assert not failures, failures  # "cannot build result objects ..."
    wait_for(lambda: len(target.sender.stored) >= before + 2, 30, "its SR and SC delivered")
