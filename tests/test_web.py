"""The aiohttp routes on a real server: seed bodies, auth, WebSocket, long-poll, limits, bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.web import RTC_KEY
from tests.conftest import MakeClient
from tests.helpers import wait_for

ADMIN = {"Authorization": "Bearer admin-secret"}
OFFER = {"type": "offer", "payload": {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}}


async def connect(client: TestClient, room: str = "r", peer: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"roomId": room, **extra}
    if peer is not None:
        body["peerId"] = peer
    resp = await client.post("/rtc/connect", json=body)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def bearer(conn: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {conn['token']}"}


async def snapshot(client: TestClient, room: str = "r") -> dict[str, Any]:
    resp = await client.get(f"/rtc/rooms/{room}", headers=ADMIN)
    data: dict[str, Any] = await resp.json()
    return data


async def test_seed_fetch_snippet_bodies_work_unchanged(http_serve_client: MakeClient, config: RtcConfig) -> None:
    """The seed's React snippet: fetch with only Content-Type, no token (the connect cookie carries it)."""
    client = await http_serve_client(create_app(config=config))
    alice = await connect(client, "demo-room", "alice")
    assert set(alice) >= {"roomId", "peerId", "token", "iceServers", "heartbeatIntervalMs", "peers", "room"}
    bob_client: TestClient = TestClient(client.server)  # same server, separate cookie jar
    await bob_client.start_server()
    try:
        bob = await connect(bob_client, "demo-room", "bob")
        assert [p["peerId"] for p in bob["peers"]] == ["alice"]
        resp = await client.post("/rtc/heartbeat", json={"roomId": "demo-room", "peerId": "alice"})
        assert resp.status == 200 and isinstance((await resp.json())["lastSeen"], int)
        resp = await client.post("/rtc/signal", json={"roomId": "demo-room", "fromPeerId": "alice", "signal": OFFER})
        assert await resp.json() == {"listenersNotified": 1, "delivered": [], "queued": ["bob"]}
        # bob's cookie does not let him speak as alice
        resp = await bob_client.post(
            "/rtc/signal", json={"roomId": "demo-room", "fromPeerId": "alice", "signal": OFFER}
        )
        assert resp.status == 401
        poll = await bob_client.get("/rtc/poll", params={"token": bob["token"], "waitMs": "0"})
        messages = (await poll.json())["messages"]
        assert messages[0]["fromPeerId"] == "alice" and messages[0]["signal"] == OFFER
    finally:
        await bob_client.close()


async def test_websocket_relay_both_ways_and_events(ws_client: TestClient) -> None:
    client = ws_client
    alice = await connect(client, "r", "alice")
    ws_a = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    bob = await connect(client, "r", "bob")
    joined = await ws_a.receive_json(timeout=5)
    assert joined["type"] == "peer:connected" and joined["peer"]["peerId"] == "bob"
    ws_b = await client.ws_connect("/rtc/ws", headers=bearer(bob))
    await ws_a.send_json({"type": "signal", "signal": {**OFFER, "to": "bob"}, "id": 1})
    ack = await ws_a.receive_json(timeout=5)
    assert ack == {"type": "ack", "id": 1, "listenersNotified": 1, "delivered": ["bob"], "queued": []}
    got = await ws_b.receive_json(timeout=5)
    assert (got["type"], got["fromPeerId"], got["signal"]["type"]) == ("signal", "alice", "offer")
    await ws_b.send_json({"type": "signal", "signal": {"type": "answer", "payload": {"sdp": "a"}}})
    await ws_b.send_json({"type": "signal", "signal": {"type": "candidate", "payload": None}})
    assert (await ws_a.receive_json(timeout=5))["signal"]["type"] == "answer"
    assert (await ws_a.receive_json(timeout=5))["signal"] == {"type": "candidate", "payload": None}
    await ws_b.send_json({"type": "disconnect"})
    left = await ws_a.receive_json(timeout=5)
    assert left == {"type": "peer:disconnected", "roomId": "r", "peerId": "bob", "reason": "left"}
    assert (await ws_b.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert [p["peerId"] for p in (await snapshot(client))["peers"]] == ["alice"]
    await ws_a.close()


async def test_outbox_flushes_on_socket_open(ws_client: TestClient) -> None:
    client = ws_client
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    for i in range(3):
        resp = await client.post(
            "/rtc/signal", headers=bearer(alice), json={"signal": {"type": "app", "payload": {"n": i}}}
        )
        assert (await resp.json())["queued"] == ["bob"]
    ws = await client.ws_connect(f"/rtc/ws?token={bob['token']}")
    got = [(await ws.receive_json(timeout=5))["signal"]["payload"]["n"] for _ in range(3)]
    assert got == [0, 1, 2]
    await ws.close()


async def test_long_poll_waits_and_wakes(client: TestClient) -> None:
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    await client.get("/rtc/poll", params={"token": alice["token"], "waitMs": "0"})  # drain bob's arrival
    poll = asyncio.ensure_future(client.get("/rtc/poll", params={"token": alice["token"], "waitMs": "10000"}))
    rtc = client.app[RTC_KEY]
    await wait_for(lambda: rtc.hub.channel("r", "alice") is not None, message="alice's poll to wait")
    resp = await client.post("/rtc/signal", headers=bearer(bob), json={"signal": {**OFFER, "to": "alice"}})
    assert (await resp.json())["delivered"] == ["alice"]
    messages = (await (await poll).json())["messages"]
    assert messages[0]["signal"] == {**OFFER, "to": "alice"}
    empty = await client.get("/rtc/poll", params={"token": alice["token"], "waitMs": "50"})
    assert await empty.json() == {"messages": []}


async def test_snapshot_access(client: TestClient) -> None:
    alice = await connect(client, "r", "alice")
    outsider = await connect(client, "elsewhere", "eve")
    assert (await client.get("/rtc/rooms/r", headers=bearer(alice))).status == 200
    assert (await client.get("/rtc/rooms/r", headers=bearer(outsider))).status == 403
    assert (await client.get("/rtc/rooms/r")).status == 401
    assert (await client.get("/rtc/rooms/nope", headers=ADMIN)).status == 404
    snap = await snapshot(client)
    assert snap["maxPeers"] == 8 and snap["peers"][0]["peerId"] == "alice"


async def test_reconnect_replaces_old_socket(ws_client: TestClient) -> None:
    client = ws_client
    alice = await connect(client, "r", "alice")
    ws = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    fresh: TestClient = TestClient(client.server)  # another device without alice's cookie
    await fresh.start_server()
    try:
        taken = await fresh.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"})
        assert taken.status == 409 and (await taken.json())["error"]["code"] == "peer_id_taken"
        again = await fresh.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"}, headers=bearer(alice))
        assert again.status == 200
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4001
    finally:
        await fresh.close()


async def test_healthz_and_index(client: TestClient) -> None:
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["backend"]["backend"] == "memory"
    page = await client.get("/")
    assert page.status == 200 and "fantasize-rtc" in await page.text()


async def test_cors_off_by_default_and_allowlist(aiohttp_client: Any, config: RtcConfig) -> None:
    plain = await aiohttp_client(create_app(config=config))
    resp = await plain.post("/rtc/connect", json={"roomId": "r"}, headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    cors = await aiohttp_client(create_app(config=config.replace(cors_origins=("https://app.example",))))
    pre = await cors.options(
        "/rtc/signal", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    bad = await cors.options(
        "/rtc/signal", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert bad.status == 403 and "Access-Control-Allow-Origin" not in bad.headers
    resp = await cors.post("/rtc/connect", json={"roomId": "r"}, headers={"Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"


# -- limits over the wire --------------------------------------------------------------------------


async def test_websocket_frame_too_large_closes_1009(serve_client: MakeClient, config: RtcConfig) -> None:
    client = await serve_client(create_app(config=config.replace(max_frame_bytes=2048)))
    alice = await connect(client, "r", "alice")
    ws = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    await ws.send_str(json.dumps({"type": "signal", "signal": {"type": "x", "payload": "y" * 4096}}))
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
    assert (await client.get("/healthz")).status == 200


async def test_rate_limit_http_429_and_ws_1008(serve_client: MakeClient, config: RtcConfig) -> None:
    client = await serve_client(create_app(config=config.replace(rate_limit_per_sec=1, rate_limit_burst=2)))
    alice = await connect(client, "r", "alice")
    await connect(client, "r", "bob")
    statuses = []
    for _ in range(3):
        resp = await client.post("/rtc/signal", headers=bearer(alice), json={"signal": OFFER})
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert (await resp.json())["error"]["code"] == "rate_limited"
    ws = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    assert (await ws.receive_json(timeout=5))["type"] == "peer:connected"  # bob's arrival, from the outbox
    await ws.send_json({"type": "signal", "signal": OFFER})
    error = await ws.receive_json(timeout=5)
    assert error["error"]["code"] == "rate_limited"
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_capacity_503_with_retry_after(aiohttp_client: Any, config: RtcConfig) -> None:
    client = await aiohttp_client(create_app(config=config.replace(max_peers=1)))
    await connect(client, "r", "alice")
    resp = await client.post("/rtc/connect", json={"roomId": "r", "peerId": "bob"})
    assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
    assert (await resp.json())["error"]["code"] == "capacity_exceeded"


async def test_jwt_over_http(aiohttp_client: Any, config: RtcConfig) -> None:
    import time

    import jwt

    secret = "a-deployment-secret-of-32-bytes-or-more"
    client = await aiohttp_client(create_app(config=config.replace(auth_secret=secret)))
    token = jwt.encode({"room": "r", "sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    resp = await client.post("/rtc/connect", json={"roomId": "r"})
    assert resp.status == 401
    resp = await client.post("/rtc/connect", json={"roomId": "r"}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and (await resp.json())["peerId"] == "alice"
    resp = await client.post("/rtc/connect", json={"roomId": "r2", "authToken": token})
    assert resp.status == 401 and (await client.get("/rtc/rooms/r2", headers=ADMIN)).status == 404


# -- the bad input table ---------------------------------------------------------------------------

BAD_HTTP: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (case, method, path, request kwargs, status, code); "{alice}" in a header is alice's token
    (
        "invalid json",
        "POST",
        "/rtc/connect",
        {"data": "{nope", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("body is an array", "POST", "/rtc/connect", {"json": [1, 2]}, 400, "invalid_request"),
    (
        "empty body",
        "POST",
        "/rtc/connect",
        {"data": b"", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_request",
    ),
    (
        "text/plain body",
        "POST",
        "/rtc/connect",
        {"data": '{"roomId":"r"}', "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("form body", "POST", "/rtc/connect", {"data": {"roomId": "r"}}, 415, "unsupported_media_type"),
    ("missing roomId", "POST", "/rtc/connect", {"json": {"peerId": "x"}}, 400, "invalid_request"),
    ("roomId wrong type", "POST", "/rtc/connect", {"json": {"roomId": 5}}, 400, "invalid_request"),
    ("roomId too long", "POST", "/rtc/connect", {"json": {"roomId": "r" * 65}}, 400, "invalid_request"),
    ("roomId with slash", "POST", "/rtc/connect", {"json": {"roomId": "../x"}}, 400, "invalid_request"),
    ("reserved peer id", "POST", "/rtc/connect", {"json": {"roomId": "r", "peerId": "@echo"}}, 400, "invalid_request"),
    ("metadata not object", "POST", "/rtc/connect", {"json": {"roomId": "r", "metadata": [1]}}, 400, "invalid_request"),
    (
        "metadata too big",
        "POST",
        "/rtc/connect",
        {"json": {"roomId": "r", "metadata": {"x": "y" * 5000}}},
        413,
        "payload_too_large",
    ),
    (
        "deep nesting",
        "POST",
        "/rtc/connect",
        {
            "data": '{"roomId":"r","metadata":' + '{"a":' * 60 + "1" + "}" * 61,
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "invalid_request",
    ),
    (
        "body too large",
        "POST",
        "/rtc/connect",
        {"json": {"roomId": "r", "pad": "x" * 70_000}},
        413,
        "payload_too_large",
    ),
    ("taken peer id", "POST", "/rtc/connect", {"json": {"roomId": "r", "peerId": "alice"}}, 409, "peer_id_taken"),
    ("room full", "POST", "/rtc/connect", {"json": {"roomId": "small", "peerId": "c"}}, 409, "room_full"),
    (
        "heartbeat without token",
        "POST",
        "/rtc/heartbeat",
        {"json": {"roomId": "r", "peerId": "alice"}},
        401,
        "unauthorized",
    ),
    (
        "heartbeat wrong token",
        "POST",
        "/rtc/heartbeat",
        {"json": {"roomId": "r", "peerId": "alice"}, "headers": {"Authorization": "Bearer forged"}},
        401,
        "unauthorized",
    ),
    (
        "heartbeat as another peer",
        "POST",
        "/rtc/heartbeat",
        {"json": {"roomId": "r", "peerId": "bob"}, "headers": {"Authorization": "Bearer {alice}"}},
        403,
        "forbidden",
    ),
    (
        "heartbeat unknown room",
        "POST",
        "/rtc/heartbeat",
        {"json": {"roomId": "nope", "peerId": "alice"}, "headers": {"Authorization": "Bearer {alice}"}},
        403,
        "forbidden",
    ),
    (
        "signal missing",
        "POST",
        "/rtc/signal",
        {"json": {}, "headers": {"Authorization": "Bearer {alice}"}},
        400,
        "invalid_request",
    ),
    (
        "signal wrong type",
        "POST",
        "/rtc/signal",
        {"json": {"signal": "hi"}, "headers": {"Authorization": "Bearer {alice}"}},
        400,
        "invalid_request",
    ),
    (
        "offer without sdp",
        "POST",
        "/rtc/signal",
        {"json": {"signal": {"type": "offer", "payload": {}}}, "headers": {"Authorization": "Bearer {alice}"}},
        400,
        "invalid_request",
    ),
    (
        "bad candidate",
        "POST",
        "/rtc/signal",
        {
            "json": {"signal": {"type": "candidate", "payload": {"candidate": 1}}},
            "headers": {"Authorization": "Bearer {alice}"},
        },
        400,
        "invalid_request",
    ),
    (
        "signal to unknown peer",
        "POST",
        "/rtc/signal",
        {"json": {"signal": {"type": "bye", "to": "zed"}}, "headers": {"Authorization": "Bearer {alice}"}},
        404,
        "peer_not_found",
    ),
    (
        "signal to peer in other room",
        "POST",
        "/rtc/signal",
        {"json": {"signal": {"type": "bye", "to": "c"}}, "headers": {"Authorization": "Bearer {alice}"}},
        404,
        "peer_not_found",
    ),
    (
        "signal as another peer",
        "POST",
        "/rtc/signal",
        {"json": {"fromPeerId": "bob", "signal": {"type": "bye"}}, "headers": {"Authorization": "Bearer {alice}"}},
        403,
        "forbidden",
    ),
    (
        "signal to unknown server peer",
        "POST",
        "/rtc/signal",
        {"json": {"signal": {"type": "bye", "to": "@nobody"}}, "headers": {"Authorization": "Bearer {alice}"}},
        404,
        "peer_not_found",
    ),
    (
        "signal payload too large",
        "POST",
        "/rtc/signal",
        {
            "json": {"signal": {"type": "offer", "payload": {"sdp": "x" * 50_000}}},
            "headers": {"Authorization": "Bearer {alice}"},
        },
        413,
        "payload_too_large",
    ),
    (
        "disconnect wrong token",
        "POST",
        "/rtc/disconnect",
        {"json": {"roomId": "r", "peerId": "alice"}, "headers": {"Authorization": "Bearer nope"}},
        401,
        "unauthorized",
    ),
    (
        "snapshot bad id",
        "GET",
        "/rtc/rooms/a%20b",
        {"headers": {"Authorization": "Bearer admin-secret"}},
        400,
        "invalid_request",
    ),
    (
        "snapshot wrong admin key",
        "GET",
        "/rtc/rooms/r",
        {"headers": {"Authorization": "Bearer admin-wrong"}},
        401,
        "unauthorized",
    ),
    ("poll without token", "GET", "/rtc/poll", {}, 401, "unauthorized"),
    ("poll bad waitMs", "GET", "/rtc/poll?token={alice}&waitMs=soon", {}, 400, "invalid_request"),
    ("poll negative waitMs", "GET", "/rtc/poll?token={alice}&waitMs=-5", {}, 400, "invalid_request"),
    ("ws without token", "GET", "/rtc/ws", {}, 401, "unauthorized"),
    ("unknown route", "GET", "/rtc/nothing", {}, 404, "not_found"),
    ("wrong method", "GET", "/rtc/connect", {}, 405, "method_not_allowed"),
]


@pytest.fixture
async def seeded(http_serve_client: MakeClient, config: RtcConfig) -> tuple[TestClient, dict[str, Any]]:
    return await _seed(await http_serve_client(create_app(config=config)))


@pytest.fixture
async def ws_seeded(serve_client: MakeClient, config: RtcConfig) -> tuple[TestClient, dict[str, Any]]:
    return await _seed(await serve_client(create_app(config=config)))


async def _seed(client: TestClient) -> tuple[TestClient, dict[str, Any]]:  # type: ignore[type-arg]
    alice = await connect(client, "r", "alice")
    await connect(client, "r", "bob")
    await client.app[RTC_KEY].create_room("small", max_peers=2, metadata={"kind": "full"})
    for peer in ("a", "b"):
        await connect(client, "small", peer)
    return client, alice


def _fill(value: Any, token: str) -> Any:
    if isinstance(value, str):
        return value.replace("{alice}", token)
    if isinstance(value, dict):
        return {k: _fill(v, token) for k, v in value.items()}
    return value


async def _state(client: TestClient) -> Any:
    rooms = {}
    for room in ("r", "small"):
        snap = await snapshot(client, room)
        rooms[room] = [(p["peerId"], p["metadata"]) for p in snap["peers"]]
    health = await (await client.get("/healthz")).json()
    return rooms, health["rooms"], health["peers"]


@pytest.mark.parametrize(("case", "method", "path", "kwargs", "status", "code"), BAD_HTTP, ids=[c[0] for c in BAD_HTTP])
async def test_bad_input_table(
    seeded: tuple[TestClient, dict[str, Any]],
    case: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client, alice = seeded
    before = await _state(client)
    # The table is about explicit tokens, not the connect cookie; and each request comes on a
    # connection of its own, its first (served lean, that is where the lean path takes requests).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        url = client.make_url(_fill(path, alice["token"]))
        async with session.request(method, url, **_fill(kwargs, alice["token"])) as resp:
            text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json"
    body = json.loads(text)
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in text
    assert await _state(client) == before


BAD_WS: list[tuple[str, str | bytes, str | None]] = [
    # (case, frame, error code; None: the socket is closed instead)
    ("invalid json", "{nope", "invalid_json"),
    ("NaN", '{"type": "signal", "signal": {"type": "x", "payload": NaN}}', "invalid_json"),
    ("lone surrogate", '{"type": "signal", "signal": {"type": "x", "payload": "\\ud800"}}', "invalid_json"),
    ("not an object", "[1, 2]", "invalid_request"),
    ("unknown frame type", '{"type": "teleport"}', "invalid_request"),
    ("missing type", '{"signal": {"type": "bye"}}', "invalid_request"),
    ("signal without signal", '{"type": "signal"}', "invalid_request"),
    ("signal not an object", '{"type": "signal", "signal": 5}', "invalid_request"),
    ("offer without sdp", '{"type": "signal", "signal": {"type": "offer", "payload": {}}}', "invalid_request"),
    ("to unknown peer", '{"type": "signal", "signal": {"type": "bye", "to": "zed"}}', "peer_not_found"),
    ("to reserved nobody", '{"type": "signal", "signal": {"type": "bye", "to": "@zed"}}', "peer_not_found"),
    (
        "deep nesting",
        '{"type": "signal", "signal": {"type": "x", "payload": ' + "[" * 80 + "]" * 80 + "}}",
        "invalid_request",
    ),
    ("binary frame", b"\x00\x01", None),
]


@pytest.mark.parametrize(("case", "frame", "code"), BAD_WS, ids=[c[0] for c in BAD_WS])
async def test_bad_websocket_frames(
    ws_seeded: tuple[TestClient, dict[str, Any]], case: str, frame: str | bytes, code: str | None
) -> None:
    client, alice = ws_seeded
    ws = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    assert (await ws.receive_json(timeout=5))["type"] == "peer:connected"  # bob, from the outbox
    before = await _state(client)
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    if code is None:
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1003
    else:
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "error" and error["error"]["code"] == code and error["error"]["message"]
        # the socket keeps serving after a refused frame
        await ws.send_json({"type": "heartbeat", "id": "still-there"})
        assert await ws.receive_json(timeout=5) == {"type": "ack", "id": "still-there"}
    assert await _state(client) == before
    await ws.close()
