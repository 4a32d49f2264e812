"""Rows and files for the dashboard's tests: DICOMs written as a modality would send them and
result rows shaped like the worker's (qcnode.db models). Not collected by pytest."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from qcnode import db
from qcnode.records import Family

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def make_dicom(
    *,
    station: str,
    operator: str,
    manufacturer: str,
    study_date: dt.date,
    view: str = "PA",
    rows: int = 192,
    columns: int = 160,
    seed: int = 0,
) -> Dataset:
    """A small DX chest image: a bright body with two dark lungs, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    img = np.full((rows, columns), 300.0)
    img[
        (xx - columns / 2) ** 2 / (columns * 0.45) ** 2 + (yy - rows / 2) ** 2 / (rows * 0.5) ** 2
        < 1
    ] = 2500
    for cx in (0.3, 0.7):
        lung = (xx - columns * cx) ** 2 / (columns * 0.14) ** 2 + (yy - rows * 0.5) ** 2 / (
            rows * 0.3
        ) ** 2 < 1
        img[lung] = 900
    img += rng.normal(0, 40, img.shape)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = DX
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Dashboard"
    ds.PatientID = f"P{seed}"
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StationName = station
    ds.OperatorsName = operator
    ds.Manufacturer = manufacturer
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [1.0, 1.0]
    ds.PixelData = np.clip(img, 0, 4095).astype(np.uint16).tobytes()
    return ds


@dataclass(frozen=True)
class Case:
    station: str
    operator: str
    manufacturer: str
    day: int  # study date = 2026-11-01 + day
    verdict: str | None  # None: received, not checked yet
    failing: tuple[tuple[str, str], ...] = ()  # (rule, status) that did not pass
    view: str = "frontal"


CASES: tuple[Case, ...] = (
    Case("DR-ROOM-1", "Li^Na", "ACME", 0, "pass"),
    Case("DR-ROOM-1", "Li^Na", "ACME", 0, "fail", (("positioning.rotation", "fail"),)),
    Case("DR-ROOM-1", "Wang^Wei", "ACME", 1, "warn", (("completeness.collimation", "warn"),)),
    Case(
        "DR-ROOM-2",
        "Wang^Wei",
        "Globex",
        1,
        "fail",
        (("completeness.apices", "fail"), ("positioning.rotation", "warn")),
    ),
    Case("DR-ROOM-2", "Zhang^Min", "Globex", 2, "pass"),
    Case(
        "DR-ROOM-2",
        "Zhang^Min",
        "Globex",
        2,
        "fail",
        (("positioning.scapulae", "fail"),),
        view="frontal",
    ),
    Case("DR-ROOM-3", "Li^Na", "Initech", 3, "pass", view="lateral"),
    Case("DR-ROOM-3", "Li^Na", "Initech", 3, None),
    Case("DR-ROOM-3", "Li^Na", "Initech", 3, "not_applicable", view="other"),
    Case("DR-ROOM-1", "Wang^Wei", "ACME", 2, "error", view="other"),
)

RULES = (
    ("completeness.apices", Family.COMPLETENESS, 5.0, "mm"),
    ("completeness.collimation", Family.COMPLETENESS, 50.0, "mm"),
    ("positioning.rotation", Family.POSITIONING, 5.0, "deg"),
    ("positioning.scapulae", Family.POSITIONING, 10.0, "mm"),
    ("exposure.deviation_index", Family.EXPOSURE, 1.0, "1"),
)


def seed(
    sessions: sessionmaker[Session],
    data_dir: Path,
    cases: tuple[Case, ...] = CASES,
    *,
    masks: bool = True,
) -> list[str]:
    """Write one DICOM per case under data_dir and the rows the node would; return SOP UIDs."""
    from qcnode.store import FileStore

    store = FileStore(root=data_dir)
    base = dt.datetime(2026, 11, 1, 8, 0)
    uids: list[str] = []
    for i, case in enumerate(cases):
        day = dt.date(2026, 11, 1) + dt.timedelta(days=case.day)
        ds = make_dicom(
            station=case.station,
            operator=case.operator,
            manufacturer=case.manufacturer,
            study_date=day,
            view="LL" if case.view == "lateral" else "PA",
            seed=i,
        )
        tmp = data_dir / f"seed-{i}.dcm"
        ds.save_as(tmp, enforce_file_format=True)
        rel, size = store.keep_received(tmp, ds.SOPInstanceUID)
        with sessions.begin() as s:
            inst = db.Instance(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=DX,
                path=rel,
                size_bytes=size,
                station_name=case.station,
                operators_name=case.operator,
                manufacturer=case.manufacturer,
                study_date=day,
                view_position=str(ds.ViewPosition),
                rows=ds.Rows,
                columns=ds.Columns,
                received_at=base + dt.timedelta(days=case.day, minutes=i),
            )
            s.add(inst)
            s.flush()
            s.add(db.Job(instance_id=inst.id, state=db.QUEUED if case.verdict is None else db.DONE))
            if case.verdict is not None:
                _result(s, inst, case, i, store if masks else None)
        uids.append(ds.SOPInstanceUID)
    return uids


def _result(s: Session, inst: db.Instance, case: Case, i: int, store: Any) -> None:
    """A result as the worker stores it; even cases also get masks (FileStore.write_masks)."""
    failing = dict(case.failing)
    fam_verdicts: dict[str, str] = {}
    res = db.Result(
        instance_id=inst.id,
        view=case.view,
        verdict=case.verdict,
        model_name="qcnet_test",
        model_version="0",
        timings_ms={"decode": 5.0, "model": 80.0 + i, "rules": 3.0, "total": 88.0 + i},
        created_at=inst.received_at + dt.timedelta(seconds=1.2 + i),  # off bucket bounds
    )
    if case.verdict in ("not_applicable", "error"):  # the worker stores no findings then
        res.error = "cannot decode pixel data" if case.verdict == "error" else None
        s.add(res)
        return
    if store is not None and i % 2 == 0:
        shape = (inst.rows, inst.columns)
        heart, lung = np.zeros(shape, bool), np.zeros(shape, bool)
        heart[100:150, 70:120] = True
        lung[40:160, 20:70] = True
        empty = np.zeros(shape, bool)
        res.masks_path = store.write_masks(
            inst.sop_instance_uid, {"heart": heart, "lung_right": lung, "spine": empty}
        )
    s.add(res)
    s.flush()
    for rule, family, threshold, unit in RULES:
        status = failing.get(rule, "pass")
        rank = {"pass": 0, "warn": 1, "fail": 2}
        prev = fam_verdicts.get(family.value, "pass")
        fam_verdicts[family.value] = status if rank[status] > rank[prev] else prev
        value = threshold * (2.0 if status == "fail" else 1.1 if status == "warn" else 0.5)
        s.add(
            db.Finding(
                result_id=res.id,
                rule=rule,
                family=family.value,
                status=status,
                value=value,
                unit=unit,
                threshold=threshold,
                message=f"{rule} {status}",
                geometry=[
                    {
                        "kind": "polyline",
                        "points": [[20, 30 + 10 * i], [120, 40 + 10 * i]],
                        "label": rule.split(".")[1],
                    }
                ],
            )
        )
    for fam, v in fam_verdicts.items():
        setattr(res, f"verdict_{fam}", v)
    res.verdict_organs = "pass"
    res.verdict_metadata = "pass"
    obj = db.ResultObject(
        result_id=res.id,
        kind="sr",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        sop_instance_uid=f"2.25.{10_000 + i}",
        path=f"results/sr{i}.dcm",
    )
    s.add(obj)
    s.flush()
    dead = case.verdict == "fail" and i == 1
    s.add(
        db.Outbox(
            object_id=obj.id,
            destination="PACS@127.0.0.1:4242",
            state=db.DEAD if dead else db.SENT,
            attempts=10 if dead else 1,
            last_error="association rejected" if dead else None,
        )
    )
