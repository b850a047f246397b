"""The dashboard in a real browser: Debian's chromium driven by Playwright (from PyPI; its own browser download
is never used), against a real worker, scheduler and dashboard process on the session's Redis.

One worker, one scheduler and one dashboard serve the whole module (a few seconds to start); each test then
drives pages as a person would. ``HEXQ_SCREENSHOTS=/some/dir`` saves a screenshot of each page there.
Selected with ``-m browser``; the whole module takes about 20 s.
"""

from __future__ import annotations

import http.server
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import free_port
from workers import Proc, wait_for

pytestmark = pytest.mark.browser

APP = "tests.integration.apps.dashboard_tasks:app"
TOKEN = "browser-test-token-0123456789"
EVIL = "<script>window.hexqPwned = 1; alert('pwned')</script>"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = os.environ.get("HEXQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium (or set HEXQ_CHROMIUM; "
                    "deselect them with -m 'not browser')", pytrace=False)
    return found


class Site:
    """The processes under test and a broker of this process on the same Redis and prefix."""

    def __init__(self, redis_url: str, prefix: str, tmp: Path) -> None:
        self.tmp = tmp
        self.env = dict(os.environ, HEXQ_TEST_URL=redis_url, HEXQ_TEST_PREFIX=prefix, PYTHONUNBUFFERED="1",
                        HEXQ_DASHBOARD_TOKEN=TOKEN)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        os.environ.update(HEXQ_TEST_URL=redis_url, HEXQ_TEST_PREFIX=prefix)
        sys.modules.pop("tests.integration.apps.dashboard_tasks", None)
        import tests.integration.apps.dashboard_tasks as tasks

        self.tasks: Any = tasks
        self.broker = tasks.app.broker

    def start(self, *args: str) -> Proc:
        proc = Proc([*args[:1], f"--app={APP}", *args[1:]], self.env, self.tmp / f"{args[0]}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        self.broker.close()
        import redis

        client = redis.Redis.from_url(self.env["HEXQ_TEST_URL"])
        keys = list(client.scan_iter(match="{" + self.env["HEXQ_TEST_PREFIX"] + "}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="module")
def site(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    prefix = f"dash{uuid.uuid4().hex[:8]}"
    running = Site(redis_url, prefix, tmp_path_factory.mktemp("dashboard"))
    try:
        running.start("worker")
        running.start("scheduler")
        running.start("dashboard", f"--port={running.port}")
        wait_for(lambda: len(running.broker.workers()) == 1, 20, f"the worker to beat\n{running.logs()}")
        wait_for(lambda: _answers(running.url), 20, f"the dashboard to answer\n{running.logs()}")
        yield running
    finally:
        running.close()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/workers", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.dialogs = []  # every alert/confirm the page opens, accepted

    def on_dialog(dialog: Any) -> None:
        opened.dialogs.append((dialog.type, dialog.message))
        dialog.accept()

    opened.on("dialog", on_dialog)
    yield opened
    context.close()


def shoot(page: Any, name: str) -> None:
    where = os.environ.get("HEXQ_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


def log_in(page: Any, site: Site) -> None:
    page.goto(site.url + "/login")
    page.fill("input[name=token]", TOKEN)
    page.click("#login")
    page.wait_for_selector("text=Log out")


def bury(site: Site, count: int, note: str = "", wait: bool = True) -> list[tuple[str, Path]]:
    """Tasks that fail and are dead-lettered (no retries), each until its own file exists."""
    before = site.broker.dead_count()
    made = []
    for _ in range(count):
        path = site.tmp / f"gate-{uuid.uuid4().hex}"
        made.append((site.tasks.fails_until.delay(str(path), note), path))
    if wait:
        wait_for(lambda: site.broker.dead_count() >= before + count, 20, f"{count} dead letters\n{site.logs()}")
    return made


def until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    wait_for(check, timeout, what)


# -- pages -----------------------------------------------------------------------------------------------------
def test_the_pages_load_against_a_real_worker_and_the_chart_draws_its_counts(site: Site, page: Any) -> None:
    site.tasks.ok.delay_many([site.tasks.ok.bind(n) for n in range(40)])
    bury(site, 2, "for the chart")

    def counted() -> bool:
        # Each worker child carries its own counts on its own heartbeat: the done and the failed ones may
        # arrive on different beats (a CI run drew the page between the two), so wait for both.
        now = int(time.time() * 1000)
        tallies = site.broker.tallies(now - 120_000, now)
        return (sum(sum(t.done.values()) for t in tallies) >= 40
                and sum(sum(t.failed.values()) for t in tallies) >= 2)

    until(counted, "the workers' heartbeats to carry their done and failed counts")
    page.goto(site.url + "/")
    assert page.locator("#queues tr[data-queue=default]").count() == 1
    done = page.locator("#chart-throughput polyline[data-series=done]")
    assert int(done.get_attribute("data-points")) == 60
    assert float(done.get_attribute("data-total")) >= 40
    assert float(page.locator("#chart-throughput polyline[data-series=failed]").get_attribute("data-total")) >= 2
    box = page.locator("#chart-throughput").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 80  # drawn, styled, visible
    shoot(page, "overview")

    page.goto(site.url + "/workers")
    row = page.locator("#workers tbody tr")
    assert row.count() == 1 and "MiB" in row.inner_text()
    shoot(page, "workers")

    page.goto(site.url + "/schedules")
    until(lambda: _fired(page, site), "a cron tick")
    shoot(page, "schedules")


def _fired(page: Any, site: Site) -> bool:
    page.goto(site.url + "/schedules")
    return "UTC" in page.locator("#schedules tbody tr td").nth(5).inner_text()


def test_an_injected_script_is_shown_as_text_and_never_runs(site: Site, page: Any) -> None:
    ((task_id, _),) = bury(site, 1, EVIL)
    log_in(page, site)
    for path in ("/dead", f"/task?id={task_id}", f"/dead?q={task_id}"):
        page.goto(site.url + path)
        assert EVIL in page.locator("main").inner_text(), path
        assert page.evaluate("window.hexqPwned") is None, path
    page.goto(site.url + "/dead")
    page.wait_for_selector("#live[data-refreshed]", state="attached", timeout=10_000)
    assert page.evaluate("window.hexqPwned") is None  # not after the in-place refresh either
    assert not [d for d in page.dialogs if "pwned" in d[1]]
    shoot(page, "dead-letters")
    page.goto(site.url + f"/task?id={task_id}")
    shoot(page, "task")


# -- writes ----------------------------------------------------------------------------------------------------
def test_requeue_and_delete_one_a_selection_and_all(site: Site, page: Any) -> None:
    site.broker.purge_dead()
    buried = bury(site, 5, "to act on")
    (first, first_gate), (second, second_gate), third, fourth, fifth = buried
    log_in(page, site)

    # Requeue one, from its task page; its gate is open now, so it succeeds this time.
    first_gate.touch()
    page.goto(site.url + f"/task?id={first}")
    page.click("#requeue-one")
    page.wait_for_selector("text=Requeued 1 dead letter(s).")
    until(lambda: not site.broker.find_dead(first) and site.broker.lookup(first) is None, "the requeued task to run")

    # Requeue a selection.
    second_gate.touch()
    page.goto(site.url + "/dead")
    page.check(f"tr[data-id='{second}'] input[type=checkbox]")
    page.check(f"tr[data-id='{third[0]}'] input[type=checkbox]")
    page.click("#requeue-selected")
    page.wait_for_selector("text=Requeued 2 dead letter(s).")
    until(lambda: not site.broker.find_dead(second), "the second task to run")
    until(lambda: len(site.broker.find_dead(third[0])) == 1, "the third task (still failing) to die again")

    # Delete a selection, then all.
    page.goto(site.url + "/dead")
    page.check(f"tr[data-id='{fourth[0]}'] input[type=checkbox]")
    page.click("#delete-selected")
    page.wait_for_selector("text=Deleted 1 dead letter(s).")
    assert site.broker.find_dead(fourth[0]) == [] and site.broker.lookup(fourth[0]) is None
    assert site.broker.find_dead(fifth[0])
    page.click("#delete-all")
    page.wait_for_selector("text=Deleted 2 dead letter(s).")
    assert ("confirm", "Delete every dead letter? This cannot be undone.") in page.dialogs
    assert site.broker.dead_count() == 0
    shoot(page, "after-delete-all")


def test_a_forged_post_from_another_site_is_refused(site: Site, page: Any, tmp_path: Path) -> None:
    bury(site, 1, "must survive")
    before = site.broker.dead_count()
    log_in(page, site)  # the browser holds a session: the forged form must still fail
    (tmp_path / "evil.html").write_text(
        f'<form id="f" method="post" action="{site.url}/dead/delete"><input name="all" value="1"></form>'
        '<script>document.getElementById("f").submit()</script>')
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with page.expect_navigation():
            page.goto(f"http://localhost:{server.server_address[1]}/evil.html")
        assert "refused" in page.content()
    finally:
        server.shutdown()
    assert site.broker.dead_count() == before
    # Without a session at all (a new browser context), even a same-site form needs the token.
    fresh = page.context.browser.new_context().new_page()
    fresh.goto(site.url + "/dead")
    assert fresh.locator("#delete-all").count() == 0 and "Log in" in fresh.content()
    response = fresh.request.post(site.url + "/dead/delete", form={"all": "1"})
    assert response.status == 403
    assert site.broker.dead_count() == before


# -- refresh and JavaScript off ------------------------------------------------------------------------------
def test_the_page_refreshes_in_place_and_works_without_javascript(site: Site, page: Any, browser: Any) -> None:
    page.goto(site.url + "/dead")
    page.evaluate("window.sameDocument = true")
    (task_id, _), = bury(site, 1, "arrives live")
    page.wait_for_selector(f"tr[data-id='{task_id}']", timeout=10_000)
    assert page.evaluate("window.sameDocument") is True  # no reload: the content was swapped in place

    context = browser.new_context(java_script_enabled=False)
    static = context.new_page()
    static.goto(site.url + "/")
    assert static.locator("#queues tbody tr").count() == 2 and static.locator("#chart-throughput").count() == 1
    static.goto(site.url + f"/dead?q={task_id}")
    assert static.locator(f"tr[data-id='{task_id}']").count() == 1
    shoot(static, "no-javascript-dead-search")
    context.close()
