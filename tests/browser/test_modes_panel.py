"""The Echo panel's mode picker: the server's own modes and an application's, tried in the page.

The app runs in this process (:class:`AppThread`) with a copy of the built-in registry and three
modes defined here: ``shout`` sends your video back and answers data channel text in capitals,
``greeter`` sends no media and talks only over the data channel, ``closed`` refuses every offer.
The page signals its offer to ``@name`` in its private room, so these tests are also the room path
of issue 17: a real browser reaching a registered mode through a room.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import MediaStreamTrack, RTCDataChannel
from playwright.sync_api import Page, expect

from fantasize_rtc.errors import InvalidRequest
from fantasize_rtc.media import MEDIA_KEY, MediaSession, Mode, modes
from tests.browser.conftest import AppThread, PageErrors, open_panel, wait_for_media
from tests.helpers import wait_for_sync

SHOUT = "sends your video back and answers data channel text in capitals"
GREETER = "says hello over the data channel and sends no media"
CLOSED = "refuses every session, to show how a refusal reads"


class Mirror(MediaStreamTrack):
    """The frames of a received video track, sent back as they come."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> Any:
        return await self._source.recv()

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class Shout(Mode):
    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        pc = session.pc
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None) if pc else None
        if track.kind != "video" or transceiver is None:
            session.drain(track)
            return
        transceiver.sender.replaceTrack(Mirror(track))
        transceiver.direction = "sendrecv"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            if isinstance(message, str):
                channel.send(message.upper())


class Greeter(Mode):
    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        channel.send("hello from @greeter")

        @channel.on("message")
        def on_message(message: Any) -> None:
            channel.send(f"greeter heard {len(str(message))} characters")


class Closed(Mode):
    async def after_remote_description(self, session: MediaSession) -> None:
        raise InvalidRequest("Closed for the night: come back tomorrow.")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppThread]:
    registry = modes.copy()
    registry.register("shout", Shout, description=SHOUT)
    registry.register("greeter", Greeter, description=GREETER)
    registry.register("closed", Closed, description=CLOSED)
    server = AppThread(tmp_path_factory.mktemp("modes"), registry).start()
    try:
        yield server
    finally:
        server.stop()


def live_sessions(app: AppThread) -> list[dict[str, Any]]:
    """The app's media sessions, read on its own event loop."""

    async def read() -> list[dict[str, Any]]:
        assert app.app is not None
        return [
            {"mode": s.mode.name, "via": s.via, "room": s.owner.room_id if s.owner else None, "state": s.state}
            for s in app.app[MEDIA_KEY].sessions()
        ]

    return app.call(read())


def option_values(page: Page) -> list[str]:
    values: list[str] = page.eval_on_selector_all("#echo-mode option", "os => os.map(o => o.value)")
    return values


def test_picker_lists_the_modes_and_opens_a_session_in_one(
    new_page, app: AppThread, artifacts: Path, page_errors: PageErrors
) -> None:
    page = new_page("modes", app.url)
    open_panel(page, "echo")
    room = page.evaluate("demo.lab.roomId")

    # Filled from GET /rtc/modes: echo (still the default) and the application's modes; record,
    # probe, play and sfu are listed with the panel to try them in, not offered in the picker.
    expect(page.locator("#echo-modes-summary")).to_have_text("Modes this server offers (8)")
    assert option_values(page) == ["echo", "shout", "greeter", "closed"]
    expect(page.locator("#echo-mode")).to_have_value("echo")
    expect(page.locator("#echo-mode-description")).to_contain_text("@echo: sends your audio and video back")
    expect(page.locator("#echo-mode")).to_have_accessible_name("Mode")
    expect(page.locator("#echo-mode")).to_have_accessible_description(re.compile(r"^@echo: sends your audio"))
    page.click("#echo-modes summary")
    listed = page.locator("#echo-mode-list")
    expect(listed.locator("dt")).to_have_text(
        ["@echo", "@record", "@probe", "@play", "@sfu", "@shout", "@greeter", "@closed"]
    )
    expect(listed.locator("dd").nth(5)).to_contain_text(SHOUT)
    expect(listed.locator("dd").nth(4)).to_contain_text("(try it in the Call panel: Group call through the server)")
    expect(listed.locator("dd").nth(1)).to_contain_text("(try it in the Record panel)")

    page.select_option("#echo-mode", "shout")
    expect(page.locator("#echo-mode-description")).to_have_text(f"@shout: {SHOUT}")
    expect(page.locator("#echo-start")).to_have_text("Start shout")
    expect(page.locator("#echo-receive")).to_be_hidden()  # receive only is echo's (it asks @play)
    page.click("#echo-start")
    status = page.locator("#echo-status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text("Connected to @shout")
    expect(status).to_contain_text("what it sends back is on the right")
    expect(page.locator("#echo-mode")).to_be_disabled()
    expect(page.locator("#echo-remote-caption")).to_have_text("Sent back by @shout")

    # The server opened the session in that mode, through the page's room (an offer to @shout).
    opened = [{"mode": "shout", "via": "signaling", "room": room, "state": "connected"}]
    wait_for_sync(lambda: live_sessions(app) == opened, timeout=10, message="a connected @shout session")
    assert app.room_peers(room) == {"me", "@shout"}
    session_id = page.evaluate("demo.echo.session.sessionId")
    status_code, report = app.get(f"/rtc/sessions/{session_id}")
    assert status_code == 200 and report["mode"] == "shout", report

    # What the mode sends back: the video, and capitals on the data channel.
    wait_for_media(page, "demo.echo.pc", audio=False)
    expect(page.locator("#echo-send")).to_be_enabled()
    page.fill("#echo-message", "hello modes")
    page.press("#echo-message", "Enter")
    messages = page.locator("#echo-messages li")
    expect(messages).to_have_text(["You: hello modes", "@shout: HELLO MODES"])
    expect(page.locator("#echo-message")).to_have_value("")
    page.screenshot(path=str(artifacts / "panel-echo-modes.png"), full_page=True)

    page.click("#echo-stop")
    expect(status).to_have_text("Stopped.")
    expect(page.locator("#echo-send")).to_be_disabled()
    wait_for_sync(lambda: app.room_peers(room) == {"me"}, timeout=10, message="@shout to leave the room")
    wait_for_sync(lambda: live_sessions(app) == [], timeout=10, message="the @shout session to end")

    # Back to echo: the built-in default works as before, without a data channel.
    page.select_option("#echo-mode", "echo")
    expect(page.locator("#echo-chat")).to_be_hidden()
    expect(page.locator("#echo-receive")).to_be_visible()
    expect(page.locator("#echo-start")).to_have_text("Start echo")
    page.click("#echo-start")
    expect(status).to_contain_text("Echoing")
    wait_for_media(page, "demo.echo.pc")
    assert [s["mode"] for s in live_sessions(app)] == ["echo"]
    assert page.evaluate("demo.echo.session.channel") is None
    page.click("#echo-stop")
    expect(status).to_have_text("Stopped.")
    assert page_errors.errors == []


def test_a_mode_without_media_and_refusals_in_words(
    new_page, app: AppThread, artifacts: Path, page_errors: PageErrors
) -> None:
    # At phone width: the picker, the list and the messages fit.
    page = new_page("modes-phone", app.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    open_panel(page, "echo")
    expect(page.locator("#echo-mode option")).to_have_count(4)

    page.select_option("#echo-mode", "greeter")
    page.click("#echo-start")
    status = page.locator("#echo-status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text("it sends no audio or video back")
    expect(page.locator("#echo-remote").locator("xpath=..").locator(".ph")).to_have_text(
        "@greeter sends no audio or video back"
    )
    messages = page.locator("#echo-messages li")
    expect(messages).to_have_text(["@greeter: hello from @greeter"])
    page.fill("#echo-message", "four")
    page.click("#echo-send")
    expect(messages).to_have_text(
        ["@greeter: hello from @greeter", "You: four", "@greeter: greeter heard 4 characters"]
    )
    assert [s["mode"] for s in live_sessions(app)] == ["greeter"]
    page.click("#echo-modes summary")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "phone-echo-modes.png"), full_page=True)
    page.click("#echo-stop")
    expect(status).to_have_text("Stopped.")

    # A mode that refuses: the server's reason, in words.
    page.select_option("#echo-mode", "closed")
    page.click("#echo-start")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_have_text("Could not start @closed: Closed for the night: come back tomorrow.")
    expect(page.locator("#echo-start")).to_be_enabled()
    expect(page.locator("#echo-mode")).to_be_enabled()

    # A mode the page lists but the server no longer offers (it restarted without it): said, and
    # the list is asked for again.
    page.evaluate(
        "(() => { const s = document.getElementById('echo-mode');"
        " s.append(new Option('gone', 'gone')); s.value = 'gone'; s.dispatchEvent(new Event('change')); })()"
    )
    page.click("#echo-start")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_have_text(
        "Could not start @gone: The server does not offer the mode gone (there is no @gone on it any more)."
    )
    wait_for_sync(lambda: "gone" not in option_values(page), timeout=10, message="the list of modes reloaded")
    expect(page.locator("#echo-mode")).to_have_value("echo")
    wait_for_sync(lambda: live_sessions(app) == [], timeout=10, message="no session left")
    assert page_errors.errors == []
