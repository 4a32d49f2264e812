"""pynetdicom's receive path for ingest: faster sockets, and a disk-full-safe file.

pynetdicom 3.0.4 reads every PDU in 4 KB ``recv`` calls and polls: its DUL thread sleeps
1 ms whenever the socket has nothing to read, so each C-STORE waits up to a millisecond
for the next command to be noticed and for its response to leave. Profiling ingest of
2–15 MB DX files (docs/node.md) put about a fifth of the wall time in those two places.

:func:`tune_acceptor`, called from ``EVT_CONN_OPEN`` (before the association's threads
start), changes one association's socket to :class:`FastSocket`: ``recv`` fills one
buffer of the PDU's size with ``recv_into``; ``ready`` blocks in ``select`` until data
arrives or the association has something to send (a wake-up socket pair that the DUL's
outgoing queue pokes), for at most ``IDLE_WAIT_S``, instead of a fixed sleep. The DUL's
own sleep is then not needed. Behaviour is otherwise pynetdicom's; the pin on
pynetdicom==3.0.4 (pyproject) keeps these internals stable, and tests/unit/test_node_netio
checks the attributes this relies on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import tempfile
import weakref
from typing import Any, cast

from pynetdicom import dimse_messages
from pynetdicom.transport import AssociationSocket

# Longest a DUL thread blocks waiting for data: bounds how late it notices its timers
# (ARTIM, idle) and a kill, as pynetdicom's own 1 ms loop delay would.
IDLE_WAIT_S = 0.005
# The DUL loop's sleep when a pass found nothing to do: the wait happens in ready() now
DUL_LOOP_DELAY_S = 0.0


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing queue: a put wakes the DUL thread out of its ``select``."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with contextlib.suppress(OSError):  # full (already pending) or closed
            self._wake.send(b"\0")


class _WaitingQueue(queue.Queue[Any]):
    """The DIMSE message queue: the association's reactor polls it (``get`` without
    blocking) after a 1 ms sleep; waiting briefly instead lets a complete C-STORE reach
    its handler as soon as it is decoded."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            block, timeout = True, IDLE_WAIT_S
        return super().get(block, timeout)


class FastSocket(AssociationSocket):
    """An acceptor's ``AssociationSocket`` with bulk reads and an event-driven wait."""

    _wake_r: socket.socket | None = None
    _wake_w: socket.socket | None = None

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only when the peer closes), as the base class,
        but into one preallocated buffer instead of 4 KB pieces."""
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)
                if not n:
                    break
                got += n
        if got < nr_bytes:
            del buf[got:]
        return buf

    @property
    def ready(self) -> bool:
        """Whether data can be read; waits up to ``IDLE_WAIT_S`` for it, returning
        early when the association queues something to send."""
        sock, wake = self.socket, self._wake_r
        if sock is None or self._is_connected is False:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        watch = [sock] if wake is None else [sock, wake]
        try:
            readable, _, _ = select.select(watch, [], [], IDLE_WAIT_S)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed, as the base class
            return False
        if wake is not None and wake in readable:
            with contextlib.suppress(OSError):
                wake.recv(4096)
        return sock in readable

    def close(self) -> None:
        super().close()
        for wake in (self._wake_r, self._wake_w):
            if wake is not None:
                wake.close()  # a later put's wake-up is then a suppressed OSError
        self._wake_r = self._wake_w = None


def _close_pair(*socks: socket.socket) -> None:
    for sock in socks:
        sock.close()


def tune_acceptor(assoc: Any) -> None:
    """Give an acceptor association (from ``EVT_CONN_OPEN``, before its threads start)
    the fast socket and event-driven waits; a no-op if pynetdicom's internals are not as
    expected (the association then simply runs as shipped)."""
    dul: Any = getattr(assoc, "dul", None)
    dimse: Any = getattr(assoc, "dimse", None)
    sock: Any = getattr(dul, "socket", None)
    if (
        type(sock) is not AssociationSocket
        or not isinstance(getattr(dul, "to_provider_queue", None), queue.Queue)
        or not isinstance(getattr(dimse, "msg_queue", None), queue.Queue)
        or dul.to_provider_queue.qsize()
        or dimse.msg_queue.qsize()
    ):
        return
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    sock.__class__ = FastSocket
    fast = cast(FastSocket, sock)
    fast._wake_r, fast._wake_w = wake_r, wake_w
    # close() is not reached on every path (a killed or rejected association): then the
    # pair goes with the socket object
    weakref.finalize(fast, _close_pair, wake_r, wake_w)
    dul.to_provider_queue = _WakingQueue(wake_w)
    dul._run_loop_delay = DUL_LOOP_DELAY_S
    dimse.msg_queue = _WaitingQueue()


# --- chunked receive that survives a full disk -----------------------------------------


class GuardedReceiveFile:
    """pynetdicom's chunked-receive file (``NamedTemporaryFile``) whose first failed
    write (disk full, quota, file size limit) is remembered instead of raised.

    pynetdicom writes each incoming PDU to this file on its DUL thread; an ``OSError``
    there aborts the association, so the modality gets no status at all (RELIABILITY
    finding 12). Here the error is kept in ``error``, the partial file is truncated to
    give the space back, the rest of the dataset is read and dropped, and the C-STORE
    handler answers 0xA700 (Out of Resources) for it and removes the file.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name: str = inner.name
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return int(self._inner.write(data))
            except OSError as exc:
                self._failed(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._inner.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        with contextlib.suppress(OSError, ValueError):
            os.ftruncate(self._inner.fileno(), 0)  # give the space back at once

    def tell(self) -> int:
        return 0 if self.error is not None else int(self._inner.tell())

    def fileno(self) -> int:
        return int(self._inner.fileno())

    def close(self) -> None:
        try:
            self._inner.close()
        except OSError:  # flushing what a failed write left buffered
            if self.error is None:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _guarded_named_temporary_file(*args: Any, **kwargs: Any) -> GuardedReceiveFile:
    return GuardedReceiveFile(tempfile.NamedTemporaryFile(*args, **kwargs))


def receive_error(request: Any) -> OSError | None:
    """The write error of a C-STORE request's received dataset, if its writing failed."""
    file = getattr(request, "_dataset_file", None)
    return file.error if isinstance(file, GuardedReceiveFile) else None


def guard_chunked_receive(on: bool) -> None:
    """Install (or remove) :class:`GuardedReceiveFile` as pynetdicom's chunked-receive
    file (process-wide, as ``_config.STORE_RECV_CHUNKED_DATASET``; ingest turns both
    on while it runs)."""
    factory: Any = _guarded_named_temporary_file if on else tempfile.NamedTemporaryFile
    dimse_messages.NamedTemporaryFile = factory
