"""Key Object Selection: flags a failed image in the PACS worklist.

Title 113010 "Quality Issue" by default. 113001 "Rejected for Quality Reasons" makes many
PACS hide the image (IHE Imaging Object Change Management), so it is only used when the
site asks for it explicitly (``kos_title = "rejected"``).
"""

from __future__ import annotations

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from qcnode.records import QCResult, Status, Verdict
from qcnode.report import i18n
from qcnode.report.common import (
    ReportOptions,
    copy_patient_and_study,
    device_observer,
    evidence_header,
    report_source,
    series_info,
    settle_character_set,
)


def kos_wanted(result: QCResult, options: ReportOptions) -> bool:
    """Whether this verdict gets a KOS under ``options.kos_when``."""
    if options.kos_when == "always":
        return result.verdict in (Verdict.PASS, Verdict.WARN, Verdict.FAIL)
    if options.kos_when == "warn":
        return result.verdict in (Verdict.WARN, Verdict.FAIL)
    return result.verdict == Verdict.FAIL


def _description(result: QCResult, language: str) -> str:
    lines = [
        f"{i18n.text('kos_description', language)}: {i18n.status_name(result.verdict, language)}"
    ]
    for f in result.findings:
        if f.status in (Status.FAIL, Status.WARN):
            lines.append(
                f"{f.rule} ({i18n.status_name(f.status, language)}): {f.message}".rstrip(": ")
            )
    return "\n".join(lines)


def build_kos(
    source: pydicom.Dataset, result: QCResult, *, options: ReportOptions | None = None
) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS that references ``source`` with a Quality Issue (or Rejected) title."""
    options = options or ReportOptions()
    source = report_source(source, options)
    evidence = evidence_header(source)
    info = series_info(source, result.model, "kos", options)
    title = (
        codes.DCM.RejectedForQualityReasons
        if options.kos_title == "rejected"
        else codes.DCM.QualityIssue
    )
    observer = device_observer(options, result.model)
    content = hd.ko.KeyObjectSelection(
        document_title=title,
        referenced_objects=[evidence],
        observer_device_context=observer,
        description=_description(result, options.language),
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[evidence],
        content=content,
        series_instance_uid=info.series_instance_uid,
        series_number=info.series_number,
        sop_instance_uid=info.sop_instance_uid,
        instance_number=info.instance_number,
        manufacturer=options.manufacturer,
        institution_name=options.institution_name,
        series_description=i18n.text("kos_series", options.language),
    )
    copy_patient_and_study(source, kos)
    settle_character_set(source, kos)
    return kos
