"""The web view at /ui in a real headless Chromium (Debian's, driven by Playwright), against a
real `runs api` process and a real worker: sign-in, the runs list and a run's page updating
live, cancel and approve with the buttons, definitions and schedules, and the project walls.

Screenshots of the pages go to the test's temporary folder, and to test-artifacts/ in CI.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runs.messaging.routing import Router
from runs.scheduling.catalogue import ScheduleService
from runs.scheduling.code_schedules import sync_source_schedules
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.conftest import IN_CI, REDIS_URL, WorkerPool, unavailable
from tests.support.api_support import Caller, new_caller
from tests.support.helpers import create_body
from tests.support.redis_hygiene import QUEUE
from tests.support.server_support import Server, serving
from workers.definitions.registry import Registry

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the browser fixture says why its tests cannot run
    sync_playwright = None

pytestmark = pytest.mark.worker

CHROMIUM = os.environ.get("RUNS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # what a page may take to show what the API already says


# -- the page shell, without a browser --------------------------------------------------------


def test_the_shell_is_static_and_forbids_inline_and_foreign_code(server: Server) -> None:
    """The HTML needs no token (the data behind it does), and its policy lets only this
    origin's script run and talk to only this API."""
    for path in ("/ui", "/ui/runs/run_anything", "/ui/definitions", "/ui/schedules"):
        page = httpx.get(server.url + path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "default-src 'none'" in policy and "form-action 'none'" in policy
    script = httpx.get(server.url + "/ui/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    again = httpx.get(
        server.url + "/ui/static/app.js", headers={"If-None-Match": script.headers["etag"]}
    )
    assert again.status_code == 304
    assert httpx.get(server.url + "/ui/static/secrets.py").status_code == 404
    assert httpx.get(server.url + "/ui/static/..%2Fui.py").status_code == 404
    assert "/ui" not in str(httpx.get(server.url + "/openapi.json").json()["paths"])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    postgres_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
    worker_pool: WorkerPool,
) -> Iterator[Server]:
    with serving(
        postgres_url,
        redis_url,
        tmp_path_factory.mktemp("ui"),
        repo_root,
        RUNS_DEFAULT_QUEUE=worker_pool.settings.default_queue,
    ) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        unavailable(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    if sync_playwright is None:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> list[Path]:
    """Where screenshots go: the test's temporary folder, and test-artifacts/ in CI."""
    folders = [tmp_path_factory.mktemp("ui-screenshots")]
    if IN_CI:
        folders.append(repo_root / "test-artifacts" / "ui")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "ui")


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that logs what its console says on failure."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    console: list[str] = []
    opened.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    opened.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    yield opened
    context.close()
    assert not [line for line in console if line.startswith("pageerror")], console


def sign_in(page: Page, server: Server, caller: Caller, path: str = "/ui") -> None:
    page.goto(server.url + path)
    page.fill("#token", caller.token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#project-name:not(:empty)")


def save(page: Page, folders: list[Path], name: str) -> None:
    for folder in folders:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def start_run(server: Server, caller: Caller, target: str, **config: Any) -> str:
    body = create_body(caller.project, target)
    body["request"]["config"] = config
    created = httpx.post(f"{server.url}/runs", json=body, headers=caller.headers)
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run"]["run_id"]
    return run_id


def start_workflow(server: Server, caller: Caller, workflow_id: str) -> str:
    body = {
        "kind": "workflow",
        "owner": {"kind": "project", "id": caller.project.id},
        "request": {"target": f"workflow:{workflow_id}", "workflow_id": workflow_id},
    }
    created = httpx.post(f"{server.url}/runs", json=body, headers=caller.headers)
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run"]["run_id"]
    return run_id


def get_run(server: Server, caller: Caller, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = httpx.get(f"{server.url}/runs/{run_id}", headers=caller.headers).json()
    return run


def status_of(page: Page, selector: str) -> str:
    return str(page.get_attribute(f"{selector} [data-status]", "data-status"))


def wait_status(page: Page, selector: str, status: str) -> None:
    page.wait_for_selector(f'{selector} [data-status="{status}"]')


def mark_page(page: Page) -> None:
    """A mark that a reload or a navigation would wipe."""
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__notReloaded === true")


# -- sign-in ----------------------------------------------------------------------------------


def test_the_token_is_asked_once_and_kept_in_session_storage_never_in_a_url(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    page.goto(server.url + "/ui")
    page.fill("#token", "runs_not-a-real-token")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in .notice.error")
    assert "not valid" in page.inner_text("#sign-in .notice.error")
    save(page, screenshots, "sign-in")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.fill("#token", caller.token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#project-name:not(:empty)")
    assert page.inner_text("#project-name") == caller.project.name
    assert page.evaluate("sessionStorage.getItem('runs.token')") == caller.token
    page.goto(server.url + "/ui/definitions")  # another page of the tab: no second sign-in
    page.wait_for_selector("#definitions")
    assert page.query_selector("#sign-in") is None
    assert requests and not [url for url in requests if caller.token in url]
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert page.evaluate("sessionStorage.getItem('runs.token')") is None


# -- the runs list ------------------------------------------------------------------------------


def test_a_new_run_appears_in_the_list_and_finishes_there_without_a_reload(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    done = start_run(server, caller, "task:echo", hello="world")
    sign_in(page, server, caller)
    page.wait_for_selector(f'tr[data-run-id="{done}"]')
    mark_page(page)
    run_id = start_run(server, caller, "task:test/ticker", n=12, interval=0.5)
    row = f'tr[data-run-id="{run_id}"]'
    wait_status(page, row, "running")
    first = page.eval_on_selector_all("#runs tr", "rows => rows.map(r => r.dataset.runId)")
    assert first[:2] == [run_id, done]  # newest first
    save(page, screenshots, "runs-list")
    wait_status(page, row, "completed")
    assert_not_reloaded(page)
    assert get_run(server, caller, run_id)["status"] == "completed"


def test_the_filters_narrow_the_list_and_more_follows_the_cursor(
    page: Page, server: Server, caller: Caller
) -> None:
    failed = start_run(server, caller, "task:fail", message="no luck")
    echoed = [start_run(server, caller, "task:echo") for _ in range(26)]
    for run_id in (failed, echoed[-1]):
        deadline = time.monotonic() + 30
        while get_run(server, caller, run_id)["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    sign_in(page, server, caller, "/ui?status=failed")
    page.wait_for_selector(f'tr[data-run-id="{failed}"]')
    expect(page.locator("#runs tr")).to_have_count(1)
    page.select_option("select[name=status]", "")
    page.wait_for_selector("option[value='task:echo']", state="attached")
    page.select_option("select[name=target]", "task:echo")
    expect(page.locator("#runs tr")).to_have_count(25)
    assert "target=task%3Aecho" in page.url and "token" not in page.url
    page.click("#more")
    expect(page.locator("#runs tr")).to_have_count(26)
    shown = page.eval_on_selector_all("#runs tr", "rows => rows.map(r => r.dataset.runId)")
    assert shown == echoed[::-1]
    assert page.is_hidden("#more")


# -- a run --------------------------------------------------------------------------------------


def test_a_runs_events_arrive_live_and_its_status_follows(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    run_id = start_run(server, caller, "task:test/ticker", n=10, interval=0.6)
    sign_in(page, server, caller, f"/ui/runs/{run_id}")
    page.wait_for_selector('#events li[data-event-type="PROGRESS_REPORTED"]')
    mark_page(page)
    progress = '#events li[data-event-type="PROGRESS_REPORTED"]'
    seen = page.eval_on_selector_all(progress, "items => items.length")
    assert seen < 10, "all events were there at once: nothing arrived live"
    wait_status(page, ".run-head", "running")
    assert page.get_attribute("#stream-state", "data-state") == "live"
    page.wait_for_selector('#events li[data-event-type="RUN_FINISHED"]')
    wait_status(page, ".run-head", "completed")
    page.wait_for_selector('#stream-state[data-state="ended"]')
    assert_not_reloaded(page)
    shown = page.eval_on_selector_all("#events li", "items => items.map(i => +i.dataset.eventId)")
    events = httpx.get(
        f"{server.url}/runs/{run_id}/events?limit=100", headers=caller.headers
    ).json()["data"]
    assert shown == [e["event_id"] for e in events]  # no gap, no duplicate
    assert page.eval_on_selector_all(progress, "items => items.length") == 10
    assert '"ticks": 10' in page.inner_text("main")  # the output in the record
    save(page, screenshots, "run-detail")


def test_the_cancel_button_stops_a_running_run(page: Page, server: Server, caller: Caller) -> None:
    run_id = start_run(server, caller, "task:sleep", seconds=30)
    sign_in(page, server, caller, f"/ui/runs/{run_id}")
    wait_status(page, ".run-head", "running")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    wait_status(page, ".run-head", "cancelled")
    page.wait_for_selector('#events li[data-event-type="RUN_ERROR"]')
    assert page.query_selector("#cancel") is None
    run = get_run(server, caller, run_id)
    assert run["status"] == "cancelled" and run["cancellation"] is not None


def test_approving_a_parked_workflow_run_with_the_button_lets_it_finish(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    run_id = start_workflow(server, caller, "test/approval")
    sign_in(page, server, caller, f"/ui/runs/{run_id}")
    review = 'tr[data-node-id="review"]'
    wait_status(page, review, "waiting")
    wait_status(page, ".run-head", "waiting")
    save(page, screenshots, "workflow-waiting")
    page.fill(f"{review} input.comment", "looks right")
    page.click(f"{review} button.approve")
    wait_status(page, ".run-head", "completed")
    wait_status(page, review, "completed")
    wait_status(page, 'tr[data-node-id="publish"]', "completed")
    save(page, screenshots, "workflow-approved")
    assert get_run(server, caller, run_id)["status"] == "completed"
    nodes = httpx.get(f"{server.url}/runs/{run_id}/nodes", headers=caller.headers).json()["data"]
    assert nodes[0]["output"] == {"approved": True, "comment": "looks right"}
    assert nodes[1]["output"] == {"approved": True}


def test_signalling_a_workflow_run_waiting_for_an_event_with_the_button(
    page: Page, server: Server, caller: Caller
) -> None:
    run_id = start_workflow(server, caller, "test/event")
    sign_in(page, server, caller, f"/ui/runs/{run_id}")
    hook = 'tr[data-node-id="hook"]'
    wait_status(page, hook, "waiting")
    assert "payment.received" in page.inner_text(hook)
    page.fill(f"{hook} input.payload", '{"amount": 5}')
    page.click(f"{hook} button.signal")
    wait_status(page, ".run-head", "completed")
    wait_status(page, 'tr[data-node-id="use"]', "completed")
    assert get_run(server, caller, run_id)["status"] == "completed"
    nodes = httpx.get(f"{server.url}/runs/{run_id}/nodes", headers=caller.headers).json()["data"]
    assert [n["output"] for n in nodes] == [{"amount": 5}, {"amount": 5}]


# -- definitions, schedules, walls --------------------------------------------------------------


def test_definitions_and_schedules_are_listed(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    created = httpx.post(
        f"{server.url}/projects/{caller.project.slug}/schedules",
        json={"name": name, "target": {"kind": "task", "id": "echo"}, "cron": "0 3 * * *"},
        headers=caller.headers,
    )
    assert created.status_code == 201, created.text
    sign_in(page, server, caller, "/ui/definitions")
    page.wait_for_selector('tr[data-target="task:test/ticker"]')
    page.goto(server.url + "/ui/schedules")
    row = f'tr[data-schedule-id="{created.json()["id"]}"]'
    page.wait_for_selector(row)
    assert name in page.inner_text(row) and "0 3 * * *" in page.inner_text(row)
    assert status_of(page, row) == "active"
    save(page, screenshots, "schedules")


def test_another_projects_run_is_not_found_on_its_page(
    page: Page, server: Server, caller: Caller, pg_engine: sa.Engine
) -> None:
    stranger = new_caller(AccessService(pg_engine), "ui-other")
    theirs = start_run(server, stranger, "task:echo", secret="theirs")
    sign_in(page, server, caller, f"/ui/runs/{theirs}")
    page.wait_for_selector("main .notice.error")
    assert "not found" in page.inner_text("main")
    assert "theirs" not in page.content()
    page.goto(server.url + "/ui")
    page.wait_for_selector("text=No runs.")
    assert page.query_selector(f'tr[data-run-id="{theirs}"]') is None


# -- what a newcomer trips over ---------------------------------------------------------------


def test_times_name_their_zone_and_a_schedule_written_in_code_is_listed_once(
    browser: Browser,
    server: Server,
    caller: Caller,
    pg_engine: sa.Engine,
    screenshots: list[Path],
) -> None:
    registry = Registry()
    registry.schedule("coded", cron="0 4 * * *", target="task:echo")
    schedules = ScheduleService(pg_engine, runs=_run_service(pg_engine))
    sync_source_schedules(schedules, caller.project, registry.schedules())
    coded = schedules.source_schedules(caller.project)[0]
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, timezone_id="Europe/Berlin"
    )
    try:
        page = context.new_page()
        sign_in(page, server, caller, "/ui/schedules")
        row = f'tr[data-schedule-id="{coded.id}"]'
        page.wait_for_selector(row)
        expect(page.locator(row)).to_have_count(1)  # in "Defined in code" only
        assert page.locator(f"#source-schedules {row}").count() == 1
        shown = page.inner_text(f"{row} time")
        assert shown.endswith(("GMT+1", "GMT+2", "CET", "CEST")), shown
        assert "(UTC)" in str(page.get_attribute(f"{row} time", "title"))
        save(page, screenshots, "schedules-zones")
    finally:
        context.close()


def test_at_420_pixels_sign_out_stays_on_screen(
    browser: Browser, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    context = browser.new_context(viewport={"width": 420, "height": 800})
    try:
        page = context.new_page()
        sign_in(page, server, caller)
        box = page.locator("#sign-out").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420, box
        save(page, screenshots, "narrow")
        page.click("#sign-out")
        page.wait_for_selector("#sign-in")
    finally:
        context.close()


def test_events_show_their_fields_and_group_nodes_no_attempt(
    page: Page, server: Server, caller: Caller, screenshots: list[Path]
) -> None:
    run_id = start_workflow(server, caller, "fan-out")
    deadline = time.monotonic() + 60
    while get_run(server, caller, run_id)["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sign_in(page, server, caller, f"/ui/runs/{run_id}")
    page.wait_for_selector('#events li[data-event-type="RUN_FINISHED"]')
    finished = page.inner_text('#events li[data-event-type="STEP_FINISHED"] .payload')
    assert "stepName" in finished and "{" not in finished, finished
    assert '"type"' not in page.inner_text("#events")
    nodes = httpx.get(f"{server.url}/runs/{run_id}/nodes", headers=caller.headers).json()["data"]
    never_ran = [n["node_id"] for n in nodes if n["attempt"] == 0]
    assert never_ran, nodes  # the fan-out's groups
    for node_id in never_ran:
        attempt = page.inner_text(f'tr[data-node-id="{node_id}"] td.num')
        assert attempt == "", (node_id, attempt)
    save(page, screenshots, "run-fields")


def _run_service(engine: sa.Engine) -> RunService:
    return RunService(
        engine,
        dispatcher=RecordingDispatcher(sent=[]),
        events=RedisEventLog.from_url(REDIS_URL, ttl_seconds=60),
        router=Router([], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )
