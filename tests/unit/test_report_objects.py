"""Overlay SC, GSPS and KOS: validity, references, patient/study copy, options, UIDs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from report_support import header_and_image, rg1_path, roundtrip, source_dataset

from qcnode.config import load_settings
from qcnode.errors import ConfigError
from qcnode.imaging import decode, read_dataset
from qcnode.records import Family, QCResult, Status, Verdict, View
from qcnode.report import (
    ReportOptions,
    build_gsps,
    build_kos,
    build_overlay_sc,
    build_results,
    kos_wanted,
)
from qcnode.report.examples import example_prediction, example_result
from qcnode.report.overlay import BANNER_COLOURS
from qcnode.report.validate import assert_valid, dciodvfy

PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@pytest.fixture(scope="module")
def rg1_objects() -> tuple[pydicom.Dataset, list[pydicom.Dataset]]:
    path = rg1_path()
    header = read_dataset(path, stop_before_pixels=True)
    image = decode(path)
    result = example_result(image)
    objects = build_results(
        header, image, example_prediction(image), result, objects=("sr", "sc", "gsps", "kos")
    )
    return header, [roundtrip(o) for o in objects]


def test_all_objects_of_a_real_radiograph_pass_dciodvfy(rg1_objects) -> None:
    header, objects = rg1_objects
    assert [o.Modality for o in objects] == ["SR", "OT", "PR", "KO"]
    for obj in objects:
        assert_valid(obj)
        assert obj.StudyInstanceUID == header.StudyInstanceUID
        assert obj.SeriesInstanceUID != header.SeriesInstanceUID
        for keyword in PATIENT_STUDY:
            assert obj[keyword].value == header[keyword].value, (obj.Modality, keyword)
    assert len({o.SeriesInstanceUID for o in objects}) == 4
    assert len({o.SOPInstanceUID for o in objects}) == 4


def test_overlay_sc_is_a_derived_burned_in_capture_of_the_source(rg1_objects) -> None:
    header, objects = rg1_objects
    sc = objects[1]
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.BurnedInAnnotation == "YES"
    assert "NOT FOR DIAGNOSIS" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    pixels = sc.pixel_array
    # image part at most 1024 px high plus the banner; banner painted with the fail colour
    assert 1024 < sc.Rows < 1024 * 1.2
    assert tuple(int(v) for v in pixels[2, 2]) == BANNER_COLOURS[Verdict.FAIL]
    # lung outlines drawn in their colour somewhere in the image part
    assert (np.abs(pixels.astype(int) - (0, 160, 255)).sum(axis=2) < 30).sum() > 500


def test_gsps_references_source_and_inverts_monochrome1(rg1_objects) -> None:
    header, objects = rg1_objects
    gsps = objects[2]
    assert gsps.PresentationLUTShape == "INVERSE"  # RG1 is MONOCHROME1
    ref = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
    layers = {layer.GraphicLayer for layer in gsps.GraphicLayerSequence}
    assert {"STRUCTURES", "QC_FAIL", "QC_WARN", "QC_PASS", "QC_VERDICT"} <= layers
    n_graphics = 0
    for annotation in gsps.GraphicAnnotationSequence:
        for obj in annotation.get("GraphicObjectSequence", []):
            data = np.asarray(obj.GraphicData, dtype=float).reshape(-1, 2)
            assert (data >= 0).all()
            assert (data[:, 0] <= header.Columns).all() and (data[:, 1] <= header.Rows).all()
            n_graphics += 1
    assert n_graphics > 10


def test_kos_quality_issue_references_the_failed_image(rg1_objects) -> None:
    header, objects = rg1_objects
    kos = objects[3]
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113010", "DCM")
    refs = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType == "IMAGE"
    ]
    assert refs == [header.SOPInstanceUID]
    description = [i.TextValue for i in kos.ContentSequence if i.ValueType == "TEXT"]
    assert any("positioning.rotation" in text for text in description)


def test_kos_rejected_title_only_when_asked_and_only_for_wanted_verdicts() -> None:
    header, image = header_and_image(source_dataset())
    result = example_result(image)
    rejected = build_kos(header, result, options=ReportOptions(kos_title="rejected"))
    assert_valid(rejected)
    title = rejected.ConceptNameCodeSequence[0].CodeValue
    assert title == codes.DCM.RejectedForQualityReasons.value
    passed = dataclasses.replace(result, verdict=Verdict.PASS)
    warned = dataclasses.replace(result, verdict=Verdict.WARN)
    na = dataclasses.replace(result, verdict=Verdict.NOT_APPLICABLE)
    assert kos_wanted(result, ReportOptions()) and not kos_wanted(warned, ReportOptions())
    assert kos_wanted(warned, ReportOptions(kos_when="warn"))
    assert kos_wanted(passed, ReportOptions(kos_when="always"))
    assert not kos_wanted(na, ReportOptions(kos_when="always"))
    kinds = build_results(header, image, None, passed, objects=("sr", "kos"))
    assert [o.Modality for o in kinds] == ["SR"]
    with pytest.raises(ConfigError):
        ReportOptions(kos_title="reject")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown result object"):
        build_results(header, image, None, result, objects=("sr", "pdf"))


def test_result_uids_are_deterministic_and_series_shared_within_a_source_series() -> None:
    a_header, a_image = header_and_image(source_dataset())
    b_header, b_image = header_and_image(source_dataset(sop_uid="1.2.826.0.1.3680043.8.498.1001.2"))
    kinds = ("sr", "sc", "gsps", "kos")
    first = build_results(a_header, a_image, None, example_result(a_image), objects=kinds)
    again = build_results(a_header, a_image, None, example_result(a_image), objects=kinds)
    other = build_results(b_header, b_image, None, example_result(b_image), objects=kinds)
    assert [o.SOPInstanceUID for o in first] == [o.SOPInstanceUID for o in again]
    assert [o.SeriesInstanceUID for o in first] == [o.SeriesInstanceUID for o in other]
    assert not {o.SOPInstanceUID for o in first} & {o.SOPInstanceUID for o in other}
    rooted = build_results(
        a_header,
        a_image,
        None,
        example_result(a_image),
        objects=kinds,
        options=ReportOptions(uid_root="1.2.826.0.1.3680043.10.999"),
    )
    for obj in rooted:
        assert obj.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
        assert obj.SOPInstanceUID.is_valid and len(obj.SOPInstanceUID) <= 64


def test_small_monochrome2_source_without_prediction_still_validates() -> None:
    header, image = header_and_image(source_dataset(rows=200, columns=180))
    result = QCResult(
        sop_instance_uid=header.SOPInstanceUID,
        view=View.FRONTAL,
        verdict=Verdict.ERROR,
        families={Family.METADATA: Verdict.PASS},
        findings=(),
        model=None,
        error="model weights missing",
    )
    sc = build_overlay_sc(header, image, None, result)
    gsps = build_gsps(header, None, result)
    for obj in (sc, gsps):
        assert_valid(roundtrip(obj))
    assert gsps.PresentationLUTShape == "IDENTITY"
    assert sc.Columns > sc.Rows  # side panel
    assert 400 < sc.Rows < 520  # 200 px upscaled 2x (never more) plus the banner


def test_options_from_settings() -> None:
    settings = load_settings(
        overrides={
            "language": "zh",
            "kos_title": "rejected",
            "sc_max_size": "800",
            "sc_compression": "jpeg",
            "uid_root": "1.2.3",
        }
    )
    options = ReportOptions.from_settings(settings)
    assert (options.language, options.kos_title, options.sc_max_size) == ("zh", "rejected", 800)
    assert options.uid_root == "1.2.3" and options.institution_name is None
    assert options.sc_compression == "jpeg"
    with pytest.raises(ConfigError):
        ReportOptions(language="fr")
    with pytest.raises(ConfigError):
        ReportOptions.from_settings(load_settings(overrides={"kos_when": "sometimes"}))


def test_geometry_outside_the_image_is_clipped_in_every_object() -> None:
    header, image = header_and_image(source_dataset(rows=120, columns=100))
    result = example_result(image)
    finding = result.findings[0]
    far = dataclasses.replace(
        finding,
        status=Status.FAIL,
        geometry=(
            dataclasses.replace(
                finding.geometry[0], kind="polyline", points=((-50.0, -20.0), (500.0, 60.0))
            ),
        ),
    )
    result = dataclasses.replace(result, findings=(far,))
    for obj in build_results(header, image, None, result, objects=("sr", "gsps")):
        assert_valid(roundtrip(obj))


@pytest.mark.parametrize(("language", "view"), [("en", View.FRONTAL), ("zh", View.LATERAL)])
def test_findings_of_the_real_rule_engine_build_valid_objects(language: str, view: View) -> None:
    from qcnode.engine import family_verdicts
    from qcnode.records import worst
    from qcnode.rules import evaluate, load_config

    header, image = header_and_image(source_dataset(rows=400, columns=340))
    # the lateral rules on frontal-looking masks: odd anatomy, but every lateral code path
    prediction = dataclasses.replace(example_prediction(image), view=view)
    findings = tuple(evaluate(image, prediction, config=load_config(), language=language))
    assert findings and any(f.geometry for f in findings)
    assert any(f.rule == "positioning.arms" for f in findings) == (view == View.LATERAL)
    result = QCResult(
        sop_instance_uid=header.SOPInstanceUID,
        view=prediction.view,
        verdict=worst(findings),
        families=family_verdicts(findings),
        findings=findings,
        model=example_result(image).model,
    )
    objects = build_results(
        header,
        image,
        prediction,
        result,
        objects=("sr", "sc", "gsps", "kos"),
        options=ReportOptions(language=language, kos_when="always"),
    )
    assert [o.Modality for o in objects] == ["SR", "OT", "PR", "KO"]
    for obj in objects:
        assert_valid(roundtrip(obj))
    texts = {str(elem.value) for elem in objects[0].iterall() if elem.keyword == "TextValue"}
    assert {f.rule for f in findings} <= texts  # every rule's ID is in the SR
    assert {f.message for f in findings if f.message} <= texts  # and its message


@pytest.mark.parametrize("compression", ["rle", "jpeg"])
def test_compressed_overlay_sc_is_valid_and_decodes_close_to_the_picture(compression: str) -> None:
    header, image = header_and_image(source_dataset())
    result = example_result(image)
    plain = build_overlay_sc(header, image, example_prediction(image), result)
    packed = build_overlay_sc(
        header,
        image,
        example_prediction(image),
        result,
        options=ReportOptions(sc_compression=compression),
    )  # type: ignore[arg-type]
    back = roundtrip(packed)
    assert_valid(back)
    assert len(back.PixelData) < len(plain.PixelData)
    pixels = back.pixel_array.astype(int)  # pydicom converts YBR back to RGB
    error = np.abs(pixels - plain.pixel_array.astype(int)).mean()
    if compression == "rle":
        assert error == 0 and back.LossyImageCompression == "00"
    else:
        assert error < 6 and back.LossyImageCompression == "01"


def _drop(*keywords: str):  # type: ignore[no-untyped-def]
    def edit(ds: pydicom.Dataset) -> None:
        for keyword in keywords:
            delattr(ds, keyword)

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _drop(
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyID",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "AccessionNumber",
        ),
        lambda ds: setattr(ds, "PatientName", "ward"),  # one component: highdicom would warn
        lambda ds: setattr(ds, "ReferringPhysicianName", "ward"),
        lambda ds: setattr(ds, "PatientSex", "X"),  # highdicom would refuse it
        _drop("WindowWidth"),  # a centre without width: highdicom's GSPS would refuse it
    ],
    ids=["no-type2", "one-part-name", "one-part-referrer", "odd-sex", "centre-only"],
)
def test_odd_real_world_headers_still_give_valid_objects_copied_verbatim(edit) -> None:
    source = source_dataset()
    edit(source)
    source = roundtrip(source)
    _, image = header_and_image(source)
    objects = build_results(
        source,
        image,
        example_prediction(image),
        example_result(image),
        objects=("sr", "sc", "gsps", "kos"),
    )  # full dataset, pixels too
    for obj in objects:
        back = roundtrip(obj)
        # copied verbatim: an invalid source value stays (the PACS must match the patient),
        # and is then the only thing dciodvfy objects to
        errors = dciodvfy(back).errors
        inherited = source.get("PatientSex") not in ("M", "F", "O", "", None)
        assert all("PatientSex" in e for e in errors) if inherited else not errors, errors
        for keyword in ("PatientName", "PatientSex", "ReferringPhysicianName"):
            if keyword in source:
                assert back[keyword].value == source[keyword].value
            else:
                assert back[keyword].value in ("", None)  # Type 2: present, empty
