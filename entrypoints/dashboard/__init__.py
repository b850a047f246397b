"""The web dashboard (``pip install 'hexq[dashboard]'``): ``hexq dashboard --app=...``, or ``create_app`` to
mount it inside a FastAPI, Starlette or Django (ASGI) site. It reads and acts only through the broker's ports
(Inspection, Administration, CronStore, and ``lookup``), so it works the same on every broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hexq.core.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from hexq.entrypoints.app import HexQ

EXTRA_HINT = "the dashboard needs Starlette and Jinja2, which are not installed: pip install 'hexq[dashboard]'"


def create_app(app: HexQ, *, token: str | None = None, read_only: bool = False, title: str = "hexq") -> Starlette:
    """The dashboard of ``app`` as an ASGI application.

    ``token`` (else the ``HEXQ_DASHBOARD_TOKEN`` environment variable) enables requeue and delete for whoever
    logs in with it; without one, or with ``read_only=True``, the dashboard changes nothing. Mount it under any
    path, e.g. ``Mount("/hexq", app=create_app(app, token=...))`` in Starlette or
    ``fastapi_app.mount("/hexq", create_app(app))``.
    """
    try:
        from hexq.entrypoints.dashboard.data import DashboardData
        from hexq.entrypoints.dashboard.security import Guard, resolve_token
        from hexq.entrypoints.dashboard.web import Dashboard
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in {"starlette", "jinja2", "markupsafe", "multipart", "python_multipart"}:
            raise ConfigError(EXTRA_HINT) from None
        raise
    return Dashboard(DashboardData(app), Guard(resolve_token(token), read_only), title).asgi()
