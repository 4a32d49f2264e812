"""``qcnode serve`` with ``ingest_processes = 2``: two processes receive on one port
(SO_REUSEPORT), as users run it (the real CLI, the test-only model, DCMTK storescu as
the modalities, Orthanc as the PACS)."""

from __future__ import annotations

import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from qcnode.db import Instance, Job
from tests.conftest import Orthanc, free_port, storescu, wait_for
from tests.integration.nodeproc import NodeProcess
from tests.integration.test_pipeline import TEST_WEIGHTS, _children, _gone, chest_file


def listeners(port: int) -> list[int]:
    """PIDs of the processes with a socket listening on ``port`` (one per socket), as
    ``ss -ltnp`` shows them, read from /proc (no iproute2 needed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.append(int(proc.name))
    return sorted(found)


@pytest.mark.slow
def test_two_ingest_processes(tmp_path: Path, orthanc: Orthanc) -> None:
    if not TEST_WEIGHTS:
        pytest.skip("no tests/data/testonly_*.pt weights")
    node = NodeProcess(
        tmp_path / "node",
        fake_model=False,
        data_dir=str(tmp_path / "node" / "data"),
        bind_address="127.0.0.1",
        port=free_port(),
        web_port=0,
        model=str(TEST_WEIGHTS[0]),
        device="cpu",
        destinations=[orthanc.destination],
        send_backoff_seconds=0.3,
        ingest_processes=2,
    )
    node.start()
    assert node.proc is not None
    serve = node.proc.pid
    try:
        wait_for(lambda: len(listeners(node.port)) == 2, 60, "two listeners on the port")
        (extra,) = set(listeners(node.port)) - {serve}
        assert extra in _children(serve)

        # one association at a time until the kernel dealt one to each process
        sent: list[Path] = []
        for seed in range(40):
            sent.append(chest_file(tmp_path / "in" / f"w{seed}.dcm", seed=100 + seed))
            run = storescu(node.port, [sent[-1]], calling=f"WARM{seed}")
            assert run.returncode == 0, run.stderr
            log = node.log()
            if "ingest[ingest-1]: association from" in log and "ingest: association from" in log:
                break
        else:
            raise AssertionError("40 associations all went to one process")

        # concurrent associations, two of them repeating the others' images
        burst = [chest_file(tmp_path / "in" / f"b{i}.dcm", seed=i) for i in range(8)]
        groups = [(f"MOD{k}", burst[k::4]) for k in range(4)]
        groups += [("DUPA", burst[:4]), ("DUPB", burst[4:])]
        with ThreadPoolExecutor(len(groups)) as pool:
            runs = list(pool.map(lambda g: storescu(node.port, g[1], calling=g[0]), groups))
        assert [r.returncode for r in runs] == [0] * len(groups), [r.stderr for r in runs]
        sent += burst
        uids = {str(pydicom.dcmread(f).SOPInstanceUID) for f in sent}

        # each stored once, QC'd once, its results delivered once
        counts = node.query(
            select(func.count(), func.count(func.distinct(Instance.sop_instance_uid)))
        )
        assert tuple(counts[0]) == (len(uids), len(uids))
        assert node.query(select(func.count()).select_from(Job))[0][0] == len(uids)
        wait_for(lambda: len(node.results()) == len(uids), 300, "QC of every image", step=0.5)
        assert set(node.results()) == uids

        def delivered() -> bool:
            objects = node.objects()
            want = {uid for src in objects for _, uid in objects[src]}
            have = {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances()}
            return bool(want) and want <= have

        wait_for(delivered, 120, "every result object at Orthanc", step=0.5)
        # once each: Orthanc's instance count may trail /tools/find for a moment (a full-suite
        # run here read 20 of 22 right after every UID was found), so poll for it too
        total = sum(len(v) for v in node.objects().values())
        wait_for(lambda: orthanc.count() == total, 60, "each result object at Orthanc once")

        # an extra ingest process that dies is replaced; receiving goes on meanwhile
        os.kill(extra, signal.SIGKILL)
        wait_for(lambda: len(set(listeners(node.port)) - {serve, extra}) == 1, 60, "a new one")
        assert "ingest process 1 (pid" in node.log() and "died (exit -9)" in node.log()
        again = storescu(node.port, burst[:2], calling="AGAIN")
        assert again.returncode == 0, again.stderr

        # SIGKILL of serve: its children (ingest and QC) notice and exit by themselves
        children = _children(serve)
        assert len(children) >= 2
        node.kill()
        wait_for(lambda: all(_gone(c) for c in children), 30, "no orphan after SIGKILL")
        assert listeners(node.port) == []
    finally:
        node.stop()
    assert "Tech^One" not in node.log() and "TEST0001" not in node.log()  # no PHI in logs


def test_bench_ingest_with_two_processes(tmp_path: Path) -> None:
    """node_bench's ingest comparison runs qcnode with 1 and 2 ingest processes against
    storescp --fork (each checks that every file was kept)."""
    from qcnode.config import Settings
    from qcnode.node_bench import bench_ingest

    out = bench_ingest(
        Settings(data_dir=tmp_path), count=4, rounds=1, concurrency=2, processes=(1, 2)
    )
    for key in ("qcnode", "qcnode_2proc", "storescp", "storescp_fsync"):
        assert out[key]["mb_per_s"] > 0 and out[key]["images_per_s"] > 0
    assert out["ratio_2proc_vs_storescp_fsync"] > 0
    assert list(tmp_path.iterdir()) == []  # its work directory is gone


def test_tls_in_every_ingest_process(tmp_path: Path) -> None:
    """Mutual DICOM TLS works whichever process the kernel deals the connection to."""
    import ssl

    from pynetdicom import AE

    from qcnode.config import Settings
    from qcnode.db import make_engine, make_sessions
    from qcnode.ingestprocs import start_extra
    from qcnode.node import Node
    from tests.conftest import radiograph
    from tests.integration.test_ingest import _openssl

    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name in ("node", "modality"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    settings = Settings(
        data_dir=tmp_path / "node",
        bind_address="127.0.0.1",
        port=free_port(),
        workers=0,
        web_port=0,
        ingest_processes=2,
        tls_cert_file=d / "node.crt",
        tls_key_file=d / "node.key",
        tls_ca_file=d / "ca.crt",
    )
    node = Node(settings=settings)
    node.start()
    extra = None
    try:
        assert node.address is not None and node.ingest is not None
        extra = start_extra(settings, node.address[1], lambda: None, node.stop)
        assert extra is not None and len(extra.pids) == 1
        assert len(listeners(settings.port)) == 2
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(d / "modality.crt", d / "modality.key")
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
        engine = make_engine(settings, readonly=True)
        for seed in range(40):
            assoc = ae.associate(
                "127.0.0.1", settings.port, ae_title="QCNODE", tls_args=(ctx, None)
            )
            assert assoc.is_established
            status = assoc.send_c_store(radiograph(rows=32, columns=32, seed=seed))
            assert int(status.Status) == 0
            assoc.release()
            with make_sessions(engine)() as s:
                kept = s.scalar(select(func.count()).select_from(Instance))
            assert kept == seed + 1
            if 0 < node.ingest.stored < kept:  # each process received at least one
                break
        else:
            raise AssertionError("40 TLS associations all went to one process")
        engine.dispose()
    finally:
        if extra is not None:
            extra.stop()
        node.close()
