"""The Server panel (the operator's view): GET /rtc/overview with the admin key, drawn live.

One operator page watches while peers join over HTTP and relay signals, and another browser runs
an echo and a recording; the key is refused, accepted, kept in the tab only and forgotten.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Request, Route, expect

from tests.browser.conftest import ADMIN_KEY, PageErrors, ServerProcess, open_panel, unique
from tests.helpers import wait_for_sync

KEY_STORAGE = "fantasize-rtc.adminKey"


def post(server: ServerProcess, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def chart_points(page: Page, chart: str) -> int:
    return int(page.locator(f'.chart[data-chart="{chart}"]').get_attribute("data-points") or 0)


def test_the_operator_sees_rooms_sessions_recordings_and_charts(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    operator = new_page("operator", server.url)
    overview_requests: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.endswith("/rtc/overview"):
            overview_requests.append(request.url)

    operator.on("request", on_request)
    operator.goto("/#server")
    status = operator.locator("#server-panel-status")
    expect(status).to_contain_text("Enter the admin key")
    expect(operator.locator("#server-view")).to_be_hidden()

    # A wrong key: refused in plain words, and not kept.
    operator.fill("#server-key", "not-the-key")
    operator.click("#server-key-submit")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("The server refused this admin key")
    expect(operator.locator("#server-view")).to_be_hidden()
    assert operator.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None

    # Two peers join a room over HTTP (no channel: they poll nothing, so signals queue for them).
    room = unique("ops")
    alice = post(server, "/rtc/connect", {"roomId": room, "peerId": "alice"})["token"]
    post(server, "/rtc/connect", {"roomId": room, "peerId": "bob"})

    operator.fill("#server-key", ADMIN_KEY)
    operator.press("#server-key", "Enter")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text("Live")
    expect(operator.locator("#server-key-form")).to_be_hidden()
    expect(operator.locator("#server-forget")).to_be_visible()
    row = operator.locator(f'#server-rooms tr[data-room-id="{room}"]')
    expect(row.locator("li[data-peer-id]")).to_have_count(2)
    expect(row.locator('li[data-peer-id="alice"]')).to_contain_text("HTTP")
    expect(row.locator('li[data-peer-id="bob"]')).to_contain_text("HTTP")
    own = operator.locator(f'#server-rooms tr[data-room-id="{operator.evaluate("demo.lab.roomId")}"]')
    expect(own).to_contain_text("(this page)")
    expect(own.locator('li[data-peer-id="me"]')).to_contain_text("WebSocket")

    # Another browser echoes and records while the operator watches.
    media = new_page("media", server.url)
    open_panel(media, "echo")
    media.click("#echo-start")
    expect(media.locator("#echo-status")).to_have_attribute("data-state", "connected")
    media.click("#tab-record")
    media.click("#record-start")
    expect(media.locator("#record-status")).to_contain_text("Recording")
    lab = media.evaluate("demo.lab.roomId")
    lab_row = operator.locator(f'#server-rooms tr[data-room-id="{lab}"]')
    expect(lab_row.locator('li[data-peer-id="me"]')).to_contain_text("WebSocket")
    expect(lab_row.locator('li[data-peer-id="@echo"]')).to_contain_text("server")
    expect(lab_row.locator('li[data-peer-id="@record"]')).to_contain_text("server")
    in_lab = operator.locator(f"code:text-is('{lab}')")
    sessions = operator.locator("#server-sessions tr[data-session-id]", has=in_lab)
    for mode in ("echo", "record"):
        expect(sessions.filter(has_text=mode).locator(".verdict-cell")).to_contain_text("connected directly over UDP")
    recordings = operator.locator("#server-recordings tr[data-recording-id]", has=in_lab)
    expect(recordings).to_have_count(1)
    expect(operator.locator("#server-summary")).to_contain_text("Recording now")

    # Signals flow between the HTTP peers; the charts gain points from consecutive answers.
    def charts_filled() -> bool:
        for _ in range(5):
            post(server, "/rtc/signal", {"signal": {"type": "ops-ping", "payload": {}, "to": "bob"}}, alice)
        points = {name: chart_points(operator, name) for name in ("signals", "sessions", "setup", "loopLag")}
        value = operator.locator('.chart[data-chart="signals"] .chart-value').inner_text()
        return points["signals"] >= 3 and points["setup"] >= 1 and points["loopLag"] >= 3 and value != "0.0 /s"

    wait_for_sync(charts_filled, timeout=20, interval=0.3, message="the charts to fill")
    expect(operator.locator('.chart[data-chart="sessions"] .chart-value')).to_have_text("2")
    expect(operator.locator('.chart[data-chart="setup"] .chart-value')).to_contain_text("ms")
    expect(operator.locator('.chart[data-chart="loopLag"] .chart-value')).to_contain_text("ms")
    label = operator.locator('.chart[data-chart="signals"] svg').get_attribute("aria-label") or ""
    assert re.match(
        r"Signals relayed, per second, over the last \d+ (seconds|minutes?): now [\d.]+ /s, lowest ", label
    ), label
    operator.screenshot(path=str(artifacts / "panel-server.png"), full_page=True)

    # The key lives in this tab only: sessionStorage, not localStorage, not a cookie; a reload keeps it.
    assert operator.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == ADMIN_KEY
    assert ADMIN_KEY not in operator.evaluate("JSON.stringify({...localStorage}) + document.cookie")
    assert all(ADMIN_KEY not in c["value"] for c in operator.context.cookies())
    operator.reload()
    expect(status).to_contain_text("Live")
    expect(row.locator("li[data-peer-id]")).to_have_count(2)

    # Phone width: nothing sticks out sideways.
    operator.set_viewport_size({"width": 390, "height": 844})
    assert operator.evaluate("document.documentElement.scrollWidth") <= 390
    operator.screenshot(path=str(artifacts / "panel-server-phone.png"), full_page=True)
    operator.set_viewport_size({"width": 1180, "height": 900})

    # The server unreachable: said so, the figures kept (marked stale), back by itself.
    operator.route("**/rtc/overview", lambda route: route.abort())
    expect(status).to_contain_text("Cannot reach the server")
    expect(status).to_contain_text("Retrying every 2 s")
    expect(operator.locator("#server-view")).to_have_class("server-view stale")
    operator.unroute("**/rtc/overview")
    expect(status).to_contain_text("Live")

    # A draining server says so (the real answer, marked draining on the way).
    def draining(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["server"]["draining"] = True
        route.fulfill(response=response, json=body)

    operator.route("**/rtc/overview", draining)
    expect(operator.locator("#server-draining")).to_be_visible()
    expect(operator.locator("#server-draining")).to_contain_text("This server is draining")
    operator.unroute("**/rtc/overview")
    expect(operator.locator("#server-draining")).to_be_hidden()

    # Another tab: polling stops while the panel is hidden.
    operator.click("#tab-log")
    assert operator.evaluate("demo.server.polling") is False
    asked = len(overview_requests)
    media.click("#record-stop")
    expect(media.locator("#record-status")).to_contain_text("Saved", timeout=30_000)
    media.click("#tab-echo")
    media.click("#echo-stop")
    expect(media.locator("#echo-status")).to_have_text("Stopped.")
    wait_for_sync(lambda: server.room_peers(lab) == {"me"}, timeout=10, message="the sessions to end")
    assert len(overview_requests) == asked
    operator.click("#tab-server")
    expect(sessions).to_have_count(0)
    expect(recordings).to_have_count(0)

    # Forget key: gone from the tab, the figures hidden, polling stopped.
    operator.click("#server-forget")
    expect(status).to_contain_text("Key forgotten")
    expect(operator.locator("#server-view")).to_be_hidden()
    expect(operator.locator("#server-key-form")).to_be_visible()
    expect(operator.locator("#server-key")).to_be_focused()
    assert operator.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    assert operator.evaluate("demo.server.polling") is False
    assert page_errors.errors == []
