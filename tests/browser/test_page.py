"""The page as a whole: offline, keyboard-usable tabs, the Log panel, phone width."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Request, expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel, wait_for_media


def test_tabs_log_and_no_outside_requests(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    page = new_page("tour", server.url)
    requested: list[str] = []

    def on_request(request: Request) -> None:
        requested.append(request.url)

    page.on("request", on_request)
    page.goto("/")
    expect(page.locator("#server-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#server-status")).to_have_text("Connected to the server (WebSocket)")
    expect(page.locator("#tab-echo")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-echo")).to_be_visible()
    expect(page.locator("#foot-version")).to_contain_text("fantasize-rtc-server")

    # Keyboard: arrows move between tabs, Home/End jump; the hash follows.
    page.focus("#tab-echo")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-record")).to_be_focused()
    expect(page.locator("#panel-record")).to_be_visible()
    expect(page.locator("#panel-echo")).to_be_hidden()
    page.keyboard.press("End")
    expect(page.locator("#tab-log")).to_have_attribute("aria-selected", "true")
    assert page.evaluate("location.hash") == "#log"

    # The Log panel: timestamped lines from the page and from the server.
    log = page.locator("#log li")
    expect(log.filter(has_text="Connected to the server as me")).to_have_count(1)
    first_time = page.locator("#log li time").first.inner_text()
    assert len(first_time) == 12 and first_time[2] == ":" and first_time[8] == ".", first_time
    page.keyboard.press("Home")
    expect(page.locator("#panel-echo")).to_be_visible()

    # Start and stop an echo with the generated source, then read about it in the log.
    page.select_option("#source", "generated")
    page.click("#echo-start")
    expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
    wait_for_media(page, "demo.echo.pc")
    for figure in ("Frame rate", "Receiving", "Sending"):  # the live stats have a second sample
        expect(page.locator("#echo-stats div", has_text=figure).locator("dd")).not_to_have_text("\u2013")
    page.screenshot(path=str(artifacts / "demo-page.png"))
    page.click("#echo-stop")
    page.click("#tab-log")
    expect(log.filter(has_text="answer from @echo")).to_have_count(1)
    expect(page.locator('#log li[data-source="server"]').first).to_be_visible()
    page.screenshot(path=str(artifacts / "panel-log.png"), full_page=True)

    # Everything came from this server: the page works offline.
    outside = [u for u in requested if not u.startswith((server.url, "data:", "blob:"))]
    assert outside == []
    assert page_errors.errors == []


def test_phone_width(new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors) -> None:
    page = new_page("phone", server.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    for panel in ("echo", "record", "probe", "log", "call"):
        open_panel(page, panel)
        expect(page.locator(f"#panel-{panel}")).to_be_visible()
        # Readable at phone width: nothing sticks out sideways.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, panel
    page.fill("#call-room", "phone-room")
    page.fill("#call-name", "pocket")
    page.click("#call-join-button")
    expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")
    page.screenshot(path=str(artifacts / "phone-call.png"), full_page=True)
    assert page_errors.errors == []
