"""TID 1500 Measurement Report (Comprehensive 3D SR) of one QC result, built with highdicom.

Layout (what a reader finds in dsrdump or an SR viewer):

- observation context: the qcnode device observer; procedure: plain chest X-ray;
- image library: the source image;
- one TID 1501 measurement group per rule family, tracked by a UID and the label
  ``qcnode <family>``, with algorithm identification (model name, version, weights sha256),
  the source image, one NUM per measured rule (UCUM units) and qualitative evaluations:
  the family's Quality Assessment (DCM 111050) and verdict, then per rule its status with
  the CID 6135 Quality Finding (warn/fail), the message, the threshold and the SCOORD
  geometry on the source image;
- a root "Qualitative Evaluations" container (UMLS C0034375) with the overall verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from qcnode.records import Family, Finding, QCResult, Status, Verdict, worst
from qcnode.report import coding, i18n, uids
from qcnode.report.common import (
    ReportOptions,
    copy_patient_and_study,
    device_observer,
    evidence_header,
    model_version,
    report_source,
    series_info,
    settle_character_set,
    software_versions,
)
from qcnode.report.geometry import to_shapes

PLAIN_CHEST_XRAY = hd.sr.CodedConcept(
    value="399208008", scheme_designator="SCT", meaning="Plain chest X-ray"
)
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)
VIEW = coding.private("view", "Detected view")
ERROR = coding.private("error", "QC error")


def _cc(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


def _algorithm(result: QCResult, options: ReportOptions) -> hd.sr.AlgorithmIdentification:
    if result.model is None:
        return hd.sr.AlgorithmIdentification(name="qcnode", version=options.software_version)
    return hd.sr.AlgorithmIdentification(
        name=result.model.name[:64],
        version=result.model.version[:64],
        parameters=[f"weights sha256 {result.model.sha256}"],
    )


def _attach(item: pydicom.Dataset, children: Sequence[pydicom.Dataset]) -> None:
    """Children of a content item. highdicom wraps the list in its ContentSequence and
    checks each item; wrapping it beforehand made it check (and index) every item twice."""
    item.ContentSequence = list(children)


def _regions(
    finding: Finding, source: pydicom.Dataset, *, rows: int, columns: int
) -> list[hd.sr.ScoordContentItem]:
    items = []
    for geometry in finding.geometry:
        for shape in to_shapes(geometry, rows=rows, columns=columns):
            item = hd.sr.ScoordContentItem(
                name=coding.concept(codes.DCM.ImageRegion),
                graphic_type=shape.graphic_type,
                graphic_data=shape.points,
                relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
            )
            _attach(
                item,
                [
                    hd.sr.SourceImageForRegion(
                        referenced_sop_class_uid=source.SOPClassUID,
                        referenced_sop_instance_uid=source.SOPInstanceUID,
                    )
                ],
            )
            items.append(item)
    return items


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _finding_evaluation(
    finding: Finding, source: pydicom.Dataset, *, rows: int, columns: int
) -> hd.sr.QualitativeEvaluation:
    """One rule's result: rule concept = status, with its finding code, message, geometry."""
    evaluation = hd.sr.QualitativeEvaluation(
        name=coding.rule_code(finding.rule), value=coding.status_code(finding.status)
    )
    has_properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    children: list[hd.sr.ContentItem] = []
    if finding.status in (Status.WARN, Status.FAIL):
        children.append(
            hd.sr.CodeContentItem(
                name=coding.concept(codes.DCM.QualityFinding),
                value=coding.quality_finding(finding),
                relationship_type=has_properties,
            )
        )
    children.append(
        hd.sr.TextContentItem(
            name=coding.RULE, value=finding.rule, relationship_type=has_properties
        )
    )
    if finding.message:
        children.append(
            hd.sr.TextContentItem(
                name=coding.concept(codes.DCM.Comment),
                value=finding.message,
                relationship_type=has_properties,
            )
        )
    if _finite(finding.threshold):
        assert finding.threshold is not None
        children.append(
            hd.sr.NumContentItem(
                name=coding.THRESHOLD,
                value=finding.threshold,
                unit=coding.ucum(finding.unit),
                relationship_type=has_properties,
            )
        )
    children.extend(_regions(finding, source, rows=rows, columns=columns))
    _attach(evaluation[0], children)
    return evaluation


def _group(
    key: str,
    category: hd.sr.CodedConcept | None,
    verdict: Verdict,
    findings: Sequence[Finding],
    result: QCResult,
    source: pydicom.Dataset,
    options: ReportOptions,
    *,
    rows: int,
    columns: int,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    version = model_version(result.model)
    algorithm = _algorithm(result, options)
    tracking = hd.sr.TrackingIdentifier(
        uid=uids.item_uid(str(source.SOPInstanceUID), version, "group", key, root=options.uid_root),
        identifier=f"qcnode {key}",
    )
    measurements = [
        hd.sr.Measurement(
            name=coding.rule_code(f.rule),
            value=float(f.value),  # type: ignore[arg-type]
            unit=coding.ucum(f.unit),
        )
        for f in findings
        if _finite(f.value)
    ]
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    assessment = coding.quality_assessment(verdict)
    if assessment is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=coding.concept(codes.DCM.QualityAssessment), value=assessment
            )
        )
    evaluations.append(
        hd.sr.QualitativeEvaluation(name=coding.VERDICT, value=coding.status_code(verdict))
    )
    evaluations.extend(_finding_evaluation(f, source, rows=rows, columns=columns) for f in findings)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_category=category,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            )
        ],
    )


def _families(result: QCResult) -> list[tuple[Family, Verdict, list[Finding]]]:
    """Families in catalogue order: those with a verdict and those with findings."""
    present = set(result.families) | {f.family for f in result.findings}
    out = []
    for family in Family:
        if family not in present:
            continue
        findings = [f for f in result.findings if f.family == family]
        verdict = result.families.get(family)
        if verdict is None:
            verdict = worst(findings)
        out.append((family, verdict, findings))
    return out


SOURCE = hd.sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")


def _library_descriptors(source: pydicom.Dataset) -> list[hd.sr.ContentItem]:
    """TID 1603 descriptors, each only when the header has a usable value."""
    acq = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    out: list[hd.sr.ContentItem] = []
    orientation = list(source.get("PatientOrientation") or [])
    if len(orientation) == 2 and all(orientation):
        out.append(
            hd.sr.TextContentItem(
                name=codes.DCM.PatientOrientationRow,
                value=str(orientation[0]),
                relationship_type=acq,
            )
        )
        out.append(
            hd.sr.TextContentItem(
                name=codes.DCM.PatientOrientationColumn,
                value=str(orientation[1]),
                relationship_type=acq,
            )
        )
    spacing = _two_spacing_values(source.get("ImagerPixelSpacing"))
    if spacing is not None:
        for name, value in (
            (codes.DCM.HorizontalPixelSpacing, spacing[1]),
            (codes.DCM.VerticalPixelSpacing, spacing[0]),
        ):
            out.append(
                hd.sr.NumContentItem(
                    name=name, value=float(value), unit=codes.UCUM.Millimeter, relationship_type=acq
                )
            )
    return out


def _two_spacing_values(raw: object) -> tuple[float, float] | None:
    """(row, column) spacing when the header holds two positive numbers; sloppy headers
    (one value, text, zero) simply leave the descriptor out."""
    try:
        values = [float(v) for v in raw]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(values) == 2 and all(v > 0 and math.isfinite(v) for v in values):
        return values[0], values[1]
    return None


def _insert_image_library(root: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """TID 1600 Image Library with the source image, before "Imaging Measurements".

    Built here rather than by highdicom, whose projection-radiography descriptors require
    PatientOrientation and ImagerPixelSpacing that many CR/DX headers lack.
    """
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    image = hd.sr.ImageContentItem(
        name=SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=contains,
    )
    descriptors = _library_descriptors(source)
    if descriptors:
        _attach(image, descriptors)
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
    _attach(group, [image])
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    _attach(library, [group])
    items = list(root.ContentSequence)
    at = next(
        (
            i
            for i, item in enumerate(items)
            if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value
        ),
        len(items),
    )
    items.insert(at, library)
    _attach(root, items)


def _overall(result: QCResult, language: str) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = []
    assessment = coding.quality_assessment(result.verdict)
    if assessment is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=coding.concept(codes.DCM.QualityAssessment),
                value=assessment,
                relationship_type=contains,
            )
        )
    items.append(
        hd.sr.CodeContentItem(
            name=coding.VERDICT,
            value=coding.status_code(result.verdict),
            relationship_type=contains,
        )
    )
    items.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.QualityControlStandard,
            value=_cc(codes.DCM.InstitutionallyDefinedQualityControlStandard),
            relationship_type=contains,
        )
    )
    items.append(
        hd.sr.TextContentItem(
            name=VIEW, value=i18n.view_name(result.view, language), relationship_type=contains
        )
    )
    if result.error:
        items.append(
            hd.sr.TextContentItem(name=ERROR, value=result.error, relationship_type=contains)
        )
    _attach(container, items)
    return container


class QCMeasurementReport(hd.sr.Comprehensive3DSR):
    """highdicom's Comprehensive 3D SR around a content tree, without its copy of the tree.

    ``Comprehensive3DSR`` deep-copies the content tree, parses the copy into highdicom
    content items and searches it for image references: 2/3 of the SR's time for the ~250
    content items of a failing radiograph. The evidence it records comes from ``evidence``
    alone (the search only checks that every referenced image is evidence, and every
    reference in our tree is the source image, which is). So highdicom makes the document
    around the root container without its children, the tree is then attached as it is,
    and ``content`` parses it in place on first use, as ``from_dataset(copy=False)`` does.
    The written object is the same (tests/unit/test_report_sr.py compares).
    """

    def __init__(self, *, evidence: pydicom.Dataset, root: pydicom.Dataset, **kwargs: Any) -> None:
        skeleton = pydicom.Dataset()
        for elem in root:
            if elem.keyword != "ContentSequence":
                skeleton.add(elem)
        skeleton.ContentSequence = []
        super().__init__(evidence=[evidence], content=skeleton, **kwargs)
        self.ContentSequence = root.ContentSequence
        self._content_root: pydicom.Dataset | None = root

    @property
    def content(self) -> hd.sr.ContentSequence:
        """The content tree as highdicom content items (parsed on first use)."""
        if self._content_root is not None:
            item = hd.sr.ContentItem._from_dataset_derived(self._content_root)
            self._content = hd.sr.ContentSequence([item], is_root=True)
            self._content_root = None
        return self._content


def build_sr(
    source: pydicom.Dataset, result: QCResult, *, options: ReportOptions | None = None
) -> hd.sr.Comprehensive3DSR:
    """The Measurement Report of ``result`` on ``source`` (header-only dataset is enough)."""
    options = options or ReportOptions()
    source = report_source(source, options)
    evidence = evidence_header(source)
    rows, columns = int(source.Rows), int(source.Columns)
    info = series_info(source, result.model, "sr", options)
    observer = device_observer(options, result.model)
    groups = [
        _group(
            str(family),
            coding.family_code(family),
            verdict,
            findings,
            result,
            source,
            options,
            rows=rows,
            columns=columns,
        )
        for family, verdict, findings in _families(result)
    ]
    if not groups:  # not applicable / error: TID 1500 still wants one group, with the verdict
        groups.append(
            _group(
                "verdict",
                None,
                result.verdict,
                [],
                result,
                source,
                options,
                rows=rows,
                columns=columns,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups or None,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            language=coding.LANGUAGE_CODES[options.language]
        ),
    )
    root = report[0]
    _insert_image_library(root, source)
    root.ContentSequence.append(_overall(result, options.language))
    sr = QCMeasurementReport(
        evidence=evidence,
        root=root,
        series_instance_uid=info.series_instance_uid,
        series_number=info.series_number,
        sop_instance_uid=info.sop_instance_uid,
        instance_number=info.instance_number,
        manufacturer=options.manufacturer,
        is_complete=True,
        is_final=True,
        institution_name=options.institution_name,
        series_description=i18n.text("sr_series", options.language),
        manufacturer_model_name="qcnode",
        software_versions=software_versions(options, result.model),
        device_serial_number=options.device_serial_number,
        coding_schemes=[coding.scheme_identification()],
    )
    copy_patient_and_study(source, sr)
    settle_character_set(source, sr)
    return sr
