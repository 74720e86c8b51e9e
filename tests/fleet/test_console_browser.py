"""The console in a real browser (Playwright driving Debian's chromium): log in, the overview, the host
list filtered by htmx (a swap, not a page load), a host's page, the findings filter, and the same
filter form without JavaScript. The CSP is the production one: any violation is a console error, and
no console error is allowed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from playwright import sync_api  # ./scripts/setup installs it (the test extra) and Debian's chromium

from tests.fleet.console_live import LiveConsole, live_console

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    with live_console(tmp_path_factory.mktemp("console"), hosts=60) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert os.path.exists(CHROMIUM), f"no {CHROMIUM}: ./scripts/setup installs Debian's chromium"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, live: LiveConsole) -> Iterator[Any]:
    context = browser.new_context(base_url=live.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/login")
    page.fill("input[name=username]", live.username)
    page.fill("input[name=password]", live.password)
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/hosts")
    yield page
    context.close()
    assert errors == [], "console errors (a CSP violation is one)"


def _rows(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#results tbody tr td:nth-child(3)").all_inner_texts()]


def test_overview_links_into_the_filtered_host_list(page: Any, live: LiveConsole) -> None:
    page.click("header a:has-text('Overview')")
    offline = sum(st == "offline" for st in live.fleet.statuses.values())
    assert page.inner_text("#count-offline .n") == str(offline)
    page.click("#count-offline")
    page.wait_for_url("**/hosts?status=offline")
    assert _rows(page) == ["offline"] * offline


def test_host_filter_swaps_the_table_without_a_page_load(page: Any, live: LiveConsole) -> None:
    page.evaluate("window.notReloaded = true")
    with page.expect_response(lambda r: r.request.headers.get("hx-request") == "true") as swap:
        page.select_option("#hosts-status", "degraded")
    assert swap.value.status == 200 and "status=degraded" in swap.value.url
    page.wait_for_url("**/hosts?status=degraded*")
    degraded = sum(st == "degraded" for st in live.fleet.statuses.values())
    page.wait_for_function(f"() => document.querySelectorAll('#results tbody tr').length == {degraded}")
    assert _rows(page) == ["degraded"] * degraded
    with page.expect_response(lambda r: "q=db-" in r.url and r.request.headers.get("hx-request") == "true"):
        page.fill("#hosts-q", "db-")
    page.wait_for_function("() => [...document.querySelectorAll('#results tbody td:first-child')]"
                           ".every(td => td.colSpan > 1 || td.innerText.startsWith('db-'))")  # fmt: skip
    assert page.evaluate("window.notReloaded") is True, "htmx swapped the table; the page stayed"
    page.select_option("#hosts-status", "")
    page.fill("#hosts-q", "")
    page.wait_for_selector("#next")
    with page.expect_response(lambda r: "after=" in r.url):
        page.click("#next")
    page.wait_for_url("**after=*")  # htmx pushes the URL once it has swapped, after the response came
    assert page.evaluate("window.notReloaded") is True


def test_a_hosts_page_shows_its_extensions_and_history(page: Any, live: LiveConsole) -> None:
    page.select_option("#hosts-status", "degraded")
    page.wait_for_url("**/hosts?status=degraded*")
    page.locator("#results tbody td:first-child a").first.click()
    page.wait_for_url("**/hosts/*")
    assert "degraded" in page.inner_text("h1")
    assert page.locator("#extensions tbody tr").count() == 3
    assert "ringfence.sigma" in page.inner_text("#extensions")
    assert page.locator("#history tbody tr").count() == 40
    assert page.locator("#problems li").count() >= 1


def test_findings_filter_by_severity(page: Any) -> None:
    page.click("header a:has-text('Findings')")
    page.evaluate("window.notReloaded = true")
    with page.expect_response(lambda r: "severity=5" in r.url):
        page.select_option("#findings-severity", "5")
    page.wait_for_function("() => [...document.querySelectorAll('#results tbody td:nth-child(3)')]"
                           ".every(td => td.innerText == 'Critical')")  # fmt: skip
    assert page.locator("#results tbody tr").count() > 0
    assert page.evaluate("window.notReloaded") is True


def test_filters_work_without_javascript(browser: Any, live: LiveConsole) -> None:
    context = browser.new_context(base_url=live.url, java_script_enabled=False)
    page = context.new_page()
    page.goto("/login")
    page.fill("input[name=username]", live.username)
    page.fill("input[name=password]", live.password)
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/hosts")
    page.select_option("#hosts-status", "revoked")
    page.click("form.filters button")
    page.wait_for_url("**/hosts?status=revoked*")
    assert set(_rows(page)) == {"revoked"}
    context.close()
