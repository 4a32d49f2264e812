"""The QC worker: claims jobs, micro-batches them through the engine, stores the outcome.

One batch = up to ``batch_size`` jobs; when fewer are waiting the worker waits up to
``batch_max_wait_ms`` for more (on a GPU host this batches across studies; on a CPU the
default wait is short so that latency stays low). For each image it stores the result,
the findings, the result objects (SR, SC, GSPS, KOS files) and one outbox row per object
and destination, all in one transaction with finishing the job: a committed result is
always delivered (transactional outbox), and a crash before the commit just leaves the
job to be re-claimed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from qcnode.config import Destination, Settings
from qcnode.db import Finding as FindingRow
from qcnode.db import Instance, Outbox, Result, ResultObject
from qcnode.errors import DecodeError, StorageError, UnsupportedInput
from qcnode.queue import Claim, JobQueue
from qcnode.records import DecodedImage, Prediction, QCResult, Verdict, View
from qcnode.store import FileStore

log = logging.getLogger(__name__)

# Seconds before a job whose result objects could not be written (disk full) is retried
RETRY_WRITE_SECONDS = 10.0
# Result objects by SOP Class UID
OBJECT_KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33": "sr",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.22": "sr",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.7": "sc",
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
    "1.2.840.10008.5.1.4.1.1.88.59": "kos",
}
EVALUATED = (Verdict.PASS, Verdict.WARN, Verdict.FAIL)


class Analyzer(Protocol):
    """The engine seam: model + rules over a batch of decoded images."""

    def analyze(
        self, images: Sequence[DecodedImage]
    ) -> list[tuple[Prediction | None, QCResult]]: ...


class ResultBuilder(Protocol):
    """The report seam: result DICOM objects for one image."""

    def build(
        self,
        source: Dataset,
        image: DecodedImage,
        prediction: Prediction | None,
        result: QCResult,
        *,
        objects: tuple[str, ...],
    ) -> list[Dataset]: ...


def outcome(sop_instance_uid: str, verdict: Verdict, error: str | None = None) -> QCResult:
    """A result that needed no model: not applicable, or an error."""
    return QCResult(
        sop_instance_uid=sop_instance_uid,
        view=View.OTHER,
        verdict=verdict,
        families={},
        findings=(),
        model=None,
        error=error,
    )


@dataclass
class _Item:
    claim: Claim
    instance: Instance
    source: Dataset | None = None
    image: DecodedImage | None = None
    prediction: Prediction | None = None
    result: QCResult | None = None
    decode_ms: float = 0.0
    objects: list[tuple[str, Dataset]] = field(default_factory=list)
    masks_path: str | None = None
    result_id: int | None = None
    unwritten: bool = False  # a result object could not be written (disk full)
    given_up: bool = False  # too many attempts ended with the worker dead
    extra_ms: dict[str, float] = field(default_factory=dict)


class Worker:
    """One worker loop (run it in a thread or as ``qcnode worker``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: FileStore,
        queue: JobQueue,
        analyzer: Analyzer,
        builder: ResultBuilder | None,
        wake: threading.Event | None = None,
        on_result: Callable[[], None] | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.queue = queue
        self.analyzer = analyzer
        self.builder = builder
        self.wake = wake or threading.Event()
        self.on_result = on_result or (lambda: None)
        self.poll_seconds = poll_seconds
        kinds: list[str] = []
        for dest in settings.destinations:
            kinds.extend(k for k in dest.objects if k not in kinds)
        self.object_kinds = tuple(kinds)
        self.processed = 0

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s started", self.queue.worker_id)
        while not stop.is_set():
            try:
                if not self.run_once():
                    self.wake.wait(self.poll_seconds)
                    self.wake.clear()
            except BaseException as exc:  # keep serving: nothing may end the worker thread
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                log.exception("worker loop error; retrying")
                stop.wait(1.0)

    def run_once(self) -> int:
        """Claim and process one batch; returns how many jobs it processed."""
        size = max(1, self.settings.batch_size)
        claims = self.queue.claim(size)
        if not claims:
            return 0
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        while len(claims) < size and time.monotonic() < deadline:
            self.wake.wait(max(0.0, deadline - time.monotonic()))
            self.wake.clear()
            claims += self.queue.claim(size - len(claims))
        self.process(claims)
        return len(claims)

    # --- one batch -----------------------------------------------------------------

    def process(self, claims: list[Claim]) -> None:
        started = time.perf_counter()
        with self.sessions() as session:
            rows = {
                i.id: i
                for i in session.scalars(
                    select(Instance).where(Instance.id.in_([c.instance_id for c in claims]))
                )
            }
        items = [_Item(claim=c, instance=rows[c.instance_id]) for c in claims]
        for item in items:
            self._prepare(item)
        self._analyze([i for i in items if i.result is None])
        # Phase 1: the verdict and the SR (what the reading room waits for) are committed
        # and handed to the sender first; phase 2 adds the overlay SC, GSPS, KOS and the
        # masks and finishes the job. A crash between the phases leaves the job running:
        # it is claimed again and redone (same UIDs, so the PACS keeps one SR).
        first = tuple(k for k in self.object_kinds if k == "sr")
        rest = tuple(k for k in self.object_kinds if k != "sr")
        two_phase = bool(first and rest)
        for item in items:
            self._build(item, first if two_phase else self.object_kinds)
        self._save(items, phase=1 if two_phase else 0)
        if two_phase:
            self.on_result()
            later = [i for i in items if not i.unwritten]  # deferred jobs are redone whole
            for item in later:
                item.objects.clear()
                self._build(item, rest)
            self._save(later, phase=2)
        self.processed += len(items)
        log.info(
            "processed %d image(s) in %.0f ms",
            len(items),
            (time.perf_counter() - started) * 1000,
            extra={"batch": len(items)},
        )
        self.on_result()

    def _prepare(self, item: _Item) -> None:
        from qcnode.imaging import decode_dataset, read_dataset

        inst = item.instance
        if item.claim.attempt > self.settings.job_max_attempts:
            item.given_up = True
            item.result = outcome(
                inst.sop_instance_uid,
                Verdict.ERROR,
                f"given up after {item.claim.attempt - 1} interrupted attempts: its QC worker"
                " died each time (a poison image?)",
            )
            return
        if not inst.applicable:
            item.result = outcome(inst.sop_instance_uid, Verdict.NOT_APPLICABLE)
            return
        if inst.rows * inst.columns > self.settings.max_pixels:  # never decode a bomb
            item.result = outcome(
                inst.sop_instance_uid,
                Verdict.ERROR,
                f"image of {inst.rows}x{inst.columns} pixels is larger than max_pixels",
            )
            return
        t0 = time.perf_counter()
        try:
            item.source = read_dataset(self.store.absolute(inst.path))
            item.image = decode_dataset(item.source)
        except (DecodeError, UnsupportedInput) as exc:
            log.warning("instance #%d cannot be evaluated: %s", inst.id, exc)
            item.result = outcome(inst.sop_instance_uid, Verdict.ERROR, str(exc))
        except BaseException as exc:  # a decoder bug (even a codec's Rust panic, which is
            # a BaseException) on one image must not stall the batch or end the worker
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            # for the operator this is an image that cannot be decoded: a warning and an
            # error result; the traceback (a decoder bug to report) at debug level
            log.warning("instance #%d cannot be decoded: %s: %s", inst.id, type(exc).__name__, exc)
            log.debug("decoder failure", exc_info=True)
            item.result = outcome(
                inst.sop_instance_uid, Verdict.ERROR, f"decoding failed: {type(exc).__name__}"
            )
        item.decode_ms = (time.perf_counter() - t0) * 1000

    def _analyze(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            pairs = self.analyzer.analyze([i.image for i in items if i.image is not None])
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if len(items) == 1:
                log.exception("QC failed for instance #%d", items[0].instance.id)
                items[0].result = outcome(
                    items[0].instance.sop_instance_uid, Verdict.ERROR, f"QC failed: {exc}"
                )
                return
            log.warning("QC of a batch failed (%s); isolating the image", exc)
            for one in items:  # find the image that breaks the batch, keep the others
                self._analyze([one])
            return
        for item, (prediction, result) in zip(items, pairs, strict=True):
            item.prediction = prediction
            timings = {**result.timings_ms, "decode": item.decode_ms}
            timings["total"] = sum(v for k, v in timings.items() if k != "total")
            item.result = QCResult(
                sop_instance_uid=result.sop_instance_uid,
                view=result.view,
                verdict=result.verdict,
                families=result.families,
                findings=result.findings,
                model=result.model,
                timings_ms=timings,
                error=result.error,
            )

    def _build(self, item: _Item, kinds: tuple[str, ...]) -> None:
        result = item.result
        assert result is not None
        if (
            self.builder is None
            or not kinds
            or result.verdict not in EVALUATED
            or item.source is None
            or item.image is None
        ):
            return
        t0 = time.perf_counter()
        try:
            datasets = self.builder.build(
                item.source, item.image, item.prediction, result, objects=kinds
            )
        except Exception:  # a report bug must not lose the QC result (nor its job)
            log.exception("cannot build result objects for instance #%d", item.instance.id)
            return
        ms = (time.perf_counter() - t0) * 1000
        item.extra_ms["report"] = item.extra_ms.get("report", 0.0) + ms
        for ds in datasets:
            kind = OBJECT_KINDS.get(str(ds.SOPClassUID), "")
            if kind:
                item.objects.append((kind, ds))

    def _save(self, items: list[_Item], *, phase: int) -> None:
        """Write the files (durable, deterministic names), then one transaction.

        phase 0: everything at once; 1: result, findings and objects, job kept running;
        2: more objects and the masks, job finished.
        """
        written: dict[int, list[tuple[str, Dataset, str, int]]] = {}
        for item in items:
            t0 = time.perf_counter()
            if phase != 1 and item.prediction is not None and item.prediction.masks:
                try:
                    item.masks_path = self.store.write_masks(
                        item.instance.sop_instance_uid, item.prediction.masks
                    )
                except StorageError as exc:
                    log.error("cannot keep masks of instance #%d: %s", item.instance.id, exc)
            for kind, ds in item.objects:
                try:
                    rel, size = self.store.write_object(ds)
                except StorageError as exc:
                    log.error("cannot write a %s for instance #%d: %s", kind, item.instance.id, exc)
                    item.unwritten = True
                    continue
                written.setdefault(item.claim.job_id, []).append((kind, ds, rel, size))
            ms = (time.perf_counter() - t0) * 1000
            item.extra_ms["write"] = item.extra_ms.get("write", 0.0) + ms
        with self.sessions.begin() as session:
            for item in items:
                job = self.queue.holds(session, item.claim)
                if job is None:
                    if phase != 2 or item.result_id is not None:
                        log.warning(
                            "lost the lease of job #%d; its new holder will finish it",
                            item.claim.job_id,
                        )
                    continue
                objects = written.get(item.claim.job_id, [])
                if item.given_up:
                    # keep a result an earlier attempt committed (its SR may be at the PACS
                    # already): replacing it would leave the PACS with an SR we disown
                    if item.result_id is None:
                        item.result_id = session.scalar(
                            select(Result.id).where(Result.instance_id == item.instance.id)
                        ) or self._store_result(session, item, objects)
                    if phase != 1:
                        error = item.result.error if item.result else None
                        self.queue.finish(
                            session, job, error=self._given_up(session, item.result_id, error)
                        )
                    continue
                if phase == 2 and item.result_id is not None:
                    self._add_objects(session, item.result_id, objects)
                    session.execute(
                        update(Result)
                        .where(Result.id == item.result_id)
                        .values(masks_path=item.masks_path, timings_ms=self._timings(item))
                    )
                elif phase != 2:
                    item.result_id = self._store_result(session, item, objects)
                if item.unwritten:
                    # the verdict is kept (and shown); the whole job is redone later, when
                    # the objects can be written: a result is never left without its SR/SC
                    delay = min(RETRY_WRITE_SECONDS, float(self.settings.lease_seconds))
                    self.queue.defer(job, delay)
                    log.warning(
                        "instance #%d: result objects not written, retrying in %.0f s",
                        item.instance.id,
                        delay,
                    )
                elif phase != 1:
                    self.queue.finish(session, job)
        if phase == 1:
            return
        for item in items:
            r = item.result
            assert r is not None
            log.info(
                "instance #%d: %s (%s)%s",
                item.instance.id,
                r.verdict,
                r.view,
                f": {r.error}" if r.error else "",
                extra={"instance_id": item.instance.id, "verdict": str(r.verdict)},
            )

    def _given_up(self, session: Session, result_id: int, error: str | None) -> str | None:
        """The job's error: why it was given up, and which result objects an earlier
        attempt's kept result lacks (they will never be built)."""
        have = set(
            session.scalars(select(ResultObject.kind).where(ResultObject.result_id == result_id))
        )
        verdict = session.scalar(select(Result.verdict).where(Result.id == result_id))
        missing = [k for k in self.object_kinds if k not in have]
        if verdict in EVALUATED and missing:
            return f"{error}; the kept result of an earlier attempt has no {', '.join(missing)}"
        return error

    @staticmethod
    def _timings(item: _Item) -> dict[str, float]:
        assert item.result is not None
        merged = {**item.result.timings_ms, **item.extra_ms}
        return {k: round(float(v), 2) for k, v in merged.items()}

    def _store_result(
        self,
        session: Session,
        item: _Item,
        objects: list[tuple[str, Dataset, str, int]],
    ) -> int:
        result = item.result
        assert result is not None
        session.execute(delete(Result).where(Result.instance_id == item.instance.id))
        fam = {str(k): str(v) for k, v in result.families.items()}
        row = Result(
            instance_id=item.instance.id,
            view=str(result.view),
            verdict=str(result.verdict),
            verdict_completeness=fam.get("completeness"),
            verdict_organs=fam.get("organs"),
            verdict_exposure=fam.get("exposure"),
            verdict_positioning=fam.get("positioning"),
            verdict_metadata=fam.get("metadata"),
            model_name=result.model.name if result.model else "",
            model_version=result.model.version if result.model else "",
            model_sha256=result.model.sha256 if result.model else "",
            timings_ms=self._timings(item),
            error=result.error,
            masks_path=item.masks_path,
        )
        session.add(row)
        session.flush()
        for f in result.findings:
            session.add(
                FindingRow(
                    result_id=row.id,
                    rule=f.rule,
                    family=str(f.family),
                    status=str(f.status),
                    value=_finite(f.value),
                    unit=f.unit,
                    threshold=_finite(f.threshold),
                    message=f.message,
                    geometry=[
                        {"kind": g.kind, "points": [list(p) for p in g.points], "label": g.label}
                        for g in f.geometry
                    ],
                )
            )
        self._add_objects(session, row.id, objects)
        return row.id

    def _add_objects(
        self, session: Session, result_id: int, objects: list[tuple[str, Dataset, str, int]]
    ) -> None:
        for kind, ds, rel, size in objects:
            obj = ResultObject(
                result_id=result_id,
                kind=kind,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                path=rel,
                size_bytes=size,
            )
            session.add(obj)
            session.flush()
            for dest in self.settings.destinations:
                if kind in dest.objects:
                    session.add(Outbox(object_id=obj.id, destination=destination_key(dest)))


def destination_key(dest: Destination) -> str:
    """``AE@HOST:PORT``: how the outbox names a destination."""
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def run_forever(workers: list[Worker], stop: threading.Event) -> list[threading.Thread]:
    """Start each worker in a daemon thread."""
    threads = []
    for n, w in enumerate(workers):
        t = threading.Thread(target=w.run, args=(stop,), name=f"qc-worker-{n}", daemon=True)
        t.start()
        threads.append(t)
    return threads
