"""Result objects for sources with broken headers the decoder still accepts (hardening
finding 19): every QC'd image gets its SR and SC, and they pass dciodvfy.

The sources are what the worker has: a received file read back with pydicom (raw elements
converted on access), found by the C-STORE fuzz run.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from report_support import roundtrip, source_dataset

from qcnode.imaging import decode_dataset, read_dataset
from qcnode.report import ReportOptions, build_results
from qcnode.report.examples import example_prediction, example_result
from qcnode.report.uids import source_stand_in_uid
from qcnode.report.validate import dciodvfy

ALL = ("sr", "sc", "gsps", "kos")

# pydicom warns about each odd value it reads; a node sees warnings, not exceptions
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _received(data: bytes, tmp_path: Path) -> pydicom.Dataset:
    path = tmp_path / "received.dcm"
    path.write_bytes(data)
    return read_dataset(path)


def _raw(ds: pydicom.Dataset, keyword: str, value: str) -> None:
    """Put ``value`` in as bytes, as a sender may, without pydicom's checks."""
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    raw = value.encode("latin-1")
    raw += b" " * (len(raw) % 2)
    vr = pydicom.datadict.dictionary_VR(tag)
    ds[tag] = pydicom.dataelem.RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _objects(source: pydicom.Dataset, **kw: object) -> list[pydicom.Dataset]:
    image = decode_dataset(source)
    return build_results(
        source, image, example_prediction(image), example_result(image), objects=ALL, **kw
    )


def _assert_valid(objects: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    assert [str(o.Modality) for o in objects] == ["SR", "OT", "PR", "KO"]
    back = [roundtrip(o) for o in objects]
    for obj in back:
        errors = dciodvfy(obj).errors
        assert not errors, (obj.Modality, errors)
    return back


def test_an_element_with_an_unknown_vr_is_left_out(tmp_path: Path) -> None:
    data = _bytes(source_dataset())
    bad = data.replace(b"\x08\x00\x08\x00CS", b"\x08\x00\x08\x00ES", 1)  # ImageType, VR "ES"
    assert bad != data
    source = _received(bad, tmp_path)
    with pytest.raises(NotImplementedError):
        source.ImageType  # noqa: B018 - what stopped the report before
    back = _assert_valid(_objects(source))
    assert all(o.PatientID == "QC0001" for o in back)


def test_missing_series_uid_gets_a_stand_in_derived_from_the_sop_instance(
    tmp_path: Path,
) -> None:
    ds = source_dataset()
    del ds.SeriesInstanceUID
    source = _received(_bytes(ds), tmp_path)
    back = _assert_valid(_objects(source))
    again = [roundtrip(o) for o in _objects(_received(_bytes(ds), tmp_path))]
    stand_in = source_stand_in_uid(str(ds.SOPInstanceUID), "series")
    sr = back[0]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == stand_in
    assert evidence.StudyInstanceUID == ds.StudyInstanceUID  # still filed in its study
    # deterministic: a re-run replaces, never duplicates
    assert [o.SOPInstanceUID for o in back] == [o.SOPInstanceUID for o in again]
    assert [o.SeriesInstanceUID for o in back] == [o.SeriesInstanceUID for o in again]
    assert "SeriesInstanceUID" not in source  # the worker's dataset is not changed


def test_stand_ins_follow_the_configured_uid_root(tmp_path: Path) -> None:
    ds = source_dataset()
    del ds.SeriesInstanceUID
    _raw(ds, "StudyInstanceUID", "x" * 80)  # cannot be written as a UID at all
    source = _received(_bytes(ds), tmp_path)
    back = _assert_valid(
        _objects(source, options=ReportOptions(uid_root="1.2.826.0.1.3680043.10.1176."))
    )
    study = source_stand_in_uid(
        str(ds.SOPInstanceUID), "study", root="1.2.826.0.1.3680043.10.1176."
    )
    assert all(o.StudyInstanceUID == study for o in back)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "20261399"),
        ("StudyTime", "256199"),
        ("PatientBirthDate", "2026"),
        ("PatientAge", "abc"),
        ("StudyDescription", "Chest\x16\x00PA"),
        ("InstitutionName", "\x16\x16ward\x1d"),  # into the SR's Contributing Equipment
        ("Manufacturer", "M" * 70),
        ("StationName", "ÕÅÈý^ÀîËÄ"),  # 9 Latin-1 bytes; 17 in UTF-8, past SH's 16
        ("SpecificCharacterSet", "ISO_IR 999"),
        ("SpecificCharacterSet", "ISO 2022 IR 149"),  # a G1 set alone: no escapes written
        ("BodyPartExamined", "chest"),
        ("BodyPartExamined", "KNEE"),
    ],
)
def test_unusable_non_identity_values_are_not_copied_into_invalid_objects(
    tmp_path: Path, keyword: str, value: str
) -> None:
    ds = source_dataset()
    ds.Manufacturer = "ACME"  # so that highdicom names the source's equipment in the SR
    _raw(ds, keyword, value)
    back = _assert_valid(_objects(_received(_bytes(ds), tmp_path)))
    if keyword == "BodyPartExamined":
        assert back[1].BodyPartExamined == value.upper()
    elif keyword in ("StudyDate", "StudyTime", "PatientBirthDate", "PatientAge"):
        assert all(o.get(keyword) in ("", None) for o in back)


def test_identity_values_stay_verbatim_even_when_odd(tmp_path: Path) -> None:
    """The PACS files results by patient and study: those are copied as they are."""
    ds = source_dataset(patient_name="ward")
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.01"  # leading zero: odd, still usable
    source = _received(_bytes(ds), tmp_path)
    objects = [roundtrip(o) for o in _objects(source)]
    for obj in objects:
        assert obj.StudyInstanceUID == ds.StudyInstanceUID
        assert obj.PatientName == "ward"


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_gbk_study_gets_gb18030_results_with_the_name_bytes_unchanged(
    tmp_path: Path, language: str
) -> None:
    """GB18030 encodes GBK text with the same bytes; dciodvfy cannot check GBK text."""
    ds = source_dataset(charset="GBK", patient_name="张三^李四")
    source = _received(_bytes(ds), tmp_path)
    raw_name = pydicom.dcmread(io.BytesIO(_bytes(ds)))["PatientName"]
    back = _assert_valid(_objects(source, language=language))
    for obj in back:
        assert obj.SpecificCharacterSet == "GB18030"
        assert obj.PatientName == "张三^李四"
        again = pydicom.dcmread(io.BytesIO(_bytes(obj)), defer_size=None)
        assert again.PatientName.original_string == raw_name.value.original_string
