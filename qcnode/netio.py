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

:func:`guard_reactor_polls` closes a race in pynetdicom's pause of an association's
reactor (RELIABILITY finding 23). It changes a pynetdicom class, so it acts on every
association in the process; whoever makes associations calls it first (``Ingest.start``,
``DicomSender``, the test modalities): it is idempotent, and nothing installs it as a side
effect of an import. ``send_c_store``
and the other ``send_*`` calls clear ``_reactor_checkpoint`` and go on as soon as
``_is_paused`` reads true; but the reactor sets ``_is_paused`` *before* it waits on the
checkpoint, so a reactor thread that was woken by the previous call's ``set()`` and not yet
scheduled still reads as paused. When it runs later, after the response has arrived, its
poll takes the response off the DIMSE queue ("Received unexpected C-STORE service
message"), and the caller waits its whole DIMSE timeout for a response that has come and
gone; the peer, which did answer, hears nothing more and aborts at its network timeout.
On a loaded machine this hit about one C-STORE in 4 000 with four requestor threads in one
process. The guard makes the reactor's non-blocking poll return nothing while the
checkpoint is cleared; the check comes after the reactor has marked itself unpaused, so
either the caller saw it unpaused (and waits for it to pause) or the poll sees the
cleared checkpoint.

:func:`start_chunked_receive` / :func:`stop_chunked_receive` switch pynetdicom to writing
received datasets straight to a file in the ingest's temporary folder. pynetdicom 3.0.4 has
no per-AE option for this: it reads the module global ``_config.STORE_RECV_CHUNKED_DATASET``
and opens the file with ``tempfile.NamedTemporaryFile()`` (so in ``tempfile.tempdir``). These
two calls are the only place qcnode changes those globals; they count the ingests running in
the process and give the previous values back when the last one stops.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import tempfile
import threading
import weakref
from typing import Any, cast

from pynetdicom import _config, dimse_messages
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.transport import AssociationSocket

# Longest a DUL thread blocks waiting for data: bounds how late it notices its timers
# (ARTIM, idle) and a kill, as pynetdicom's own 1 ms loop delay would.
IDLE_WAIT_S = 0.005
# The DUL loop's sleep when a pass found nothing to do: the wait happens in ready() now
DUL_LOOP_DELAY_S = 0.0


def set_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle: DCMTK peers otherwise stall on delayed ACKs (11 vs 185 images/s)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed, or not TCP
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def assoc_socket(assoc: Any) -> socket.socket | None:
    """The TCP socket under a pynetdicom association (``None`` before it connects)."""
    dul_sock = getattr(getattr(assoc, "dul", None), "socket", None)
    return getattr(dul_sock, "socket", None)


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


# --- the reactor's poll while a send_* call owns the association -----------------------

_get_msg = DIMSEServiceProvider.get_msg


def _get_msg_unless_paused(self: DIMSEServiceProvider, block: bool = False) -> Any:
    """``DIMSEServiceProvider.get_msg``; a non-blocking poll (only the reactor polls) gets
    nothing while the association's reactor is meant to be paused (module docstring)."""
    if not block:
        checkpoint = getattr(self.assoc, "_reactor_checkpoint", None)
        if checkpoint is not None and not checkpoint.is_set():
            return None, None
    return _get_msg(self, block)


def guard_reactor_polls() -> None:
    """Install the paused-reactor guard for every pynetdicom association in this process
    (idempotent). pynetdicom has no per-association hook for this poll, hence the class
    attribute; call it before making associations (module docstring)."""
    if DIMSEServiceProvider.get_msg is not _get_msg_unless_paused:
        DIMSEServiceProvider.get_msg = _get_msg_unless_paused  # type: ignore[method-assign]


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


def _guard_chunked_receive(on: bool) -> None:
    """Install (or remove) :class:`GuardedReceiveFile` as pynetdicom's chunked-receive
    file."""
    factory: Any = _guarded_named_temporary_file if on else tempfile.NamedTemporaryFile
    dimse_messages.NamedTemporaryFile = factory


class _ChunkedReceive:
    """How many ingests in this process use chunked receive, and the settings they
    replaced (module docstring: pynetdicom's and tempfile's are process-wide)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: tuple[bool, str | None] = (False, None)


_chunked = _ChunkedReceive()


def start_chunked_receive(tmp_dir: str) -> None:
    """pynetdicom writes each received dataset to a :class:`GuardedReceiveFile` in
    ``tmp_dir`` (keeping it is then a rename, and a failed write answers 0xA700) instead of
    holding it in memory. Pair each call with :func:`stop_chunked_receive`."""
    with _chunked.lock:
        if _chunked.users == 0:
            _chunked.saved = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
        _chunked.users += 1
        _config.STORE_RECV_CHUNKED_DATASET = True
        _guard_chunked_receive(True)
        tempfile.tempdir = tmp_dir


def stop_chunked_receive() -> None:
    """One :func:`start_chunked_receive` ends; the last gives the previous settings back."""
    with _chunked.lock:
        _chunked.users -= 1
        if _chunked.users == 0:
            _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = _chunked.saved
            _guard_chunked_receive(False)
