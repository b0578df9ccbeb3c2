"""The Call panel's group call through the server (``@sfu``): browsers in one room see each other
in a grid of tiles, the server forwarding each one's camera to the others; members leave and join
late, and the tiles follow."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PageErrors, ServerProcess, unique
from tests.helpers import wait_for_sync

# What each page shows of the call: the call's state, when its peer connection connected (page
# clock), and per tile: the frames decoded of the video track the tile's <video> plays (from the
# peer connection's stats, matched by track id), the picture's width on the element, the label.
TILES_JS = """async () => {
  const call = demo.call.group.call;
  const out = {
    state: call ? call.state : null, connectedAt: call ? call.connectedAt : null, now: performance.now(),
    described: call && call.pc && call.pc.remoteDescription ? call.pc.remoteDescription.type : null,
    status: document.getElementById('group-status').textContent, tiles: {},
  };
  if (!call || !call.pc) return out;
  const decoded = new Map();
  (await call.pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') decoded.set(s.trackIdentifier, s.framesDecoded || 0);
  });
  for (const tile of document.querySelectorAll('#group-tiles figure.remote')) {
    const video = tile.querySelector('video');
    const track = video.srcObject ? video.srcObject.getVideoTracks()[0] : null;
    const rate = tile.querySelector('.rate');
    out.tiles[tile.dataset.peerId] = {
      framesDecoded: track ? (decoded.get(track.id) ?? 0) : 0,
      width: video.videoWidth,
      label: tile.querySelector('.who').textContent,
      kbps: rate.dataset.kbps === undefined ? null : Number(rate.dataset.kbps),
    };
  }
  return out;
}"""


def view(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(TILES_JS)
    return result


def in_call(page: Page) -> bool:
    return bool(view(page)["state"] == "connected")


def join_room(page: Page, room: str, name: str) -> None:
    page.goto("/#call")
    page.fill("#call-room", room)
    page.fill("#call-name", name)
    page.click("#call-join-button")
    expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#group-join")).to_be_enabled()


def wait_decoding(pages: dict[str, Page], *, more: int = 10, timeout: float = 20) -> dict[str, dict[str, int]]:
    """Wait until every page has one tile per other page, each labelled with its peer id, with a
    picture, and decoding: ``more`` frames past the first count seen from now on."""
    start: dict[str, dict[str, int]] = {}
    names = set(pages)

    def decoding() -> dict[str, dict[str, int]] | None:
        # Every page and tile is read on each round (a tile's baseline is its first decoded count).
        now = {name: view(page)["tiles"] for name, page in pages.items()}
        done = True
        for name, tiles in now.items():
            seen = start.setdefault(name, {})
            for peer, tile in tiles.items():
                if tile["framesDecoded"] > 0:
                    seen.setdefault(peer, tile["framesDecoded"])
            done = (
                done
                and set(tiles) == names - {name}
                and all(
                    tile["label"] == peer
                    and tile["width"] > 0
                    and peer in seen
                    and tile["framesDecoded"] >= seen[peer] + more
                    for peer, tile in tiles.items()
                )
            )
        return {n: {p: t["framesDecoded"] for p, t in tiles.items()} for n, tiles in now.items()} if done else None

    last: dict[str, Any] = {}

    def decoding_noted() -> dict[str, dict[str, int]] | None:
        last.update({name: view(page) for name, page in pages.items()})
        return decoding()

    try:
        result: dict[str, dict[str, int]] = wait_for_sync(
            decoding_noted, timeout=timeout, interval=0.2, message=f"every tile of {sorted(names)} decoding"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the pages: {last}") from None
    return result


def publishers(server: ServerProcess, room: str) -> dict[str, list[str]]:
    status, body = server.get(f"/rtc/rooms/{room}")
    assert status == 200, (status, body)
    media = body.get("media") or {"publishers": []}
    return {p["peerId"]: sorted(f"{t['kind']} {t['codec']}" for t in p["tracks"]) for p in media["publishers"]}


def test_four_browsers_in_a_group_call_leave_and_join_late(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    room = unique("group")
    pages = {name: new_page(name, server.url) for name in ("alice", "bob", "carol", "dave")}
    for name, page in pages.items():
        join_room(page, room, name)
    for page in pages.values():
        page.click("#group-join")
    for name, page in pages.items():
        wait_for_sync(functools.partial(in_call, page), timeout=15, message=f"{name} in the call")

    # Everyone decodes the three others, each in a tile labelled with its peer id.
    started = time.monotonic()
    wait_decoding(pages)
    print(f"four members decoding each other after {time.monotonic() - started:.1f} s")
    sent = ["audio audio/opus", "video video/VP8"]
    assert publishers(server, room) == {name: sent for name in pages}
    alice = pages["alice"]
    expect(alice.locator("#group-status")).to_contain_text("You see 3 others")
    # Each tile shows its live inbound bitrate (refreshed every second from getStats).
    for page in pages.values():
        for rate in page.locator("#group-tiles figure.remote .rate").all():
            expect(rate).to_contain_text("kbit/s")
    wait_for_sync(
        lambda: all((t["kbps"] or 0) > 0 for t in view(alice)["tiles"].values()), timeout=10, message="bitrates"
    )
    expect(alice.locator("#group-tiles figure.self")).to_contain_text("alice (you)")
    alice.screenshot(path=str(artifacts / "panel-group-call.png"), full_page=True)

    # Dave leaves: his tiles go from the others' grids, and they go on decoding each other.
    dave = pages.pop("dave")
    dave.click("#group-leave")
    expect(dave.locator("#group-tiles figure")).to_have_count(0)
    expect(dave.locator("#group-status")).to_contain_text("You left the group call")
    left = time.monotonic()
    for page in pages.values():
        expect(page.locator('#group-tiles figure[data-peer-id="dave"]')).to_have_count(0, timeout=5_000)
    print(f"dave's tile gone from the others' grids {time.monotonic() - left:.2f} s after he left")
    wait_decoding(pages)
    assert publishers(server, room) == {name: sent for name in pages}
    assert dave.evaluate("demo.call.group.call") is None

    # Erin joins late: her offer brings a receive slot per track the call publishes, the server's
    # answer fills them, and a picture from each of the three comes without a renegotiation.
    erin = new_page("erin", server.url)
    join_room(erin, room, "erin")
    erin.click("#group-join")

    def pictures() -> dict[str, Any] | None:
        seen = view(erin)
        tiles = seen["tiles"]
        if seen["connectedAt"] is None or set(tiles) != set(pages):
            return None
        return seen if all(t["framesDecoded"] > 0 for t in tiles.values()) else None

    # Polled every 50 ms: the time measured is an upper bound of the first frame's.
    first = wait_for_sync(pictures, timeout=20, interval=0.05, message="erin's first pictures")
    after_ms = first["now"] - first["connectedAt"]
    print(f"erin's first pictures {after_ms:.0f} ms after her call connected")
    assert first["described"] == "answer", "erin's pictures waited for the server's offer"
    pages["erin"] = erin
    wait_decoding(pages)
    assert publishers(server, room) == {name: sent for name in pages}
    assert page_errors.errors == []


def test_leaving_the_room_ends_the_group_call(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    """Leave (the room) while in the group call: the call ends with it, on this page and for the
    others, and the page says so."""
    room = unique("group-leave")
    pages = {name: new_page(name, server.url) for name in ("ann", "ben")}
    for name, page in pages.items():
        join_room(page, room, name)
        page.click("#group-join")
    wait_decoding(pages, more=5)
    ann, ben = pages["ann"], pages["ben"]
    ann.click("#call-leave")
    expect(ann.locator("#call-status")).to_have_text("Not in a room.")
    expect(ann.locator("#group-tiles figure")).to_have_count(0)
    expect(ann.locator("#group-join")).to_be_disabled()
    assert ann.evaluate("demo.call.group.call") is None
    expect(ben.locator('#group-tiles figure[data-peer-id="ann"]')).to_have_count(0, timeout=5_000)
    expect(ben.locator("#group-status")).to_contain_text("Nobody else is in it yet")
    wait_for_sync(lambda: publishers(server, room) == {"ben": ["audio audio/opus", "video video/VP8"]}, timeout=10)
    assert page_errors.errors == []


@pytest.mark.parametrize("crash", [False, True], ids=["graceful-stop", "crash"])
def test_the_group_call_joins_again_after_the_server_restarts(
    new_page, tmp_path: Path, crash: bool, page_errors: PageErrors
) -> None:
    """The server goes away (a restart: it says ``bye``; a crash: it says nothing) and comes back
    with no memory of the call: the page's client joins the room again and its group call joins
    again by itself, with a new session; the call then works as before."""
    server = ServerProcess(tmp_path, "group-restart").start()
    try:
        ann = new_page("ann", server.url)
        join_room(ann, "restart", "ann")
        ann.click("#group-join")
        wait_for_sync(functools.partial(in_call, ann), timeout=15, message="ann in the call")
        first = ann.evaluate("demo.call.group.call.sessionId")
        assert first and publishers(server, "restart") == {"ann": ["audio audio/opus", "video video/VP8"]}

        server.stop(crash=crash)
        status = ann.locator("#group-status")
        if not crash:  # the server's bye says the session ended; the page waits for the server
            expect(status).to_contain_text("The server ended the call's session (shutdown)")
            expect(status).to_contain_text("Joining the group call again")
            expect(status).to_have_attribute("data-state", "connecting")
        server.start()

        def joined_again() -> bool:
            return in_call(ann) and ann.evaluate("demo.call.group.call.sessionId") not in (None, first)

        wait_for_sync(joined_again, timeout=30, interval=0.2, message="ann's call to join again")
        expect(status).to_have_attribute("data-state", "connected")
        assert publishers(server, "restart") == {"ann": ["audio audio/opus", "video video/VP8"]}
        # And it is a working call: someone joins, each sees the other.
        ben = new_page("ben", server.url)
        join_room(ben, "restart", "ben")
        ben.click("#group-join")
        wait_decoding({"ann": ann, "ben": ben}, more=5)
        assert page_errors.errors == []
    finally:
        server.stop()
