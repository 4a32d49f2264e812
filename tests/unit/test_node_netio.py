"""qcnode.netio: the acceptor socket's bulk reads and event-driven wait, and that a real
pynetdicom association gets it (the pynetdicom internals it relies on still exist)."""

from __future__ import annotations

import errno
import io
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.transport import AssociationSocket

from qcnode import netio


def _fast_pair() -> tuple[netio.FastSocket, socket.socket, socket.socket]:
    """A FastSocket over one end of a socket pair, as tune_acceptor leaves it."""
    ours, peer = socket.socketpair()
    fast = object.__new__(netio.FastSocket)  # no association: only the I/O methods
    fast.socket, fast._is_connected = ours, True
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    fast._wake_r, fast._wake_w = wake_r, wake_w
    return fast, peer, wake_w


def test_recv_reads_exactly_and_stops_at_close() -> None:
    fast, peer, _ = _fast_pair()
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer
        sender = threading.Thread(target=peer.sendall, args=(payload + b"tail",))
        sender.start()
        assert fast.recv(len(payload)) == payload
        sender.join()
        assert fast.recv(4) == b"tail"
        peer.sendall(b"ab")
        peer.close()
        assert fast.recv(10) == b"ab"  # the peer closed: what there was
    finally:
        fast.socket.close()  # type: ignore[union-attr]
        netio._close_pair(fast._wake_r, fast._wake_w)  # type: ignore[arg-type]


def test_ready_waits_for_data_or_a_wake_up() -> None:
    fast, peer, wake_w = _fast_pair()
    try:
        t = time.perf_counter()
        assert fast.ready is False  # nothing: returns after IDLE_WAIT_S
        assert time.perf_counter() - t >= netio.IDLE_WAIT_S * 0.9
        outgoing = netio._WakingQueue(wake_w)
        threading.Timer(0.001, outgoing.put, args=("primitive",)).start()
        t = time.perf_counter()
        assert fast.ready is False  # woken early by the put: nothing to read
        assert outgoing.get_nowait() == "primitive"
        peer.sendall(b"x")
        assert fast.ready is True
    finally:
        peer.close()
        fast.socket.close()  # type: ignore[union-attr]
        netio._close_pair(fast._wake_r, fast._wake_w)  # type: ignore[arg-type]


def test_a_real_association_gets_the_fast_socket() -> None:
    seen: dict[str, Any] = {}

    def on_open(event: evt.Event) -> None:
        netio.tune_acceptor(event.assoc)

    def on_echo(event: evt.Event) -> int:
        seen["socket"] = type(event.assoc.dul.socket)
        seen["delay"] = event.assoc.dul._run_loop_delay
        return 0x0000

    scp = AE(ae_title="NETIO")
    scp.add_supported_context("1.2.840.10008.1.1")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.7", ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_ECHO, on_echo)],
    )
    assert server is not None
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context("1.2.840.10008.1.1")
        port = server.server_address[1]
        for _ in range(3):  # echo round trips over one association stay fast
            assoc = scu.associate("127.0.0.1", port, ae_title="NETIO")
            assert assoc.is_established
            t = time.perf_counter()
            for _ in range(20):
                assert assoc.send_c_echo().Status == 0x0000
            per_echo = (time.perf_counter() - t) / 20
            assoc.release()
        assert seen["socket"] is netio.FastSocket
        assert issubclass(netio.FastSocket, AssociationSocket)
        assert seen["delay"] == netio.DUL_LOOP_DELAY_S
        assert per_echo < 0.5  # a hang on the wake-up would show as a timeout here
    finally:
        server.shutdown()


def test_guarded_receive_file_keeps_the_error_and_frees_the_space(tmp_path: Path) -> None:
    """The first failed write (here the disk 'fills' after 1 MB) is kept, not raised; the
    partial file is truncated and later writes are dropped, as pynetdicom goes on
    reading the dataset. A fault-injected unit test; the real ENOSPC is
    test_ingest.py::test_disk_full_during_reception_answers_out_of_resources."""

    class FillsUp(io.FileIO):
        def write(self, data: Any) -> int:
            if self.tell() + len(data) > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    guarded = netio.GuardedReceiveFile(FillsUp(tmp_path / "received.dcm", "wb"))
    chunk = b"x" * (256 << 10)
    for _ in range(8):  # 2 MB offered, pynetdicom-style: write then flush
        assert guarded.write(chunk) == len(chunk)
        guarded.file.flush()
    assert guarded.error is not None and guarded.error.errno == errno.ENOSPC
    assert Path(guarded.name).stat().st_size == 0  # space given back
    guarded.close()

    class Request:
        _dataset_file = guarded

    assert netio.receive_error(Request()) is guarded.error
    assert netio.receive_error(object()) is None


class _LateReactor(threading.Event):
    """An association's reactor checkpoint that, once ``armed``, holds the reactor thread
    just after the checkpoint let it through (``_is_paused`` still true) until ``go`` is
    set: a thread woken by the previous ``send_*`` call's ``set()`` and not yet scheduled,
    as on a loaded machine."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.armed = False
        self.holding = threading.Event()
        self.go = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        if self.armed:  # only the association's reactor thread waits here
            self.armed = False
            self.holding.set()
            self.go.wait(5)
        return passed


def test_a_late_requestor_reactor_does_not_take_the_c_store_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 23, as a fixed interleaving: the SCU's reactor thread runs only after the
    C-STORE response has arrived. Without netio's guard its poll takes the response
    ("Received unexpected C-STORE service message") and send_c_store waits its whole DIMSE
    timeout for nothing; with it the caller gets the response."""
    netio.guard_reactor_polls()  # as DicomSender and Ingest.start do
    assert DIMSEServiceProvider.get_msg is netio._get_msg_unless_paused
    sc = "1.2.840.10008.5.1.4.1.1.7"
    scp = AE(ae_title="NETIO")
    scp.add_supported_context(sc, ExplicitVRLittleEndian)
    server = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)]
    )
    assert server is not None
    scu = AE(ae_title="SCU")
    scu.add_requested_context(sc, ExplicitVRLittleEndian)
    scu.dimse_timeout = 3
    assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="NETIO")
    try:
        assert assoc.is_established
        late = _LateReactor()
        assoc._reactor_checkpoint = late
        late.armed = True
        assert late.holding.wait(5)  # the reactor is through the checkpoint, held
        polled = threading.Event()
        dimse: Any = assoc.dimse
        send_msg, get_msg = dimse.send_msg, dimse.get_msg

        def send_then_let_the_reactor_run(*args: Any) -> None:
            send_msg(*args)
            deadline = time.monotonic() + 5
            while not dimse.msg_queue.qsize() and time.monotonic() < deadline:
                time.sleep(0.001)  # until the response is in the DIMSE queue
            late.go.set()
            assert polled.wait(5)  # the reactor polled the queue before the caller reads it

        def get_msg_noting_the_poll(block: bool = False) -> Any:
            out = get_msg(block)
            if not block:
                polled.set()
            return out

        dimse.send_msg = send_then_let_the_reactor_run
        dimse.get_msg = get_msg_noting_the_poll
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sc, "1.2.826.0.1.3680043.10.1.23"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            t = time.perf_counter()
            status = assoc.send_c_store(ds)
        assert "Status" in status and status.Status == 0x0000
        assert time.perf_counter() - t < 2
        assert "Received unexpected" not in caplog.text
        dimse.send_msg, dimse.get_msg = send_msg, get_msg
        assert assoc.send_c_store(ds).Status == 0x0000  # the association goes on normally
    finally:
        if assoc.is_established:
            assoc.release()
        server.shutdown()


def test_the_reactor_guard_comes_from_a_call_not_an_import() -> None:
    """Importing the sender or the ingest changes no pynetdicom class; making a sender
    installs the guard (once: a second call leaves it as it is)."""
    code = (
        "from pynetdicom.dimse import DIMSEServiceProvider as D\n"
        "shipped = D.get_msg\n"
        "import qcnode.ingest, qcnode.send\n"
        "from qcnode import netio\n"
        "assert D.get_msg is shipped, 'an import installed the guard'\n"
        "qcnode.send.DicomSender(ae_title='SCU')\n"
        "assert D.get_msg is netio._get_msg_unless_paused\n"
        "netio.guard_reactor_polls()\n"
        "assert D.get_msg is netio._get_msg_unless_paused and netio._get_msg is shipped\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_chunked_receive_settings_come_back_after_the_last_user(tmp_path: Path) -> None:
    """Two ingests in one process share pynetdicom's and tempfile's globals: they stay
    set until the second stops, then the previous values come back."""
    import tempfile

    from pynetdicom import _config, dimse_messages

    before = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    netio.start_chunked_receive(str(tmp_path))
    netio.start_chunked_receive(str(tmp_path))
    try:
        assert _config.STORE_RECV_CHUNKED_DATASET is True
        assert tempfile.tempdir == str(tmp_path)
        assert dimse_messages.NamedTemporaryFile is netio._guarded_named_temporary_file
        netio.stop_chunked_receive()
        assert _config.STORE_RECV_CHUNKED_DATASET is True
        assert tempfile.tempdir == str(tmp_path)
    finally:
        netio.stop_chunked_receive()
    assert (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir) == before
    assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
