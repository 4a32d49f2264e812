"""CSV export of a filtered worklist: the same filter object, every matching row, no paging."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from qcnode.records import Family
from qcnode.web.viewmodels import WorklistRow

COLUMNS: tuple[str, ...] = (
    "sop_instance_uid",
    "received_at",
    "study_date",
    "view",
    "verdict",
    *(f"family_{f.value}" for f in Family),
    "flagged_rules",
    "station_name",
    "operators_name",
    "manufacturer",
    "view_position",
)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    """Text for one cell; header text that a spreadsheet would run as a formula is quoted."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def row_values(row: WorklistRow) -> list[str]:
    return [
        _cell(v)
        for v in (
            row.sop_instance_uid,
            row.received_at.isoformat() if row.received_at else "",
            row.study_date.isoformat() if row.study_date else "",
            row.view,
            row.verdict,
            *(row.families.get(f.value, "") for f in Family),
            ";".join(f"{fr.rule}={fr.status}" for fr in row.flagged),
            row.station,
            row.operator,
            row.manufacturer,
            row.view_position,
        )
    ]


def stream_csv(rows: Iterable[WorklistRow]) -> Iterator[str]:
    """Yield the CSV in chunks (UTF-8 with BOM so spreadsheets read Chinese names right)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    buf.write("\ufeff")
    writer.writerow(COLUMNS)
    for i, row in enumerate(rows, 1):
        writer.writerow(row_values(row))
        if i % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
