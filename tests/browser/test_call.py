"""The Call panel: two browsers meet in a room and call each other P2P through our signaling."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import PageErrors, ServerProcess, unique, wait_for_media
from tests.helpers import wait_for_sync


def join(page: Page, room: str, name: str, query: str = "") -> None:
    page.goto(f"/{query}#call")
    page.fill("#call-room", room)
    page.fill("#call-name", name)
    page.click("#call-join-button")
    expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")


def test_two_browsers_call_each_other(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    room = unique("call")
    alice = new_page("alice", server.url)
    bob = new_page("bob", server.url)
    join(alice, room, "alice")
    # Bob receives by long-poll (as behind a proxy that drops WebSockets); Alice by WebSocket.
    join(bob, room, "bob", "?transport=poll")
    assert alice.evaluate("demo.call.client.transport") == "websocket"
    assert bob.evaluate("demo.call.client.transport") == "poll"
    expect(bob.locator("#server-status")).to_contain_text("long-poll")

    # Each sees the other, live.
    call_bob = alice.locator('#call-peers li[data-peer-id="bob"] button')
    expect(call_bob).to_be_enabled()
    expect(bob.locator('#call-peers li[data-peer-id="alice"] button')).to_be_enabled()
    assert server.room_peers(room) == {"alice", "bob"}

    call_bob.click()
    expect(bob.locator("#call-incoming")).to_be_visible()
    expect(bob.locator("#call-incoming-text")).to_contain_text("alice is calling")
    bob.click("#call-answer")

    for page in (alice, bob):
        expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#call-status")).to_contain_text("Media goes directly between your browsers")
    # Both decode the other's video, and audio arrives both ways.
    wait_for_media(alice, "demo.call.pc")
    wait_for_media(bob, "demo.call.pc")
    # The media path is P2P: the server never became a peer of this room.
    assert server.room_peers(room) == {"alice", "bob"}
    expect(alice.locator("#call-stats dd").first).not_to_have_text("\u2013")
    alice.screenshot(path=str(artifacts / "panel-call.png"), full_page=True)
    bob.screenshot(path=str(artifacts / "panel-call-callee.png"), full_page=True)

    alice.click("#call-hangup")
    expect(alice.locator("#call-status")).to_contain_text("Call with bob ended")
    expect(bob.locator("#call-status")).to_contain_text("alice ended the call")
    for page in (alice, bob):
        assert page.evaluate("demo.call.pc") is None
        expect(page.locator("#call-hangup")).to_be_disabled()
    # Hanging up ends the call, not the membership.
    assert server.room_peers(room) == {"alice", "bob"}
    expect(alice.locator('#call-peers li[data-peer-id="bob"] button')).to_be_enabled()

    # Bob closes his tab: the page leaves the room on its way out, so Alice sees him go at
    # once instead of after the peer timeout.
    bob.close()
    expect(alice.locator('#call-peers li[data-peer-id="bob"]')).to_have_count(0)
    assert server.room_peers(room) == {"alice"}
    alice.click("#call-leave")
    wait_for_sync(lambda: server.room_peers(room) is None, timeout=10, message="the empty room to close")
    assert page_errors.errors == []


def test_declined_call_and_taken_name(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    room = unique("decline")
    alice = new_page("alice", server.url)
    bob = new_page("bob", server.url)
    join(alice, room, "alice")
    join(bob, room, "bob")
    alice.locator('#call-peers li[data-peer-id="bob"] button').click()
    expect(bob.locator("#call-incoming")).to_be_visible()
    bob.click("#call-decline")
    expect(alice.locator("#call-status")).to_contain_text("bob ended the call (declined)")
    expect(alice.locator("#call-status")).to_have_attribute("data-state", "idle")
    assert alice.evaluate("demo.call.pc") is None

    # A third browser cannot take a name that is in use: it is told so, clearly.
    carol = new_page("carol", server.url)
    carol.goto("/#call")
    carol.fill("#call-room", room)
    carol.fill("#call-name", "bob")
    carol.click("#call-join-button")
    expect(carol.locator("#call-status")).to_have_attribute("data-state", "failed")
    expect(carol.locator("#call-status")).to_contain_text("Someone called bob is already in room")
    expect(carol.locator("#call-join-button")).to_be_enabled()
    assert server.room_peers(room) == {"alice", "bob"}
    assert page_errors.errors == []
