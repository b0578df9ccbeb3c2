"""A page whose server goes away says so clearly, keeps trying, and recovers when it is back."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess


@pytest.mark.parametrize(
    ("crash", "query"),
    [(True, ""), (False, ""), (True, "?transport=poll")],
    ids=["crash", "graceful-stop", "crash-long-poll"],
)
def test_page_reports_a_lost_server_and_recovers(
    new_page, tmp_path: Path, artifacts: Path, crash: bool, query: str, page_errors: PageErrors
) -> None:
    server = ServerProcess(tmp_path, "gone").start()
    try:
        page = new_page("page", server.url)
        page.goto(f"/{query}#echo")
        expect(page.locator("#server-status")).to_have_attribute("data-state", "connected")
        page.select_option("#source", "generated")
        page.click("#echo-start")
        echo_status = page.locator("#echo-status")
        expect(echo_status).to_have_attribute("data-state", "connected")
        page.click("#tab-call")
        page.fill("#call-room", "steady")
        page.fill("#call-name", "alice")
        page.click("#call-join-button")
        expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")

        server.stop(crash=crash)
        pill = page.locator("#server-status")
        expect(pill).to_have_attribute("data-state", "reconnecting")
        expect(pill).to_contain_text("Lost the server")
        # After the first retry fails, the reason is the plain one: the server is not reachable.
        expect(pill).to_contain_text("not reachable")
        status = page.locator("#call-status")
        expect(status).to_have_attribute("data-state", "failed")
        expect(status).to_contain_text("not reachable")
        expect(status).to_contain_text("Trying again")
        # Not a frozen panel: the user can still leave the room.
        expect(page.locator("#call-leave")).to_be_enabled()
        if crash and not query:
            page.screenshot(path=str(artifacts / "server-gone.png"), full_page=True)

        # The same server comes back (fresh state): the page joins again by itself.
        server.start()
        # The echo that was running ended with the reason (its media stopped, or the server
        # was found to have restarted), and can be started again.
        expect(echo_status).to_have_attribute("data-state", "failed", timeout=30_000)
        expect(echo_status).to_contain_text("so the echo ended")
        expect(page.locator("#echo-start")).to_be_enabled()
        expect(pill).to_have_attribute("data-state", "connected", timeout=30_000)
        expect(pill).to_contain_text("long-poll" if query else "WebSocket")
        expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
        expect(status).to_contain_text("In room steady as alice")
        assert server.room_peers("steady") == {"alice"}
        # And the echo works again against the new server.
        page.click("#tab-echo")
        page.click("#echo-start")
        expect(echo_status).to_have_attribute("data-state", "connected")
        assert page_errors.errors == []
    finally:
        server.stop()
