"""The dashboard (issue 7): worklist, image page with overlays, statistics, node pages,
``/metrics`` and ``/healthz``; server-rendered (FastAPI + Jinja2), no front-end build.

Contract with the node (``qcnode serve`` starts uvicorn with this app on ``--web-port``)::

    from qcnode.web import create_app
    app = create_app(settings, engine_or_session_factory=engine)   # Engine or sessionmaker
    uvicorn.Server(uvicorn.Config(app, host=settings.web_bind, port=settings.web_port))

- ``settings``: the frozen Settings; the app reads ``language``, ``data_dir`` (stored files),
  ``destinations``, ``web_bind``, ``web_token``, ``web_user`` / ``web_password``.
- The app only reads the tables of qcnode.db (the one write: an outbox dead-letter retry,
  plus its audit event). It never creates or migrates tables. For SQLite pass an engine from
  ``qcnode.db.make_engine(settings, readonly=True)`` so page loads never take the write lock.
- ``create_app`` raises ``ConfigError`` when ``web_bind`` is not a loopback address and no
  credentials are configured: access control is off only on localhost.
"""

from qcnode.web.app import create_app

__all__ = ["create_app"]
