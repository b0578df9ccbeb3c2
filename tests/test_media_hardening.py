"""Issue 12, the media side: who owns sessions and recordings (4), the JWT gate on media (8), one
address holding shared capacity (9), and the logs and reasons of sessions that end badly (12).
Real aiortc peers against a real server; the SIGKILL test kills a real client process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY, RECORDING_SAVED
from fantasize_rtc.media import _aiortc_compat as aiortc_compat
from fantasize_rtc.media import session as media_session
from tests.helpers import IN_CI, wait_for
from tests.media_helpers import client_peer, http_offer, udp_sockets, wait_closed
from tests.test_media_recordings import record_briefly

ADMIN = {"Authorization": "Bearer admin-secret"}
SECRET = "a-shared-secret-long-enough-for-hs256"


def file_size(path: str) -> int:
    return Path(path).stat().st_size


def read_text(path: Path) -> str:
    return path.read_text()


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def connect_jwt(room: str, sub: str) -> str:
    return jwt.encode({"room": room, "sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def connect(client: Any, room: str, peer: str, **extra: Any) -> str:
    resp = await client.post("/rtc/connect", json={"roomId": room, "peerId": peer, **extra})
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["token"]
    return token


async def start(config: RtcConfig) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = TestClient(TestServer(create_app(config=config)))  # type: ignore[type-arg]
    await client.start_server()
    return client


async def ids(client: Any, headers: dict[str, str]) -> list[str]:
    resp = await client.get("/rtc/recordings", headers=headers)
    assert resp.status == 200, await resp.text()
    return [r["id"] for r in (await resp.json())["recordings"]]


# -- 4. ownership is bound to the credential, not the reusable name --------------------------------


async def test_4_ownership_follows_the_token_across_leave_and_reuse(client: TestClient) -> None:  # type: ignore[type-arg]
    """Before: after alice left, anyone connecting as alice in that room could list, download
    and delete her recordings and read her session reports."""
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    first = await connect(client, "r", "alice")
    async with client_peer() as peer:
        recording = await record_briefly(client, peer, saved, token=first)
    url = f"/rtc/recordings/{recording.recording_id}"
    report = f"/rtc/sessions/{recording.session_id}"
    # reconnecting with her token as proof keeps the token, and so what she made
    resp = await client.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"}, headers=bearer(first))
    assert resp.status == 200 and (await resp.json())["token"] == first
    assert await ids(client, bearer(first)) == [recording.recording_id]
    # she leaves; someone else takes her id
    assert (await client.post("/rtc/disconnect", json={}, headers=bearer(first))).status == 200
    impostor = await connect(client, "r", "alice")
    assert await ids(client, bearer(impostor)) == []
    for method in ("GET", "DELETE"):
        resp = await client.request(method, url, headers=bearer(impostor))
        assert resp.status == 403, (method, await resp.text())
    assert (await client.get(report, headers=bearer(impostor))).status == 403
    assert (await client.delete(report, headers=bearer(impostor))).status == 403
    # the admin still reaches everything, and the file is intact
    assert (await client.get(url, headers=ADMIN)).status == 200
    assert (await client.get(report, headers=ADMIN)).status == 200
    assert file_size(recording.path) == recording.size


async def test_4_a_signaled_sessions_report_is_bound_to_its_owners_token(client: TestClient) -> None:  # type: ignore[type-arg]
    first = await connect(client, "r", "alice")
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer, client.ws_connect("/rtc/ws", params={"token": first}) as ws:
        peer.add_media(audio=False)
        await ws.send_json(
            {"type": "signal", "signal": {"type": "offer", "to": "@echo", "payload": {"sdp": await peer.offer()}}}
        )
        while True:
            frame = json.loads((await ws.receive(timeout=20)).data)
            if frame["type"] == "signal" and frame["signal"]["type"] == "answer":
                break
        session_id = frame["signal"]["payload"]["sessionId"]
        await peer.accept(frame["signal"]["payload"]["sdp"])
        assert (await client.get(f"/rtc/sessions/{session_id}", headers=bearer(first))).status == 200
        await ws.send_json({"type": "disconnect"})
        await wait_closed(manager)
    impostor = await connect(client, "r", "alice")
    assert (await client.get(f"/rtc/sessions/{session_id}", headers=bearer(impostor))).status == 403


async def test_4_under_a_jwt_gate_the_identity_owns_across_reconnects(tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), admin_key="admin-secret", auth_secret=SECRET)
    client = await start(config)
    try:
        saved: list[Any] = []
        client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
        first = await connect(client, "r", "alice", authToken=connect_jwt("r", "alice"))
        async with client_peer() as peer:
            recording = await record_briefly(client, peer, saved, token=first)
        assert (await client.post("/rtc/disconnect", json={}, headers=bearer(first))).status == 200
        # the same person, proven by a new JWT, keeps her recordings; another identity does not
        again = await connect(client, "r", "alice", authToken=connect_jwt("r", "alice"))
        assert await ids(client, bearer(again)) == [recording.recording_id]
        assert await ids(client, bearer(connect_jwt("r", "alice"))) == [recording.recording_id]  # the JWT itself
        bob = await connect(client, "r", "bob", authToken=connect_jwt("r", "bob"))
        assert (await client.get(f"/rtc/recordings/{recording.recording_id}", headers=bearer(bob))).status == 403
    finally:
        await client.close()
    # the gate turned off later: a token-less "alice" cannot present that identity
    client = await start(config.replace(auth_secret=None))
    try:
        anyone = await connect(client, "r", "alice")
        assert await ids(client, bearer(anyone)) == []
        assert (await client.get(f"/rtc/recordings/{recording.recording_id}", headers=bearer(anyone))).status == 403
    finally:
        await client.close()


async def test_4_a_recording_saved_before_owner_keys_is_the_admins_only(client: TestClient) -> None:  # type: ignore[type-arg]
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    token = await connect(client, "r", "alice")
    async with client_peer() as peer:
        recording = await record_briefly(client, peer, saved, token=token)
    sidecar = Path(recording.path).with_suffix(".json")
    text = read_text(sidecar)
    data = json.loads(text)
    assert data["ownerKey"] and data["ownerKey"] != token and token not in text
    del data["ownerKey"]
    write_text(sidecar, json.dumps(data))
    assert await ids(client, bearer(token)) == []
    assert (await client.get(f"/rtc/recordings/{recording.recording_id}", headers=bearer(token))).status == 403
    assert (await client.get(f"/rtc/recordings/{recording.recording_id}", headers=ADMIN)).status == 200
    listing = await (await client.get("/rtc/recordings", headers=ADMIN)).json()
    assert "ownerKey" not in listing["recordings"][0]  # never sent to clients


# -- 8. the JWT gate covers media --------------------------------------------------------------------


async def test_8_with_an_auth_secret_media_needs_a_credential(tmp_path: Path) -> None:
    """Before: with --auth-secret, /rtc/offer and /whip still accepted anonymous sessions."""
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), admin_key="admin-secret", auth_secret=SECRET)
    client = await start(config)
    manager = client.app[MEDIA_KEY]
    try:
        async with client_peer() as peer:
            peer.add_media(audio=False)
            offer = await peer.offer()
            resp = await client.post("/rtc/offer", json={"sdp": offer, "type": "offer", "mode": "echo"})
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
            resp = await client.post("/whip", data=offer, headers={"Content-Type": "application/sdp"})
            assert resp.status == 401
            assert len(manager) == 0
            # an encoder proves who it is with a connect JWT (no room membership needed)
            resp = await client.post(
                "/whip", data=offer, headers={"Content-Type": "application/sdp", **bearer(connect_jwt("live", "cam1"))}
            )
            assert resp.status == 201, await resp.text()
            session = manager.sessions()[0]
            assert (session.owner.room_id, session.owner.peer_id, session.owner.member) == ("live", "cam1", False)
            location = resp.headers["Location"]
            assert (await client.delete(location)).status == 401  # owned: not by whoever holds the URL
            assert (await client.delete(location, headers=bearer(connect_jwt("live", "cam1")))).status == 200
        async with client_peer() as peer:  # a room member's peer token works as before
            peer.add_media(audio=False)
            token = await connect(client, "r", "alice", authToken=connect_jwt("r", "alice"))
            await http_offer(client, peer, "echo", token=token)
        await wait_for(lambda: len(manager) == 1, message="one session")
    finally:
        await client.close()
    # the deliberate exception
    client = await start(config.replace(allow_anonymous_media=True))
    try:
        async with client_peer() as peer:
            peer.add_media(audio=False)
            await http_offer(client, peer, "echo")
    finally:
        await client.close()


# -- 9. shared capacity per address --------------------------------------------------------------------


async def test_9_anonymous_sessions_are_limited_per_address(tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), max_anonymous_sessions_per_address=2)
    client = await start(config)
    try:
        async with client_peer() as p1, client_peer() as p2, client_peer() as p3, client_peer() as p4:
            for peer in (p1, p2, p3, p4):
                peer.add_media(audio=False)
            await http_offer(client, p1, "echo")
            await http_offer(client, p2, "echo")
            resp = await client.post("/rtc/offer", json={"sdp": await p3.offer(), "type": "offer"})
            body = await resp.json()
            assert resp.status == 429 and "anonymous" in body["error"]["message"], body
            token = await connect(client, "r", "member")
            await http_offer(client, p4, "echo", token=token)  # a room member is not anonymous
    finally:
        await client.close()


async def test_9_an_offer_whose_peer_never_does_ice_frees_its_slot_in_seconds(tmp_path: Path) -> None:
    """Before: such offers held their slot for the 30 s connect timeout."""
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), ice_start_timeout_seconds=1.0)
    client = await start(config)
    closed: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(MEDIA_CLOSED, closed.append)
    try:
        before = udp_sockets()
        async with client_peer() as peer:
            peer.add_media(audio=False)
            sdp = (await peer.offer()).replace("127.0.0.1", "192.0.2.1")  # TEST-NET-1: nobody answers there
            sdp = "\r\n".join(
                line for line in sdp.split("\r\n") if not line.startswith("a=candidate") or "192.0.2.1" in line
            )
            started = time.monotonic()
            resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer"})
            assert resp.status == 200
            session_id = (await resp.json())["sessionId"]
            await wait_for(lambda: closed, 10, message="the session to end")
        assert closed[0].reason == "ice_timeout" and time.monotonic() - started < 5
        report = await (await client.get(f"/rtc/sessions/{session_id}")).json()
        assert report["verdict"] == "failed: the peer never answered an ICE connectivity check"
        await wait_for(lambda: udp_sockets() <= before, 10, message="its sockets to close")
    finally:
        await client.close()


async def test_9_a_peer_that_does_ice_is_not_cut_off(tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), ice_start_timeout_seconds=1.0)
    client = await start(config)
    try:
        async with client_peer() as peer:
            peer.add_media(audio=False)
            body = await http_offer(client, peer, "echo")
            session = client.app[MEDIA_KEY].sessions()[0]
            # well past the ICE-start timeout, it is still connected and echoing
            await wait_for(lambda: session.elapsed_ms() > 2500, 10, message="2.5 s of session")
            frames = peer.frames("video")
            await peer.wait_frames("video", frames + 5)
            report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
            assert report["state"] == "connected" and report["closeReason"] is None
    finally:
        await client.close()


async def test_9_rooms_are_limited_per_address(tmp_path: Path) -> None:
    """Before: one anonymous client filled the 10,000-room limit in 1.9 s."""
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), max_rooms_per_address=3)
    client = await start(config)
    try:
        for i in range(3):
            await connect(client, f"room{i}", "owner")
        resp = await client.post("/rtc/connect", json={"roomId": "room3", "peerId": "owner"})
        body = await resp.json()
        assert resp.status == 429 and body["error"]["code"] == "rate_limited", body
        assert (await client.get("/rtc/rooms/room3", headers=ADMIN)).status in (401, 404)  # no state changed
        await connect(client, "room0", "second")  # joining a room that exists is no new room
        async with (
            aiohttp.ClientSession(
                base_url=str(client.make_url("")), connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            ) as other,
            other.post("/rtc/connect", json={"roomId": "room3", "peerId": "x"}) as resp,
        ):
            assert resp.status == 200  # another address is not held back
        # rooms that close give their place back
        token = await connect(client, "room1", "leaver")
        await client.post("/rtc/disconnect", json={}, headers=bearer(token))
        rtc = client.app[MEDIA_KEY].rtc
        await rtc.disconnect_peer("room1", "owner")
        await connect(client, "room4", "owner")
    finally:
        await client.close()


# -- 12. logs and reasons ------------------------------------------------------------------------------

KILLED_CLIENT = """
import asyncio, sys, aiohttp
from aiortc import RTCPeerConnection, RTCConfiguration, RTCSessionDescription, VideoStreamTrack
async def main():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as s:
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": "echo"}
        async with s.post(sys.argv[1] + "/rtc/offer", json=body) as r:
            answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    while pc.connectionState != "connected":
        await asyncio.sleep(0.02)
    print(answer["sessionId"], flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_12_a_killed_client_ends_as_connection_lost_not_peer_closed(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[type-arg]
) -> None:
    """Before: a SIGKILLed client's session ended as ``peer_closed``, as if it had hung up.

    ICE consent (RFC 7675) notices a vanished peer after ~30 s; the test shortens aioice's
    schedule (through the compat module's test hook) and our silence threshold so it runs in seconds."""
    monkeypatch.setattr(media_session, "SILENCE_SECONDS", 0.5)
    with aiortc_compat.consent_interval(0.2) as shortened:
        if not shortened:
            if IN_CI:
                pytest.fail("CI runs the aioice _aiortc_compat was checked against: its consent must shorten")
            pytest.skip("this aioice's consent schedule cannot be shortened (see test_aiortc_compat)")
        closed: list[Any] = []
        client.app[MEDIA_KEY].rtc.on(MEDIA_CLOSED, closed.append)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLED_CLIENT, str(client.make_url("")).rstrip("/"), stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            session_id = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            await proc.wait()
        await wait_for(lambda: closed, 20, message="the session to notice its peer is gone")
        assert (closed[0].session_id, closed[0].reason) == (session_id, "connection_lost")
        # and a peer that hangs up properly is still peer_closed
        closed.clear()
        async with client_peer() as peer:
            peer.add_media(audio=False)
            await http_offer(client, peer, "echo")
            await peer.wait_frames("video", 5)
        await wait_for(lambda: closed, 20, message="the session to end")
        assert closed[0].reason == "peer_closed"


async def test_12_bad_offers_are_warnings_at_most_never_error_tracebacks(client: TestClient, caplog: Any) -> None:  # type: ignore[type-arg]
    """Before: 124 ERROR tracebacks for 1,080 bad offers (aiortc's "Task exception was never
    retrieved" and failed ``pc.close()``), from offers whose BUNDLE group names a missing mid."""
    caplog.set_level(logging.INFO)
    async with client_peer() as peer:
        peer.add_media()
        peer.open_channel()
        good = await peer.offer()
    bad = [
        good.replace("a=mid:0", "a=mid:9"),
        good.replace("a=mid:0", "a=mid: "),
        good.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 5 1 2"),
        "\r\n".join(line for line in good.split("\r\n") if not line.startswith("a=fingerprint")),
    ]
    before = udp_sockets()
    for sdp in bad:
        resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer"})
        assert resp.status == 400, await resp.text()
    await wait_closed(client.app[MEDIA_KEY])
    await wait_for(lambda: udp_sockets() <= before, 10, message="no socket left behind")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
