"""The Call panel's WHEP viewer: an aiortc publisher over WHIP (``mode=sfu``), watched by Chromium."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_KEY, PageErrors, ServerProcess, open_panel, wait_for_media
from tests.helpers import wait_for_sync
from tests.media_helpers import ClientPeer, SmallVideo, Tone

T = TypeVar("T")


class WhipPublisher:
    """An aiortc peer that publishes a small moving picture and a tone with ``POST /whip?mode=sfu``;
    aiortc runs on an event loop in a thread (the browser tests are synchronous)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location: str | None = None
        self.session_id: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="whip-publisher", daemon=True)
        self._thread.start()
        self.peer = self.call(self._make_peer())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _make_peer(self) -> ClientPeer:
        peer = ClientPeer()
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        peer.pc.addTransceiver(Tone(), direction="sendonly")
        return peer

    def publish(self) -> str:
        """Offer, POST, apply the answer; returns the session id (``X-Session-Id``)."""
        offer = self.call(self.peer.offer())
        request = urllib.request.Request(
            f"{self.url}/whip?mode=sfu", data=offer.encode(), headers={"Content-Type": "application/sdp"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            self.location = response.headers["Location"]
            self.session_id = response.headers["X-Session-Id"]
            answer = response.read().decode()
        self.call(self.peer.accept(answer))
        assert self.session_id
        return self.session_id

    def delete(self) -> int:
        """End the publication: ``DELETE`` its Location."""
        request = urllib.request.Request(f"{self.url}{self.location}", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)

    def close(self) -> None:
        try:
            self.call(self.peer.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture
def publisher(server: ServerProcess) -> Iterator[WhipPublisher]:
    pub = WhipPublisher(server.url)
    try:
        yield pub
    finally:
        pub.close()


def session_report(server: ServerProcess, session_id: str) -> dict[str, Any]:
    status, body = server.get(f"/rtc/sessions/{session_id}")
    assert status == 200, (status, body)
    return dict(body)


def viewer_id(page: Page) -> str:
    location: str = page.evaluate("demo.call.whep.viewer.location")
    return location.rstrip("/").rsplit("/", 1)[-1]


def watch(page: Page, text: str) -> None:
    page.fill("#whep-session", text)
    page.click("#whep-watch")


def test_whep_viewer_watches_a_whip_stream_until_its_publisher_ends(
    new_page, server: ServerProcess, publisher: WhipPublisher, page_errors: PageErrors
) -> None:
    page = new_page("viewer", server.url)
    open_panel(page, "call")
    status = page.locator("#whep-status")

    # A stream that does not exist is said so, and the form stays usable.
    watch(page, "no-such-stream")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("There is no live stream no-such-stream")
    expect(page.locator("#whep-watch")).to_be_enabled()

    session_id = publisher.publish()
    wait_for_sync(
        lambda: session_report(server, session_id).get("state") == "connected",
        timeout=15,
        interval=0.1,
        message="the WHIP publisher to connect",
    )

    # The WHIP Location pasted as it is works too (the page takes the id out of it).
    watch(page, f"{server.url}{publisher.location}")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_contain_text(f"Watching stream {session_id}")
    stats = wait_for_media(page, "demo.call.whep.pc")
    assert stats["framesDecoded"] > 0 and stats["audioPackets"] > 0
    first = viewer_id(page)
    report = session_report(server, first)
    assert report["mode"] == "whep" and report["via"] == "whep" and report["state"] == "connected", report
    assert report["forwarding"]["group"] == session_id
    expect(page.locator("#whep-stats dd").first).not_to_have_text("\u2013")

    # Stop ends the viewer on the server too (DELETE on its Location); the publisher goes on.
    page.click("#whep-stop")
    expect(status).to_have_text("Stopped watching.")
    assert page.evaluate("demo.call.whep.pc") is None
    wait_for_sync(
        lambda: session_report(server, first).get("closeReason") == "deleted",
        timeout=10,
        interval=0.1,
        message="the viewer's session to end",
    )
    assert session_report(server, session_id)["state"] == "connected"

    watch(page, session_id)
    expect(status).to_have_attribute("data-state", "connected")
    wait_for_media(page, "demo.call.whep.pc", frames=5)
    second = viewer_id(page)

    # The publisher ends: the server closes the viewer, and the page says the stream ended.
    assert publisher.delete() == 200
    expect(status).to_contain_text("The stream ended", timeout=5_000)
    expect(status).to_have_attribute("data-state", "idle")
    assert page.evaluate("demo.call.whep.pc") is None
    expect(page.locator("#whep-watch")).to_be_enabled()
    assert session_report(server, second)["closeReason"] == "publisher_gone"

    # Watching it again is refused with the server's reason.
    watch(page, session_id)
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("Could not watch")
    assert page_errors.errors == []


def test_whep_of_an_owned_stream_needs_its_token(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    """A session a room member published with its token: watching it without the token is refused
    (401, said in words); with the admin key it plays."""
    page = new_page("owner", server.url)
    open_panel(page, "call")
    # The page's own peer publishes over WHIP with its token (a generated picture, from the page).
    session_id: str = page.evaluate(
        """async () => {
          const { iceGatheringDone } = await import('/static/rtc-client.js');
          const canvas = Object.assign(document.createElement('canvas'), { width: 160, height: 120 });
          const ctx = canvas.getContext('2d');
          let n = 0;
          window.paint = setInterval(() => { ctx.fillStyle = `hsl(${(n += 7) % 360} 80% 50%)`; ctx.fillRect(0, 0, 160, 120); }, 33);
          const pc = new RTCPeerConnection();
          pc.addTransceiver(canvas.captureStream(30).getVideoTracks()[0], { direction: 'sendonly' });
          await pc.setLocalDescription(await pc.createOffer());
          await iceGatheringDone(pc, 2000);
          const response = await fetch('/whip?mode=sfu', {
            method: 'POST', body: pc.localDescription.sdp,
            headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${demo.lab.token}` },
          });
          if (response.status !== 201) throw new Error(`WHIP answered ${response.status}: ${await response.text()}`);
          await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
          window.whipPc = pc;
          return response.headers.get('X-Session-Id');
        }"""
    )
    wait_for_sync(
        lambda: session_report(server, session_id).get("state") == "connected",
        timeout=15,
        interval=0.1,
        message="the page's WHIP session to connect",
    )
    viewer = new_page("viewer", server.url)
    open_panel(viewer, "call")
    status = viewer.locator("#whep-status")
    watch(viewer, session_id)
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("belongs to a room member")
    viewer.fill("#whep-token", ADMIN_KEY)
    viewer.click("#whep-watch")
    expect(status).to_have_attribute("data-state", "connected")
    wait_for_media(viewer, "demo.call.whep.pc", audio=False, frames=5)
    viewer.click("#whep-stop")
    page.evaluate("clearInterval(window.paint); window.whipPc.close()")
    assert page_errors.errors == []
