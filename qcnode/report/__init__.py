"""QC results as DICOM: TID 1500 SR, overlay Secondary Capture, optional GSPS and KOS.

``build_results`` is what the worker calls; the single builders are for tests and tools.
All objects join the source's study in one new series per kind, with UIDs that depend only
on (source instance or series, model version, kind): a re-run replaces, never duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

import pydicom

from qcnode.records import DecodedImage, Prediction, QCResult
from qcnode.report.common import ReportOptions, report_source
from qcnode.report.gsps import build_gsps
from qcnode.report.kos import build_kos, kos_wanted
from qcnode.report.overlay import render_overlay
from qcnode.report.sc import build_overlay_sc
from qcnode.report.sr import build_sr
from qcnode.report.uids import OBJECT_KINDS

log = logging.getLogger(__name__)

__all__ = [
    "OBJECT_KINDS",
    "ReportOptions",
    "build_gsps",
    "build_kos",
    "build_overlay_sc",
    "build_results",
    "build_sr",
    "kos_wanted",
    "render_overlay",
]


def build_results(
    source: pydicom.Dataset,
    image: DecodedImage,
    prediction: Prediction | None,
    result: QCResult,
    *,
    objects: Collection[str] = ("sr", "sc"),
    options: ReportOptions | None = None,
    language: str | None = None,
) -> list[pydicom.Dataset]:
    """The requested result objects, in the order sr, sc, gsps, kos.

    ``source`` may be read with ``stop_before_pixels`` (pixels come from ``image``).
    A KOS is only made when the verdict calls for one (``options.kos_when``); the GSPS and
    SC draw masks only when a ``prediction`` is given. ``language`` overrides the options'.
    """
    unknown = set(objects) - set(OBJECT_KINDS)
    if unknown:
        raise ValueError(f"unknown result object(s): {', '.join(sorted(unknown))}")
    options = options or ReportOptions()
    if language is not None and language != options.language:
        options = dataclasses.replace(options, language=language)
    source = report_source(source, options)  # once: each builder's own call is then a copy
    out: list[pydicom.Dataset] = []
    if "sr" in objects:
        out.append(build_sr(source, result, options=options))
    if "sc" in objects:
        out.append(build_overlay_sc(source, image, prediction, result, options=options))
    if "gsps" in objects:
        out.append(build_gsps(source, prediction, result, options=options))
    if "kos" in objects and kos_wanted(result, options):
        out.append(build_kos(source, result, options=options))
    log.debug(
        "built result objects",
        extra={"kinds": [str(ds.Modality) for ds in out], "verdict": str(result.verdict)},
    )
    return out
