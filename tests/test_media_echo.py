"""Echo mode end to end: real aiortc client peers over loopback ICE against the real app."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_CONNECTED, MEDIA_KEY
from fantasize_rtc.media.echo import PassthroughTrack
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer


async def test_echo_returns_video_audio_and_data_channel_messages(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    events: list[tuple[str, Any]] = []
    manager.rtc.on(MEDIA_CONNECTED, lambda e: events.append((MEDIA_CONNECTED, e)))
    manager.rtc.on(MEDIA_CLOSED, lambda e: events.append((MEDIA_CLOSED, e)))
    async with client_peer() as peer:
        peer.add_media()
        channel = peer.open_channel()
        body = await http_offer(client, peer, "echo")
        await peer.wait_frames("video", 10)
        await peer.wait_frames("audio", 10)
        await peer.wait_open()
        channel.send("hello")
        channel.send(b"\x00\x01binary")
        await wait_for(lambda: len(peer.messages) == 2, 10, message="echoed messages")
        assert peer.messages == ["hello", b"\x00\x01binary"]
        frame = peer.sinks["video"].last
        assert (frame.width, frame.height) == (160, 120)

        resp = await client.get(f"/rtc/sessions/{body['sessionId']}")
        report = await resp.json()
        assert resp.status == 200, report
        assert report["mode"] == "echo" and report["state"] == "connected"
        assert report["stats"]["framesReceived"]["video"] >= 10
        assert report["stats"]["packetsReceived"] > 0 and report["stats"]["bytesReceived"] > 0
        assert report["candidatePair"]["local"]["type"] == "host"
        assert report["verdict"].startswith("connected directly over UDP")

        resp = await client.delete(f"/rtc/sessions/{body['sessionId']}")
        assert resp.status == 200 and await resp.json() == {"closed": True}
        await wait_for(lambda: len(manager) == 0, 10, message="the session to close")
    names = [name for name, _ in events]
    assert names == [MEDIA_CONNECTED, MEDIA_CLOSED]
    assert events[1][1].reason == "deleted" and events[1][1].session_id == body["sessionId"]
    resp = await client.get(f"/rtc/sessions/{body['sessionId']}")
    report = await resp.json()
    assert report["state"] == "closed" and report["closeReason"] == "deleted"


async def test_passthrough_echo_sends_the_encoded_frames_back(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "echo", passthrough=True)
        await peer.wait_frames("video", 15)
        await peer.wait_frames("audio", 15)
        frame = peer.sinks["video"].last
        assert (frame.width, frame.height) == (160, 120)
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["stats"]["framesSent"]["video"] >= 15
        session = manager.sessions()[0]
        assert all(isinstance(t.sender.track, PassthroughTrack) for t in session.pc.getTransceivers())
        # a keyframe request from the far end is forwarded to the peer's own encoder
        sender = next(t.sender for t in session.pc.getTransceivers() if t.kind == "video")
        sender._send_keyframe()
    await wait_for(lambda: len(manager) == 0, 20, message="the session to end when the client hangs up")
