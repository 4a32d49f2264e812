"""``qcnode serve`` and ``qcnode worker``: wire ingest, worker, sender and web together.

Embedded default (DESIGN §2): one command, SQLite + files under ``data_dir``, sender
threads, and the QC workers in one child process that ``serve`` starts (threads with
``worker_process = false``). Scale-out: the same code on PostgreSQL, ``serve`` with
``workers = 0`` on ingest hosts and ``qcnode worker`` processes on GPU hosts.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from qcnode.audit import Auditor
from qcnode.config import Settings
from qcnode.db import make_engine, make_sessions, upgrade
from qcnode.errors import ConfigError, QcnodeError
from qcnode.ingest import Ingest
from qcnode.queue import JobQueue, new_worker_id
from qcnode.records import DecodedImage, Prediction, Predictor, QCResult
from qcnode.send import DicomSender, Dispatcher, Sender, reset_leases
from qcnode.store import FileStore
from qcnode.worker import Analyzer, ResultBuilder, Worker

log = logging.getLogger(__name__)


class EngineAnalyzer:
    """The worker's Analyzer over qcnode.engine.QCEngine (model + rules): each result comes
    with the prediction the rules measured (the report draws its masks), which for a film
    found turned is the engine's second look, mapped back to the source pixels."""

    def __init__(self, *, predictor: Predictor, settings: Settings) -> None:
        from qcnode.engine import QCEngine
        from qcnode.rules import load_config

        self._engine = QCEngine(
            predictor=predictor,
            rules=load_config(settings.rules_file),
            language=settings.language,
            batch_size=settings.batch_size,
        )

    def analyze(self, images: Sequence[DecodedImage]) -> list[tuple[Prediction | None, QCResult]]:
        return self._engine.analyze(images)


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
    # False in an extra ingest process (qcnode.ingestprocs): it leaves sweeping
    # data_dir/tmp and the start/stop audit to serve's own process
    primary: bool = True
    # the supervising run (qcnode.queue.new_run_id) when this node's workers run in a
    # child process it watches: stored with each claim, so that a restarted node does not
    # count the interruption of a job against its image when the whole node died
    run_id: str | None = None

    def start(self, *, ingest: bool = True, senders: bool = True) -> None:
        s = self.settings
        if s.non_chest not in ("keep", "refuse"):
            raise ConfigError(f"non_chest must be keep or refuse, not {s.non_chest!r}")
        upgrade(s)
        self.engine = make_engine(s)
        sessions = make_sessions(self.engine)
        store = FileStore(root=s.data_dir)
        self.auditor = Auditor.from_settings(s)
        # only the process that starts first receiving: another one's sweep (a restarted
        # QC child, an extra ingest process) would delete files being received into tmp
        if ingest and self.primary and store.sweep_tmp():
            log.info("removed leftovers of interrupted receptions from %s", store.tmp)
        JobQueue(
            sessions=sessions, worker_id="startup", lease_seconds=1, run_id=self.run_id
        ).release_dead_local()
        wake = self.jobs_ready or threading.Event()
        self.jobs_ready = wake
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
                            run_id=self.run_id,
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
        if self.auditor is not None and self.primary:
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
        from qcnode.qcprocess import serve_with_qc_process

        return serve_with_qc_process(settings)
    from qcnode.ingestprocs import start_extra

    node = Node(settings=settings)
    node.start()
    assert node.address is not None and node.jobs_ready is not None
    try:
        extra = start_extra(settings, node.address[1], node.jobs_ready.set, node.stop)
    except QcnodeError:
        node.close()
        raise
    try:
        return _run_until_signal(node, _web(settings, node))
    finally:
        if extra is not None:
            extra.stop()


def run_worker(settings: Settings) -> int:
    """``qcnode worker``: QC workers only, sharing the database (scale-out)."""
    if settings.workers <= 0:
        raise ConfigError("qcnode worker needs workers >= 1")
    _quiet_libraries(settings)
    if settings.worker_process:
        from qcnode.qcprocess import run_worker_with_qc_process

        return run_worker_with_qc_process(settings)
    node = Node(settings=settings)
    node.start(ingest=False, senders=False)
    return _run_until_signal(node)
