"""The dashboard in headless Chromium (Debian's, driven by Playwright): live numbers while
10,000 tasks run, a task's timeline with parallel steps side by side, no console errors.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright

from legion.server.keys import new_key
from tests.server.conftest import Api, StartApi

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TASKS = 10_000
NONE = "\N{EN DASH}"  # what the pages show for nothing


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():  # noqa: ASYNC240 - one stat before the browser starts
        pytest.fail(f"the dashboard tests need Chromium at {CHROMIUM}: apt-get install chromium")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        await launched.close()


async def open_page(browser: Browser, api: Api, problems: list[str]) -> Page:
    context = await browser.new_context(
        http_credentials={"username": "operator", "password": api.key},
        viewport={"width": 1400, "height": 1100},
    )
    page = await context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return page


async def text_of(page: Page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def test_the_dashboard_follows_a_run_of_ten_thousand_tasks(
    browser: Browser, start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'dash.db'}", sample_interval=0.25)
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.goto(api.url + "/")
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'"
    )
    assert await text_of(page, "#finished") == "0"

    tasks = [{"agent": "work", "input": {"n": 0, "delay": 0.02}}]  # shown on its task page
    tasks += [{"agent": "work", "input": {"n": i}} for i in range(1, TASKS - 1)]
    tasks.append({"agent": "doomed", "input": {"n": 1}})
    status, body = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 200, body
    first_update = await page.get_attribute("body", "data-updated")
    # While the run goes on, the page keeps updating and the API keeps answering.
    await page.wait_for_function(
        "(before) => document.body.dataset.updated !== before", arg=first_update
    )
    assert (await api.call("GET", "/healthz", headers={}))[0] == 200
    await page.wait_for_function(
        f"() => document.getElementById('finished').textContent === '{TASKS:,}'", timeout=90_000
    )
    await page.wait_for_function("() => document.querySelector('#failures-table a') !== null")
    assert await text_of(page, "#status-succeeded") == f"{TASKS - 1:,}"
    assert await text_of(page, "#status-dead") == "1"
    assert await text_of(page, "#failures") == "0 · 1"
    assert "doomed 1" in await text_of(page, "#failures-table")
    assert "this server" in await text_of(page, "#workers")
    assert await page.locator("#chart-throughput canvas").count() == 1
    assert await text_of(page, "#p50") not in ("", "\u2013")  # a latency, not a dash
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    work_id = body["tasks"][0]["id"]
    await page.goto(f"{api.url}/tasks/{work_id}")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent === 'succeeded'"
    )
    await page.wait_for_function("() => document.querySelectorAll('#timeline g.step').length === 3")
    lanes = {
        await step.get_attribute("data-key"): await step.get_attribute("data-lane")
        for step in await page.locator("#timeline g.step").all()
    }
    assert lanes["a"] == lanes["b1"] or lanes["a"] == lanes["b2"]
    assert lanes["b1"] != lanes["b2"]  # parallel steps side by side
    assert '"steps"' in await text_of(page, "#output")
    await page.screenshot(path=str(ARTIFACTS / "task.png"), full_page=True)
    assert problems == []


async def test_a_task_page_follows_a_running_task(
    browser: Browser, api: Api, gate: asyncio.Event
) -> None:
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 5}})
    await page.goto(f"{api.url}/tasks/{sub['id']}")
    await page.wait_for_function("() => document.querySelectorAll('#timeline g.step').length === 1")
    assert await text_of(page, "#status") in ("queued", "running")
    gate.set()
    # The stream's `end` event (the task's detail, its output) comes after the `task`
    # event that said it succeeded: waited for by the connection it closes.
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'finished'"
    )
    assert await text_of(page, "#status") == "succeeded"
    assert await text_of(page, "#output") == "5"
    # A step's recorded output was nowhere on the page: a click on its bar shows it.
    await page.click("#timeline g.step[data-key='started']")
    await page.wait_for_function("() => document.getElementById('step-output').textContent")
    assert await text_of(page, "#step-output") == "5"
    assert (await text_of(page, "#step-chosen")).startswith("started, attempt 1")
    # An id that is not one is the page's "no such task", not FastAPI's 422 JSON.
    await page.goto(f"{api.url}/tasks/abc")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent === 'no such task'"
    )
    assert problems == []


async def test_a_task_page_of_thousands_of_steps_draws_them_all(browser: Browser, api: Api) -> None:
    # Each step of the event stream (which replays them all) drew the whole timeline
    # again: 1,000 steps took over a minute to show, 5,000 held the page for minutes.
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "stepwise", "input": {"n": 3000}})
    assert (await api.runtime.result(sub["id"])).ok
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.goto(f"{api.url}/tasks/{sub['id']}")
    await page.wait_for_function(
        "() => document.querySelectorAll('#timeline g.step').length === 3000", timeout=30_000
    )
    assert await text_of(page, "#step-count") == "(3000)"
    assert problems == []


async def test_a_task_page_shows_its_attempts_with_the_capacity_wait_drawn_apart(
    browser: Browser, api: Api
) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "flaky", "input": {"n": 3}})
    assert (await api.runtime.result(sub["id"])).status.value == "succeeded"
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.goto(f"{api.url}/tasks/{sub['id']}")
    await page.wait_for_function(
        "() => document.querySelectorAll('#attempts-table tr[data-attempt]').length === 2"
    )
    rows = page.locator("#attempts-table tr[data-attempt]")
    assert await rows.evaluate_all("rows => rows.map(r => r.dataset.outcome)") == [
        "retry",
        "succeeded",
    ]
    first, second = rows.nth(0), rows.nth(1)
    assert await first.locator("td.error").inner_text() == "ConnectionError: flaky"
    assert await second.locator("td.error").inner_text() == NONE
    # The first attempt waited for capacity: its bar has a waiting part, drawn apart from
    # the running part; the second did not wait.
    widths = "bar => [...bar.children].map(part => part.getBoundingClientRect().width)"
    _, first_waiting = await first.locator(".attempt-bar").evaluate(widths)
    _, second_waiting = await second.locator(".attempt-bar").evaluate(widths)
    assert first_waiting > 0 and second_waiting == 0
    assert await first.locator("td.waiting").inner_text() != NONE
    # The earlier attempt's error is history, not the state of a task that succeeded.
    assert await page.locator("#error-section").is_hidden()
    await page.screenshot(path=str(ARTIFACTS / "attempts.png"), full_page=True)
    assert problems == []


async def test_the_task_list_filters_and_an_admin_cancels_and_retries(
    browser: Browser, api: Api, gate: asyncio.Event
) -> None:
    admin = new_key("ops", time.time(), admin=True)
    await api.runtime.store.add_api_key(admin.record)
    _, held = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    _, doomed = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 2}})
    assert (await api.runtime.result(doomed["id"])).status.value == "dead"

    # A tenant's key sees the list and filters it, without buttons.
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.goto(f"{api.url}/")
    await page.wait_for_selector(f"#tasks-table tr[data-id='{held['id']}']")
    assert await page.locator("#tasks-table button").count() == 0
    await page.select_option("#filter-status", "dead")
    await page.wait_for_function(
        "() => document.getElementById('tasks-table').dataset.query === 'limit=25&status=dead'"
    )
    ids = await page.locator("#tasks-table tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [str(doomed["id"])]
    assert not await page.is_visible("#filter-tenant")  # (its own tenant's tasks alone)

    # An admin key gets cancel and retry buttons that do what they say.
    page = await open_page(
        browser, Api(api.url, admin.token, api.runtime, api.server, api.http), problems
    )
    await page.goto(f"{api.url}/")
    # The page asks the server whose key it holds once it has loaded: wait for the answer.
    await page.wait_for_function(
        "() => document.getElementById('key-scope').textContent.includes('admin key')"
    )
    assert "admin key: every tenant" in await text_of(page, "#key-scope")
    # It may list one tenant's tasks (15,000 tasks of several tenants were paged 25 at a
    # time to find one's).
    info = await api.runtime.store.get(held["id"])
    assert info is not None
    tenant = info.tenant
    for name, shown in (("nobody", []), (tenant, [str(doomed["id"]), str(held["id"])])):
        await page.fill("#filter-tenant", name)
        await page.press("#filter-tenant", "Enter")
        await page.wait_for_function(
            "q => document.getElementById('tasks-table').dataset.query === q",
            arg=f"limit=25&tenant={name}",
        )
        rows = page.locator("#tasks-table tr[data-id]")
        assert await rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == shown
    await page.fill("#filter-tenant", "")
    await page.press("#filter-tenant", "Enter")
    for task, action in ((held, "cancel"), (doomed, "retry")):
        button = f"#tasks-table button[data-action='{action}'][data-id='{task['id']}']"

        def answers(response: Any, a: str = action) -> bool:
            return f":{a}" in str(response.url)

        async with page.expect_response(answers) as answer:
            await page.click(button)
        assert (await answer.value).status == 200
    assert (await api.runtime.result(held["id"])).status.value == "cancelled"
    await page.screenshot(path=str(ARTIFACTS / "tasks.png"), full_page=True)
    assert problems == []


async def test_an_approval_is_answered_once_from_the_waiting_table(
    browser: Browser, api: Api
) -> None:
    # A double click sent two approvals; the second answered the task's next approval.
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": 5}})
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.goto(f"{api.url}/")
    button = f"#waiting-table button[data-action='approve'][data-id='{sub['id']}']"
    await page.wait_for_selector(button)
    async with page.expect_response(lambda r: ":signal" in str(r.url)) as answer:
        await page.click(button)
    response = await answer.value
    assert response.status == 200
    sent = response.request.post_data_json
    assert sent == {"event": "approval", "data": {"approved": True}, "waiting": 1}
    done = await api.runtime.result(sub["id"])
    assert done.status.value == "succeeded" and done.output == {"approved": True}
    assert await api.runtime.store.signal_data(sub["id"], "approval", 1) is None
    assert problems == []


async def test_long_words_narrow_windows_waiting_tasks_and_a_url_with_credentials(
    browser: Browser, api: Api
) -> None:
    """One 5,000-character error message made every table of the dashboard ~42,000 px
    wide; waiting tasks were left out of "tasks by status"; a page opened as
    http://user:key@host/ could fetch nothing (fetch() refuses a relative URL there)."""
    _, long = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 5000}})
    assert (await api.runtime.result(long["id"])).status.value == "dead"
    _, waits = await api.call(
        "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": 1}}
    )
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    host = api.url.split("://", 1)[1]
    await page.goto(f"http://operator:{api.key}@{host}/")
    await page.wait_for_selector(f"#waiting-table button[data-id='{waits['id']}']")
    await page.wait_for_selector(f"#tasks-table tr[data-id='{long['id']}']")
    await page.wait_for_function(
        "() => document.getElementById('status-waiting')?.textContent === '1'"
    )
    for width in (1280, 390):
        await page.set_viewport_size({"width": width, "height": 900})
        wide = await page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= width, (width, wide)
    await page.goto(f"{api.url}/tasks/{long['id']}")
    await page.wait_for_function("() => document.body.textContent.includes('EEEE')")
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=str(ARTIFACTS / "narrow-task.png"), full_page=True)
    assert problems == []
    await api.runtime.signal(waits["id"], "approval", True)


async def test_the_badge_says_when_no_new_data_came_for_ten_seconds(
    browser: Browser, api: Api
) -> None:
    """After a store stall the numbers stood still for 30 s under a "live" badge."""
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    await page.clock.install()
    await page.goto(f"{api.url}/")
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'"
    )
    # The page's clock runs 15 s ahead of the server's samples: every text the badge shows
    # is kept (a sample may come in right after, and the badge says "live" again).
    await page.evaluate(
        """() => {
            const badge = document.getElementById('connection');
            window.shown = [];
            new MutationObserver(() => window.shown.push(badge.textContent))
                .observe(badge, { childList: true, characterData: true, subtree: true });
        }"""
    )
    # Paused, then moved 15 s in one jump that fires the due timers: no sample can come in
    # between the jump and the badge's check.
    await page.clock.pause_at(await page.evaluate("() => Date.now() + 100"))
    await page.clock.fast_forward(15_000)
    shown = await page.evaluate("() => window.shown")
    assert any(text.startswith("no new data for 1") for text in shown), shown
    await page.clock.resume()
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'"
    )
    assert problems == []


async def test_the_page_opens_its_stream_again_after_a_503(browser: Browser, api: Api) -> None:
    # A store down when the stream was (re)opened answered 503, and a browser's
    # EventSource does not try again after an answer that is not a stream: the page stood
    # still for good, its server back long since.
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    answered: list[int] = []

    async def first_down(route: Route) -> None:
        if not answered:
            answered.append(503)
            await route.fulfill(status=503, json={"detail": "the store is unavailable"})
        else:
            answered.append(200)
            await route.continue_()

    await page.route("**/v1/progress", first_down)
    await page.goto(f"{api.url}/")
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'"
    )
    assert answered == [503, 200]
    assert [p for p in problems if "503" not in p] == []  # (the browser logs the 503 itself)


async def test_a_revoked_key_is_told_on_the_page(browser: Browser, api: Api) -> None:
    # The badge said "closed", no more: the stale numbers stayed, with no reason given.
    mine = new_key("watcher", time.time())
    await api.runtime.store.add_api_key(mine.record)
    problems: list[str] = []
    page = await open_page(
        browser, Api(api.url, mine.token, api.runtime, api.server, api.http), problems
    )
    await page.goto(f"{api.url}/")
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent === 'live'"
    )
    await api.runtime.store.revoke_api_key(mine.record.id, time.time())
    await page.wait_for_function(
        "() => document.getElementById('connection').textContent.includes('was revoked')"
    )
    assert "sign in again" in await text_of(page, "#connection")


async def page_back_and_forth(
    page: Page, api: Api, table: str, newest: int, older: int
) -> list[int]:
    """Open the dashboard, wait for row ``newest`` of list ``table``, page back until row
    ``older`` shows (page 2), and answer the ids shown there."""
    await page.goto(f"{api.url}/")
    rows = f"#{table}-table tr"
    await page.wait_for_selector(f"{rows}[data-id='{newest}']")
    await page.wait_for_function(f"() => !document.getElementById('{table}-older').disabled")
    await page.click(f"#{table}-older")
    await page.wait_for_selector(f"{rows}[data-id='{older}']")
    shown: list[int] = await page.locator(rows).evaluate_all(
        "rows => rows.map(r => Number(r.dataset.id))"
    )
    assert await text_of(page, f"#{table}-page") == "page 2"
    return shown


async def test_the_task_list_pages_back_and_says_when_a_filter_is_refused(
    browser: Browser, api: Api
) -> None:
    # Only the newest 25 tasks could be seen; a refused filter left the old rows, silent.
    status, batch = await api.call(
        "POST",
        "/v1/tasks:batch",
        body={"tasks": [{"agent": "doomed", "input": {"n": n}} for n in range(30)]},
    )
    assert status == 200, batch
    ids = sorted((t["id"] for t in batch["tasks"]), reverse=True)
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    shown = await page_back_and_forth(page, api, "tasks", ids[0], ids[25])
    assert shown == ids[25:], shown
    assert await page.is_disabled("#tasks-older")
    await page.click("#tasks-newest")
    await page.wait_for_selector(f"#tasks-table tr[data-id='{ids[0]}']")
    await page.fill("#filter-agent", "a" * 300)
    await page.press("#filter-agent", "Enter")
    await page.wait_for_function(
        "() => document.getElementById('tasks-note').textContent.includes('422')"
    )
    assert problems == [] or all("422" in p for p in problems), problems


async def test_the_waiting_list_pages_back_to_the_longest_waiting(
    browser: Browser, api: Api
) -> None:
    # Only the newest 25 waiting tasks were listed: the approvals waiting longest never
    # got their buttons.
    ids = []
    for amount in range(27):
        _, sub = await api.call(
            "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": amount}}
        )
        ids.append(sub["id"])
    problems: list[str] = []
    page = await open_page(browser, api, problems)
    shown = await page_back_and_forth(page, api, "waiting", ids[-1], ids[0])
    assert shown == ids[1::-1], shown  # the two that waited longest, with their buttons
    oldest = f"#waiting-table button[data-action='approve'][data-id='{ids[0]}']"
    assert await page.locator(oldest).count() == 1
    await page.click("#waiting-newest")
    await page.wait_for_selector(f"#waiting-table tr[data-id='{ids[-1]}']")
    assert problems == []
    for task_id in ids:
        await api.runtime.cancel(task_id)
