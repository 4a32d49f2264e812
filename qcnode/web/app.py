"""The dashboard application: server-rendered pages over the node's database.

Everything is read-only except ``POST /node/outbox/{id}/retry`` (auth + form token). Route
handlers are plain ``def`` so FastAPI runs the blocking database calls in its thread pool.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import StreamingResponse

from qcnode import __version__
from qcnode.config import Settings
from qcnode.errors import QcnodeError
from qcnode.records import STRUCTURES, Family, Verdict, View
from qcnode.web import charts, overlay, queries
from qcnode.web.auth import AuthPolicy
from qcnode.web.csvexport import STATS_TABLES, stats_table, stream_csv, stream_table
from qcnode.web.i18n import label, translator
from qcnode.web.metrics import MetricsSnapshot, build_registry
from qcnode.web.viewmodels import WorklistFilter

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
OPEN_PATHS = ("/healthz", "/static/")
# A stored image never changes under its SOP Instance UID; a re-run replaces the masks.
IMAGE_CACHE = {"Cache-Control": "private, max-age=300"}


class _AuthMiddleware(BaseHTTPMiddleware):
    """Every path except /healthz and /static needs credentials when auth is enabled."""

    def __init__(self, app: Any, *, policy: AuthPolicy, realm: str) -> None:
        super().__init__(app)
        self._policy = policy
        self._realm = realm

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if (
            self._policy.enabled
            and not path.startswith(OPEN_PATHS)
            and not self._policy.allows(request.headers.get("authorization"))
        ):
            return Response(
                "authentication required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": f'Basic realm="{self._realm}", charset="UTF-8"'},
            )
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def _actor(request: Request) -> str:
    """Who pressed the button, for the audit log: the basic-auth user name or "token"."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode("utf-8").partition(":")[0][:64] or "basic"
        except (binascii.Error, UnicodeDecodeError):
            return "basic"
    return "token" if scheme.lower() == "bearer" else "local"


def create_app(
    settings: Settings,
    *,
    engine_or_session_factory: Engine | sessionmaker[Session],
) -> FastAPI:
    """Build the dashboard for ``settings`` over an existing engine or session factory.

    Raises ConfigError when the web binds to a non-loopback address without credentials.
    The app never creates or migrates tables; the node does (``qcnode db upgrade``).
    """
    policy = AuthPolicy.from_settings(settings)
    sessions = (
        engine_or_session_factory
        if isinstance(engine_or_session_factory, sessionmaker)
        else sessionmaker(engine_or_session_factory, expire_on_commit=False)
    )
    t = translator(settings.language)
    form_secret = secrets.token_urlsafe(32)  # per process: guards the one POST against CSRF

    @contextmanager
    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s

    def snapshot() -> MetricsSnapshot:
        with session() as s:
            return queries.metrics_snapshot(s)

    registry = build_registry(snapshot)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        t=t,
        label=label(settings.language),
        lang=settings.language,
        version=__version__,
        Family=Family,
        Verdict=Verdict,
        View=View,
        STRUCTURES=STRUCTURES,
        COLOURS=overlay.STRUCTURE_COLOURS,
        auth_enabled=policy.enabled,
    )
    templates.env.filters["fmt"] = _fmt_number
    templates.env.filters["ts"] = lambda d: "" if d is None else d.strftime("%Y-%m-%d %H:%M:%S")

    app = FastAPI(title="qcnode dashboard", version=__version__, docs_url=None, redoc_url=None)
    app.add_middleware(_AuthMiddleware, policy=policy, realm="qcnode")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.settings = settings
    app.state.registry = registry

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context)

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request) -> HTMLResponse:
        f = WorklistFilter.from_query(request.query_params)
        with session() as s:
            result = queries.worklist(s, f)
            options = queries.filter_options(s)
        return page(request, "worklist.html", f=f, result=result, options=options)

    @app.get("/worklist.csv")
    def worklist_csv(request: Request) -> StreamingResponse:
        f = WorklistFilter.from_query(request.query_params)

        def body() -> Iterator[str]:
            with session() as s:
                yield from stream_csv(queries.iter_worklist(s, f))

        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="qcnode-worklist.csv"'},
        )

    @app.get("/image/{sop}", response_class=HTMLResponse)
    def image(request: Request, sop: str) -> HTMLResponse:
        with session() as s:
            detail = queries.image_detail(s, sop)
        if detail is None:
            raise HTTPException(404, "no such image")
        masks: list[str] = []
        mask_file = _inside(detail.masks_path)
        if mask_file is not None:
            masks = [n for n in STRUCTURES if n in _masks(mask_file)]
        return page(
            request,
            "image.html",
            d=detail,
            masks=masks,
            destinations=[f"{d.ae_title}@{d.host}:{d.port}" for d in settings.destinations],
        )

    @lru_cache(maxsize=16)
    def _png(path: Path, mtime_ns: int) -> bytes:
        return overlay.render_image(path)

    @lru_cache(maxsize=16)
    def _masks_cached(path: Path, mtime_ns: int) -> dict[str, Any]:
        return {k: m for k, m in overlay.load_masks(path).items() if m.any()}

    def _masks(path: Path) -> dict[str, Any]:
        """Non-empty stored masks; cached, since one page load asks for each structure."""
        return _masks_cached(path, path.stat().st_mtime_ns)

    def _inside(rel: str | None) -> Path | None:
        """A stored file under data_dir, or None (missing, or a path that escapes data_dir)."""
        if not rel:
            return None
        path = (settings.data_dir / rel).resolve()
        if not path.is_relative_to(settings.data_dir.resolve()) or not path.is_file():
            return None
        return path

    @app.get("/image/{sop}/image.png")
    def image_png(sop: str) -> Response:
        with session() as s:
            rel = queries.stored_path(s, sop)
        if rel is None:
            raise HTTPException(404, "no such image")
        path = _inside(rel)
        if path is None:
            raise HTTPException(410, "the stored file is gone")
        try:
            data = _png(path, path.stat().st_mtime_ns)
        except QcnodeError as exc:
            raise HTTPException(422, f"cannot decode the stored image: {exc}") from exc
        return Response(data, media_type="image/png", headers=IMAGE_CACHE)

    @app.get("/image/{sop}/mask/{structure}.png")
    def mask_png(sop: str, structure: str) -> Response:
        if structure not in STRUCTURES:
            raise HTTPException(404, "no such structure")
        with session() as s:
            path = _inside(queries.masks_path(s, sop))
        if path is None:
            raise HTTPException(404, "no masks stored")
        masks = _masks(path)
        if structure not in masks:
            raise HTTPException(404, "structure not in the stored masks")
        return Response(
            overlay.render_mask(masks[structure], structure),
            media_type="image/png",
            headers=IMAGE_CACHE,
        )

    @app.get("/stats", response_class=HTMLResponse)
    def stats(request: Request) -> HTMLResponse:
        f = WorklistFilter.from_query(request.query_params)
        bucket = _bucket(request.query_params.get("bucket"))
        with session() as s:
            st = queries.statistics(s, f, bucket=bucket)
            options = queries.filter_options(s)
        top_rules = [r.label for r in st.rule_totals if r.failed][:8]
        fam_chart = charts.line_chart(
            st.buckets,
            {t(f"family.{k}"): [c.rate for c in v] for k, v in st.by_family.items()},
            title=t("stats.by_family"),
        )
        rule_chart = charts.line_chart(
            st.buckets,
            {r: [c.rate for c in st.by_rule[r]] for r in top_rules},
            title=t("stats.by_rule"),
        )

        def bars(groups: Any) -> Any:
            return charts.bar_chart(
                [charts.Bar(g.label, g.rate, g.failed, g.total) for g in groups[:30]],
                title="",
            )

        return page(
            request,
            "stats.html",
            f=f,
            st=st,
            bucket=bucket,
            options=options,
            fam_chart=fam_chart,
            rule_chart=rule_chart,
            station_chart=bars(st.by_station),
            operator_chart=bars(st.by_operator),
        )

    @app.get("/stats.csv")
    def stats_csv(request: Request) -> StreamingResponse:
        f = WorklistFilter.from_query(request.query_params)
        table = request.query_params.get("table", "station")
        if table not in STATS_TABLES:
            raise HTTPException(404, f"table is one of {', '.join(STATS_TABLES)}")
        bucket = _bucket(request.query_params.get("bucket"))
        with session() as s:
            header, rows = stats_table(queries.statistics(s, f, bucket=bucket), table)
        return StreamingResponse(
            stream_table(header, rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="qcnode-{table}.csv"'},
        )

    @app.get("/node", response_class=HTMLResponse)
    def node(request: Request) -> HTMLResponse:
        with session() as s:
            state = queries.node_state(s)
        return page(
            request,
            "node.html",
            state=state,
            form_token=form_secret,
            retried=request.query_params.get("retried"),
        )

    @app.post("/node/outbox/{outbox_id}/retry")
    def retry(request: Request, outbox_id: int, form_token: str = Form("")) -> Response:
        if not hmac.compare_digest(form_token.encode(), form_secret.encode()):
            raise HTTPException(403, "stale or missing form token; reload the page")
        with session() as s:
            ok = queries.retry_dead_letter(s, outbox_id, actor=_actor(request))
        if not ok:
            raise HTTPException(409, "not a dead letter (already retried or delivered?)")
        log.info("outbox retry requested", extra={"outbox_id": outbox_id})
        return RedirectResponse(f"/node?retried={outbox_id}", status_code=303)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with session() as s:
                queries.ping(s)
        except SQLAlchemyError as exc:
            log.warning("healthz: database unavailable: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    return app


def _bucket(value: str | None) -> str:
    return value if value in ("day", "week", "month") else "day"


def _fmt_number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}"
