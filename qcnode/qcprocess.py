"""``qcnode serve``'s QC child process (``worker_process = true``, the default).

Ingest, the senders and the dashboard run in ``serve``'s process; the QC workers in one
child process (spawned: it shares no threads or locks with its parent) on the same
database and data directory. Why: the model, the rules and the report objects are
CPU-heavy Python; as threads beside ingest they held the interpreter lock that
pynetdicom's receive path needs (ingest was 30–70 % slower while QC ran).

Two pipes replace the in-process wake-ups: "jobs queued" (ingest → workers) and "result
committed" (workers → senders). Pipes, not multiprocessing Events: a process killed
while holding an Event's shared lock would leave the other blocked on it for good; a
pipe's end of file instead tells each side that the other is gone. So the child stops
when ``serve`` stops or dies (even by SIGKILL), and ``serve`` starts a new child when
its child dies (a decoder crash on a poison image must not stop ingest; the job is
claimed again and given up after ``job_max_attempts``).

``serve`` has a run id (qcnode.queue.new_run_id) that the child stores with each claim:
after the whole node died, the next run releases those claims without counting an
attempt; only a child dying under a live ``serve`` counts against the image. ``qcnode
worker`` runs its workers the same way (without ingest or senders).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qcnode.config import Settings
from qcnode.db import upgrade
from qcnode.errors import ModelError, QcnodeError
from qcnode.node import Node, _quiet_libraries, _run_until_signal, _web
from qcnode.queue import new_run_id

if TYPE_CHECKING:
    from qcnode.ingestprocs import IngestProcesses
    from qcnode.worker import Analyzer

# Builds the child's analyzer factory from the settings, in the child (a module-level
# function: it is pickled by name). None: the configured model (tests pass a fake one).
AnalyzerSource = Callable[[Settings], Callable[[], "Analyzer"]]

log = logging.getLogger(__name__)

# How long serve waits for the QC process to load its model before giving up
START_TIMEOUT_S = 600.0
# The QC process's CPU priority below serve's: a modality waiting for its C-STORE
# response matters more than an analysis started a moment later (no effect with idle cores)
NICE = 5
# At least this long between two starts of the QC process (a child that keeps dying)
RESTART_INTERVAL_S = 5.0


def _ring(conn: Any) -> Callable[[], None]:
    """A wake-up over a pipe: one byte, never blocking (a full pipe already rings)."""
    fd = conn.fileno()
    os.set_blocking(fd, False)

    def ring() -> None:
        with contextlib.suppress(OSError):  # full: it rings already; closed: gone
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
                conn.close()
                on_closed()
                return
            on_ring()

    threading.Thread(target=run, name="qc-pipe", daemon=True).start()


class QCProcess:
    """The QC child as seen from ``serve``: start, wake, restart when it dies, stop."""

    def __init__(
        self,
        *,
        settings: Settings,
        on_result: Callable[[], None],
        on_fatal: Callable[[], None],
        run_id: str | None = None,
        analyzers: AnalyzerSource | None = None,
    ) -> None:
        self.settings = settings
        self.on_result = on_result
        self.on_fatal = on_fatal
        self.run_id = run_id or new_run_id()
        self.analyzers = analyzers
        self.child: Any = None
        self.starts = 0
        self._jobs: Any = None
        self._ring: Callable[[], None] = lambda: None
        self._stopping = False
        self._started_at = 0.0

    def start(self) -> None:
        """Start the child and wait until its model is loaded; ModelError or QcnodeError
        (with the child's message) when it cannot start."""
        ctx = multiprocessing.get_context("spawn")
        jobs_r, jobs_w = ctx.Pipe(duplex=False)
        results_r, results_w = ctx.Pipe(duplex=False)
        status, child_status = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_child_main,
            args=(self.settings, jobs_r, results_w, child_status, self.run_id, self.analyzers),
            name="qcnode-qc",
            daemon=True,
        )
        self._started_at = time.monotonic()
        child.start()
        for end in (jobs_r, results_w, child_status):
            end.close()
        try:
            if not status.poll(START_TIMEOUT_S):
                raise ModelError("the QC worker process did not start in time")
            kind, message = status.recv()
        except EOFError:
            kind, message = "QcnodeError", f"the QC worker process exited ({child.exitcode})"
        except QcnodeError:
            _stop(child)
            raise
        finally:
            status.close()
        if kind != "ready":
            _stop(child)
            raise (ModelError if kind == "ModelError" else QcnodeError)(message)
        old, self._jobs = self._jobs, jobs_w
        self.child, self._ring = child, _ring(jobs_w)
        if old is not None:
            old.close()
        self.starts += 1
        _listen(results_r, self.on_result, self._gone)
        log.info("QC workers running in process %d", child.pid)
        self._ring()  # jobs may have been queued while no child ran

    def ring(self) -> None:
        """Tell the workers that a job was queued (ingest's on_stored)."""
        self._ring()

    def _gone(self) -> None:
        if self._stopping:
            return
        self.child.join(5)
        log.error(
            "the QC worker process %d died (exit %s): starting a new one",
            self.child.pid,
            self.child.exitcode,
        )
        time.sleep(max(0.0, self._started_at + RESTART_INTERVAL_S - time.monotonic()))
        if self._stopping:
            return
        try:
            self.start()
        except QcnodeError as exc:
            log.error("cannot start a new QC worker process: %s", exc)
            self.on_fatal()

    def stop(self) -> None:
        self._stopping = True
        if self.child is not None:
            _stop(self.child)
        if self._jobs is not None:
            self._jobs.close()


def _stop(child: Any) -> None:
    if child.is_alive():
        child.terminate()  # SIGTERM: it finishes its batch's transaction and exits
        child.join(30)
    if child.is_alive():
        child.kill()
        child.join(5)


def serve_with_qc_process(settings: Settings, *, analyzers: AnalyzerSource | None = None) -> int:
    """``qcnode serve`` with the QC workers in a child process (see the module doc)."""
    from qcnode.ingestprocs import start_extra  # it imports this module

    upgrade(settings)  # once, before two processes open the database
    run_id = new_run_id()
    node: Node | None = None

    def wake_senders() -> None:
        if node is not None:
            node._wake_senders()

    def fatal() -> None:
        if node is not None:
            node.stop.set()

    qc = QCProcess(
        settings=settings,
        on_result=wake_senders,
        on_fatal=fatal,
        run_id=run_id,
        analyzers=analyzers,
    )
    qc.start()  # the model loads before anything is accepted; fails like threads would
    extra: IngestProcesses | None = None
    try:
        node = Node(settings=replace(settings, workers=0), on_stored=qc.ring, run_id=run_id)
        node.start()
        assert node.address is not None
        try:
            extra = start_extra(settings, node.address[1], qc.ring, node.stop)
        except QcnodeError:
            node.close()
            raise
        return _run_until_signal(node, _web(settings, node))
    finally:
        if extra is not None:
            extra.stop()
        qc.stop()


def run_worker_with_qc_process(
    settings: Settings, *, analyzers: AnalyzerSource | None = None
) -> int:
    """``qcnode worker`` with its workers in a child process it restarts when it dies:
    as under ``serve``, only a worker dying under a live ``qcnode worker`` counts against
    the image. No ingest here: the child polls the queue."""
    upgrade(settings)
    stop = threading.Event()
    qc = QCProcess(
        settings=settings, on_result=lambda: None, on_fatal=stop.set, analyzers=analyzers
    )
    qc.start()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down")
        qc.stop()
    return 0


def _child_main(
    settings: Settings,
    jobs: Any,
    results: Any,
    status: Any,
    run_id: str | None = None,
    analyzers: AnalyzerSource | None = None,
) -> None:
    """The QC child: workers only, woken by ingest through ``jobs``."""
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to serve, which stops us
    with contextlib.suppress(OSError):  # where cores are short, receiving goes first
        os.nice(NICE)
    wake = threading.Event()
    try:
        node = Node(
            settings=settings,
            jobs_ready=wake,
            on_result=_ring(results),
            run_id=run_id,
            analyzer_factory=analyzers(settings) if analyzers is not None else None,
        )
        node.start(ingest=False, senders=False)
    except QcnodeError as exc:
        status.send((type(exc).__name__, str(exc)))
        raise SystemExit(2) from None
    status.send(("ready", ""))
    status.close()
    _listen(jobs, wake.set, node.stop.set)  # end of file: serve is gone, even if killed
    _run_until_signal(node)
