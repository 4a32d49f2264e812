"""TID 1500 SR: validity (dciodvfy, dsrdump, pydicom), codes, units, references, geometry."""

from __future__ import annotations

import dataclasses

import pydicom
import pytest
from pydicom.sr.codedict import codes
from report_support import (
    code_value,
    concept,
    content_items,
    header_and_image,
    rg1_path,
    roundtrip,
    source_dataset,
)

from qcnode.imaging import decode, read_dataset
from qcnode.records import Family, Finding, QCResult, Status, Verdict, View
from qcnode.report import ReportOptions, build_sr
from qcnode.report.coding import SCHEME, quality_finding
from qcnode.report.examples import EXAMPLE_MODEL, example_result
from qcnode.report.validate import assert_valid, dsrdump

CID6135 = {c.value for c in codes.CID6135.concepts.values()}
UCUM = {"mm", "mm2", "deg", "{ribs}", "1", "%"}


@pytest.fixture(scope="module")
def rg1_sr() -> tuple[pydicom.Dataset, QCResult, pydicom.Dataset]:
    path = rg1_path()
    header = read_dataset(path, stop_before_pixels=True)
    result = example_result(decode(path))
    sr = roundtrip(build_sr(header, result))
    return header, result, sr


def test_sr_of_real_radiograph_passes_dciodvfy_and_dsrdump(rg1_sr) -> None:
    sr = rg1_sr[2]
    assert_valid(sr)
    text = dsrdump(sr)
    assert "Imaging Measurement Report" in text
    assert "Quality Finding" in text and '(111209,DCM,"Positioning")' in text
    assert "positioning.rotation" in text
    assert '(deg,UCUM,"degree")' in text
    assert '(111236,DCM,"Usable - Does not meet the quality control standard")' in text


def test_sr_header_joins_source_study_in_new_series(rg1_sr) -> None:
    header, _, sr = rg1_sr
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "AccessionNumber",
        "StudyDate",
    ):
        assert sr[keyword].value == header[keyword].value, keyword
    assert sr.CompletionFlag == "COMPLETE"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME


def test_one_group_per_family_with_tracking_and_algorithm(rg1_sr) -> None:
    _, result, sr = rg1_sr
    groups = [item for item, _ in content_items(sr) if concept(item) == ("125007", "DCM")]
    assert len(groups) == len(result.families)
    labels, uids = [], []
    for group in groups:
        children = {concept(c): c for c in group.ContentSequence}
        labels.append(children[("112039", "DCM")].TextValue)  # Tracking Identifier
        uids.append(children[("112040", "DCM")].UID)  # Tracking Unique Identifier
        assert children[("111001", "DCM")].TextValue == EXAMPLE_MODEL.name  # Algorithm Name
        assert children[("111003", "DCM")].TextValue == EXAMPLE_MODEL.version
        params = children[("111002", "DCM")].TextValue  # Algorithm Parameters
        assert EXAMPLE_MODEL.sha256 in params
    assert sorted(labels) == sorted(f"qcnode {f}" for f in result.families)
    assert len(set(uids)) == len(uids)


def test_findings_are_coded_with_units_and_geometry_inside_the_image(rg1_sr) -> None:
    header, result, sr = rg1_sr
    rows, columns = header.Rows, header.Columns
    by_rule: dict[str, pydicom.Dataset] = {}
    nums = []
    for item, parents in content_items(sr):
        if (
            item.ValueType == "CODE"
            and concept(item)[1] == SCHEME
            and concept(item)[0] in {f.rule for f in result.findings}
        ):
            by_rule[concept(item)[0]] = item
        if item.ValueType == "NUM":
            nums.append(item)
        if item.ValueType == "SCOORD":
            data = [float(v) for v in item.GraphicData]
            xs, ys = data[0::2], data[1::2]
            assert all(0 <= x <= columns for x in xs) and all(0 <= y <= rows for y in ys)
            image = item.ContentSequence[0]
            assert image.RelationshipType == "SELECTED FROM"
            assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
            assert parents[-1].ValueType == "CODE"  # inferred from a rule result
    assert set(by_rule) == {f.rule for f in result.findings}
    for finding in result.findings:
        item = by_rule[finding.rule]
        assert code_value(item) == (str(finding.status), SCHEME)
        props = {concept(c): c for c in item.ContentSequence}
        assert props[("rule", SCHEME)].TextValue == finding.rule
        if finding.message:
            assert props[("121106", "DCM")].TextValue == finding.message
        quality = props.get(("111052", "DCM"))
        if finding.status in (Status.WARN, Status.FAIL):
            assert quality is not None and code_value(quality)[0] in CID6135
        else:
            assert quality is None
        regions = [c for c in item.ContentSequence if c.ValueType == "SCOORD"]
        assert len(regions) == len(finding.geometry)  # a multi-point geometry is a MULTIPOINT
    measured = [f for f in result.findings if f.value is not None]
    values = {
        concept(n)[0]: (
            float(n.MeasuredValueSequence[0].NumericValue),
            n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for n in nums
        if concept(n)[1] == SCHEME and concept(n)[0] != "threshold"
    }
    for f in measured:
        assert values[f.rule] == (pytest.approx(f.value), f.unit)
    assert {unit for _, unit in values.values()} <= UCUM


def test_a_missing_organs_area_is_a_num_in_square_millimeters() -> None:
    """organs.* report a missing organ's visible area: its NUM (and threshold) are UCUM mm2."""
    import numpy as np

    from qcnode.engine import family_verdicts
    from qcnode.records import worst
    from qcnode.rules import RulesConfig, evaluate
    from qcnode.testing import FakePredictor, frontal_phantom, phantom_image

    masks = frontal_phantom()
    masks["heart"] = np.zeros_like(masks["heart"])
    image = phantom_image(masks)
    prediction = FakePredictor(source=lambda _i: (View.FRONTAL, masks)).predict([image])[0]
    findings = tuple(evaluate(image, prediction, config=RulesConfig()))
    heart = next(f for f in findings if f.rule == "organs.heart")
    assert heart.status is Status.FAIL and heart.unit == "mm2"
    header, _ = header_and_image(source_dataset(rows=400, columns=400))
    result = QCResult(
        sop_instance_uid=header.SOPInstanceUID,
        view=View.FRONTAL,
        verdict=worst(findings),
        families=family_verdicts(findings),
        findings=findings,
        model=EXAMPLE_MODEL,
    )
    sr = roundtrip(build_sr(header, result))
    assert_valid(sr)
    units = [  # (rule, unit) of each measurement and threshold (a child of its rule's item)
        (
            concept(parents[-1] if concept(n)[0] == "threshold" else n)[0],
            n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0],
        )
        for n, parents in content_items(sr)
        if n.ValueType == "NUM" and concept(n)[1] == SCHEME
    ]
    heart_units = [u for rule, u in units if rule == "organs.heart"]
    assert len(heart_units) == 2  # the area and the least area
    for unit in heart_units:
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("mm2", "UCUM")
        assert unit.CodeMeaning == "square millimeter"
    assert {u.CodeValue for _, u in units} <= UCUM
    assert '(mm2,UCUM,"square millimeter")' in dsrdump(sr)


def test_overall_and_family_verdicts(rg1_sr) -> None:
    _, result, sr = rg1_sr
    verdicts = [
        (code_value(item)[0], parents[-1])
        for item, parents in content_items(sr)
        if item.ValueType == "CODE" and concept(item) == ("verdict", SCHEME)
    ]
    overall = [v for v, parent in verdicts if concept(parent) == ("C0034375", "UMLS")]
    assert overall == [str(result.verdict)]
    per_family = sorted(v for v, parent in verdicts if concept(parent) == ("125007", "DCM"))
    assert per_family == sorted(str(v) for v in result.families.values())


def test_deviation_index_sign_picks_under_or_over_exposed() -> None:
    def di(value: float) -> Finding:
        return Finding(
            rule="exposure.deviation_index",
            family=Family.EXPOSURE,
            status=Status.FAIL,
            value=value,
            unit="1",
            threshold=3.0,
            message="",
        )

    assert quality_finding(di(-3.5)).value == codes.DCM.UnderExposed.value
    assert quality_finding(di(4.0)).value == codes.DCM.OverExposed.value
    sharp = dataclasses.replace(di(0), rule="exposure.sharpness")
    assert quality_finding(sharp).value == codes.DCM.MotionBlur.value
    for rule, family in [
        ("completeness.apices", Family.COMPLETENESS),
        ("positioning.rotation", Family.POSITIONING),
        ("exposure.noise", Family.EXPOSURE),
        ("exposure.artifacts", Family.EXPOSURE),
        ("metadata.view", Family.METADATA),
        ("some.future_rule", Family.ORGANS),
    ]:
        code = quality_finding(dataclasses.replace(di(0), rule=rule, family=family))
        assert code.value in CID6135, rule


def test_not_applicable_result_without_model_or_findings_is_valid() -> None:
    header, _ = header_and_image(source_dataset())
    result = QCResult(
        sop_instance_uid=header.SOPInstanceUID,
        view=View.OTHER,
        verdict=Verdict.NOT_APPLICABLE,
        families={},
        findings=(),
        model=None,
    )
    sr = roundtrip(build_sr(header, result, options=ReportOptions(language="zh")))
    assert_valid(sr)
    text = dsrdump(sr)
    assert "(not_applicable,99QCNODE" in text
    assert "其他" in text  # the detected view, in the report language


def test_sr_uids_are_deterministic_and_depend_on_model_version() -> None:
    header, image = header_and_image(source_dataset())
    result = example_result(image)
    first, again = build_sr(header, result), build_sr(header, result)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    newer = dataclasses.replace(EXAMPLE_MODEL, version="example-2")
    other = build_sr(header, dataclasses.replace(result, model=newer))
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def test_highdicom_reads_the_report_back(rg1_sr) -> None:
    import highdicom as hd

    _, result, sr = rg1_sr
    document = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = document.content.get_image_measurement_groups()
    assert sorted(g.tracking_identifier for g in groups) == sorted(
        f"qcnode {f}" for f in result.families
    )
    positioning = next(g for g in groups if g.tracking_identifier == "qcnode positioning")
    names = {m.name.value for m in positioning.get_measurements()}
    assert {"positioning.rotation", "positioning.inspiration"} <= names
    rotation = next(
        m for m in positioning.get_measurements() if m.name.value == "positioning.rotation"
    )
    assert rotation.value == pytest.approx(7.9) and rotation.unit.value == "deg"
    assessment = positioning.get_qualitative_evaluations(name=codes.DCM.QualityAssessment)
    assert [q.value.value for q in assessment] == ["111236"]


def _without_times(ds: pydicom.Dataset) -> str:
    """The dataset as JSON with every date and time emptied (they say when it was built)."""
    copy = roundtrip(ds)
    for elem in copy.iterall():
        if elem.VR in ("DA", "TM", "DT"):
            elem.value = None
    return copy.to_json()


def test_sr_is_the_document_highdicoms_own_constructor_makes(rg1_sr, monkeypatch) -> None:
    """QCMeasurementReport skips highdicom's copy and search of the tree: same object."""
    import highdicom as hd

    from qcnode.report import sr as sr_module

    header, result, fast = rg1_sr

    def plain(*, evidence, root, **kwargs):  # highdicom's documented way, tree copied
        return hd.sr.Comprehensive3DSR(evidence=[evidence], content=root, **kwargs)

    monkeypatch.setattr(sr_module, "QCMeasurementReport", plain)
    slow = build_sr(header, result)
    assert type(slow) is hd.sr.Comprehensive3DSR
    assert _without_times(slow) == _without_times(fast)


def test_sr_content_is_parsed_on_first_use() -> None:
    import highdicom as hd

    header, image = header_and_image(source_dataset())
    result = example_result(image)
    sr = build_sr(header, result)
    root = sr.content[0]
    assert isinstance(root, hd.sr.ContainerContentItem)
    assert len(root.ContentSequence) == len(sr.ContentSequence)
    report = hd.sr.Comprehensive3DSR.from_dataset(roundtrip(sr))
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(result.families)
    read_back = report.content[0].ContentSequence
    assert [i.name for i in root.ContentSequence] == [i.name for i in read_back]


def test_every_rule_specific_finding_code_names_a_catalogue_rule() -> None:
    """A code keyed to a rule the catalogue lacks is dead (two were, until session 10)."""
    from qcnode.report import coding
    from qcnode.rules.catalogue import CATALOGUE

    known = {rule for rules in CATALOGUE.values() for rule in rules}
    assert set(coding._RULE_FINDING) <= known
