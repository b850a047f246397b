"""The dashboard over HTTP (Starlette's TestClient, no browser): every page, and each security rule.

The app runs on an SQLite file of the test's own, filled through hexq itself (``.delay()``, the broker's
``dead_letter``), so the pages show what a worker would leave behind. The browser tests
(``tests/integration/test_dashboard_browser.py``) run the same pages against real workers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from hexq import CronTask, HexQ
from hexq.adapters.redis.broker import RedisBroker
from hexq.core.message import TaskMessage
from hexq.core.ports import MinuteTally
from hexq.core.rules import minute_of
from hexq.dashboard import create_app
from hexq.entrypoints import cli
from hexq.entrypoints.dashboard.security import SESSION_COOKIE, TOKEN_ENV

TOKEN = "a-long-enough-dashboard-token"
EVIL = "<script>window.hexqPwned = 1</script>"


def build_app(url: str, **kwargs: Any) -> HexQ:
    app = HexQ(queues=["high", "default"], url=url,
               schedules=[CronTask("*/5 * * * *", "work", queue="high")], **kwargs)

    @app.task
    def work(text: str) -> None:
        return None

    return app


@pytest.fixture
def app(tmp_path: Path) -> HexQ:
    return build_app(f"sqlite:///{tmp_path}/hexq.db")


def bury(app: HexQ, task_id: str, args: tuple[Any, ...], reason: str, at_ms: int = 1_700_000_000_000,
         traceback: str = "") -> None:
    """A dead letter as a worker writes one: the task's payload, the reason and the failure's traceback."""
    payload = app.codec.encode(TaskMessage(task_id, "work", "default", args, {}, enqueued_at=at_ms / 1000))
    app.broker.dead_letter("w.0.1", task_id, "default", payload, reason, at_ms, traceback=traceback)


def client_for(app: HexQ, **options: Any) -> TestClient:
    return TestClient(create_app(app, **options), base_url="http://127.0.0.1:8080")


def logged_in(app: HexQ, **options: Any) -> TestClient:
    client = client_for(app, token=TOKEN, **options)
    response = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303 and SESSION_COOKIE in response.cookies
    return client


def csrf_of(client: TestClient, path: str = "/dead") -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert found, "no CSRF field on the page"
    return found.group(1)


# -- pages ---------------------------------------------------------------------------------------------------
def test_every_page_shows_what_the_broker_holds(app: HexQ) -> None:
    work = app.registry.get("work")
    ids = [app.enqueue_many([_call(app, work.name, "hello")])[0] for _ in range(3)]
    bury(app, "dead-1", ("x",), "raised ValueError: boom")
    app.broker.heartbeat("host.1.abc", '{"host": "host", "pid": 1, "children": [2, 3], "queues": ["high"], '
                                       '"rss": 52428800, "done": 7, "failed": 1}', int(app.clock.now() * 1000))
    client = client_for(app)

    overview = client.get("/")
    assert overview.status_code == 200
    assert re.search(r'<tr data-queue="default">.*?class="num pending">3<', overview.text, re.S)
    assert 'id="total-dead">1<' in overview.text and 'id="chart-throughput"' in overview.text

    workers = client.get("/workers").text
    assert "host.1.abc" in workers and "50.0 MiB" in workers and ">7<" in workers

    dead = client.get("/dead").text
    assert "dead-1" in dead and "raised ValueError: boom" in dead and "[&#39;x&#39;]" in dead

    schedules = client.get("/schedules").text
    assert "*/5 * * * *" in schedules and "never" in schedules and "high" in schedules

    task = client.get("/task", params={"id": ids[0]}).text
    assert 'id="task-state">queued<' in task and "[&#39;hello&#39;]" in task
    assert 'id="task-state">dead<' in client.get("/task", params={"id": "dead-1"}).text
    assert 'id="task-state">unknown<' in client.get("/task", params={"id": "nope"}).text


def _call(app: HexQ, name: str, *args: Any) -> Any:
    from hexq.entrypoints.app import Call, Task

    return Call(Task(app, app.registry.get(name)), args, {})


def test_the_overview_charts_the_workers_per_minute_counters(app: HexQ) -> None:
    now_ms = int(app.clock.now() * 1000)
    minute = minute_of(now_ms)
    app.broker.heartbeat("w", "{}", now_ms - 120_000, MinuteTally(minute - 120_000, done={"default": 30}))
    app.broker.heartbeat("w", "{}", now_ms, MinuteTally(minute, done={"default": 12, "high": 3},
                                                         failed={"default": 2}, pending={"default": 5}))
    page = client_for(app).get("/").text
    assert re.search(r'data-series="done" data-points="60" data-total="45"', page)
    assert re.search(r'data-series="failed" data-points="60" data-total="2"', page)
    assert re.search(r'data-series="pending" data-points="1" data-total="5"', page)  # one minute sampled
    assert re.search(r'<tr data-queue="default">.*?class="num done">12<.*?class="num failed">2<', page, re.S)


def test_a_task_page_shows_the_kept_result_or_error_with_its_traceback() -> None:
    app = HexQ(queues=["default"], url="memory://", keep_result=600, max_retries=0)

    @app.task
    def adds(x: int, y: int) -> dict[str, Any]:
        return {"sum": x + y, "note": EVIL}

    @app.task
    def breaks(text: str) -> None:
        raise ValueError(text)

    good, bad = adds.delay(1, 2), breaks.delay(EVIL)
    client = client_for(app)
    page = client.get("/task", params={"id": good}).text
    assert 'id="task-state">succeeded<' in page and "&#39;sum&#39;: 3" in page
    page = client.get("/task", params={"id": bad}).text
    assert 'id="outcome-error">ValueError: &lt;script&gt;' in page
    assert re.search(r'id="outcome-traceback">Traceback \(most recent call last\):.*in breaks', page, re.S)
    assert "<script>window" not in page


def test_dead_letters_show_their_traceback_folded_without_keep_result() -> None:
    app = HexQ(queues=["default"], url="memory://", max_retries=0)  # no keep_result: no outcome kept

    @app.task
    def breaks(text: str) -> None:
        raise ValueError(text)

    bad = breaks.delay("bad input")
    client = client_for(app)
    dead = client.get("/dead").text
    # Folded in a <details> (opens without JavaScript), under the one-line reason.
    assert re.search(r'raised ValueError: bad input<details class="traceback"><summary>traceback</summary>'
                     r'<pre>Traceback \(most recent call last\):.*in breaks.*ValueError: bad input\n</pre></details>',
                     dead, re.S)
    task = client.get("/task", params={"id": bad}).text
    assert 'id="task-state">dead<' in task and "outcome-traceback" not in task  # no kept outcome
    assert re.search(r'<details class="traceback" open><summary>traceback</summary><pre class="dead-traceback">'
                     r'Traceback \(most recent call last\):.*in breaks', task, re.S)


def test_a_dead_letter_without_a_traceback_shows_no_fold(app: HexQ) -> None:
    bury(app, "hard", (1,), "hard timeout; gave up after 0 retries (max_retries=0)")
    for path in ("/dead", "/task?id=hard"):
        page = client_for(app).get(path).text
        assert "hard timeout; gave up" in page and 'class="traceback"' not in page, path


def test_a_fragment_request_answers_the_content_alone(app: HexQ) -> None:
    client = client_for(app)
    whole = client.get("/dead").text
    part = client.get("/dead", headers={"X-Hexq-Fragment": "1"}).text
    assert whole.startswith("<!doctype html>") and "<h1>Dead letters" in whole
    assert "<html" not in part and "<h1>Dead letters" in part


def test_search_by_task_id(app: HexQ) -> None:
    bury(app, "abc", (1,), "first")
    bury(app, "abcd", (2,), "second")
    page = client_for(app).get("/dead", params={"q": "abc"}).text
    assert 'data-id="abc"' in page and 'data-id="abcd"' not in page
    assert "No dead letter has the id zzz" in client_for(app).get("/dead", params={"q": "zzz"}).text


def test_the_static_files_come_from_the_package(app: HexQ) -> None:
    client = client_for(app)
    assert "refresh" in client.get("/static/dashboard.js").text
    assert client.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../data.py").status_code == 404
    assert client.get("/static/data.py").status_code == 404


def test_mounted_under_a_prefix_every_link_and_form_keeps_it(app: HexQ) -> None:
    bury(app, "d1", (1,), "r")
    site = Starlette(routes=[Mount("/ops/hexq", app=create_app(app, token=TOKEN))])
    client = TestClient(site, base_url="http://127.0.0.1")
    response = client.post("/ops/hexq/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.headers["location"].startswith("/ops/hexq/")
    assert "Path=/ops/hexq" in response.headers["set-cookie"]
    page = client.get("/ops/hexq/dead").text
    links = re.findall(r'(?:href|action|src)="([^"]+)"', page)
    assert links and all(link.startswith("/ops/hexq/") for link in links), links
    assert client.get("/ops/hexq/static/dashboard.css").status_code == 200


# -- escaping ------------------------------------------------------------------------------------------------
def test_task_arguments_reasons_and_tracebacks_are_rendered_as_text(app: HexQ) -> None:
    reason = f"raised ValueError: {EVIL}\n\nTraceback (most recent call last):\n  {EVIL}"
    traceback = f'Traceback (most recent call last):\n  File "evil.py", line 1, in work\nValueError: {EVIL}\n'
    bury(app, "evil", (EVIL, {"k": EVIL}), reason, traceback=traceback)
    client = client_for(app)
    for path in ("/dead", "/task?id=evil", "/dead?q=evil"):
        page = client.get(path).text
        assert "<script>window" not in page, path
        assert "&lt;script&gt;window.hexqPwned = 1&lt;/script&gt;" in page, path
        assert "ValueError: &lt;script&gt;window.hexqPwned = 1&lt;/script&gt;\n</pre></details>" in page, path
    # An id is shown, linked and searched for as text too.
    bury(app, '"><img src=x onerror=alert(1)>', (1,), "r")
    page = client.get("/dead").text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_pages_forbid_inline_scripts_and_framing(app: HexQ) -> None:
    headers = client_for(app).get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_the_redis_password_never_appears_in_a_page() -> None:
    server = fakeredis.FakeServer()
    url = "redis://:sup3rsecretpw@localhost:6379/0"
    app = build_app(url, broker=RedisBroker(fakeredis.FakeRedis(server=server, decode_responses=True), "hexq"))
    bury(app, "d1", (1,), "r")
    # A worker writes the broker's URL into its heartbeat, redacted; a careless one might not.
    app.broker.heartbeat("w", '{"host": "h", "pid": 1, "broker": "redis://:***@localhost:6379/0"}', 0)
    client = client_for(app)
    for path in ("/", "/workers", "/dead", "/schedules", "/task?id=d1", "/login"):
        page = client.get(path).text
        assert "sup3rsecretpw" not in page, path
    assert "redis://:***@localhost:6379/0" in client.get("/").text


def test_an_unreachable_redis_is_a_503_page_without_the_password() -> None:
    app = build_app("redis://:sup3rsecretpw@127.0.0.1:1/0", socket_connect_timeout=0.5)
    response = client_for(app).get("/")
    assert response.status_code == 503
    assert "cannot be reached" in response.text and "sup3rsecretpw" not in response.text


# -- writes --------------------------------------------------------------------------------------------------
def test_with_a_token_a_logged_in_session_requeues_and_deletes(app: HexQ) -> None:
    for name in ("a", "b", "c", "d"):
        bury(app, name, (name,), "r")
    client = logged_in(app)
    csrf = csrf_of(client)
    response = client.post("/dead/requeue", data={"csrf": csrf, "id": ["a", "b"]}, follow_redirects=False)
    assert response.status_code == 303 and "notice=requeued" in response.headers["location"]
    assert "Requeued 2 dead letter(s)." in client.get(response.headers["location"]).text
    assert app.broker.queue_stats(["default"])[0].pending == 2
    assert client.post("/dead/delete", data={"csrf": csrf, "id": "c"}).status_code == 200
    assert [d.id for d in app.broker.dead_letters()] == ["d"]
    assert client.post("/dead/delete", data={"csrf": csrf}, follow_redirects=False).headers["location"].endswith(
        "notice=nothing&n=0")
    assert app.broker.dead_count() == 1
    client.post("/dead/requeue", data={"csrf": csrf, "all": "1"})
    assert app.broker.dead_count() == 0 and app.broker.queue_stats(["default"])[0].pending == 3
    bury(app, "e", (1,), "r")
    bury(app, "f", (1,), "r")
    client.post("/dead/delete", data={"csrf": csrf, "all": "1"})
    assert app.broker.dead_count() == 0 and app.broker.queue_stats(["default"])[0].pending == 3


def test_cancel_and_purge_need_the_session_and_its_csrf_field(app: HexQ) -> None:
    work = app.registry.get("work")
    first, second, third = app.enqueue_many([_call(app, work.name, str(n)) for n in range(3)])
    client = logged_in(app)
    assert 'id="cancel"' in client.get("/task", params={"id": first}).text
    csrf = csrf_of(client, f"/task?id={first}")
    assert client.post("/task/cancel", data={"id": first}).status_code == 403  # no CSRF field
    response = client.post("/task/cancel", data={"id": first, "csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303 and "notice=cancelled" in response.headers["location"]
    assert app.broker.lookup(first) is None and app.broker.lookup(second) is not None
    assert "removed before it ran" in client.get(response.headers["location"]).text
    assert "No such task" in client.post("/task/cancel", data={"id": "nope", "csrf": csrf}).text

    assert client.post("/queue/purge", data={"queue": "default"}).status_code == 403
    assert client.post("/queue/purge", data={"queue": "nope", "csrf": csrf}).status_code == 400
    purged = client.post("/queue/purge", data={"queue": "default", "csrf": csrf})
    assert purged.status_code == 200 and "Deleted 2 pending and scheduled task(s)" in purged.text
    assert app.broker.queue_stats(["default"])[0].pending == 0
    del third


def test_a_forged_post_without_the_token_changes_nothing(app: HexQ) -> None:
    bury(app, "a", (1,), "r")
    client = client_for(app, token=TOKEN)
    # No session at all, as from a page on another site that posts a form here.
    response = client.post("/dead/delete", data={"all": "1"})
    assert response.status_code == 403 and "log in" in response.text
    # A session cookie that was not made with the token.
    client.cookies.set(SESSION_COOKIE, "1700000000.forged.0123")
    assert client.post("/dead/delete", data={"all": "1", "csrf": "0123"}).status_code == 403
    # A wrong bearer token.
    assert client.post("/dead/delete", data={"all": "1"}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert app.broker.dead_count() == 1


def test_a_logged_in_session_still_needs_the_csrf_field_and_the_same_origin(app: HexQ) -> None:
    bury(app, "a", (1,), "r")
    client = logged_in(app)
    csrf = csrf_of(client)
    missing = client.post("/dead/delete", data={"all": "1"})
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert client.post("/dead/delete", data={"all": "1", "csrf": "0" * 64}).status_code == 403
    cross = client.post("/dead/delete", data={"all": "1", "csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.text
    site = client.post("/dead/delete", data={"all": "1", "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    assert app.broker.dead_count() == 1
    ok = client.post("/dead/delete", data={"all": "1", "csrf": csrf}, headers={"Origin": "http://127.0.0.1:8080"})
    assert ok.status_code == 200 and app.broker.dead_count() == 0


def test_the_bearer_token_works_for_scripts(app: HexQ) -> None:
    bury(app, "a", (1,), "r")
    client = client_for(app, token=TOKEN)
    response = client.post("/dead/requeue", data={"id": "a"}, headers={"Authorization": f"Bearer {TOKEN}"},
                           follow_redirects=False)
    assert response.status_code == 303 and app.broker.dead_count() == 0


def test_read_only_refuses_every_write_even_with_the_token(app: HexQ) -> None:
    bury(app, "a", (1,), "r")
    client = client_for(app, token=TOKEN, read_only=True)
    assert client.post("/login", data={"token": TOKEN}).status_code == 403
    for path in ("/dead/requeue", "/dead/delete", "/task/cancel", "/queue/purge"):
        response = client.post(path, data={"all": "1", "id": "a", "queue": "default"},
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 403 and "read-only" in response.text
    page = client.get("/dead").text
    assert "Requeue" not in page and 'name="csrf"' not in page and "Read-only" in page
    assert app.broker.dead_count() == 1


def test_without_a_token_nothing_can_be_changed(app: HexQ, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    bury(app, "a", (1,), "r")
    client = client_for(app)
    response = client.post("/dead/delete", data={"all": "1"})
    assert response.status_code == 403 and "--token" in response.text
    assert app.broker.dead_count() == 1 and "--token" in client.get("/dead").text


def test_the_token_comes_from_the_environment(app: HexQ, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    bury(app, "a", (1,), "r")
    client = client_for(app)
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    assert client.post("/dead/delete", data={"all": "1", "csrf": csrf_of(client)}).status_code == 200


def test_a_wrong_token_at_login_gives_no_session(app: HexQ) -> None:
    client = client_for(app, token=TOKEN)
    assert 'name="token"' in client.get("/login").text
    response = client.post("/login", data={"token": "not-the-token-at-all"}, follow_redirects=False)
    assert response.status_code == 403 and SESSION_COOKIE not in response.cookies
    assert "not the dashboard" in response.text
    forged = client.post("/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403


def test_writes_are_posts_only(app: HexQ) -> None:
    bury(app, "a", (1,), "r")
    client = logged_in(app)
    assert client.get("/dead/delete", params={"all": "1"}).status_code == 405
    assert app.broker.dead_count() == 1


def test_a_short_token_is_refused(app: HexQ) -> None:
    from hexq.core.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16 characters"):
        create_app(app, token="short")


# -- the command ---------------------------------------------------------------------------------------------
def test_the_command_binds_to_localhost_by_default() -> None:
    args = cli.build_parser().parse_args(["dashboard", "--app", "x:app"])
    assert (args.bind, args.port, args.token, args.read_only) == ("127.0.0.1", 8080, None, False)


def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    """An app module of the test's own (``--app`` imports it once per process, so each test needs a new name)."""
    name = f"dashboard_app_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(f"from hexq import HexQ\napp = HexQ(queues=['default'], url={url!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:app"


@pytest.mark.parametrize(("options", "message"), [
    (["--port", "70000"], "--port must be a TCP port (1-65535), got 70000"),
    (["--port", "0"], "--port must be a TCP port"),
    (["--bind", "no-such-host.invalid"], "--bind 'no-such-host.invalid' is not an address"),
    (["--bind", "192.0.2.1"], "cannot listen on 192.0.2.1:"),
    (["--token", "short"], "at least 16 characters"),
])
def test_bad_command_options_exit_2_naming_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, options: list[str],
                                                      message: str) -> None:
    target = app_module(tmp_path, monkeypatch, f"sqlite:///{tmp_path}/hexq.db")
    assert cli.main(["dashboard", "--app", target, *options]) == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    target = app_module(tmp_path, monkeypatch, f"sqlite:///{tmp_path}/hexq.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["dashboard", "--app", target, "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_memory_urls_are_refused_by_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["dashboard", "--app", app_module(tmp_path, monkeypatch, "memory://")]) == 2
    assert "memory://" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield


def test_the_overview_shows_each_queues_expired_count(app: HexQ) -> None:
    for n in range(2):
        app.broker.discard("w.0.1", f"gone{n}", "high", "expired")
    page = client_for(app).get("/").text
    row = re.search(r'<tr data-queue="high">.*?</tr>', page, re.S)
    assert row is not None and '<td class="num expired">2</td>' in row.group(0)
    assert "<th>expired</th>" in page
