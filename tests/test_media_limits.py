"""Bad inputs and limits: 400s with clear messages, capacity before sockets, durations, sizes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY, RECORDING_SAVED
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer, udp_sockets, wait_closed

GOOD_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


async def _offer_sdp() -> str:
    async with client_peer() as peer:
        peer.add_media(audio=False)
        return await peer.offer()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"type": "offer", "mode": "echo"}, "sdp must be"),
        ({"sdp": 42, "type": "offer"}, "sdp must be"),
        ({"sdp": "hello", "type": "offer"}, "v=0"),
        ({"sdp": "v=0\r\nnot really\r\n", "type": "offer"}, "no media"),
        (
            {"sdp": GOOD_HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 nosuch/8000\r\n", "type": "offer"},
            "no DTLS fingerprint",
        ),
        ({"sdp": "OFFER_NO_CODEC", "type": "offer"}, "could not be applied"),
        ({"sdp": "OFFER_BAD_BUNDLE", "type": "offer"}, "BUNDLE group names a media section"),
        ({"sdp": "OFFER_NO_ICE_PWD", "type": "offer"}, "no ICE credentials"),
        ({"sdp": GOOD_HEAD + "m=" + "x" * 50_000 + "\r\n", "type": "offer"}, "larger than"),
        ({"sdp": "OFFER", "type": "answer"}, "type must be 'offer'"),
        ({"sdp": "OFFER", "type": "offer", "mode": "karaoke"}, "mode must be one of"),
        ({"sdp": "OFFER", "type": "offer", "mode": "record", "format": "../../etc/passwd"}, "format must be one of"),
        ({"sdp": "OFFER", "type": "offer", "audio": "yes"}, "audio must be true or false"),
        ({"sdp": "OFFER", "type": "offer", "maxSeconds": -1}, "maxSeconds must be from"),
        ({"sdp": "OFFER", "type": "offer", "mode": "record", "video": False, "audio": False}, "Nothing to record"),
        ({"sdp": "OFFER", "type": "offer", "roomId": "r1"}, "roomId needs the peer's token"),
    ],
)
async def test_bad_offers_are_400_and_leave_nothing_behind(
    client: TestClient, body: dict[str, Any], needle: str
) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    if body.get("sdp") == "OFFER":
        body = {**body, "sdp": await _offer_sdp()}
    elif body.get("sdp") == "OFFER_NO_CODEC":
        body = {**body, "sdp": re.sub(r"a=rtpmap:(\d+) [^/]+/", r"a=rtpmap:\1 nosuch/", await _offer_sdp())}
    elif body.get("sdp") == "OFFER_BAD_BUNDLE":  # aiortc applies it, then its connect task and close() fail
        body = {**body, "sdp": (await _offer_sdp()).replace("a=mid:0", "a=mid:7")}
    elif body.get("sdp") == "OFFER_NO_ICE_PWD":
        body = {**body, "sdp": re.sub(r"a=ice-pwd:[^\r]*\r\n", "", await _offer_sdp())}
    before = udp_sockets()
    resp = await client.post("/rtc/offer", json=body)
    data = await resp.json()
    assert resp.status in (400, 401), data
    assert needle in data["error"]["message"], data
    await wait_closed(manager)
    await wait_for(lambda: udp_sockets() <= before, 10, message="UDP sockets released")


async def test_wrong_content_type_and_broken_json(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post("/rtc/offer", data="v=0", headers={"Content-Type": "application/sdp"})
    assert resp.status == 415
    resp = await client.post("/rtc/offer", data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    resp = await client.post("/rtc/offer", json=["a list"])
    assert resp.status == 400


@pytest.fixture
def small_config(tmp_path: Path) -> RtcConfig:
    return RtcConfig(
        recordings_dir=str(tmp_path / "rec"), admin_key="admin-secret", max_media_sessions=1, max_sessions_per_peer=1
    )


async def test_capacity_is_checked_before_any_socket_opens(aiohttp_client: Any, small_config: RtcConfig) -> None:
    client = await aiohttp_client(create_app(config=small_config))
    manager = client.app[MEDIA_KEY]
    async with client_peer() as first, client_peer() as second:
        first.open_channel()
        body = await http_offer(client, first, "echo")
        second.open_channel()
        sdp = await second.offer()
        before = udp_sockets()
        resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer"})
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"]["code"] == "capacity_exceeded"
        assert udp_sockets() == before and len(manager) == 1
        assert (await client.delete(f"/rtc/sessions/{body['sessionId']}")).status == 200
        await wait_closed(manager)
        resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer"})
        assert resp.status == 200


async def test_sessions_per_peer(aiohttp_client: Any, tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), max_sessions_per_peer=1)
    client = await aiohttp_client(create_app(config=config))
    token = (await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "p"})).json())["token"]
    async with client_peer() as first, client_peer() as second:
        first.open_channel()
        await http_offer(client, first, "echo", token=token)
        second.open_channel()
        resp = await client.post(
            "/rtc/offer",
            json={"sdp": await second.offer(), "type": "offer"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 429 and "already has 1 media sessions" in (await resp.json())["error"]["message"]


async def test_max_duration_ends_the_session(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    closed: list[Any] = []
    manager.rtc.on(MEDIA_CLOSED, closed.append)
    async with client_peer() as peer:
        peer.open_channel()
        await http_offer(client, peer, "echo", maxSeconds=1)
        await wait_for(lambda: closed, 20, message="the session to hit its maximum duration")
    assert closed[0].reason == "max_duration"


async def test_recording_size_limit_stops_and_keeps_a_playable_file(aiohttp_client: Any, tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), max_recording_bytes=20_000)
    client = await aiohttp_client(create_app(config=config))
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record")
        await wait_for(lambda: saved, 30, message="the recording to hit its size limit")
    report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
    assert report["closeReason"] == "recording_limit"
    assert saved[0].size >= 20_000 and saved[0].duration > 0
    assert set(saved[0].codecs) == {"vp8", "opus"}


async def test_recordings_quota_refuses_new_recordings(aiohttp_client: Any, tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "filler.bin").write_bytes(b"\0" * 5000)
    config = RtcConfig(recordings_dir=str(folder), recordings_quota_bytes=4096)
    client = await aiohttp_client(create_app(config=config))
    sdp = await _offer_sdp()
    before = udp_sockets()
    resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer", "mode": "record"})
    assert resp.status == 503 and "recordings folder is full" in (await resp.json())["error"]["message"]
    assert udp_sockets() == before
    # other modes are not affected by the recordings quota
    resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer", "mode": "echo"})
    assert resp.status == 200
