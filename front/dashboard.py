"""``hexq.dashboard.create_app(app, token=..., read_only=...)``: the web dashboard as an ASGI app to mount in a
FastAPI, Starlette or Django (ASGI) site (``pip install 'hexq[dashboard]'``)."""

from hexq.entrypoints.dashboard import create_app

__all__ = ["create_app"]
