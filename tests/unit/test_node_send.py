"""Outbox dispatcher with a FakeSender: delivery, backoff, dead letters, the CLI summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from qcnode.config import Destination, Settings
from qcnode.db import (
    DEAD,
    PENDING,
    SENT,
    AuditEvent,
    Instance,
    Outbox,
    Result,
    ResultObject,
    make_engine,
    make_sessions,
    upgrade,
)
from qcnode.send import Dispatcher, backoff_seconds, outbox_summary, retry_dead
from qcnode.store import FileStore
from qcnode.testing import FakeClock, FakeSender
from tests.conftest import radiograph

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=104)


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path, destinations=(PACS,), send_max_attempts=3, send_backoff_seconds=2.0
    )
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_sessions(engine)
    store = FileStore(root=tmp_path)
    yield settings, sessions, store
    engine.dispose()


def add_objects(sessions, store: FileStore, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    uids = []
    with sessions.begin() as s:
        inst = Instance(sop_instance_uid=generate_uid(), sop_class_uid="1.2", path="x")
        s.add(inst)
        s.flush()
        res = Result(instance_id=inst.id, view="frontal", verdict="pass")
        s.add(res)
        s.flush()
        for _ in range(n):
            ds = radiograph(rows=8, columns=8)
            rel, size = store.write_object(ds)
            obj = ResultObject(
                result_id=res.id,
                kind="sc",
                sop_class_uid=ds.SOPClassUID,
                sop_instance_uid=ds.SOPInstanceUID,
                path=rel,
                size_bytes=size,
            )
            s.add(obj)
            s.flush()
            s.add(
                Outbox(
                    object_id=obj.id,
                    destination="PACS@127.0.0.1:104",
                    next_attempt_at=FakeClock()(),
                )
            )
            uids.append(str(ds.SOPInstanceUID))
    return uids


def states(sessions) -> list[str]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return list(s.scalars(select(Outbox.state).order_by(Outbox.id)))


def test_delivers_in_order(env) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    uids = add_objects(sessions, store, 3)
    sender, clock = FakeSender(), FakeClock()
    d = Dispatcher(
        settings=settings,
        sessions=sessions,
        store=store,
        sender=sender,
        destination=PACS,
        clock=clock,
    )
    assert d.run_once() == 3
    assert sender.stored == [("PACS", u) for u in uids]
    assert states(sessions) == [SENT] * 3
    assert d.run_once() == 0


def test_unreachable_destination_backs_off_then_dead_letters(env) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    add_objects(sessions, store, 2)
    sender, clock = FakeSender(), FakeClock()
    sender.down.add("PACS")
    d = Dispatcher(
        settings=settings,
        sessions=sessions,
        store=store,
        sender=sender,
        destination=PACS,
        clock=clock,
    )
    assert d.run_once() == 0
    assert states(sessions) == [PENDING, PENDING]
    assert d.run_once() == 0  # not due before the backoff
    clock.advance(backoff_seconds(settings, 1) + 0.01)
    d.run_once()
    clock.advance(backoff_seconds(settings, 2) + 0.01)
    assert backoff_seconds(settings, 2) == 2 * backoff_seconds(settings, 1)
    d.run_once()
    assert states(sessions) == [DEAD, DEAD]
    summary = outbox_summary(sessions)
    assert summary["destinations"] == {"PACS@127.0.0.1:104": {DEAD: 2}}
    assert [x["attempts"] for x in summary["dead_letters"]] == [3, 3]
    with sessions() as s:
        assert len(list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "dead_letter")))) == 2
    # back online and retried from the CLI: delivered
    sender.down.clear()
    assert retry_dead(sessions, clock=clock) == 2
    assert d.run_once() == 2
    assert states(sessions) == [SENT, SENT]


def test_failure_status_is_retried(env) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, store = env
    add_objects(sessions, store, 1)
    sender, clock = FakeSender(status=0xA700), FakeClock()
    d = Dispatcher(
        settings=settings,
        sessions=sessions,
        store=store,
        sender=sender,
        destination=PACS,
        clock=clock,
    )
    assert d.run_once() == 0
    sender.status = 0xB000  # a warning counts as delivered
    clock.advance(60)
    assert d.run_once() == 1
    assert states(sessions) == [SENT]


def test_outbox_cli_lists_dead_letters(env, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from qcnode.cli import main

    settings, sessions, store = env
    add_objects(sessions, store, 1)
    with sessions.begin() as s:
        row = s.scalar(select(Outbox))
        row.state, row.attempts, row.last_error = DEAD, 3, "status 0xA700"
    monkeypatch.setenv("QCNODE_DATA_DIR", str(settings.data_dir))
    assert main(["outbox"]) == 0
    out = capsys.readouterr().out
    assert "PACS@127.0.0.1:104: dead 1" in out
    assert "after 3 attempts: status 0xA700" in out
    assert main(["outbox", "--retry-dead", "--json"]) == 0
    assert states(sessions) == [PENDING]


def test_deliveries_and_dead_letters_are_audited(env) -> None:  # type: ignore[no-untyped-def]
    import socket
    import xml.etree.ElementTree as ET

    from qcnode.audit import Auditor

    settings, sessions, store = env
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    auditor = Auditor(url=f"udp://127.0.0.1:{collector.getsockname()[1]}", ae_title="QCNODE")
    add_objects(sessions, store, 1)
    d = Dispatcher(
        settings=settings,
        sessions=sessions,
        store=store,
        sender=FakeSender(),
        destination=PACS,
        clock=FakeClock(),
        auditor=auditor,
    )
    try:
        assert d.run_once() == 1
        root = ET.fromstring(collector.recv(65536).partition(b"\xef\xbb\xbf")[2])
    finally:
        auditor.close()
        collector.close()
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == "0"
    assert [p.get("UserID") for p in root.iter("ActiveParticipant")] == ["QCNODE", "PACS"]
    assert root.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
