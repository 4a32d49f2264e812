"""``qcnode bench --what e2e``: the whole node on real chest radiographs (DESIGN §7).

A real ``qcnode serve`` (ingest, QC worker with the configured model, sender) in front of a
throwaway Orthanc as the PACS. Inputs are radiographs the model recognises as chests, so
every stage runs (decode → model → rules → SR + SC → C-STORE to the PACS): RG1 (WG04,
a real PA chest CR, 1955x1841, from pydicom-data) and the committed synthetic frontals and
lateral (tests/data/synth). Each image sent is a fresh copy (new SOP Instance, Series and
Study UIDs) so the node never treats it as a duplicate.

Per input kind: latency from C-STORE success at qcnode (instance row committed) to the
SR's C-STORE success at Orthanc (outbox ``sent_at``), images sent one at a time; then a
burst over one association gives sustained images/s until every SR and SC of the burst is
at the PACS; per-stage medians from the node's own timings (``total`` is decode + model +
rules, ``report`` building the SR + SC, ``write`` writing them and the masks). The run
fails (QcnodeError) when any image is not analysed as a chest (view other, verdict
not_applicable or error) or when any of its SR / SC is missing at Orthanc: a bench that
skips the pipeline must not report numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from qcnode.config import Destination, Settings
from qcnode.errors import QcnodeError
from qcnode.node_bench import _free_port, _Orthanc, _pct, _serve_process

log = logging.getLogger(__name__)

SYNTH = Path(__file__).resolve().parents[1] / "tests" / "data" / "synth"
REQUIRED = ("sr", "sc")  # a destination's default result objects: both must reach the PACS
NOT_ANALYSED = ("not_applicable", "error")


def rg1_path() -> Path | None:
    """WG04 RG1 (uncompressed CR, a real PA chest) from pydicom-data, if installed."""
    try:
        import data_store  # pydicom-data
    except ImportError:
        return None
    path = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    return path if path.is_file() else None


def e2e_inputs(kinds: Sequence[str] = ("rg1", "synth")) -> dict[str, list[Path]]:
    """Source files per input kind; a missing kind is an error, not a silent skip."""
    out: dict[str, list[Path]] = {}
    for kind in kinds:
        if kind == "rg1":
            rg1 = rg1_path()
            if rg1 is None:
                raise QcnodeError("RG1_UNCR.dcm not found: install pydicom-data (dev extra)")
            out[kind] = [rg1]
        elif kind == "synth":
            files = sorted(SYNTH.glob("*.dcm"))
            if not files:
                raise QcnodeError(f"no synthetic radiographs in {SYNTH}")
            out[kind] = files
        else:
            raise QcnodeError(f"unknown e2e input kind {kind!r} (rg1, synth)")
    return out


def fresh_copy(source: Dataset) -> Dataset:
    """``source`` as a new instance of a new study: the node must not see a duplicate."""
    ds = copy.deepcopy(source)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


class _Pacs(_Orthanc):
    def has(self, sop_instance_uid: str) -> bool:
        """Whether Orthanc stores the instance (REST /tools/lookup)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup",
            data=sop_instance_uid.encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return any(m.get("Type") == "Instance" for m in json.loads(r.read()))


@dataclasses.dataclass
class _Image:
    """What the node's database says about one sent image."""

    received_at: Any = None
    view: str | None = None
    verdict: str | None = None
    model: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    objects: dict[str, tuple[str, str, Any]] = dataclasses.field(default_factory=dict)

    def delivered(self) -> bool:
        """Analysed, and every required object sent (or the image is not analysable:
        the check after the run reports it)."""
        if self.verdict is None:
            return False
        if self.verdict in NOT_ANALYSED or self.view == "other":
            return True
        return all(k in self.objects and self.objects[k][1] == "sent" for k in REQUIRED)


class _Node:
    """The node under test, read through its database (read-only)."""

    def __init__(self, settings: Settings) -> None:
        from qcnode.db import make_engine, make_sessions

        self.engine = make_engine(settings, readonly=True)
        self.sessions = make_sessions(self.engine)

    def images(self, uids: Sequence[str]) -> dict[str, _Image]:
        from sqlalchemy import select

        from qcnode.db import Instance, Outbox, Result, ResultObject

        out = {u: _Image() for u in uids}
        with self.sessions() as db:
            rows = db.execute(
                select(
                    Instance.sop_instance_uid,
                    Instance.received_at,
                    Result.view,
                    Result.verdict,
                    Result.model_name,
                    Result.model_version,
                    Result.timings_ms,
                    ResultObject.kind,
                    ResultObject.sop_instance_uid,
                    Outbox.state,
                    Outbox.sent_at,
                )
                .outerjoin(Result, Result.instance_id == Instance.id)
                .outerjoin(ResultObject, ResultObject.result_id == Result.id)
                .outerjoin(Outbox, Outbox.object_id == ResultObject.id)
                .where(Instance.sop_instance_uid.in_(list(uids)))
            ).all()
        for uid, got, view, verdict, name, version, timings, kind, obj_uid, state, sent in rows:
            img = out[uid]
            img.received_at, img.view, img.verdict = got, view, verdict
            img.model = f"{name} {version}" if name else ""
            img.timings = {k: float(v) for k, v in (timings or {}).items()}
            if kind is not None:
                img.objects[kind] = (obj_uid, state or "", sent)
        return out

    def idle(self) -> bool:
        from sqlalchemy import select

        from qcnode.db import Job, Outbox

        with self.sessions() as db:
            busy = db.execute(select(Job.id).where(Job.state != "done").limit(1)).first()
            pending = db.execute(select(Outbox.id).where(Outbox.state == "pending").limit(1))
            return busy is None and pending.first() is None

    def close(self) -> None:
        self.engine.dispose()


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise QcnodeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _check(kind: str, images: dict[str, _Image], pacs: _Pacs) -> list[str]:
    """Every image analysed as a chest, its SR and SC sent and stored at Orthanc."""
    problems = []
    for uid, img in images.items():
        if img.verdict is None or img.verdict in NOT_ANALYSED or img.view == "other":
            problems.append(f"{kind} {uid}: view {img.view}, verdict {img.verdict}")
            continue
        for k in REQUIRED:
            obj = img.objects.get(k)
            if obj is None or obj[1] != "sent":
                problems.append(f"{kind} {uid}: {k} not delivered ({obj and obj[1]})")
            elif not pacs.has(obj[0]):
                problems.append(f"{kind} {uid}: {k} {obj[0]} not found at the PACS")
    return problems


def bench_e2e(
    settings: Settings,
    *,
    kinds: Sequence[str] = ("rg1", "synth"),
    files: Mapping[str, Sequence[Path]] | None = None,
    latency_images: int = 10,
    burst_images: int = 20,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Latency, sustained rate and stage medians per input kind (see the module doc);
    ``files`` (kind -> paths) replaces the built-in inputs."""
    from pynetdicom import AE

    from qcnode.netio import guard_reactor_polls

    guard_reactor_polls()  # the BENCH modality sends as the sender does (qcnode.netio)
    inputs = dict(files) if files is not None else e2e_inputs(kinds)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one INFO line per C-STORE
    sources = {k: [dcmread(p) for p in paths] for k, paths in inputs.items()}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=settings.data_dir))
    load_before = [round(x, 2) for x in os.getloadavg()]
    pacs = _Pacs(work / "orthanc")
    proc = None
    node = None
    try:
        dest = Destination(ae_title="ORTHANC", host="127.0.0.1", port=pacs.dicom_port)
        s = dataclasses.replace(
            settings,
            data_dir=work / "qcnode",
            database_url="",
            bind_address="127.0.0.1",
            port=_free_port(),
            web_port=0,
            destinations=(dest,),
            allowed_calling_aes=(),
            workers=max(1, settings.workers),
        )
        # qcnode serve as users run it (QC in its child process unless worker_process is off)
        proc = _serve_process(
            s,
            s.data_dir,
            s.port,
            QCNODE_WORKERS=str(s.workers),
            QCNODE_WORKER_PROCESS=str(s.worker_process).lower(),
            QCNODE_DESTINATIONS=f"{dest.ae_title}@{dest.host}:{dest.port}",
        )
        node = db = _Node(s)
        ae = AE(ae_title="BENCH")
        for ds in (d for group in sources.values() for d in group):
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)

        def send(batch: list[Dataset]) -> list[str]:
            assoc = ae.associate("127.0.0.1", s.port, ae_title=s.ae_title)
            if not assoc.is_established:
                raise QcnodeError("cannot associate with the node")
            try:
                for ds in batch:
                    status = assoc.send_c_store(ds)
                    if int(status.get("Status", -1)) != 0:
                        raise QcnodeError(f"C-STORE failed: {status}")
            finally:
                assoc.release()
            return [str(ds.SOPInstanceUID) for ds in batch]

        def all_delivered(uids: list[str]) -> Callable[[], bool]:
            return lambda: all(i.delivered() for i in db.images(uids).values())

        # warm-up: model load, first association with the PACS, one image of each kind
        warm = send([fresh_copy(group[0]) for group in sources.values()])
        _wait(all_delivered(warm), timeout, "the warm-up images")
        _wait(db.idle, timeout, "the node to go idle")

        out: dict[str, Any] = {}
        problems = _check("warm-up", db.images(warm), pacs)
        for kind, group in sources.items():
            sent: list[str] = []
            for i in range(latency_images):  # one at a time, each when the node is idle
                uids = send([fresh_copy(group[i % len(group)])])
                _wait(all_delivered(uids), timeout, f"{kind} image {i}")
                _wait(db.idle, timeout, "the node to go idle")
                sent += uids
            latency = db.images(sent)
            burst = [fresh_copy(group[i % len(group)]) for i in range(burst_images)]
            t0 = time.perf_counter()
            burst_uids = send(burst)
            _wait(all_delivered(burst_uids), timeout, f"the {kind} burst")
            burst_s = time.perf_counter() - t0
            _wait(db.idle, timeout, "the node to go idle")
            every = {**latency, **db.images(burst_uids)}
            problems += _check(kind, every, pacs)
            out[kind] = _summary(group, latency, every, burst_images, burst_s)
        if problems:
            raise QcnodeError(
                f"e2e bench: {len(problems)} problem(s), the pipeline did not run in full: "
                + "; ".join(problems[:10])
            )
        total_images = len(warm) + len(sources) * (latency_images + burst_images)
        at_pacs = pacs.count()
    finally:
        if node is not None:
            node.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        pacs.close()
        shutil.rmtree(work, ignore_errors=True)
    names = [v["model"] for v in out.values()]
    models = sorted({m for n in names for m in ([n] if isinstance(n, str) else n)})
    return {
        "model": models[0] if len(models) == 1 else models,
        "objects": list(REQUIRED),
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "images_sent": total_images,
        "instances_at_pacs": at_pacs,
        **out,
    }


def _summary(
    group: Sequence[Dataset],
    latency: dict[str, _Image],
    every: dict[str, _Image],
    burst_images: int,
    burst_s: float,
) -> dict[str, Any]:
    seconds = sorted(
        (i.objects["sr"][2] - i.received_at).total_seconds()
        for i in latency.values()
        if "sr" in i.objects and i.objects["sr"][2] is not None and i.received_at is not None
    )

    def medians(images: Sequence[_Image]) -> dict[str, float]:
        stages: dict[str, list[float]] = {}
        for img in images:
            for k, v in img.timings.items():
                stages.setdefault(k, []).append(v)
        return {k: round(statistics.median(v), 1) for k, v in sorted(stages.items())}

    verdicts: dict[str, int] = {}
    views: dict[str, int] = {}
    for img in every.values():
        verdicts[str(img.verdict)] = verdicts.get(str(img.verdict), 0) + 1
        views[str(img.view)] = views.get(str(img.view), 0) + 1
    models = sorted({i.model for i in every.values()})
    return {
        "images": [
            f"{d.get('Modality', '')} {d.Rows}x{d.Columns} {d.get('ViewPosition', '')}"
            for d in group
        ],
        "model": models[0] if len(models) == 1 else models,
        "views": views,
        "verdicts": verdicts,
        "latency_s": {
            "n": len(seconds),
            "p50": round(_pct(seconds, 50), 3),
            "p95": round(_pct(seconds, 95), 3),
        },
        "sustained_images_per_s": round(burst_images / burst_s, 2),
        "burst": {"images": burst_images, "seconds": round(burst_s, 2)},
        # one image at a time; in the burst the model's time is its batch's
        "stage_ms_median": medians(list(latency.values())),
        "burst_stage_ms_median": medians([i for u, i in every.items() if u not in latency]),
    }
