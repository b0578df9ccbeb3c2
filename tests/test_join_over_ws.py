"""Joining in the WebSocket upgrade (one round trip): ``GET /rtc/ws?roomId=&peerId=...``."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig, RtcServer
from fantasize_rtc.app import create_app
from fantasize_rtc.client import RtcClient
from fantasize_rtc.errors import RoomFull
from tests.conftest import MakeClient
from tests.helpers import FakeClock, wait_for

ADMIN = {"Authorization": "Bearer admin-secret"}


async def join(client: TestClient, **params: str) -> tuple[Any, dict[str, Any]]:  # type: ignore[type-arg]
    ws = await client.ws_connect("/rtc/ws", params=params)
    first = await ws.receive_json(timeout=5)
    assert first.pop("type") == "connected", first
    return ws, first


async def test_a_peer_joins_in_the_upgrade_and_the_answer_is_the_first_frame(ws_client: TestClient) -> None:  # type: ignore[type-arg]
    client = ws_client
    alice_ws, alice = await join(client, roomId="one", peerId="alice", metadata=json.dumps({"name": "Alice"}))
    assert alice["peerId"] == "alice" and alice["roomId"] == "one" and alice["token"] and alice["peers"] == []
    assert set(alice) >= {"iceServers", "heartbeatIntervalMs", "peerTimeoutMs", "room"}
    bob_ws, bob = await join(client, roomId="one")  # the server names the peer
    assert bob["peerId"].startswith("peer-") and [p["peerId"] for p in bob["peers"]] == ["alice"]
    assert bob["peers"][0]["metadata"] == {"name": "Alice"}
    event = await alice_ws.receive_json(timeout=5)
    assert event["type"] == "peer:connected" and event["peer"]["peerId"] == bob["peerId"]
    # The token from the first frame works like connect's: over HTTP, and for this socket's frames.
    resp = await client.post(
        "/rtc/signal",
        json={"signal": {"type": "hello", "payload": 1, "to": "alice"}},
        headers={"Authorization": f"Bearer {bob['token']}"},
    )
    assert (await resp.json())["delivered"] == ["alice"]
    assert (await alice_ws.receive_json(timeout=5))["signal"]["type"] == "hello"
    await bob_ws.send_json({"type": "signal", "signal": {"type": "hi", "payload": 2, "to": "alice"}, "id": 1})
    assert (await bob_ws.receive_json(timeout=5)) == {
        "type": "ack",
        "id": 1,
        "delivered": ["alice"],
        "queued": [],
        "listenersNotified": 1,
    }
    assert (await alice_ws.receive_json(timeout=5))["signal"]["type"] == "hi"
    # Leaving: as with the two-step join.
    await bob_ws.send_json({"type": "disconnect"})
    event = await alice_ws.receive_json(timeout=5)
    assert event["type"] == "peer:disconnected" and event["reason"] == "left"
    await alice_ws.close()


async def test_a_reconnect_with_the_old_token_replaces_the_peer_and_a_refusal_is_connects_error(
    ws_client: TestClient,  # type: ignore[type-arg]
) -> None:
    client = ws_client
    first_ws, first = await join(client, roomId="two", peerId="alice")
    with pytest.raises(aiohttp.WSServerHandshakeError) as taken:
        await client.ws_connect("/rtc/ws", params={"roomId": "two", "peerId": "alice"})
    assert taken.value.status == 409  # peer_id_taken, as POST /rtc/connect says it
    again_ws, again = await join(client, roomId="two", peerId="alice", token=first["token"])
    assert again["peerId"] == "alice"
    closed = await first_ws.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and first_ws.close_code == 4001
    for params, status in (
        ({"roomId": "bad room!"}, 400),
        ({"roomId": "two", "peerId": "x" * 200}, 400),
        ({"roomId": "two", "metadata": "{nope"}, 400),
        ({"roomId": "two", "metadata": "[1]"}, 400),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/rtc/ws", params=params)
        assert refused.value.status == status, params
    resp = await client.get("/rtc/rooms/two", headers=ADMIN)
    assert [p["peerId"] for p in (await resp.json())["peers"]] == ["alice"]
    await again_ws.close()


async def test_the_jwt_gate_applies_to_the_upgrade(serve_client: MakeClient, config: RtcConfig) -> None:
    secret = "a-deployment-secret-of-32-bytes-or-more"
    client = await serve_client(create_app(config=config.replace(auth_secret=secret)))
    token = jwt.encode({"room": "r", "sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/rtc/ws", params={"roomId": "r"})
    assert refused.value.status == 401
    ws, joined = await join(client, roomId="r", authToken=token)
    assert joined["peerId"] == "alice"
    await ws.close()
    ws = await client.ws_connect("/rtc/ws", params={"roomId": "r"}, headers={"Authorization": f"Bearer {token}"})
    assert (await ws.receive_json(timeout=5))["peerId"] == "alice"
    await ws.close()


async def test_the_python_client_joins_in_one_round_trip_and_falls_back(
    ws_client: TestClient,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[type-arg]
) -> None:
    client = ws_client
    url = str(client.make_url("")).rstrip("/")
    posts: list[str] = []
    original = RtcClient.request

    async def counting(self: RtcClient, method: str, path: str, **kwargs: Any) -> Any:
        posts.append(path)
        return await original(self, method, path, **kwargs)

    monkeypatch.setattr(RtcClient, "request", counting)
    async with (
        RtcClient(url, transport="ws", auto_heartbeat=False) as alice,
        RtcClient(url, auto_heartbeat=False) as bob,
    ):
        info = await alice.connect("three", "alice", {"name": "A"})
        assert info["peerId"] == "alice" and "/rtc/connect" not in posts
        await wait_for(lambda: alice.channel == "ws", 5, message="alice's socket (the one it joined over)")
        await bob.connect("three", "bob")
        await alice.signal({"type": "hello", "payload": 1}, to="bob")
        message = await bob.next_message(timeout=5)
        while message["type"] != "signal":
            message = await bob.next_message(timeout=5)
        assert message["fromPeerId"] == "alice"
        # Connecting again as the same peer proves the id with the old token: replaced, not refused.
        again = await alice.connect("three", "alice")
        assert again["peerId"] == "alice" and "/rtc/connect" not in posts


async def test_a_refused_upgrade_falls_back_to_connect_which_says_why(
    serve_client: MakeClient, config: RtcConfig
) -> None:
    client = await serve_client(create_app(config=config.replace(max_peers_per_room=1)))
    url = str(client.make_url("")).rstrip("/")
    async with RtcClient(url, auto_heartbeat=False) as alice, RtcClient(url, auto_heartbeat=False) as bob:
        await alice.connect("full", "alice")
        with pytest.raises(RoomFull) as full:  # the upgrade said 409; POST /rtc/connect says what
            await bob.connect("full", "bob")
        assert "full" in full.value.message.lower()


async def test_a_socket_opened_with_a_token_touches_its_peer_on_its_first_frame(
    serve_client: MakeClient, config: RtcConfig, clock: FakeClock
) -> None:
    """The two-step join: the socket may open long after ``connect`` (the peer's last touch), so
    its first frame is a sign of life; only a join in the upgrade itself counts as one."""
    rtc = RtcServer(config, clock=clock)
    client = await serve_client(create_app(rtc=rtc))
    resp = await client.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"})
    token = (await resp.json())["token"]
    connected_at = clock.now
    clock.advance(60_000)
    async with client.ws_connect("/rtc/ws", params={"token": token}) as ws:
        await ws.send_json({"type": "heartbeat", "id": 1})
        assert await ws.receive_json(timeout=5) == {"type": "ack", "id": 1}
        peers = (await rtc.get_room_snapshot("r")).peers
        assert [p.last_seen - connected_at for p in peers] == [60_000]
