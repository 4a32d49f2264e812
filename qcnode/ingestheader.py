"""What the Storage SCP reads from a received header (never the pixels): whether the image
is a chest radiograph, and the facts the instance row keeps.

Kept apart from the SCP (qcnode.ingest) because it is plain pydicom: no association, no
session, no file, so the C-STORE handler stays thin and these readers are testable alone.
Every reader tolerates absent, multi-valued and malformed values, as hostile headers have.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from qcnode.db import utcnow

CHEST_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)
# BodyPartExamined values that mean "chest" (empty: unknown, the model's view head decides)
# (substrings, as qcnode.engine.chest_header: "CHEST PA", "THORAX", German "TORAX"/"BRUST")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "BRUST")


def is_chest(sop_class_uid: str, body_part: str) -> bool:
    """Header-level decision, the same as the engine's; an empty body part is not held
    against the image (the model's view head may still say "other" later)."""
    part = body_part.upper()
    return sop_class_uid in CHEST_SOP_CLASSES and (
        not part or any(p in part for p in CHEST_BODY_PARTS)
    )


def _study_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None


def header_text(ds: Dataset, keyword: str, limit: int) -> str:
    """A header value as text (multiple values joined by ``\\``), cut to ``limit``
    characters (the column's width); "" when absent."""
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int:
    """An integer header value; 0 when absent or unusable (a multi-valued Rows, say)."""
    value = ds.get(keyword, 0)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else 0
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def instance_row(
    header: Dataset,
    sop_uid: str,
    sop_class: str,
    calling: str,
    address: str,
    applicable: bool,
) -> dict[str, Any]:
    """The row's header facts; built before the file is placed, so that a header
    whose values cannot be used is refused without leaving a file behind."""
    file_meta = getattr(header, "file_meta", None)
    return {
        "sop_instance_uid": sop_uid,
        "sop_class_uid": sop_class,
        "study_instance_uid": header_text(header, "StudyInstanceUID", 64),
        "series_instance_uid": header_text(header, "SeriesInstanceUID", 64),
        "transfer_syntax_uid": str(getattr(file_meta, "TransferSyntaxUID", "") or "")[:64],
        "modality": header_text(header, "Modality", 16),
        "path": "",
        "size_bytes": 0,
        "calling_ae": calling[:16],
        "peer_address": address[:64],
        "received_at": utcnow(),
        "station_name": header_text(header, "StationName", 64),
        "operators_name": header_text(header, "OperatorsName", 256),
        "manufacturer": header_text(header, "Manufacturer", 64),
        "manufacturer_model": header_text(header, "ManufacturerModelName", 64),
        "institution_name": header_text(header, "InstitutionName", 128),
        "study_date": _study_date(header_text(header, "StudyDate", 8)),
        "view_position": header_text(header, "ViewPosition", 16).upper(),
        "body_part": header_text(header, "BodyPartExamined", 16).upper(),
        "rows": _int(header, "Rows"),
        "columns": _int(header, "Columns"),
        "applicable": applicable,
    }
