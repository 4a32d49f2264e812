"""Dashboard API tests over a real uvicorn and a real SQLite database in the node's schema."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, select
from web_seed import CASES, seed

from qcnode import db
from qcnode.config import Settings
from qcnode.errors import ConfigError
from qcnode.records import STRUCTURES
from qcnode.web import create_app
from qcnode.web.auth import AuthPolicy, is_loopback
from qcnode.web.charts import Bar, bar_chart, line_chart
from qcnode.web.i18n import LANGUAGES, missing_keys
from qcnode.web.overlay import STRUCTURE_COLOURS, render_mask
from qcnode.web.server import serving as running

TOKEN = "s3cret-token"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, list[str]]]:
    """The node's schema (real Alembic migrations) on SQLite and on PostgreSQL, seeded."""
    data_dir = tmp_path_factory.mktemp("node")
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database("qcnode_web")
    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        web_token=TOKEN,
        web_user="lead",
        web_password="pw",
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    uids = seed(db.make_sessions(engine), data_dir)
    engine.dispose()
    yield settings, uids


@pytest.fixture(scope="module")
def client(node: tuple[Settings, list[str]]) -> Iterator[httpx.Client]:
    settings, _ = node
    app = create_app(settings, engine_or_session_factory=db.make_engine(settings, readonly=True))
    with (
        running(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c,
    ):
        yield c


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- access control ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("[::]", False),
    ],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_auth_off_only_on_localhost() -> None:
    assert not AuthPolicy.from_settings(Settings(web_bind="127.0.0.1")).enabled
    with pytest.raises(ConfigError, match="not localhost"):
        AuthPolicy.from_settings(Settings(web_bind="0.0.0.0"))
    with pytest.raises(ConfigError, match="together"):
        AuthPolicy.from_settings(Settings(web_bind="127.0.0.1", web_user="x"))
    assert AuthPolicy.from_settings(Settings(web_bind="0.0.0.0", web_token="t")).enabled
    with pytest.raises(ConfigError):
        create_app(
            Settings(web_bind="0.0.0.0"), engine_or_session_factory=create_engine("sqlite://")
        )


def test_auth_policy_checks_credentials() -> None:
    p = AuthPolicy(token="tok", user="u", password="pw")
    assert p.allows("Bearer tok")
    assert p.allows(_basic("u", "pw"))
    assert p.allows(_basic("anyone", "tok"))  # browsers: the token as basic password
    for bad in (
        None,
        "",
        "Bearer nope",
        "Bearer",
        _basic("u", "nope"),
        _basic("x", "pw"),
        "Basic !!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Digest tok",
    ):
        assert not p.allows(bad), bad
    open_policy = AuthPolicy()
    assert open_policy.allows(None)


def test_http_auth(client: httpx.Client) -> None:
    url = str(client.base_url)
    with httpx.Client(base_url=url, timeout=30) as anon:
        for path in ("/", "/stats", "/node", "/metrics", "/worklist.csv", "/stats.csv"):
            r = anon.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Basic")
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/static/style.css").status_code == 200
        assert anon.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anon.get("/", headers={"Authorization": _basic("lead", "pw")}).status_code == 200
        assert anon.post("/node/outbox/1/retry", data={"form_token": "x"}).status_code == 401
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["x-frame-options"] == "DENY"


def test_healthz_reports_a_dead_database(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.sqlite'}")
    app = create_app(Settings(data_dir=tmp_path), engine_or_session_factory=engine)
    with running(app) as url:
        r = httpx.get(url + "/healthz")
    assert r.status_code == 503
    assert r.json()["database"] == "unavailable"


# --- worklist, filters, CSV ----------------------------------------------------------


def _index(verdict: str | None) -> int:
    return next(i for i, c in enumerate(CASES) if c.verdict == verdict)


def _page_uids(html: str) -> list[str]:
    return re.findall(r'<tr data-sop="([^"]+)"', html)


def _expected(node: tuple[Settings, list[str]], keep) -> list[str]:  # type: ignore[no-untyped-def]
    """SOP UIDs of the seeded cases that ``keep`` selects, newest received first."""
    _, uids = node
    chosen = [(c.day, i, uids[i]) for i, c in enumerate(CASES) if keep(c)]
    return [uid for *_, uid in sorted(chosen, reverse=True)]


FILTERS = [
    ({}, lambda c: True),
    ({"verdict": "fail"}, lambda c: c.verdict == "fail"),
    ({"verdict": "pending"}, lambda c: c.verdict is None),
    ({"family": "positioning"}, lambda c: any(r.startswith("positioning") for r, _ in c.failing)),
    (
        {"rule": "positioning.rotation"},
        lambda c: any(r == "positioning.rotation" for r, _ in c.failing),
    ),
    (
        {"rule": "positioning.rotation", "verdict": "warn"},
        lambda c: ("positioning.rotation", "warn") in c.failing,
    ),
    ({"view": "lateral"}, lambda c: c.view == "lateral" and c.verdict is not None),
    ({"station": "DR-ROOM-2"}, lambda c: c.station == "DR-ROOM-2"),
    ({"operator": "Li^Na"}, lambda c: c.operator == "Li^Na"),
    ({"manufacturer": "Globex"}, lambda c: c.manufacturer == "Globex"),
    ({"date_from": "2026-11-02", "date_to": "2026-11-03"}, lambda c: 1 <= c.day <= 2),
    (
        {"station": "DR-ROOM-1", "verdict": "fail"},
        lambda c: c.station == "DR-ROOM-1" and c.verdict == "fail",
    ),
]


@pytest.mark.parametrize(("params", "keep"), FILTERS)
def test_worklist_filters_and_csv_agree(client, node, params, keep) -> None:  # type: ignore[no-untyped-def]
    expected = _expected(node, keep)
    html = client.get("/", params=params).text
    assert _page_uids(html) == expected
    assert f'data-total="{len(expected)}"' in html
    r = client.get("/worklist.csv", params=params)
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["sop_instance_uid"] for row in rows] == expected


def test_csv_columns_and_values(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    _, uids = node
    rows = list(
        csv.DictReader(io.StringIO(client.get("/worklist.csv").content.decode("utf-8-sig")))
    )
    by_uid = {row["sop_instance_uid"]: row for row in rows}
    for i, case in enumerate(CASES):
        row = by_uid[uids[i]]
        assert row["verdict"] == (case.verdict or "pending")
        assert row["station_name"] == case.station
        assert row["operators_name"] == case.operator
        assert row["manufacturer"] == case.manufacturer
        flagged = set(filter(None, row["flagged_rules"].split(";")))
        assert flagged == {f"{r}={s}" for r, s in case.failing}


def test_paging(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    everything = _expected(node, lambda c: True)
    seen: list[str] = []
    url: str | None = "/?per_page=3"
    pages = 0
    while url:  # follow the "next" links as a user would
        html = client.get(url).text
        seen += _page_uids(html)
        pages += 1
        nxt = re.search(r'id="next" href="([^"]+)"', html)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert seen == everything
    assert pages == -(-len(CASES) // 3)


def test_bad_filter_values_are_ignored(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    html = client.get("/", params={"verdict": "bogus", "date_from": "nope", "page": "x"}).text
    assert len(_page_uids(html)) == len(CASES)


# --- image page ----------------------------------------------------------------------


def test_image_page_shows_findings_and_delivery(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    _, uids = node
    html = client.get(f"/image/{uids[1]}").text  # case 1: rotation failed, SR dead letter
    assert 'data-rule="positioning.rotation" data-status="fail"' in html
    assert "10 deg" in html and "5 deg" in html  # value 2x threshold, with the unit
    assert 'data-destination="PACS@127.0.0.1:4242" data-kind="sr" data-state="dead"' in html
    assert 'data-layer-id="finding-' in html and "<polyline" in html
    pending = client.get(f"/image/{uids[_index(None)]}").text
    assert 'data-verdict="pending"' in pending
    errored = client.get(f"/image/{uids[_index('error')]}").text
    assert 'data-verdict="error"' in errored and "cannot decode pixel data" in errored
    na = client.get(f"/image/{uids[_index('not_applicable')]}").text
    assert 'data-verdict="not_applicable"' in na and 'id="findings"' not in na
    assert client.get("/image/1.2.3.404").status_code == 404


def test_image_png_is_the_stored_image(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    _, uids = node
    r = client.get(f"/image/{uids[0]}/image.png")
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (160, 192) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels[96, 80] > pixels[96, 48]  # mediastinum brighter than the lung


def test_image_page_mask_layers(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    _, uids = node
    html = client.get(f"/image/{uids[0]}").text  # even cases carry masks: heart, lung, empty spine
    layers = re.findall(r'data-layer-id="mask-([a-z_]+)"', html)
    assert layers == ["lung_right", "heart"]  # STRUCTURES order; the empty spine is left out
    assert 'id="no-masks"' not in html
    r = client.get(f"/image/{uids[0]}/mask/heart.png")
    assert r.status_code == 200
    rgba = np.asarray(Image.open(io.BytesIO(r.content)))
    assert rgba.shape == (192, 160, 4)
    assert rgba[125, 95, 3] > 0 and rgba[10, 10, 3] == 0
    assert client.get(f"/image/{uids[0]}/mask/spine.png").status_code == 404
    assert client.get(f"/image/{uids[0]}/mask/nonsense.png").status_code == 404
    no_masks = client.get(f"/image/{uids[1]}").text
    assert 'id="no-masks"' in no_masks and 'data-layer-id="mask-' not in no_masks
    assert client.get(f"/image/{uids[1]}/mask/heart.png").status_code == 404


def test_render_mask_colours_structure() -> None:
    assert set(STRUCTURE_COLOURS) == set(STRUCTURES)
    mask = np.zeros((50, 40), bool)
    mask[10:30, 5:25] = True
    img = np.asarray(Image.open(io.BytesIO(render_mask(mask, "heart"))))
    assert img.shape == (50, 40, 4)
    assert img[0, 0, 3] == 0 and img[20, 15, 3] > 0 and img[10, 15, 3] == 255
    assert tuple(img[20, 15, :3]) == STRUCTURE_COLOURS["heart"]


# --- statistics ----------------------------------------------------------------------


def test_stats_per_station_and_operator_counts(client: httpx.Client) -> None:
    html = client.get("/stats").text
    checked = [c for c in CASES if c.verdict in ("pass", "warn", "fail")]
    assert f"{len(checked)}" in re.search(r'id="stats-total">([^<]+)<', html).group(1)  # type: ignore[union-attr]
    for key, table in (("station", "by-station"), ("operator", "by-operator")):
        body = html.split(f'id="{table}"')[1].split("</table>")[0]
        total = Counter(getattr(c, key) for c in checked)
        failed = Counter(getattr(c, key) for c in checked if c.verdict == "fail")
        for name, n in total.items():
            cells = re.search(
                rf">{re.escape(name)}</a></td><td class=\"num\">(\d+)</td>\s*"
                r'<td class="num">(\d+)<',
                body,
            )
            assert cells is not None, name
            assert (int(cells.group(1)), int(cells.group(2))) == (n, failed[name])
    for chart in ("chart-family", "chart-rule", "chart-station", "chart-operator"):
        svg = html.split(f'id="{chart}">')[1].split("</svg>")[0] + "</svg>"
        ET.fromstring(svg)  # well-formed SVG


def test_stats_filters_and_buckets(client: httpx.Client) -> None:
    html = client.get("/stats", params={"station": "DR-ROOM-3", "bucket": "month"}).text
    assert "DR-ROOM-1" not in html.split('id="by-station"')[1].split("</table>")[0]
    assert "2026-11" in html
    assert 'id="empty"' in client.get("/stats", params={"date_from": "2030-01-01"}).text


def test_charts_escape_and_scale() -> None:
    svg = line_chart(["d1", "d2", "d3"], {"<a&b>": [0.1, None, 0.3]}, title="t")
    root = ET.fromstring(str(svg))
    assert root.tag.endswith("svg")
    assert "&lt;a&amp;b&gt;" in svg
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 0  # gap splits line
    bars = ET.fromstring(str(bar_chart([Bar("R1", 0.5, 1, 2), Bar("R2", 0.0, 0, 3)], title="")))
    widths = [float(r.get("width", 0)) for r in bars.iter("{http://www.w3.org/2000/svg}rect")]
    assert max(widths) > 0 and 0.0 in widths


# --- node page, retry (the only write) -----------------------------------------------


def test_node_page_and_retry(client: httpx.Client, node) -> None:  # type: ignore[no-untyped-def]
    settings, _ = node
    html = client.get("/node").text
    dead = re.findall(r'<tr data-outbox="(\d+)"', html)
    assert len(dead) == 1
    row = html.split('<tr data-destination="PACS@127.0.0.1:4242">')[1].split("</tr>")[0]
    checked = [c for c in CASES if c.verdict in ("pass", "warn", "fail")]
    assert '<td class="num" data-state="dead">1</td>' in row
    assert f'<td class="num" data-state="sent">{len(checked) - 1}</td>' in row
    token = re.search(r'name="form_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert (
        client.post(f"/node/outbox/{dead[0]}/retry", data={"form_token": "forged"}).status_code
        == 403
    )
    r = client.post(f"/node/outbox/{dead[0]}/retry", data={"form_token": token})
    assert r.status_code == 303 and r.headers["location"] == f"/node?retried={dead[0]}"
    engine = db.make_engine(settings)
    with db.make_sessions(engine)() as s:
        ob = s.get(db.Outbox, int(dead[0]))
        assert ob is not None and ob.state == db.PENDING and ob.attempts == 0
        ev = s.scalars(select(db.AuditEvent).where(db.AuditEvent.kind == "outbox_retry")).one()
        assert ev.detail["actor"] == "token"
        ob.state, ob.attempts = db.DEAD, 10  # put it back for other tests
        s.delete(ev)
        s.commit()
    engine.dispose()
    r = client.post("/node/outbox/999999/retry", data={"form_token": token})
    assert r.status_code == 409


# --- /metrics ------------------------------------------------------------------------

METRIC_NAMES = (
    "qcnode_images_received_total",
    "qcnode_images_checked_total",
    "qcnode_findings_total",
    "qcnode_qc_duration_seconds_bucket",
    "qcnode_end_to_end_seconds_bucket",
    "qcnode_queue_depth",
    "qcnode_jobs",
    "qcnode_outbox_messages",
    "qcnode_outbox_retries_total",
)


def _samples(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_metrics_names_and_values(client: httpx.Client) -> None:
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    for name in METRIC_NAMES:
        assert any(k.startswith(name + "{") for k in samples), name
    checked = [c for c in CASES if c.verdict is not None]
    assert samples["qcnode_images_received_total{}"] == len(CASES)
    for verdict, n in Counter(c.verdict for c in checked).items():
        assert samples[f"qcnode_images_checked_total{{verdict={verdict}}}"] == n
    rot_fail = sum(("positioning.rotation", "fail") in c.failing for c in checked)
    key = "qcnode_findings_total{family=positioning,rule=positioning.rotation,status=fail}"
    assert samples[key] == rot_fail
    assert samples["qcnode_queue_depth{}"] == sum(c.verdict is None for c in CASES)
    assert samples["qcnode_qc_duration_seconds_count{}"] == len(checked)
    # seeded QC totals are 88 ms + i: all inside the 0.1 s bucket, none inside 0.05 s
    assert samples["qcnode_qc_duration_seconds_bucket{le=0.1}"] == len(checked)
    assert samples["qcnode_qc_duration_seconds_bucket{le=0.05}"] == 0
    # seeded results are stored 1.2 + i seconds after receipt
    assert samples["qcnode_end_to_end_seconds_count{}"] == len(checked)
    delays = [1.2 + i for i, c in enumerate(CASES) if c.verdict is not None]
    assert samples["qcnode_end_to_end_seconds_bucket{le=2.5}"] == sum(d < 2.5 for d in delays)
    assert samples["qcnode_end_to_end_seconds_bucket{le=10.0}"] == sum(d < 10 for d in delays)
    assert samples["qcnode_end_to_end_seconds_bucket{le=30.0}"] == len(delays)
    assert samples["qcnode_end_to_end_seconds_sum{}"] == pytest.approx(sum(delays), abs=0.01)
    assert samples["qcnode_outbox_retries_total{}"] == 9  # one dead letter after 10 attempts
    assert samples["qcnode_outbox_messages{state=dead}"] == 1


# --- language ------------------------------------------------------------------------


def test_languages_complete() -> None:
    for lang in LANGUAGES:
        assert missing_keys(lang) == set()


def test_chinese_pages(node) -> None:  # type: ignore[no-untyped-def]
    settings, uids = node
    zh = dataclasses.replace(settings, language="zh", web_token="", web_user="", web_password="")
    app = create_app(zh, engine_or_session_factory=db.make_engine(zh, readonly=True))
    with running(app) as url:
        html = httpx.get(url + "/", params={"verdict": "fail"}).text
        assert 'lang="zh-CN"' in html and "工作列表" in html and "不合格" in html
        assert "位置细节" in httpx.get(f"{url}/image/{uids[1]}").text
        assert "按设备站点" in httpx.get(url + "/stats").text


def test_markup_is_escaped(client: httpx.Client) -> None:
    html = client.get("/", params={"station": '"><script>alert(1)</script>'}).text
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html or "&#34;&gt;&lt;script" in html


def test_csv_cells_cannot_become_formulas() -> None:
    from qcnode.web.csvexport import row_values
    from qcnode.web.viewmodels import WorklistRow

    row = WorklistRow(
        sop_instance_uid="1.2.3",
        received_at=None,
        study_date=None,
        view="frontal",
        verdict="pass",
        families={},
        flagged=(),
        station='=HYPERLINK("http://x")',
        operator="+1",
        manufacturer="@SUM(A1)",
        view_position="PA",
    )
    values = row_values(row)
    assert '\'=HYPERLINK("http://x")' in values and "'+1" in values and "'@SUM(A1)" in values


def test_statistics_rates_per_day_and_week(node) -> None:  # type: ignore[no-untyped-def]
    from qcnode.web.queries import statistics
    from qcnode.web.viewmodels import WorklistFilter

    settings, _ = node
    checked = [c for c in CASES if c.verdict in ("pass", "warn", "fail")]

    def fam_status(c, fam: str) -> str:  # type: ignore[no-untyped-def]
        found = [st for rule, st in c.failing if rule.startswith(fam + ".")]
        return "fail" if "fail" in found else "warn" if "warn" in found else "pass"

    engine = db.make_engine(settings, readonly=True)
    with db.make_sessions(engine)() as s:
        daily = statistics(s, WorklistFilter(), bucket="day")
        weekly = statistics(s, WorklistFilter(), bucket="week")
        room1 = statistics(s, WorklistFilter(station="DR-ROOM-1"), bucket="day")
    engine.dispose()
    days = sorted({c.day for c in checked})
    assert daily.buckets == tuple(f"2026-11-{1 + d:02d}" for d in days)
    for fam in ("completeness", "positioning"):
        got = [(c.failed, c.total) for c in daily.by_family[fam]]
        want = [
            (
                sum(fam_status(c, fam) == "fail" for c in checked if c.day == d),
                sum(1 for c in checked if c.day == d),
            )
            for d in days
        ]
        assert got == want, fam
    rot = [(c.failed, c.total) for c in daily.by_rule["positioning.rotation"]]
    assert rot == [
        (
            sum(("positioning.rotation", "fail") in c.failing for c in checked if c.day == d),
            sum(1 for c in checked if c.day == d),
        )
        for d in days
    ]
    # 2026-11-01 is a Sunday: ISO week 44; the other days fall in week 45
    assert weekly.buckets == ("2026-W44", "2026-W45")
    assert sum(c.total for c in weekly.by_family["positioning"]) == len(checked)
    assert room1.total == sum(c.station == "DR-ROOM-1" for c in checked)
    assert [g.label for g in room1.by_station] == ["DR-ROOM-1"]


def test_stats_csv_tables(client: httpx.Client) -> None:
    checked = [c for c in CASES if c.verdict in ("pass", "warn", "fail")]

    def table(name: str, **params: str) -> list[dict[str, str]]:
        r = client.get("/stats.csv", params={"table": name, **params})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))

    stations = {row["station"]: row for row in table("station")}
    assert set(stations) == {c.station for c in checked}
    for name, row in stations.items():
        mine = [c for c in checked if c.station == name]
        assert int(row["images"]) == len(mine)
        assert int(row["failed"]) == sum(c.verdict == "fail" for c in mine)
        assert float(row["failure_rate"]) == pytest.approx(int(row["failed"]) / len(mine), abs=1e-4)
    operators = table("operator", station="DR-ROOM-2")
    assert {r["operator"] for r in operators} == {
        c.operator for c in checked if c.station == "DR-ROOM-2"
    }
    series = table("family_time", bucket="day")
    assert {r["family"] for r in series} >= {"completeness", "positioning"}
    assert sum(int(r["total"]) for r in series if r["family"] == "positioning") == len(checked)
    assert {r["rule"] for r in table("rule")} == {
        "completeness.apices",
        "completeness.collimation",
        "positioning.rotation",
        "positioning.scapulae",
        "exposure.deviation_index",
    }
    assert client.get("/stats.csv", params={"table": "bogus"}).status_code == 404
