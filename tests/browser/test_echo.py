"""The Echo panel: media to the server's @echo peer and back; the generated-source fallback."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel, wait_for_media
from tests.helpers import wait_for_sync

DENY_CAMERA = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException("Permission denied", "NotAllowedError");
};
"""


def test_echo_returns_video_and_audio(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    page = new_page("echo", server.url)
    open_panel(page, "echo")
    page.click("#echo-start")
    expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#echo-status")).to_contain_text("your camera")
    stats = wait_for_media(page, "demo.echo.pc")
    assert stats["audioPackets"] > 0
    # The echo session shows up in the page's private room while it lives.
    room = page.evaluate("demo.lab.roomId")
    assert server.room_peers(room) == {"me", "@echo"}
    expect(page.locator("#echo-stats dd").nth(1)).to_contain_text("fps")
    page.screenshot(path=str(artifacts / "panel-echo.png"), full_page=True)

    page.click("#echo-stop")
    expect(page.locator("#echo-status")).to_have_text("Stopped.")
    assert page.evaluate("demo.echo.pc") is None
    wait_for_sync(lambda: server.room_peers(room) == {"me"}, timeout=10, message="@echo to leave the room")
    assert page_errors.errors == []


def test_denied_camera_falls_back_to_a_generated_source(
    new_page, server: ServerProcess, page_errors: PageErrors
) -> None:
    page = new_page("denied", server.url, init_script=DENY_CAMERA)
    open_panel(page, "echo")
    page.click("#echo-start")
    notice = page.locator("#media-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Camera and microphone access was denied")
    expect(notice).to_contain_text("generated test pattern")
    expect(page.locator("#source")).to_have_value("generated")
    expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#echo-status")).to_contain_text("generated test pattern")
    wait_for_media(page, "demo.echo.pc")
    page.click("#echo-stop")
    assert page_errors.errors == []


def test_stop_while_starting_leaves_nothing_running(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    page = new_page("hasty", server.url)
    open_panel(page, "echo")
    room = page.evaluate("demo.lab.roomId")
    # Both clicks in one task: Stop lands while Start is still opening the camera.
    page.evaluate("document.getElementById('echo-start').click(); document.getElementById('echo-stop').click()")
    expect(page.locator("#echo-status")).to_have_text("Stopped.")
    expect(page.locator("#echo-start")).to_be_enabled()
    # Whatever the abandoned start opened afterwards was closed again: no session, no camera.
    wait_for_sync(
        lambda: page.evaluate("demo.echo.pc") is None and page.evaluate("demo.echo.local") is None,
        timeout=10,
        message="nothing running",
    )
    wait_for_sync(lambda: server.room_peers(room) == {"me"}, timeout=10, message="no @echo in the room")
    assert page.evaluate("document.getElementById('echo-local').srcObject") is None
    # And a real start afterwards works.
    page.click("#echo-start")
    expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
    page.click("#echo-stop")
    assert page_errors.errors == []


def test_receive_only_shows_the_server_test_pattern(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    page = new_page("play", server.url)
    open_panel(page, "echo")
    room = page.evaluate("demo.lab.roomId")
    page.check("#echo-receive")
    page.click("#echo-start")
    status = page.locator("#echo-status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text("the server sends a test pattern")
    expect(page.locator("#echo-remote-caption")).to_have_text("Sent by the server (@play)")
    expect(page.locator("#echo-receive")).to_be_disabled()
    wait_for_media(page, "demo.echo.pc")
    assert server.room_peers(room) == {"me", "@play"}
    # Nothing is sent: no camera was opened.
    assert page.evaluate("demo.echo.local") is None
    page.screenshot(path=str(artifacts / "panel-echo-receive.png"), full_page=True)
    page.click("#echo-stop")
    wait_for_sync(lambda: server.room_peers(room) == {"me"}, timeout=10, message="@play to leave the room")
    assert page_errors.errors == []
