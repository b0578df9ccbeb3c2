"""WHEP playback of what WHIP publishes: a real aiortc publisher, real aiortc viewers, a real server."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection

from fantasize_rtc.call import publish_whip, watch_whep
from fantasize_rtc.errors import SessionNotFound
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.media._aiortc_compat import tap_decoder
from tests.helpers import wait_for
from tests.media_helpers import ClientPeer, EncodedVideo, Sink, SmallVideo, Tone, client_peer, encode_vp8, udp_sockets

SDP = {"Content-Type": "application/sdp"}


async def publish(client: TestClient, peer: ClientPeer, query: str = "?mode=sfu") -> tuple[str, str]:  # type: ignore[type-arg]
    """WHIP-publish video and audio from ``peer``; (its Location, its session id)."""
    peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
    peer.pc.addTransceiver(Tone(), direction="sendonly")
    resp = await client.post(f"/whip{query}", data=await peer.offer(), headers=SDP)
    assert resp.status == 201, await resp.text()
    await peer.accept(await resp.text())
    return resp.headers["Location"], resp.headers["X-Session-Id"]


async def watch(client: TestClient, viewer: ClientPeer, session_id: str, **headers: str) -> str:  # type: ignore[type-arg]
    viewer.receive_only()
    resp = await client.post(f"/whep/{session_id}", data=await viewer.offer(), headers={**SDP, **headers})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Location"].startswith(f"/whep/{session_id}/") and resp.headers["ETag"]
    await viewer.accept(await resp.text())
    return resp.headers["Location"]


async def live(client: TestClient, session_id: str) -> None:  # type: ignore[type-arg]
    """Until the publisher's session is connected and publishing."""

    def publishing() -> bool:
        _owner, session, report = client.app[MEDIA_KEY].get(session_id)
        return session is not None and bool(report["forwarding"]["published"]) and session.connected

    await wait_for(publishing, 20, message="the WHIP session to publish")


async def test_two_viewers_watch_a_whip_session_and_learn_when_it_ends(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    sockets = udp_sockets()
    async with client_peer() as publisher, client_peer() as first, client_peer() as second:
        location, session_id = await publish(client, publisher)
        await live(client, session_id)
        first_location = await watch(client, first, session_id)
        await watch(client, second, session_id)
        for viewer in (first, second):
            await viewer.wait_frames("video", 20)
            await viewer.wait_frames("audio", 20)
        _owner, _session, report = manager.get(session_id)
        video = next(p for p in report["forwarding"]["published"] if p["kind"] == "video")
        assert video["subscribers"] == 2 and video["codec"] == "video/VP8"
        # One viewer leaves; the other goes on.
        assert (await client.delete(first_location)).status == 200
        await wait_for(lambda: video_subscribers(client, session_id) == 1, 10, message="one viewer left")
        frames = second.frames("video")
        await second.wait_frames("video", frames + 15)
        # The publisher goes: the viewer's session ends, and its peer connection with it.
        assert (await client.delete(location)).status == 200
        await wait_for(lambda: second.pc.connectionState in ("closed", "failed"), 20, message="the viewer is told")
        viewers = [r for _o, r in manager.ended_reports() if r["via"] == "whep"]
        assert sorted(r["closeReason"] for r in viewers) == ["deleted", "publisher_gone"]
    await wait_for(lambda: len(manager) == 0, 10, message="no session left")
    await wait_for(lambda: udp_sockets() <= sockets, 10, message="no socket left")
    assert manager.forwarding.groups == {}


def video_subscribers(client: TestClient, session_id: str) -> int:  # type: ignore[type-arg]
    _owner, _session, report = client.app[MEDIA_KEY].get(session_id)
    return int(next(p["subscribers"] for p in report["forwarding"]["published"] if p["kind"] == "video"))


async def test_a_viewer_gets_the_publishers_bytes(client: TestClient) -> None:  # type: ignore[type-arg]
    """No transcoding: the encoded frames a viewer receives are the publisher's, in order."""
    frames = encode_vp8(90)
    hashes = [hashlib.sha256(f).digest() for f in frames]
    async with client_peer() as publisher, client_peer() as viewer:
        publisher.pc.addTransceiver(EncodedVideo(frames), direction="sendonly")
        resp = await client.post("/whip?mode=sfu", data=await publisher.offer(), headers=SDP)
        assert resp.status == 201, await resp.text()
        await publisher.accept(await resp.text())
        session_id = resp.headers["X-Session-Id"]
        await live(client, session_id)
        received: asyncio.Queue[Any] = asyncio.Queue()

        @viewer.pc.on("track")
        def on_track(track: Any) -> None:
            transceiver = next(t for t in viewer.pc.getTransceivers() if t.receiver.track is track)
            assert tap_decoder(transceiver.receiver, received)

        viewer.pc.addTransceiver("video", direction="recvonly")
        resp = await client.post(f"/whep/{session_id}", data=await viewer.offer(), headers=SDP)
        assert resp.status == 201, await resp.text()
        await viewer.accept(await resp.text())
        got: list[bytes] = []
        while len(got) < 45:
            item = await asyncio.wait_for(received.get(), 20)
            got.append(hashlib.sha256(item[1].data).digest())
        start = hashes.index(got[0])
        assert got == [hashes[(start + i) % len(hashes)] for i in range(len(got))]


async def test_whep_bad_input(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    resp = await client.post("/whep/nosuchsession", data="v=0\r\n", headers=SDP)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "session_not_found"
    async with client_peer() as recorder, client_peer() as publisher, client_peer() as viewer:
        # A session that forwards nothing (WHIP's default mode records).
        _location, recording = await publish(client, recorder, "")
        resp = await client.post(f"/whep/{recording}", data="v=0\r\n", headers=SDP)
        body = await resp.json()
        assert resp.status == 409 and "mode=sfu" in body["error"]["message"]
        _location, session_id = await publish(client, publisher)
        await live(client, session_id)
        resp = await client.post(f"/whep/{session_id}", json={"sdp": "v=0"})
        assert resp.status == 415
        resp = await client.post(f"/whep/{session_id}", data="garbage", headers=SDP)
        assert resp.status == 400 and "Traceback" not in await resp.text()
        # An offer that can only receive H.264 cannot watch VP8.
        viewer.receive_only(audio=False)
        offer = _h264_only(await viewer.offer())
        resp = await client.post(f"/whep/{session_id}", data=offer, headers=SDP)
        body = await resp.json()
        assert resp.status == 400 and "video/VP8" in body["error"]["message"], body
        # Viewer URLs that are not viewers of that session.
        resp = await client.delete(f"/whep/{session_id}/{recording}")
        assert resp.status == 404
        resp = await client.options(f"/whep/{session_id}")
        assert resp.status == 204 and resp.headers["Accept-Post"] == "application/sdp"
        assert len([s for s in manager.sessions() if s.via == "whep"]) == 0


def _h264_only(sdp: str) -> str:
    keep: set[str] = set()
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:") and "H264/" in line:
            keep.add(line.split()[0][len("a=rtpmap:") :])
    for line in sdp.splitlines():
        if line.startswith("a=fmtp:") and "apt=" in line and line.split("apt=")[1] in keep:
            keep.add(line.split()[0][len("a=fmtp:") :])
    out = []
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            parts = line.split()
            out.append(" ".join([*parts[:3], *[p for p in parts[3:] if p in keep]]))
        elif not line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) or line.split()[0].split(":")[1] in keep:
            out.append(line)
    return "\r\n".join(out) + "\r\n"


async def test_the_python_helpers_publish_over_whip_and_watch_over_whep(client: TestClient) -> None:  # type: ignore[type-arg]
    url = str(client.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SessionNotFound):
            await watch_whep(http, url, "nosuchsession")
        pc = RTCPeerConnection()
        pc.addTransceiver(SmallVideo(), direction="sendonly")
        pc.addTransceiver(Tone(), direction="sendonly")
        publisher = await publish_whip(http, url, pc)
        assert publisher.location.startswith(url + "/whip/") and publisher.session_id
        await live(client, publisher.session_id)
        sinks: list[Sink] = []
        watching = RTCPeerConnection()
        watching.on("track", lambda track: sinks.append(Sink(track)))  # before: tracks come with the answer
        watching.addTransceiver("audio", direction="recvonly")
        watching.addTransceiver("video", direction="recvonly")
        viewer = await watch_whep(http, url, publisher.session_id, watching)
        await wait_for(lambda: len(sinks) == 2 and all(s.frames >= 10 for s in sinks), 20, message="both tracks play")
        await publisher.close()  # DELETE: the viewer's session ends with it
        await wait_for(lambda: viewer.pc.connectionState == "closed", 20, message="the viewer told")
        for sink in sinks:
            await sink.stop()
        await viewer.close()
    await wait_for(lambda: len(client.app[MEDIA_KEY]) == 0, 10, message="no session left")
