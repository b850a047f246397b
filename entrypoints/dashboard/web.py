"""The dashboard's ASGI application (Starlette): pages, the two dead-letter actions, login and static files.

Every page is a whole HTML document that works without JavaScript; ``static/dashboard.js`` refreshes the page's
``<main>`` every few seconds by asking for the same URL with ``X-Hexq-Fragment: 1``, which answers the content
alone. Broker calls block, so they run in Starlette's thread pool. Writes go through ``_write``, which applies
every rule of ``security.py`` before anything is changed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from hexq.core.errors import BrokerError
from hexq.entrypoints.dashboard.chart import throughput_chart
from hexq.entrypoints.dashboard.data import DashboardData
from hexq.entrypoints.dashboard.security import SESSION_COOKIE, SESSION_SECONDS, Guard

log = logging.getLogger("hexq.dashboard")

REFRESH_MS = 2000
FRAGMENT_HEADER = "x-hexq-fragment"
# What the pages may load: only this dashboard's own files. An injected <script> is escaped anyway; this is the
# second line of defence.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Results of an action, shown after the redirect; the query names one of these, never free text.
NOTICES = {
    "requeued": "Requeued {n} dead letter(s).",
    "deleted": "Deleted {n} dead letter(s).",
    "nothing": "Nothing was selected.",
    "logged_in": "Logged in: requeue and delete are enabled.",
    "logged_out": "Logged out.",
    "bad_token": "That is not the dashboard's token.",
    "cancelled": "Cancelled: the task was removed before it ran.",
    "cancelling": "Cancelling: its worker has been told to stop it.",
    "finished": "The task had already finished: nothing was done.",
    "unknown": "No such task: nothing was done.",
    "purged": "Deleted {n} pending and scheduled task(s) from the queue.",
}

Handler = Callable[[Request], Awaitable[Response]]


def _environment() -> jinja2.Environment:
    # autoescape=True for every template: everything a task carries is rendered as text.
    env = jinja2.Environment(loader=jinja2.PackageLoader("hexq.entrypoints.dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env


class Dashboard:
    def __init__(self, data: DashboardData, guard: Guard, title: str = "hexq") -> None:
        self.data = data
        self.guard = guard
        self.title = title
        self.env = _environment()

    # -- rendering ---------------------------------------------------------------------------------------
    def _session(self, request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie if self.guard.session_valid(cookie, self.data.now()) else None

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = self._session(request)
        notice = NOTICES.get(request.query_params.get("notice", ""), "")
        count = request.query_params.get("n", "")
        base = {
            "request": request, "page": "", "failed": False, "title": self.title, "broker_url": self.data.broker_url,
            "fragment": request.headers.get(FRAGMENT_HEADER) == "1", "refresh_ms": REFRESH_MS,
            "read_only": self.guard.read_only, "has_token": self.guard.token is not None,
            "can_write": self.guard.writes_possible and session is not None,
            "csrf": self.guard.csrf_for(session) if session is not None and self.guard.token else "",
            "notice": notice.format(n=int(count) if count.isdigit() else 0),
            "url": lambda name, **params: _url(request, name, **params),
        }
        html = self.env.get_template(template).render({**base, **context})
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def _read(self, request: Request, template: str, reader: Callable[[], dict[str, Any]]) -> Response:
        try:
            context = await run_in_threadpool(reader)
        except BrokerError as exc:
            return self.render(request, "error.html", status=503, message=f"{type(exc).__name__}: {exc}")
        return self.render(request, template, **context)

    # -- pages -------------------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            overview = self.data.overview()
            history = self.data.history()
            return {"page": "overview", "overview": overview, "chart": throughput_chart(history),
                    "rates": self.data.rates()}
        return await self._read(request, "overview.html", read)

    async def workers(self, request: Request) -> Response:
        return await self._read(request, "workers.html", lambda: {
            "page": "workers", "workers": self.data.workers(), "in_flight": self.data.in_flight()})

    async def dead(self, request: Request) -> Response:
        query = request.query_params.get("q", "")
        return await self._read(request, "dead.html", lambda: {"page": "dead", "dead": self.data.dead(query)})

    async def schedules(self, request: Request) -> Response:
        return await self._read(request, "schedules.html", lambda: {
            "page": "schedules", "schedules": self.data.schedules()})

    async def task(self, request: Request) -> Response:
        task_id = request.query_params.get("id", "").strip()
        if not task_id:
            return RedirectResponse(_url(request, "dead"), status_code=303)
        return await self._read(request, "task.html", lambda: {"page": "task", "task": self.data.task(task_id)})

    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", page="login")

    # -- writes ------------------------------------------------------------------------------------------
    def _refusal(self, request: Request, form: Any) -> str | None:
        """Why this POST may not write, or None. Checked in this order, before anything else is done."""
        if self.guard.read_only:
            return "this dashboard is read-only (started with --read-only): nothing can be changed from it"
        if self.guard.token is None:
            return ("this dashboard has no token, so it cannot change anything: start it with --token or "
                    "HEXQ_DASHBOARD_TOKEN")
        if not _same_origin(request):
            return "refused: the request came from another site (Origin or Sec-Fetch-Site)"
        if self.guard.bearer_valid(request.headers.get("authorization")):
            return None
        session = self._session(request)
        if session is None:
            return "refused: log in with the dashboard's token first"
        if not self.guard.csrf_valid(session, form.get("csrf")):
            return "refused: the form's CSRF token is missing or wrong (reload the page and try again)"
        return None

    async def _write(self, request: Request, action: Callable[[Any], Response]) -> Response:
        form = await request.form()
        refusal = self._refusal(request, form)
        if refusal is not None:
            log.warning("dashboard refused %s %s: %s", request.method, request.url.path, refusal)
            return PlainTextResponse(refusal, status_code=403, headers=SECURITY_HEADERS)
        try:
            return await run_in_threadpool(action, form)
        except BrokerError as exc:
            return PlainTextResponse(f"{type(exc).__name__}: {exc}", status_code=503, headers=SECURITY_HEADERS)

    def _selection(self, form: Any) -> list[str] | None:
        """None means every dead letter (``all=1``); otherwise the ticked ids."""
        if form.get("all") == "1":
            return None
        return [str(task_id) for task_id in form.getlist("id") if str(task_id)]

    async def requeue(self, request: Request) -> Response:
        def act(form: Any) -> Response:
            ids = self._selection(form)
            if ids == []:
                return self._back(request, form, "nothing")
            return self._back(request, form, "requeued", self.data.requeue(ids))
        return await self._write(request, act)

    async def delete(self, request: Request) -> Response:
        def act(form: Any) -> Response:
            ids = self._selection(form)
            if ids == []:
                return self._back(request, form, "nothing")
            return self._back(request, form, "deleted", self.data.delete(ids))
        return await self._write(request, act)

    async def cancel(self, request: Request) -> Response:
        def act(form: Any) -> Response:
            task_id = str(form.get("id", ""))
            found = self.data.cancel(task_id)
            log.info("dashboard: cancel %s: %s", task_id, found.value)
            return RedirectResponse(_url(request, "task", id=task_id, notice=found.value), status_code=303)
        return await self._write(request, act)

    async def purge(self, request: Request) -> Response:
        def act(form: Any) -> Response:
            queue = str(form.get("queue", ""))
            if queue not in self.data.app.queues.names:
                return PlainTextResponse(f"unknown queue {queue!r}", status_code=400, headers=SECURITY_HEADERS)
            count = self.data.purge(queue)
            log.info("dashboard: purged %d task(s) from queue %s", count, queue)
            return RedirectResponse(_url(request, "overview", notice="purged", n=str(count)), status_code=303)
        return await self._write(request, act)

    def _back(self, request: Request, form: Any, notice: str, count: int = 0) -> Response:
        log.info("dashboard: %s %d dead letter(s)", notice, count)
        query = str(form.get("q", ""))
        return RedirectResponse(_url(request, "dead", notice=notice, n=str(count), **({"q": query} if query else {})),
                                status_code=303)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if self.guard.token is None or self.guard.read_only:
            return PlainTextResponse("this dashboard cannot be logged into: it has no token or is read-only",
                                     status_code=403, headers=SECURITY_HEADERS)
        if not _same_origin(request):
            return PlainTextResponse("refused: the request came from another site", status_code=403,
                                     headers=SECURITY_HEADERS)
        if not self.guard.token_matches(str(form.get("token", ""))):
            log.warning("dashboard: a login with a wrong token from %s", request.client.host if request.client else "?")
            return self.render(request, "login.html", status=403, page="login", failed=True)
        response = RedirectResponse(_url(request, "overview", notice="logged_in"), status_code=303)
        response.set_cookie(SESSION_COOKIE, self.guard.new_session(self.data.now()), max_age=SESSION_SECONDS,
                            path=_cookie_path(request), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(_url(request, "overview", notice="logged_out"), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request))
        return response

    # -- the application ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview, name="overview"),
            Route("/workers", self.workers, name="workers"),
            Route("/dead", self.dead, name="dead"),
            Route("/schedules", self.schedules, name="schedules"),
            Route("/task", self.task, name="task"),
            Route("/login", self.login_form, name="login_form", methods=["GET"]),
            Route("/login", self.login, name="login", methods=["POST"]),
            Route("/logout", self.logout, name="logout", methods=["POST"]),
            Route("/dead/requeue", self.requeue, name="requeue", methods=["POST"]),
            Route("/dead/delete", self.delete, name="delete", methods=["POST"]),
            Route("/task/cancel", self.cancel, name="cancel", methods=["POST"]),
            Route("/queue/purge", self.purge, name="purge", methods=["POST"]),
            Route("/static/{name}", _static, name="static"),
        ]

    def asgi(self) -> Starlette:
        return Starlette(routes=self.routes())


STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


@cache
def _static_file(name: str) -> bytes:
    return files("hexq.entrypoints.dashboard").joinpath("static").joinpath(name).read_bytes()


async def _static(request: Request) -> Response:
    """The two files the pages load, from the package (no CDN: the dashboard works on a closed network)."""
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return PlainTextResponse("not found", status_code=404)
    return Response(_static_file(name), media_type=STATIC_TYPES[name],
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


# Route name -> path, relative to wherever the dashboard is mounted (scope["root_path"]).
PATHS = {"overview": "/", "workers": "/workers", "dead": "/dead", "schedules": "/schedules", "task": "/task",
         "login_form": "/login", "login": "/login", "logout": "/logout", "requeue": "/dead/requeue",
         "delete": "/dead/delete", "cancel": "/task/cancel", "purge": "/queue/purge", "static": "/static/"}


def _url(request: Request, name: str, **params: str) -> str:
    """A path to one of the dashboard's routes, under whatever prefix it is mounted at (built here rather than
    with ``url_for``, whose names change when the host application names its mount)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    if name == "static":
        return f"{root}{PATHS['static']}{params.pop('path')}"
    path = root + PATHS[name]
    return f"{path}?{urlencode(params)}" if params else path


def _cookie_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") or "/"


def _same_origin(request: Request) -> bool:
    """False for a request a browser says came from another site. Requests with neither header (scripts,
    older browsers) pass this check and still need the session and CSRF field, or the bearer token."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
