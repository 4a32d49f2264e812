"""What the pages, the CSV and /metrics show, independent of the database schema.

Only qcnode.web.queries knows the tables; templates and CSV see these frozen records, so a
schema change touches one module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlencode

from qcnode.records import Family, Verdict, View

PER_PAGE_DEFAULT = 50
PER_PAGE_MAX = 500


def _parse_date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _choice(text: str | None, allowed: set[str]) -> str:
    return text if text in allowed else ""


@dataclass(frozen=True, kw_only=True)
class WorklistFilter:
    """The worklist's filters; the same object drives the page, paging and the CSV export.

    ``family`` / ``rule`` select images where that family / rule did not pass (warn or
    fail); with ``verdict`` set as well, the family or rule must have exactly that status.
    ``date_from`` / ``date_to`` are inclusive and apply to the study date (the receive date
    when the header has none).
    """

    verdict: str = ""
    family: str = ""
    rule: str = ""
    view: str = ""
    station: str = ""
    operator: str = ""
    manufacturer: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    page: int = 1
    per_page: int = PER_PAGE_DEFAULT

    @classmethod
    def from_query(cls, q: Mapping[str, str]) -> WorklistFilter:
        """Parse query parameters leniently: an unknown value is ignored, not an error."""

        def num(key: str, default: int, hi: int) -> int:
            try:
                return max(1, min(hi, int(q.get(key, default))))
            except ValueError:
                return default

        return cls(
            verdict=_choice(q.get("verdict"), {v.value for v in Verdict} | {"pending"}),
            family=_choice(q.get("family"), {f.value for f in Family}),
            rule=(q.get("rule") or "").strip()[:64],
            view=_choice(q.get("view"), {v.value for v in View}),
            station=(q.get("station") or "").strip()[:64],
            operator=(q.get("operator") or "").strip()[:64],
            manufacturer=(q.get("manufacturer") or "").strip()[:64],
            date_from=_parse_date(q.get("date_from")),
            date_to=_parse_date(q.get("date_to")),
            page=num("page", 1, 1_000_000),
            per_page=num("per_page", PER_PAGE_DEFAULT, PER_PAGE_MAX),
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-empty filters as query parameters (for links, paging and CSV)."""
        f = replace(self, **changes)
        out: dict[str, str] = {}
        for fd in fields(f):
            value = getattr(f, fd.name)
            if fd.name == "page" and value == 1:
                continue
            if fd.name == "per_page" and value == PER_PAGE_DEFAULT:
                continue
            if value not in (None, ""):
                out[fd.name] = value.isoformat() if isinstance(value, dt.date) else str(value)
        return out

    def query(self, **changes: Any) -> str:
        return urlencode(self.params(**changes))

    @property
    def active(self) -> bool:
        return any(v for k, v in self.params().items() if k not in ("page", "per_page"))


@dataclass(frozen=True)
class FlaggedRule:
    rule: str
    status: str  # warn | fail


@dataclass(frozen=True)
class WorklistRow:
    sop_instance_uid: str
    received_at: dt.datetime | None
    study_date: dt.date | None
    view: str  # frontal | lateral | other | "" (not checked yet)
    verdict: str  # a Verdict value or "pending"
    families: Mapping[str, str]
    flagged: tuple[FlaggedRule, ...]
    station: str
    operator: str
    manufacturer: str
    view_position: str


@dataclass(frozen=True)
class WorklistPage:
    rows: tuple[WorklistRow, ...]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True)
class FindingRow:
    rule: str
    family: str
    status: str
    value: float | None
    unit: str | None
    threshold: float | None
    message: str
    geometry: tuple[Mapping[str, Any], ...] = ()  # {"kind", "points": [[x, y]...], "label"}


@dataclass(frozen=True)
class DeliveryRow:
    outbox_id: int
    destination: str
    kind: str  # sr | sc | gsps | kos
    state: str  # pending | sent | dead | ...
    attempts: int
    last_error: str
    updated_at: dt.datetime | None


@dataclass(frozen=True)
class ImageDetail:
    row: WorklistRow
    rows: int
    columns: int
    stored_path: str  # relative to data_dir ("" when the file is gone)
    findings: tuple[FindingRow, ...]
    deliveries: tuple[DeliveryRow, ...]
    masks_path: str  # relative to data_dir; "" when masks were not stored
    model: str
    timings_ms: Mapping[str, float]
    error: str


@dataclass(frozen=True)
class RateCell:
    failed: int
    total: int

    @property
    def rate(self) -> float | None:
        return self.failed / self.total if self.total else None


@dataclass(frozen=True)
class GroupStat:
    label: str
    total: int
    failed: int
    warned: int

    @property
    def rate(self) -> float:
        return self.failed / self.total if self.total else 0.0


@dataclass(frozen=True)
class Statistics:
    buckets: tuple[str, ...]
    by_family: Mapping[str, tuple[RateCell, ...]]  # family -> one cell per bucket
    by_rule: Mapping[str, tuple[RateCell, ...]]
    rule_totals: tuple[GroupStat, ...]
    by_station: tuple[GroupStat, ...]
    by_operator: tuple[GroupStat, ...]
    total: int


@dataclass(frozen=True)
class ErrorRow:
    at: dt.datetime | None
    source: str
    message: str
    sop_instance_uid: str = ""


@dataclass(frozen=True)
class NodeState:
    received: int
    checked: int
    queue_depth: int
    jobs_by_state: Mapping[str, int]
    outbox_by_state: Mapping[str, int]
    dead_letters: tuple[DeliveryRow, ...]
    outbox_by_destination: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    dead_sop: Mapping[int, str] = field(default_factory=dict)  # outbox id -> source SOP UID
    errors: tuple[ErrorRow, ...] = ()
