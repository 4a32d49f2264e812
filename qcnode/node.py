"""``qcnode serve`` and ``qcnode worker``: wire ingest, worker, sender and web together.

Embedded default (DESIGN §2): one command, SQLite + files under ``data_dir``, sender
threads, and the QC workers in one child process that ``serve`` starts (threads with
``worker_process = false``). Scale-out: the same code on PostgreSQL, ``serve`` with
``workers = 0`` on ingest hosts and ``qcnode worker`` processes on GPU hosts.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from qcnode.audit import Auditor
from qcnode.config import Settings
from qcnode.db import make_engine, make_sessions, upgrade
from qcnode.errors import ConfigError, ModelError, QcnodeError
from qcnode.ingest import Ingest
from qcnode.queue import JobQueue, new_worker_id
from qcnode.records import DecodedImage, Prediction, Predictor, QCResult
from qcnode.send import DicomSender, Dispatcher, Sender, reset_leases
from qcnode.store import FileStore
from qcnode.worker import Analyzer, ResultBuilder, Worker

log = logging.getLogger(__name__)


class _RecordingPredictor:
    """Wraps the predictor so that the worker sees the predictions the engine used
    (the report draws the masks); keyed by SOP Instance UID of the last batch."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.last: dict[str, Prediction] = {}

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, images: Sequence[DecodedImage]) -> list[Prediction]:
        predictions = self.inner.predict(images)
        self.last = {
            img.meta.sop_instance_uid: p for img, p in zip(images, predictions, strict=True)
        }
        return predictions


class EngineAnalyzer:
    """The worker's Analyzer over qcnode.engine.QCEngine (model + rules)."""

    def __init__(self, *, predictor: Predictor, settings: Settings) -> None:
        from qcnode.engine import QCEngine
        from qcnode.rules import load_config

        self._recorder = _RecordingPredictor(predictor)
        self._engine = QCEngine(
            predictor=self._recorder,
            rules=load_config(settings.rules_file),
            language=settings.language,
            batch_size=settings.batch_size,
        )

    def analyze(self, images: Sequence[DecodedImage]) -> list[tuple[Prediction | None, QCResult]]:
        self._recorder.last = {}
        results = self._engine.run(images)
        return [(self._recorder.last.get(r.sop_instance_uid), r) for r in results]


class ReportBuilder:
    """The worker's ResultBuilder over qcnode.report.build_results."""

    def __init__(self, *, settings: Settings) -> None:
        report = importlib.import_module("qcnode.report")
        self.options = report.ReportOptions.from_settings(settings)

    def build(
        self,
        source: Dataset,
        image: DecodedImage,
        prediction: Prediction | None,
        result: QCResult,
        *,
        objects: tuple[str, ...],
    ) -> list[Dataset]:
        build_results = importlib.import_module("qcnode.report").build_results
        built: list[Dataset] = build_results(
            source, image, prediction, result, objects=objects, options=self.options
        )
        return built


def load_predictor(settings: Settings) -> Predictor:
    """The configured model; raises ModelError (a clear message) when no trained weights
    exist: the worker refuses to start rather than run random weights."""
    load = importlib.import_module("qcnode.model").load_predictor
    model = settings.model
    if model and (model.endswith((".pt", ".pth")) or "/" in model):
        # a weights file named directly (tests, a model under evaluation)
        predictor: Predictor = load(None, device=settings.device, weights_path=Path(model))
    else:
        predictor = load(model or None, device=settings.device)
    return predictor


@dataclass
class Node:
    """Everything ``serve`` runs; tests build one with fakes at the seams."""

    settings: Settings
    analyzer_factory: Callable[[], Analyzer] | None = None
    builder: ResultBuilder | None = None
    sender: Sender | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    ingest: Ingest | None = None
    workers: list[Worker] = field(default_factory=list)
    dispatchers: list[Dispatcher] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    address: tuple[str, int] | None = None
    auditor: Auditor | None = None
    # serve with a QC child process (see _serve_with_qc_process): the workers' wake-up
    # event, what ingest calls when a job is queued, and what a worker calls when it
    # committed a result (besides waking this process's senders)
    jobs_ready: threading.Event | None = None
    on_stored: Callable[[], None] | None = None
    on_result: Callable[[], None] | None = None

    def start(self, *, ingest: bool = True, senders: bool = True) -> None:
        s = self.settings
        if s.non_chest not in ("keep", "refuse"):
            raise ConfigError(f"non_chest must be keep or refuse, not {s.non_chest!r}")
        upgrade(s)
        self.engine = make_engine(s)
        sessions = make_sessions(self.engine)
        store = FileStore(root=s.data_dir)
        self.auditor = Auditor.from_settings(s)
        if store.sweep_tmp():
            log.info("removed leftovers of interrupted receptions from %s", store.tmp)
        wake = self.jobs_ready or threading.Event()
        JobQueue(sessions=sessions, worker_id="startup", lease_seconds=1).release_dead_local()
        if s.workers > 0:
            factory = self.analyzer_factory or _default_analyzer_factory(s)
            builder = self.builder if self.builder is not None else ReportBuilder(settings=s)
            worker_id = new_worker_id()
            for n in range(s.workers):
                self.workers.append(
                    Worker(
                        settings=s,
                        sessions=sessions,
                        store=store,
                        queue=JobQueue(
                            sessions=sessions,
                            worker_id=f"{worker_id}:{n}",
                            lease_seconds=s.lease_seconds,
                        ),
                        analyzer=factory(),
                        builder=builder,
                        wake=wake,
                        on_result=self._result_committed,
                    )
                )
        if senders and s.destinations:
            reset_leases(sessions)
            sender = self.sender or DicomSender(ae_title=s.ae_title)
            self.sender = sender
            for dest in s.destinations:
                self.dispatchers.append(
                    Dispatcher(
                        settings=s,
                        sessions=sessions,
                        store=store,
                        sender=sender,
                        destination=dest,
                        auditor=self.auditor,
                    )
                )
        for n, w in enumerate(self.workers):
            self._thread(w.run, f"qc-worker-{n}")
        for d in self.dispatchers:
            self._thread(d.run, f"sender-{d.key}")
        if ingest:
            self.read_engine = make_engine(s, readonly=True)
            self.ingest = Ingest(
                settings=s,
                sessions=sessions,
                store=store,
                on_stored=self.on_stored or wake.set,
                read_sessions=make_sessions(self.read_engine),
                auditor=self.auditor,
            )
            self.address = self.ingest.start()
        self._activity("start")

    def _thread(self, target: Callable[[threading.Event], None], name: str) -> None:
        t = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _wake_senders(self) -> None:
        for d in self.dispatchers:
            d.wake.set()

    def _result_committed(self) -> None:
        self._wake_senders()
        if self.on_result is not None:
            self.on_result()

    def _activity(self, what: str) -> None:
        if self.auditor is not None:
            self.auditor.emit(
                "activity",
                outcome=0,
                source=(self.settings.ae_title, ""),
                destination=(self.settings.ae_title, ""),
                description=what,
            )

    def close(self) -> None:
        self._activity("stop")
        self.stop.set()
        if self.ingest is not None:
            self.ingest.stop()
        for w in self.workers:
            w.wake.set()
        for d in self.dispatchers:
            d.wake.set()
        for t in self.threads:
            t.join(timeout=30)
        if self.sender is not None:
            self.sender.close()
        if self.auditor is not None:
            self.auditor.close()
        for name in ("engine", "read_engine"):
            engine = getattr(self, name, None)
            if engine is not None:
                engine.dispose()


def _default_analyzer_factory(settings: Settings) -> Callable[[], Analyzer]:
    predictor = load_predictor(settings)  # fails here, before the node accepts anything
    log.info("model %s %s loaded", predictor.info.name, predictor.info.version)
    return lambda: EngineAnalyzer(predictor=predictor, settings=settings)


def _run_until_signal(node: Node, web: Callable[[], None] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: node.stop.set())
    try:
        if web is not None:
            web()  # blocks until node.stop (uvicorn handles the signals then)
        else:
            while not node.stop.wait(1.0):
                pass
    finally:
        log.info("shutting down")
        node.close()
    return 0


def _web(settings: Settings, node: Node) -> Callable[[], None] | None:
    """The dashboard on ``web_port`` (0 disables it) in the main thread."""
    if settings.web_port <= 0:
        return None
    import uvicorn

    from qcnode.web import create_app

    app = create_app(settings, engine_or_session_factory=make_engine(settings, readonly=True))
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=settings.web_bind, port=settings.web_port, log_level="warning", lifespan="off"
        )
    )

    def run() -> None:
        def watch() -> None:
            node.stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, daemon=True).start()
        server.run()
        node.stop.set()

    log.info("dashboard on http://%s:%d/", settings.web_bind, settings.web_port)
    return run


def _quiet_libraries(settings: Settings) -> None:
    """pynetdicom narrates every association at INFO; keep that for --verbose (the flag or
    ``verbose = true`` in the settings file, which also turns on our debug logging)."""
    if settings.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    else:
        for name in ("pynetdicom", "alembic", "highdicom", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    """``qcnode serve``: ingest + workers + senders + dashboard, one command. The workers
    run in a child process by default (``worker_process``), else as threads here."""
    _quiet_libraries(settings)
    if settings.worker_process and settings.workers > 0:
        return _serve_with_qc_process(settings)
    node = Node(settings=settings)
    node.start()
    return _run_until_signal(node, _web(settings, node))


# How long serve waits for the QC process to load its model before giving up
QC_PROCESS_START_S = 600.0
# The QC process's CPU priority below serve's: a modality waiting for its C-STORE
# response matters more than an analysis started a moment later (no effect with idle cores)
QC_PROCESS_NICE = 5


def _ring(conn: Any) -> Callable[[], None]:
    """A wake-up over a pipe: one byte, never blocking (a full pipe already rings).
    Pipes, not multiprocessing Events: a process killed while holding an Event's shared
    lock would leave the other one blocked on it for good."""
    fd = conn.fileno()
    os.set_blocking(fd, False)

    def ring() -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, b"\0")

    return ring


def _listen(conn: Any, on_ring: Callable[[], None], on_closed: Callable[[], None]) -> None:
    """Call ``on_ring`` for each batch of wake-ups and ``on_closed`` once the other
    process is gone (end of file: it exited or was killed)."""

    def run() -> None:
        fd = conn.fileno()
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                on_closed()
                return
            on_ring()

    threading.Thread(target=run, name="qc-pipe", daemon=True).start()


def _serve_with_qc_process(settings: Settings) -> int:
    """Ingest, senders and the dashboard in this process; the QC workers in one child
    (spawned, so it shares no threads or locks with this one) on the same database.

    Why: the model, rules and report objects are CPU-heavy Python; as threads they held
    the interpreter lock that pynetdicom's receive path needs and slowed ingest 30–70 %
    while QC ran. Two pipes replace the in-process wake-ups: "jobs queued" (ingest →
    workers) and "result committed" (workers → senders); each side sees the other's
    death as end of file, so the child also stops when serve is SIGKILLed.
    """
    upgrade(settings)  # once, before two processes open the database
    ctx = multiprocessing.get_context("spawn")
    jobs_r, jobs_w = ctx.Pipe(duplex=False)
    results_r, results_w = ctx.Pipe(duplex=False)
    status, child_status = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_qc_process_main,
        args=(settings, jobs_r, results_w, child_status),
        name="qcnode-qc",
        daemon=True,
    )
    child.start()
    for end in (jobs_r, results_w, child_status):
        end.close()
    try:
        if not status.poll(QC_PROCESS_START_S):
            raise ModelError("the QC worker process did not start in time")
        kind, message = status.recv()
    except EOFError:
        kind, message = "QcnodeError", f"the QC worker process exited ({child.exitcode})"
    except QcnodeError:
        _stop_child(child)
        raise
    if kind != "ready":
        _stop_child(child)
        raise (ModelError if kind == "ModelError" else QcnodeError)(message)
    node = Node(settings=replace(settings, workers=0), on_stored=_ring(jobs_w))

    def child_gone() -> None:
        if not node.stop.is_set():
            log.error("the QC worker process died: stopping")
            node.stop.set()

    _listen(results_r, node._wake_senders, child_gone)
    node.start()
    log.info("QC workers running in process %d", child.pid)
    try:
        return _run_until_signal(node, _web(settings, node))
    finally:
        _stop_child(child)


def _stop_child(child: Any) -> None:
    if child.is_alive():
        child.terminate()  # SIGTERM: it finishes its batch's transaction and exits
        child.join(30)
    if child.is_alive():
        child.kill()
        child.join(5)


def _qc_process_main(settings: Settings, jobs: Any, results: Any, status: Any) -> None:
    """The QC child of ``serve``: workers only, woken by ingest through ``jobs``."""
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to serve, which stops us
    with contextlib.suppress(OSError):  # where cores are short, receiving goes first
        os.nice(QC_PROCESS_NICE)
    wake = threading.Event()
    node = Node(settings=settings, jobs_ready=wake, on_result=_ring(results))
    try:
        node.start(ingest=False, senders=False)
    except QcnodeError as exc:
        status.send((type(exc).__name__, str(exc)))
        raise SystemExit(2) from None
    status.send(("ready", ""))
    status.close()
    _listen(jobs, wake.set, node.stop.set)  # end of file: serve is gone, even if killed
    _run_until_signal(node)


def run_worker(settings: Settings) -> int:
    """``qcnode worker``: QC workers only, sharing the database (scale-out)."""
    if settings.workers <= 0:
        raise ConfigError("qcnode worker needs workers >= 1")
    _quiet_libraries(settings)
    node = Node(settings=settings)
    node.start(ingest=False, senders=False)
    return _run_until_signal(node)
