"""The dashboard in a real headless chromium, over data from a real node run.

A modality (DCMTK storescu) sends phantom chest DICOMs to the real node (ingest → queue →
worker → engine + rules → results, masks, outbox → sender to DCMTK storescp and to a dead
destination). Only the network is faked (qcnode.testing.FakePredictor answers with the
phantom's exact masks). Then chromium drives the dashboard: the worklist loads, a filter
narrows it, the CSV matches the filtered rows, the image page shows the overlay, and the
retry button requeues a dead letter. Screenshots go to $QCNODE_SCREENSHOTS (docs/) if set.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from qcnode import db
from qcnode.config import Destination, Settings
from qcnode.records import View
from qcnode.web.server import serving as running

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    # pynetdicom 3.0.4 leaks its socket when a TCP connect is refused (the dead destination)
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
needs_tools = pytest.mark.skipif(
    not (
        Path(CHROMIUM).exists()
        and Path(CHROMEDRIVER).exists()
        and shutil.which("storescu")
        and shutil.which("storescp")
    ),
    reason="needs chromium, chromedriver and DCMTK (scripts/setup installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- the phantom studies a modality sends ------------------------------------------------


@dataclass(frozen=True)
class Study:
    station: str
    operator: str
    manufacturer: str
    day: int
    view: View
    defect: str = ""  # "", "apices_cut", "rotated"


STUDIES = (
    Study("DR-ROOM-1", "Li^Na", "ACME", 0, View.FRONTAL),
    Study("DR-ROOM-1", "Li^Na", "ACME", 0, View.FRONTAL, "apices_cut"),
    Study("DR-ROOM-1", "Wang^Wei", "ACME", 1, View.FRONTAL, "rotated"),
    Study("DR-ROOM-2", "Wang^Wei", "Globex", 1, View.FRONTAL),
    Study("DR-ROOM-2", "Zhang^Min", "Globex", 2, View.LATERAL),
    Study("DR-ROOM-2", "Zhang^Min", "Globex", 2, View.FRONTAL, "apices_cut"),
    Study("DR-ROOM-3", "Li^Na", "Initech", 3, View.FRONTAL, "rotated"),
    Study("DR-ROOM-3", "Li^Na", "Initech", 3, View.FRONTAL),
)


def _masks(study: Study) -> dict[str, np.ndarray]:
    from qcnode.testing import frontal_phantom, lateral_phantom

    masks = lateral_phantom() if study.view is View.LATERAL else frontal_phantom()
    if study.defect == "apices_cut":  # collimated into the lungs: apices outside the field
        field = np.zeros_like(masks["field"])
        field[110:390, 20:380] = True
        masks["field"] = field
        for name in masks:
            if name != "field":
                masks[name] = masks[name] & field
    elif study.defect == "rotated":  # clavicle heads off the spinous line
        for name in ("clavicle_right", "clavicle_left"):
            masks[name] = np.roll(masks[name], 40, axis=1)
    return masks


def _dicom(study: Study, masks: dict[str, np.ndarray], seed: int) -> Dataset:
    from qcnode.testing import phantom_image

    pixels = phantom_image(masks, seed=seed).pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID = "Phantom^Chest", f"PH{seed:03d}"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyTime, ds.StudyID, ds.AccessionNumber = "090000", f"S{seed}", f"A{seed}"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.StudyDate = (dt.date(2026, 11, 2) + dt.timedelta(days=study.day)).strftime("%Y%m%d")
    ds.StationName, ds.OperatorsName = study.station, study.operator
    ds.Manufacturer = study.manufacturer
    ds.ViewPosition = "LL" if study.view is View.LATERAL else "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [1.0, 1.0]
    ds.PixelData = (pixels * 4095 + 0.5).astype(np.uint16).tobytes()
    return ds


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from qcnode.node import EngineAnalyzer, Node
    from qcnode.testing import FakePredictor

    root = tmp_path_factory.mktemp("run")
    pacs_dir = root / "pacs"
    pacs_dir.mkdir()
    pacs_port, dead_port = _free_port(), _free_port()  # nothing listens on dead_port
    pacs = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = Settings(
        data_dir=root / "node",
        bind_address="127.0.0.1",
        port=_free_port(),
        destinations=(
            Destination(ae_title="PACS", host="127.0.0.1", port=pacs_port),
            Destination(ae_title="GONE", host="127.0.0.1", port=dead_port),
        ),
        send_max_attempts=1,
        send_backoff_seconds=0.1,
        batch_max_wait_ms=10,
    )
    by_uid: dict[str, tuple[View, dict[str, np.ndarray]]] = {}
    files = []
    for i, study in enumerate(STUDIES):
        masks = _masks(study)
        ds = _dicom(study, masks, seed=i)
        by_uid[str(ds.SOPInstanceUID)] = (study.view, masks)
        path = root / f"study{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))

    def analyzer() -> Any:
        return EngineAnalyzer(predictor=FakePredictor(source=by_uid), settings=settings)

    node = Node(settings=settings, analyzer_factory=analyzer)
    node.start()
    try:
        host, port = node.address or ("127.0.0.1", settings.port)
        subprocess.run(
            ["storescu", "-aet", "MODALITY", "-aec", settings.ae_title, host, str(port), *files],
            check=True,
            capture_output=True,
            timeout=60,
        )
        engine = db.make_engine(settings, readonly=True)
        sessions = db.make_sessions(engine)

        def settled() -> bool:
            with sessions() as s:
                results = s.scalar(select(func.count()).select_from(db.Result))
                busy = s.scalar(
                    select(func.count()).select_from(db.Outbox).where(db.Outbox.state == db.PENDING)
                )
            return results == len(STUDIES) and busy == 0

        _wait("the node to check and deliver every image", settled)
        engine.dispose()
        yield settings
    finally:
        node.close()
        pacs.terminate()
        pacs.wait(timeout=10)


# --- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        "--lang=en-US",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dashboard(real_run: Settings) -> Iterator[str]:
    from qcnode.web import create_app

    app = create_app(real_run, engine_or_session_factory=db.make_engine(real_run, readonly=True))
    with running(app) as url:
        yield url


def _shot(driver: Any, name: str, tmp_path: Path) -> Path:
    """Full-page screenshot into tmp_path and, when $QCNODE_SCREENSHOTS is set, there too."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(800, min(int(height) + 40, 3000)))
    path = tmp_path / f"dashboard_{name}.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("QCNODE_SCREENSHOTS")
    if target:  # a 256-colour PNG keeps the repository small
        Image.open(path).convert("RGB").quantize(256).save(Path(target) / path.name, optimize=True)
    driver.set_window_size(1400, 1000)
    return path


def _rows(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        tr.get_attribute("data-sop")
        for tr in driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    ]


def _db(settings: Settings) -> Iterator[Any]:
    engine = db.make_engine(settings, readonly=True)
    try:
        with db.make_sessions(engine)() as s:
            yield s
    finally:
        engine.dispose()


@needs_tools
def test_worklist_filter_and_csv(
    browser: Any, dashboard: str, real_run: Settings, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for s in _db(real_run):
        newest_first = [
            uid
            for (uid,) in s.execute(
                select(db.Instance.sop_instance_uid).order_by(
                    db.Instance.received_at.desc(), db.Instance.id.desc()
                )
            )
        ]
        verdicts = dict(
            s.execute(
                select(db.Instance.sop_instance_uid, db.Result.verdict).join(
                    db.Result, db.Result.instance_id == db.Instance.id
                )
            ).all()
        )
    failed = [uid for uid in newest_first if verdicts[uid] == "fail"]
    assert 0 < len(failed) < len(STUDIES), "the phantom set must give failed and other images"

    browser.get(dashboard + "/")
    assert _rows(browser) == newest_first
    _shot(browser, "worklist", tmp_path)

    Select(browser.find_element(By.NAME, "verdict")).select_by_value("fail")
    browser.find_element(By.ID, "apply").click()
    _wait_for(lambda: "verdict=fail" in browser.current_url)
    assert _rows(browser) == failed
    assert all(
        b.get_attribute("data-verdict") == "fail"
        for b in browser.find_elements(By.CSS_SELECTOR, "#worklist .badge")
    )

    csv_href = browser.find_element(By.ID, "csv").get_attribute("href")
    assert "verdict=fail" in csv_href
    text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.text()).then(done, e => done('ERR ' + e));",
        csv_href,
    )
    lines = text.lstrip("\ufeff").strip().splitlines()
    assert lines[0].startswith("sop_instance_uid,")
    assert [line.split(",")[0] for line in lines[1:]] == failed

    Select(browser.find_element(By.NAME, "verdict")).select_by_value("")
    browser.find_element(By.NAME, "station").send_keys("DR-ROOM-2")
    browser.find_element(By.ID, "apply").click()
    _wait_for(lambda: "station=DR-ROOM-2" in browser.current_url)
    room2 = [
        uid
        for uid, st in zip(newest_first, _stations(real_run, newest_first), strict=True)
        if st == "DR-ROOM-2"
    ]
    assert _rows(browser) == room2


def _stations(settings: Settings, uids: list[str]) -> list[str]:
    for s in _db(settings):
        by = dict(s.execute(select(db.Instance.sop_instance_uid, db.Instance.station_name)).all())
    return [by[u] for u in uids]


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    _wait("the browser", check, timeout)


def _viewer_pixels(browser: Any) -> np.ndarray:
    from selenium.webdriver.common.by import By

    png = browser.find_element(By.CSS_SELECTOR, ".viewer").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@needs_tools
def test_image_page_shows_overlay(
    browser: Any, dashboard: str, real_run: Settings, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    for s in _db(real_run):
        uid, masks_path = s.execute(
            select(db.Instance.sop_instance_uid, db.Result.masks_path)
            .join(db.Result, db.Result.instance_id == db.Instance.id)
            .where(db.Result.verdict == "fail")
            .order_by(db.Instance.id)
        ).first()
        findings = s.scalars(
            select(db.Finding.rule)
            .join(db.Result, db.Finding.result_id == db.Result.id)
            .join(db.Instance, db.Result.instance_id == db.Instance.id)
            .where(db.Instance.sop_instance_uid == uid)
        ).all()
    assert masks_path, "the worker stores masks for the overlay"

    browser.get(f"{dashboard}/image/{uid}")
    _wait_for(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#overlay image')].length > 1 &&"
            " document.readyState === 'complete'"
        )
    )
    time.sleep(0.5)  # let the SVG <image> layers decode before reading pixels
    shown = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#findings td.rule")]
    assert sorted(shown) == sorted(findings)
    states = {
        (tr.get_attribute("data-destination").split("@")[0], tr.get_attribute("data-state"))
        for tr in browser.find_elements(By.CSS_SELECTOR, "#deliveries tr[data-state]")
    }
    assert states == {("PACS", "sent"), ("GONE", "dead")}

    lung = browser.find_element(By.CSS_SELECTOR, "input[data-layer='mask-lung_right']")
    assert lung.is_selected()
    with_masks = _viewer_pixels(browser)
    _shot(browser, "image", tmp_path)
    for button in browser.find_elements(By.CSS_SELECTOR, "button[data-all='off']"):
        button.click()
    assert not lung.is_selected()
    hidden = browser.execute_script(
        "return document.querySelector(\"[data-layer-id='mask-lung_right']\")"
        ".classList.contains('hidden')"
    )
    assert hidden
    plain = _viewer_pixels(browser)

    # the lung overlay is blue (0, 114, 178): blue-dominant pixels appear only with it on
    def blue(px: np.ndarray) -> int:
        return int(((px[..., 2] - px[..., 0]) > 60).sum())

    assert blue(with_masks) > 1000
    assert blue(plain) < blue(with_masks) / 20
    assert not re.search(r"chrome-error|Traceback", browser.page_source)


@needs_tools
def test_stats_and_node_retry(
    browser: Any, dashboard: str, real_run: Settings, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dashboard + "/stats")
    assert browser.find_elements(
        By.CSS_SELECTOR, "#chart-family svg polyline, #chart-family svg circle"
    )
    stations = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#by-station td a")]
    assert sorted(stations) == sorted({s.station for s in STUDIES})
    _shot(browser, "stats", tmp_path)

    browser.get(dashboard + "/node")
    dead = browser.find_elements(By.CSS_SELECTOR, "#dead-letters tr[data-outbox]")
    assert dead, "objects to the dead destination are dead letters"
    _shot(browser, "node", tmp_path)
    outbox_id = int(dead[0].get_attribute("data-outbox"))
    dead[0].find_element(By.CSS_SELECTOR, "button").click()
    _wait_for(lambda: "retried=" in browser.current_url)
    assert browser.find_element(By.ID, "retried").is_displayed()
    for s in _db(real_run):
        events = s.scalars(select(db.AuditEvent).where(db.AuditEvent.kind == "outbox_retry")).all()
    assert [e.detail["outbox_id"] for e in events] == [outbox_id]


@needs_tools
def test_chinese_dashboard(browser: Any, real_run: Settings, tmp_path: Path) -> None:
    import dataclasses

    from selenium.webdriver.common.by import By

    from qcnode.web import create_app

    zh = dataclasses.replace(real_run, language="zh")
    app = create_app(zh, engine_or_session_factory=db.make_engine(zh, readonly=True))
    with running(app) as url:
        browser.get(url + "/?verdict=fail")
        assert browser.find_element(By.TAG_NAME, "h1").text == "工作列表"
        badges = {b.text for b in browser.find_elements(By.CSS_SELECTOR, "#worklist .badge")}
        assert badges == {"不合格"}
        _shot(browser, "worklist_zh", tmp_path)
