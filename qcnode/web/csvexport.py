"""CSV export of a filtered worklist: the same filter object, every matching row, no paging."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence

from qcnode.records import Family
from qcnode.web.viewmodels import Statistics, WorklistRow

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
    """The worklist as CSV, in chunks."""
    return stream_table(COLUMNS, (row_values(r) for r in rows))


def stats_table(st: Statistics, table: str) -> tuple[tuple[str, ...], list[list[str]]]:
    """One statistics table as (header, rows): per station / operator / rule, or a time series
    per family / rule (one row per bucket and name)."""
    if table in ("station", "operator", "rule"):
        groups = {"station": st.by_station, "operator": st.by_operator, "rule": st.rule_totals}
        header = (table, "images", "failed", "warned", "failure_rate")
        return header, [
            [_cell(g.label), str(g.total), str(g.failed), str(g.warned), f"{g.rate:.4f}"]
            for g in groups[table]
        ]
    series = st.by_family if table == "family_time" else st.by_rule
    header = (
        "bucket",
        "family" if table == "family_time" else "rule",
        "failed",
        "total",
        "failure_rate",
    )
    rows = []
    for name, cells in series.items():
        for b, c in zip(st.buckets, cells, strict=True):
            if c.total:
                rows.append([b, name, str(c.failed), str(c.total), f"{c.rate or 0.0:.4f}"])
    return header, rows


STATS_TABLES = ("station", "operator", "rule", "family_time", "rule_time")


def stream_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Iterator[str]:
    """Yield CSV in chunks (UTF-8 with BOM so spreadsheets read Chinese names right)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    buf.write("\ufeff")
    writer.writerow(header)
    for i, row in enumerate(rows, 1):
        writer.writerow(row)
        if i % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
