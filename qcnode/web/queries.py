"""Read-only queries over the node's tables (qcnode.db), mapped to the dashboard's records.

The only module of the web package that knows the schema. Aggregations that differ between
SQLite and PostgreSQL (date bucketing) are done in Python over narrow rows, so one code path
serves both engines; counting for /metrics stays in SQL because it runs on every scrape.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from qcnode import db
from qcnode.records import Family
from qcnode.web.metrics import LATENCY_BUCKETS, Histogram, MetricsSnapshot
from qcnode.web.viewmodels import (
    DeliveryRow,
    ErrorRow,
    FindingRow,
    FlaggedRule,
    GroupStat,
    ImageDetail,
    NodeState,
    RateCell,
    Statistics,
    WorklistFilter,
    WorklistPage,
    WorklistRow,
)

FLAGGED = ("warn", "fail")
RATED = ("pass", "warn", "fail")  # verdicts that count in a failure rate's denominator
_FAMILY_COLUMNS = {f.value: getattr(db.Result, f"verdict_{f.value}") for f in Family}


# --- worklist ------------------------------------------------------------------------


def _conditions(f: WorklistFilter, *, for_stats: bool = False) -> list[ColumnElement[bool]]:
    """SQL conditions for a filter (statistics use only the who/what/when filters)."""
    R, Inst, F = db.Result, db.Instance, db.Finding
    cond: list[ColumnElement[bool]] = []
    scoped = bool(f.family or f.rule)
    if not for_stats:
        wanted = (f.verdict,) if f.verdict else FLAGGED
        if f.verdict and not scoped:
            cond.append(R.id.is_(None) if f.verdict == "pending" else R.verdict == f.verdict)
        if f.family:
            cond.append(_FAMILY_COLUMNS[f.family].in_(wanted))
        if f.rule:
            cond.append(exists().where(F.result_id == R.id, F.rule == f.rule, F.status.in_(wanted)))
    if f.view:
        cond.append(R.view == f.view)
    if f.station:
        cond.append(Inst.station_name == f.station)
    if f.operator:
        cond.append(Inst.operators_name == f.operator)
    if f.manufacturer:
        cond.append(Inst.manufacturer == f.manufacturer)
    if f.date_from:
        start = dt.datetime.combine(f.date_from, dt.time())
        cond.append(
            or_(
                Inst.study_date >= f.date_from,
                and_(Inst.study_date.is_(None), Inst.received_at >= start),
            )
        )
    if f.date_to:
        end = dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time())
        cond.append(
            or_(
                Inst.study_date <= f.date_to,
                and_(Inst.study_date.is_(None), Inst.received_at < end),
            )
        )
    return cond


def _worklist_select(f: WorklistFilter) -> Select[db.Instance, db.Result]:
    return (
        select(db.Instance, db.Result)
        .outerjoin(db.Result, db.Result.instance_id == db.Instance.id)
        .where(*_conditions(f))
    )


def _row(inst: db.Instance, res: db.Result | None, flagged: Sequence[FlaggedRule]) -> WorklistRow:
    families = (
        {}
        if res is None
        else {k: v for k, col in _FAMILY_COLUMNS.items() if (v := getattr(res, col.key))}
    )
    return WorklistRow(
        sop_instance_uid=inst.sop_instance_uid,
        received_at=inst.received_at,
        study_date=inst.study_date,
        view="" if res is None else res.view,
        verdict="pending" if res is None else res.verdict,
        families=families,
        flagged=tuple(flagged),
        station=inst.station_name,
        operator=inst.operators_name,
        manufacturer=inst.manufacturer,
        view_position=inst.view_position,
    )


def _flagged(session: Session, result_ids: Sequence[int]) -> dict[int, list[FlaggedRule]]:
    out: dict[int, list[FlaggedRule]] = defaultdict(list)
    if not result_ids:
        return out
    rows = session.execute(
        select(db.Finding.result_id, db.Finding.rule, db.Finding.status)
        .where(db.Finding.result_id.in_(result_ids), db.Finding.status.in_(FLAGGED))
        .order_by(db.Finding.result_id, db.Finding.status.desc(), db.Finding.rule)
    )
    for rid, rule, status in rows:
        out[rid].append(FlaggedRule(rule=rule, status=status))
    return out


def _rows(session: Session, pairs: Sequence[Any]) -> list[WorklistRow]:
    flagged = _flagged(session, [res.id for _, res in pairs if res is not None])
    return [_row(inst, res, flagged.get(res.id, []) if res else []) for inst, res in pairs]


def worklist(session: Session, f: WorklistFilter) -> WorklistPage:
    """One page of the filtered worklist, newest received first."""
    base = _worklist_select(f)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    pairs = session.execute(
        base.order_by(db.Instance.received_at.desc(), db.Instance.id.desc())
        .limit(f.per_page)
        .offset((f.page - 1) * f.per_page)
    ).all()
    return WorklistPage(
        rows=tuple(_rows(session, pairs)), total=total, page=f.page, per_page=f.per_page
    )


def iter_worklist(
    session: Session, f: WorklistFilter, *, chunk: int = 500
) -> Iterator[WorklistRow]:
    """Every row the filter selects (no paging), in worklist order, fetched in chunks."""
    base = _worklist_select(f).order_by(db.Instance.received_at.desc(), db.Instance.id.desc())
    offset = 0
    while True:
        pairs = session.execute(base.limit(chunk).offset(offset)).all()
        if not pairs:
            return
        yield from _rows(session, pairs)
        offset += chunk


def filter_options(session: Session) -> dict[str, list[str]]:
    """Distinct values for the filter inputs' suggestions."""

    def distinct(col: Any) -> list[str]:
        return [v for v in session.scalars(select(col).distinct().order_by(col)) if v]

    return {
        "rule": distinct(db.Finding.rule),
        "station": distinct(db.Instance.station_name),
        "operator": distinct(db.Instance.operators_name),
        "manufacturer": distinct(db.Instance.manufacturer),
    }


# --- image page ----------------------------------------------------------------------


def image_detail(session: Session, sop_instance_uid: str) -> ImageDetail | None:
    pair = session.execute(
        select(db.Instance, db.Result)
        .outerjoin(db.Result, db.Result.instance_id == db.Instance.id)
        .where(db.Instance.sop_instance_uid == sop_instance_uid)
    ).first()
    if pair is None:
        return None
    inst, res = pair
    findings: list[FindingRow] = []
    deliveries: list[DeliveryRow] = []
    if res is not None:
        for fnd in session.scalars(
            select(db.Finding).where(db.Finding.result_id == res.id).order_by(db.Finding.id)
        ):
            findings.append(
                FindingRow(
                    rule=fnd.rule,
                    family=fnd.family,
                    status=fnd.status,
                    value=fnd.value,
                    unit=fnd.unit,
                    threshold=fnd.threshold,
                    message=fnd.message,
                    geometry=tuple(g for g in (fnd.geometry or []) if isinstance(g, dict)),
                )
            )
        for ob, kind in session.execute(
            select(db.Outbox, db.ResultObject.kind)
            .join(db.ResultObject, db.Outbox.object_id == db.ResultObject.id)
            .where(db.ResultObject.result_id == res.id)
            .order_by(db.Outbox.destination, db.ResultObject.kind)
        ):
            deliveries.append(_delivery(ob, kind))
    return ImageDetail(
        row=_rows(session, [pair])[0],
        rows=inst.rows,
        columns=inst.columns,
        stored_path=inst.path,
        findings=tuple(findings),
        deliveries=tuple(deliveries),
        masks_path="" if res is None else (res.masks_path or ""),
        model="" if res is None else f"{res.model_name} {res.model_version}".strip(),
        timings_ms={} if res is None else dict(res.timings_ms or {}),
        error="" if res is None else (res.error or ""),
    )


def _delivery(ob: db.Outbox, kind: str) -> DeliveryRow:
    return DeliveryRow(
        outbox_id=ob.id,
        destination=ob.destination,
        kind=kind,
        state=ob.state,
        attempts=ob.attempts,
        last_error=ob.last_error or "",
        updated_at=ob.sent_at or ob.next_attempt_at,
    )


def masks_path(session: Session, sop_instance_uid: str) -> str | None:
    return session.scalar(
        select(db.Result.masks_path)
        .join(db.Instance, db.Result.instance_id == db.Instance.id)
        .where(db.Instance.sop_instance_uid == sop_instance_uid)
    )


def stored_path(session: Session, sop_instance_uid: str) -> str | None:
    return session.scalar(
        select(db.Instance.path).where(db.Instance.sop_instance_uid == sop_instance_uid)
    )


# --- statistics ----------------------------------------------------------------------


def _bucket_key(day: dt.date, bucket: str) -> str:
    if bucket == "month":
        return f"{day.year:04d}-{day.month:02d}"
    if bucket == "week":
        iso = day.isocalendar()
        return f"{iso.year:04d}-W{iso.week:02d}"
    return day.isoformat()


def statistics(session: Session, f: WorklistFilter, *, bucket: str = "day") -> Statistics:
    """Failure rates per family and rule over time, and per station / operator with counts.

    Counting is grouped by day in SQL (``date()`` exists in SQLite and PostgreSQL); days
    are folded into weeks or months in Python, where the calendar is the same everywhere.
    """
    R, Inst, F = db.Result, db.Instance, db.Finding
    cond = [*_conditions(f, for_stats=True), R.verdict.in_(RATED)]
    day = func.coalesce(Inst.study_date, func.date(Inst.received_at), type_=Date).label("day")

    def n_if(expr: ColumnElement[bool]) -> Any:
        return func.sum(case((expr, 1), else_=0))

    fam_cols = []
    for col in _FAMILY_COLUMNS.values():
        fam_cols += [n_if(col.in_(RATED)), n_if(col == "fail")]
    fam_total: Counter[tuple[str, str]] = Counter()
    fam_failed: Counter[tuple[str, str]] = Counter()
    seen_fams: set[str] = set()
    buckets_seen: set[str] = set()
    total = 0
    for row in session.execute(
        select(day, func.count(), *fam_cols)
        .join(Inst, R.instance_id == Inst.id)
        .where(*cond)
        .group_by(day)
    ):
        key = _bucket_key(_as_date(row[0]), bucket)
        buckets_seen.add(key)
        total += row[1]
        for k, fam in enumerate(_FAMILY_COLUMNS):
            rated, failed = int(row[2 + 2 * k] or 0), int(row[3 + 2 * k] or 0)
            if rated:
                seen_fams.add(fam)
            fam_total[fam, key] += rated
            fam_failed[fam, key] += failed

    rule_total: Counter[tuple[str, str]] = Counter()
    rule_failed: Counter[tuple[str, str]] = Counter()
    rule_sum: dict[str, Counter[str]] = defaultdict(Counter)
    for d, rule, n, failed, warned in session.execute(
        select(day, F.rule, func.count(), n_if(F.status == "fail"), n_if(F.status == "warn"))
        .join(R, F.result_id == R.id)
        .join(Inst, R.instance_id == Inst.id)
        .where(*cond, F.status.in_(RATED))
        .group_by(day, F.rule)
    ):
        key = _bucket_key(_as_date(d), bucket)
        rule_total[rule, key] += n
        rule_failed[rule, key] += int(failed or 0)
        rule_sum[rule]["total"] += n
        rule_sum[rule]["fail"] += int(failed or 0)
        rule_sum[rule]["warn"] += int(warned or 0)

    def per(col: Any) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for name, n, failed, warned in session.execute(
            select(col, func.count(), n_if(R.verdict == "fail"), n_if(R.verdict == "warn"))
            .join(Inst, R.instance_id == Inst.id)
            .where(*cond)
            .group_by(col)
        ):
            out[name or ""].update(total=n, fail=int(failed or 0), warn=int(warned or 0))
        return out

    buckets = tuple(sorted(buckets_seen))

    def cells(
        name: str, totals: Counter[tuple[str, str]], fails: Counter[tuple[str, str]]
    ) -> tuple[RateCell, ...]:
        return tuple(RateCell(failed=fails[name, b], total=totals[name, b]) for b in buckets)

    def groups(table: dict[str, Counter[str]]) -> tuple[GroupStat, ...]:
        stats = [
            GroupStat(label=k, total=c["total"], failed=c["fail"], warned=c["warn"])
            for k, c in table.items()
        ]
        return tuple(sorted(stats, key=lambda g: (-g.rate, -g.total, g.label)))

    fams = [fam.value for fam in Family if fam.value in seen_fams]
    return Statistics(
        buckets=buckets,
        by_family={fam: cells(fam, fam_total, fam_failed) for fam in fams},
        by_rule={r: cells(r, rule_total, rule_failed) for r in sorted(rule_sum)},
        rule_totals=groups(rule_sum),
        by_station=groups(per(Inst.station_name)),
        by_operator=groups(per(Inst.operators_name)),
        total=total,
    )


def _as_date(value: Any) -> dt.date:
    """SQLite may hand back ``date()`` as text; PostgreSQL as a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


# --- node page -----------------------------------------------------------------------

_ERROR_KINDS = ("error", "fail", "refus", "reject", "dead")


def node_state(session: Session, *, limit: int = 50) -> NodeState:
    jobs = dict(session.execute(select(db.Job.state, func.count()).group_by(db.Job.state)).all())
    outbox: dict[str, int] = Counter()
    per_destination: dict[str, dict[str, int]] = defaultdict(dict)
    for dest, state, n in session.execute(
        select(db.Outbox.destination, db.Outbox.state, func.count()).group_by(
            db.Outbox.destination, db.Outbox.state
        )
    ):
        outbox[state] += n
        per_destination[dest][state] = n
    dead: list[DeliveryRow] = []
    dead_sop: dict[int, str] = {}
    for ob, kind, sop in session.execute(
        select(db.Outbox, db.ResultObject.kind, db.Instance.sop_instance_uid)
        .join(db.ResultObject, db.Outbox.object_id == db.ResultObject.id)
        .join(db.Result, db.ResultObject.result_id == db.Result.id)
        .join(db.Instance, db.Result.instance_id == db.Instance.id)
        .where(db.Outbox.state == db.DEAD)
        .order_by(db.Outbox.next_attempt_at.desc(), db.Outbox.id.desc())
        .limit(limit)
    ):
        dead.append(_delivery(ob, kind))
        dead_sop[ob.id] = sop
    return NodeState(
        received=session.scalar(select(func.count()).select_from(db.Instance)) or 0,
        checked=session.scalar(select(func.count()).select_from(db.Result)) or 0,
        queue_depth=sum(jobs.get(s, 0) for s in (db.QUEUED, db.RUNNING)),
        jobs_by_state=jobs,
        outbox_by_state=dict(outbox),
        outbox_by_destination={k: per_destination[k] for k in sorted(per_destination)},
        dead_letters=tuple(dead),
        dead_sop=dead_sop,
        errors=tuple(recent_errors(session, limit=limit)),
    )


def recent_errors(session: Session, *, limit: int = 50) -> list[ErrorRow]:
    """Failed jobs, QC errors and error-like audit events, newest first (no PHI stored)."""
    out: list[ErrorRow] = []
    for at, err, sop in session.execute(
        select(db.Job.finished_at, db.Job.error, db.Instance.sop_instance_uid)
        .join(db.Instance, db.Job.instance_id == db.Instance.id)
        .where(db.Job.error.is_not(None), db.Job.error != "")
        .order_by(db.Job.finished_at.desc())
        .limit(limit)
    ):
        out.append(ErrorRow(at=at, source="job", message=err or "", sop_instance_uid=sop))
    for at, err, sop in session.execute(
        select(db.Result.created_at, db.Result.error, db.Instance.sop_instance_uid)
        .join(db.Instance, db.Result.instance_id == db.Instance.id)
        .where(db.Result.error.is_not(None), db.Result.error != "")
        .order_by(db.Result.created_at.desc())
        .limit(limit)
    ):
        out.append(ErrorRow(at=at, source="qc", message=err or "", sop_instance_uid=sop))
    kind_like = or_(*(db.AuditEvent.kind.contains(k) for k in _ERROR_KINDS))
    for ev, sop in session.execute(
        select(db.AuditEvent, db.Instance.sop_instance_uid)
        .outerjoin(db.Instance, db.AuditEvent.instance_id == db.Instance.id)
        .where(kind_like)
        .order_by(db.AuditEvent.at.desc())
        .limit(limit)
    ):
        out.append(
            ErrorRow(at=ev.at, source=ev.kind, message=ev.message, sop_instance_uid=sop or "")
        )
    out.sort(key=lambda e: e.at or dt.datetime.min, reverse=True)
    return out[:limit]


def retry_dead_letter(session: Session, outbox_id: int, *, actor: str) -> bool:
    """Put one dead letter back in the outbox (the dashboard's only write). False if not dead.

    Attempts restart from zero so the sender applies its full retry budget again; the old
    ``last_error`` stays visible until the next attempt overwrites it.
    """
    done = session.execute(
        update(db.Outbox)
        .where(db.Outbox.id == outbox_id, db.Outbox.state == db.DEAD)
        .values(state=db.PENDING, attempts=0, next_attempt_at=db.utcnow())
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.add(
        db.AuditEvent(
            kind="outbox_retry",
            message=f"dead letter {outbox_id} queued again from the dashboard",
            detail={"outbox_id": outbox_id, "actor": actor},
        )
    )
    session.commit()
    return True


# --- /metrics and /healthz -----------------------------------------------------------


def _histogram(session: Session, seconds: ColumnElement[float], *where: Any) -> Histogram:
    cols = [func.sum(case((seconds <= b, 1), else_=0)) for b in LATENCY_BUCKETS]
    row = session.execute(select(func.count(seconds), func.sum(seconds), *cols).where(*where)).one()
    count, total, *cum = row
    return Histogram(
        cumulative=tuple(int(c or 0) for c in cum),
        count=int(count or 0),
        sum_seconds=float(total or 0.0),
    )


def metrics_snapshot(session: Session) -> MetricsSnapshot:
    R, Inst = db.Result, db.Instance
    qc_seconds = R.timings_ms["total"].as_float() / 1000.0
    if session.get_bind().dialect.name == "postgresql":
        e2e: Any = func.extract("epoch", R.created_at - Inst.received_at)
    else:
        e2e = (func.julianday(R.created_at) - func.julianday(Inst.received_at)) * 86400.0
    jobs = dict(session.execute(select(db.Job.state, func.count()).group_by(db.Job.state)).all())
    return MetricsSnapshot(
        received=session.scalar(select(func.count()).select_from(Inst)) or 0,
        checked_by_verdict=dict(
            session.execute(select(R.verdict, func.count()).group_by(R.verdict)).all()
        ),
        findings={
            (rule, fam, st): n
            for rule, fam, st, n in session.execute(
                select(
                    db.Finding.rule, db.Finding.family, db.Finding.status, func.count()
                ).group_by(db.Finding.rule, db.Finding.family, db.Finding.status)
            )
        },
        qc_latency=_histogram(session, qc_seconds, R.timings_ms["total"].as_float().is_not(None)),
        e2e_latency=_histogram(session, e2e, R.instance_id == Inst.id),
        jobs_by_state=jobs,
        queue_depth=sum(jobs.get(s, 0) for s in (db.QUEUED, db.RUNNING)),
        outbox_by_state=dict(
            session.execute(select(db.Outbox.state, func.count()).group_by(db.Outbox.state)).all()
        ),
        outbox_retries=session.scalar(
            select(
                func.coalesce(
                    func.sum(case((db.Outbox.attempts > 1, db.Outbox.attempts - 1), else_=0)), 0
                )
            )
        )
        or 0,
    )


def ping(session: Session) -> None:
    """Raise if the database does not answer."""
    session.execute(text("SELECT 1"))
