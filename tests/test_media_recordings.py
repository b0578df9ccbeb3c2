"""Recordings: who may list, download and delete them; paths never leave the folder; shutdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY, RECORDING_SAVED
from tests.helpers import wait_for
from tests.media_helpers import ClientPeer, client_peer, http_offer

ADMIN = {"Authorization": "Bearer admin-secret"}


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def exists(path: str) -> bool:
    return Path(path).exists()


def plant_secrets(folder: Path) -> Path:
    """A secret beside the recordings folder, and a crafted sidecar inside it that points there."""
    folder.mkdir(parents=True, exist_ok=True)
    outside = folder.parent
    (outside / "secret").write_text("top secret")
    (outside / "secret.json").write_text(json.dumps({"id": "secret", "file": "secret"}))
    crafted = {
        "id": "crafted",
        "file": "../secret",
        "format": "webm",
        "sessionId": "s",
        "created": 0,
        "size": 10,
        "duration": 1.0,
    }
    (folder / "crafted.json").write_text(json.dumps(crafted))
    return outside / "secret"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def record_briefly(client: TestClient, peer: ClientPeer, saved: list[Any], token: str | None = None) -> Any:  # type: ignore[type-arg]
    peer.add_media(audio=False)
    body = await http_offer(client, peer, "record", token=token)
    session = next(s for s in client.app[MEDIA_KEY].sessions() if s.id == body["sessionId"])
    await wait_for(lambda: session.frames["video"] >= 10, 20, message="a few recorded frames")
    headers = bearer(token) if token else {}
    assert (await client.delete(f"/rtc/sessions/{body['sessionId']}", headers=headers)).status == 200
    return await wait_for(
        lambda: next((e for e in saved if e.session_id == body["sessionId"]), None), 20, message="recording:saved"
    )


async def test_who_may_see_which_recording(client: TestClient) -> None:  # type: ignore[type-arg]
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    alice = (await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"})).json())["token"]
    bob = (await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "bob"})).json())["token"]
    async with client_peer() as p1, client_peer() as p2:
        owned = await record_briefly(client, p1, saved, token=alice)
        anonymous = await record_briefly(client, p2, saved)
    assert (owned.room_id, owned.peer_id) == ("r", "alice") and anonymous.room_id is None

    async def ids(headers: dict[str, str]) -> list[str]:
        resp = await client.get("/rtc/recordings", headers=headers)
        assert resp.status == 200
        return [r["id"] for r in (await resp.json())["recordings"]]

    assert sorted(await ids(ADMIN)) == sorted([owned.recording_id, anonymous.recording_id])
    assert await ids(bearer(alice)) == [owned.recording_id]
    assert await ids(bearer(bob)) == []
    assert (await client.get("/rtc/recordings")).status == 401
    assert (await client.get("/rtc/recordings", headers=bearer("not-a-token"))).status == 401

    owned_url = f"/rtc/recordings/{owned.recording_id}"
    assert (await client.get(owned_url)).status == 401
    assert (await client.get(owned_url, headers=bearer(bob))).status == 403
    resp = await client.get(owned_url, headers=bearer(alice))
    assert resp.status == 200 and resp.headers["Content-Type"] == "video/webm"
    assert await resp.read() == read_bytes(owned.path)
    assert (await client.get(owned_url, headers=ADMIN)).status == 200
    assert (await client.delete(owned_url, headers=bearer(bob))).status == 403
    assert (await client.delete(owned_url, headers=bearer(alice))).status == 200
    assert (await client.get(owned_url, headers=ADMIN)).status == 404
    assert not exists(owned.path)

    # an anonymous recording: its unguessable id is the capability
    anon_url = f"/rtc/recordings/{anonymous.recording_id}"
    resp = await client.get(anon_url)
    assert resp.status == 200 and len(await resp.read()) == anonymous.size
    assert (await client.delete(anon_url)).status == 200
    assert await ids(ADMIN) == []


@pytest.mark.parametrize(
    "raw",
    [
        "..%2Fsecret",
        "%2E%2E%2Fsecret",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "20261126T000000Z-abcdefgh%2F..%2F..%2Fsecret",
        "..%5Csecret",
        "secret%00.webm",
        "crafted",
        "x" * 300,
    ],
)
async def test_recording_ids_never_escape_the_folder(client: TestClient, raw: str) -> None:  # type: ignore[type-arg]
    secret = plant_secrets(Path(client.app[MEDIA_KEY].store.root))
    for method in ("GET", "DELETE"):
        resp = await client.request(method, URL(f"/rtc/recordings/{raw}", encoded=True), headers=ADMIN)
        assert resp.status in (400, 404), (method, raw, resp.status)
        assert b"top secret" not in await resp.read()
    assert read_bytes(str(secret)) == b"top secret"
    listing = await (await client.get("/rtc/recordings", headers=ADMIN)).json()
    assert listing["recordings"] == []
    for method in ("GET", "DELETE"):
        resp = await client.request(method, URL(f"/rtc/sessions/{raw}", encoded=True), headers=ADMIN)
        assert resp.status == 404


async def test_shutdown_finalizes_recordings(tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"))
    app = create_app(config=config)
    client = TestClient(TestServer(app))
    await client.start_server()
    saved: list[Any] = []
    closed: list[Any] = []
    manager = app[MEDIA_KEY]
    manager.rtc.on(RECORDING_SAVED, saved.append)
    manager.rtc.on(MEDIA_CLOSED, closed.append)
    try:
        async with client_peer() as peer:
            peer.add_media()
            await http_offer(client, peer, "record")
            session = manager.sessions()[0]
            await wait_for(lambda: session.frames["video"] >= 20, 20, message="recorded frames")
            await client.close()  # app cleanup runs here: the server shuts down mid-recording
            assert closed and closed[0].reason == "shutdown"
            assert saved, "the recording was saved before shutdown finished"
    finally:
        await client.close()
    with av.open(saved[0].path) as container:
        assert {s.type for s in container.streams} == {"audio", "video"}
        assert container.duration is not None and container.duration > 0


async def test_owner_timeout_ends_the_session_and_finalizes_its_recording(aiohttp_client: Any, tmp_path: Path) -> None:
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), heartbeat_interval_ms=400, admin_key="admin-secret")
    client = await aiohttp_client(create_app(config=config))
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    joined = await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "sleepy"})).json()
    headers = bearer(joined["token"])

    async def recorded_while_alive(session: Any) -> bool:
        await client.post("/rtc/heartbeat", json={"roomId": "r", "peerId": "sleepy"}, headers=headers)
        return bool(session.frames["video"] >= 15)

    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record", token=joined["token"])
        session = client.app[MEDIA_KEY].sessions()[0]
        await wait_for(lambda: recorded_while_alive(session), 20, interval=0.1, message="recorded frames")
        # the owner goes silent: the reaper times it out and its session ends with it
        await wait_for(lambda: saved, 20, message="recording:saved after the owner timed out")
    report = await (await client.get(f"/rtc/sessions/{body['sessionId']}", headers=ADMIN)).json()
    assert report["closeReason"] == "owner_timeout"
    with av.open(saved[0].path) as container:
        assert {s.type for s in container.streams} == {"audio", "video"}
