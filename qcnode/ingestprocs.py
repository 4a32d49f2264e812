"""Extra ingest processes for ``qcnode serve`` (``ingest_processes > 1``).

Why: pynetdicom reads and decodes PDUs in Python, so all associations of one process
share one interpreter lock; with several modalities sending at once one process holds at
most one core (DCMTK ``storescp --fork`` runs a process per association). ``serve``'s own
process receives as before; each extra process binds the same port with SO_REUSEPORT
(qcnode.ingest.SharedPortServer) and the kernel deals each new connection to one of the
listeners. Every process commits to the same database (SQLite WAL or PostgreSQL; the
unique SOP Instance UID keeps a duplicate sent to two processes stored once) and the same
data directory.

Same pipes as the QC child (qcnode.qcprocess): an extra process rings "instance stored"
to ``serve``, which passes it on to the QC workers (they also poll the job table every
``Worker.poll_seconds``); end of file on its pipe from ``serve`` stops the process when
``serve`` stops or dies (even by SIGKILL); ``serve`` starts a new one when one dies.
Association limits (``max_associations``, ``max_associations_per_ae``) apply per process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qcnode.config import Settings
from qcnode.errors import QcnodeError
from qcnode.node import Node, _quiet_libraries
from qcnode.qcprocess import RESTART_INTERVAL_S, _listen, _ring, _stop

log = logging.getLogger(__name__)

# How long serve waits for an extra ingest process to listen
START_TIMEOUT_S = 60.0


class _Child:
    """One extra ingest process as seen from ``serve``."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.life: Any = None  # our end of its "serve is alive" pipe
        self.started_at = 0.0


class IngestProcesses:
    """``count`` extra ingest processes listening on ``settings.port`` beside serve's
    own ingest; ``on_stored`` is called (in a pipe thread) when one of them stored an
    instance, ``stopping`` tells a dying child's watcher not to start a new one."""

    def __init__(
        self,
        *,
        settings: Settings,
        count: int,
        on_stored: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.count = count
        self.on_stored = on_stored
        self.stopping = stopping
        self.children = [_Child(n + 1) for n in range(count)]
        self.starts = 0

    def start(self) -> None:
        """Start every process and wait until each listens; QcnodeError when one cannot."""
        try:
            for child in self.children:
                self._start(child)
        except QcnodeError:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children if c.process is not None]

    def _start(self, child: _Child) -> None:
        ctx = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()  # serve's (--verbose: DEBUG)
        stored_r, stored_w = ctx.Pipe(duplex=False)
        life_r, life_w = ctx.Pipe(duplex=False)
        status, child_status = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_child_main,
            args=(self.settings, child.index, level, stored_w, life_r, child_status),
            name=f"qcnode-ingest-{child.index}",
            daemon=True,
        )
        child.started_at = time.monotonic()
        process.start()
        for end in (stored_w, life_r, child_status):
            end.close()
        try:
            if not status.poll(START_TIMEOUT_S):
                kind, message = "QcnodeError", "an ingest process did not start in time"
            else:
                kind, message = status.recv()
        except EOFError:
            kind, message = "QcnodeError", f"an ingest process exited ({process.exitcode})"
        finally:
            status.close()
        if kind != "ready":
            _stop(process)
            life_w.close()
            stored_r.close()
            raise QcnodeError(message)
        old, child.life, child.process = child.life, life_w, process
        if old is not None:
            old.close()
        self.starts += 1
        _listen(stored_r, self.on_stored, lambda: self._gone(child))
        log.info("ingest process %d receiving (pid %d)", child.index, process.pid)

    def _gone(self, child: _Child) -> None:
        if self.stopping.is_set():
            return
        child.process.join(5)
        log.error(
            "ingest process %d (pid %d) died (exit %s): starting a new one",
            child.index,
            child.process.pid,
            child.process.exitcode,
        )
        time.sleep(max(0.0, child.started_at + RESTART_INTERVAL_S - time.monotonic()))
        if self.stopping.is_set():
            return
        try:
            self._start(child)
        except QcnodeError as exc:  # serve's own ingest goes on receiving
            log.error("cannot start a new ingest process: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
        for child in self.children:
            if child.process is not None:
                _stop(child.process)
            if child.life is not None:
                child.life.close()
                child.life = None


def _child_main(
    settings: Settings, index: int, level: int, stored: Any, life: Any, status: Any
) -> None:
    """An extra ingest process: ingest only, no workers, senders or dashboard; it logs
    like serve (same level, to the same stderr, tagged ``[ingest-N]``)."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s %(name)s[ingest-{index}]: %(message)s",
    )
    _quiet_libraries(settings)
    node = Node(
        settings=replace(settings, workers=0, destinations=(), web_port=0),
        on_stored=_ring(stored),
        primary=False,
    )
    # Ctrl-C reaches the whole process group: serve stops us (closing our pipe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: node.stop.set())
    try:
        node.start(senders=False)
    except (QcnodeError, OSError) as exc:
        status.send((type(exc).__name__, str(exc)))
        raise SystemExit(2) from None
    status.send(("ready", ""))
    status.close()
    _listen(life, lambda: None, node.stop.set)  # end of file: serve is gone, even if killed
    try:
        while not node.stop.wait(1.0):
            pass
    finally:
        with contextlib.suppress(Exception):
            node.close()


def start_extra(
    settings: Settings, port: int, on_stored: Callable[[], None], stopping: threading.Event
) -> IngestProcesses | None:
    """Start ``ingest_processes - 1`` extra ingest processes on ``port`` (the one serve's
    own ingest bound: with ``port = 0`` the kernel picked it); None when there are none."""
    extra = settings.ingest_processes - 1
    if extra <= 0:
        return None
    procs = IngestProcesses(
        settings=replace(settings, port=port), count=extra, on_stored=on_stored, stopping=stopping
    )
    procs.start()
    return procs
