"""RtcClient against the real aiohttp app on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp import web

from fantasize_rtc import RtcConfig, errors
from fantasize_rtc.app import create_app
from fantasize_rtc.client import ConnectionLost, RtcClient, ServerError, error_from_response, split_candidates
from fantasize_rtc.web import RTC_KEY
from tests.helpers import wait_for

Factory = Callable[..., Awaitable[str]]
SECRET = "a-test-secret-that-is-32-bytes-long!"


@pytest.fixture
async def serve(aiohttp_server: Any, config: RtcConfig) -> Factory:
    """Start the full app (optionally with config changes) on a free port; returns its base URL."""

    async def start(app: web.Application | None = None, **changes: Any) -> str:
        app = app or create_app(config=config.replace(**changes), media=False, static=False)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., RtcClient]]:
    made: list[RtcClient] = []

    def make(url: str, **kwargs: Any) -> RtcClient:
        made.append(RtcClient(url, **kwargs))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def test_two_peers_relay_over_websocket(serve: Factory, clients: Callable[..., RtcClient]) -> None:
    url = await serve()
    alice, bob = clients(url), clients(url)
    info = await alice.connect("demo-room", "alice", {"name": "Alice"})
    assert info["peerId"] == "alice" and info["token"] and info["peers"] == []
    await wait_for(lambda: alice.channel == "ws", message="alice's WebSocket")
    bob_info = await bob.connect("demo-room", "bob")
    assert [p["peerId"] for p in bob_info["peers"]] == ["alice"]

    joined = await alice.next_message(timeout=5)
    assert joined["type"] == "peer:connected" and joined["peer"]["peerId"] == "bob"

    result = await alice.signal({"type": "offer", "payload": {"sdp": "v=0"}}, to="bob")
    assert result["listenersNotified"] == 1 and result["delivered"] + result["queued"] == ["bob"]
    message = await bob.next_message(timeout=5)
    assert message["type"] == "signal" and message["fromPeerId"] == "alice"
    assert message["signal"] == {"type": "offer", "payload": {"sdp": "v=0"}, "to": "bob"}

    snapshot = await bob.snapshot()
    assert sorted(p["peerId"] for p in snapshot["peers"]) == ["alice", "bob"]
    assert await bob.heartbeat() > 0

    assert await bob.disconnect() is True
    left = await alice.next_message(timeout=5)
    assert left == {"type": "peer:disconnected", "roomId": "demo-room", "peerId": "bob", "reason": "left"}
    assert [m async for m in bob.messages()] == []  # bob's stream is over
    assert bob.closed_reason == "left"


async def test_seed_call_style(serve: Factory, clients: Callable[..., RtcClient]) -> None:
    url = await serve()
    client = clients(url, auto_heartbeat=False)
    await client.connect("demo-room", "alice", listen=False)
    await client.connect("demo-room", "bob", listen=False)
    result = await client.signal("demo-room", "alice", {"type": "candidate", "payload": None, "to": "bob"})
    assert result["listenersNotified"] == 1
    assert await client.heartbeat("demo-room", "alice") > 0
    # the client's current peer is bob, whose outbox holds alice's candidate
    message = await client.next_message(timeout=5)
    assert message["fromPeerId"] == "alice" and message["signal"]["type"] == "candidate"
    with pytest.raises(errors.Unauthorized):  # this client never connected carol
        await client.heartbeat("demo-room", "carol")
    assert await client.disconnect("demo-room", "alice") is True


async def test_long_poll_transport(serve: Factory, clients: Callable[..., RtcClient]) -> None:
    url = await serve()
    alice, bob = clients(url, transport="poll", poll_wait_ms=2000), clients(url)
    await alice.connect("room", "alice")
    await wait_for(lambda: alice.channel == "poll", message="alice polling")
    await bob.connect("room", "bob")
    assert (await alice.next_message(timeout=5))["type"] == "peer:connected"
    for n in range(3):
        await bob.signal({"type": "note", "payload": {"n": n}})
    got = [(await alice.next_message(timeout=5))["signal"]["payload"]["n"] for _ in range(3)]
    assert got == [0, 1, 2]


async def test_falls_back_to_long_poll_when_websocket_is_refused(
    serve: Factory, clients: Callable[..., RtcClient], config: RtcConfig
) -> None:
    app = create_app(config=config, media=False, static=False)

    @web.middleware
    async def no_upgrades(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/rtc/ws":  # like a proxy that does not pass WebSocket upgrades
            return web.Response(status=400, text="no websockets here")
        return await handler(request)

    app.middlewares.append(no_upgrades)
    url = await serve(app)
    alice, bob = clients(url, poll_wait_ms=2000), clients(url)
    await alice.connect("room", "alice")
    await wait_for(lambda: alice.channel == "poll", message="fallback to long-poll")
    await bob.connect("room", "bob")
    await bob.signal({"type": "hello", "payload": "hi"}, to="alice")
    kinds = [(await alice.next_message(timeout=5))["type"] for _ in range(2)]
    assert kinds == ["peer:connected", "signal"]


async def test_busy_websocket_is_retried_not_abandoned(
    serve: Factory, clients: Callable[..., RtcClient], config: RtcConfig
) -> None:
    app = create_app(config=config, media=False, static=False)
    refused: list[str] = []

    @web.middleware
    async def busy_once(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/rtc/ws" and not refused:
            refused.append(request.path)
            return web.json_response({"error": {"code": "capacity_exceeded", "message": "busy"}}, status=503)
        return await handler(request)

    app.middlewares.append(busy_once)
    url = await serve(app)
    alice, bob = clients(url), clients(url)
    await alice.connect("room", "alice")
    await wait_for(lambda: alice.channel == "ws", timeout=10, message="the WebSocket on the second try")
    assert refused == ["/rtc/ws"]
    await bob.connect("room", "bob")
    assert (await alice.next_message(timeout=5))["type"] == "peer:connected"


async def test_reconnects_after_the_socket_drops(
    serve: Factory, clients: Callable[..., RtcClient], config: RtcConfig, aiohttp_server: Any
) -> None:
    app = create_app(config=config, media=False, static=False)
    url = await serve(app)
    rtc = app[RTC_KEY]
    alice, bob = clients(url), clients(url)
    await alice.connect("room", "alice")
    await bob.connect("room", "bob")
    channel = await wait_for(lambda: rtc.hub.channel("room", "alice"), message="alice's channel")
    await channel.close(1001, "going away")  # the server drops the socket; the peer stays
    await wait_for(lambda: rtc.hub.channel("room", "alice") not in (None, channel), message="reconnected socket")
    await bob.signal({"type": "after", "payload": 1}, to="alice")
    kinds = [(await alice.next_message(timeout=5))["type"] for _ in range(2)]
    assert kinds == ["peer:connected", "signal"]


async def test_reaped_peer_ends_the_stream_with_connection_lost(
    serve: Factory, clients: Callable[..., RtcClient]
) -> None:
    url = await serve(heartbeat_interval_ms=100)
    client = clients(url, auto_heartbeat=False)
    await client.connect("room", "sleepy")
    with pytest.raises(ConnectionLost):
        async for _ in client.messages():
            pass
    assert client.closed_reason == "connection_lost"


async def test_auto_heartbeat_keeps_the_peer(
    serve: Factory, clients: Callable[..., RtcClient], config: RtcConfig
) -> None:
    app = create_app(config=config.replace(heartbeat_interval_ms=100), media=False, static=False)
    url = await serve(app)
    beats: list[Any] = []
    app[RTC_KEY].on("peer:heartbeat", beats.append)
    # over a WebSocket that stays silent, only the client's HTTP heartbeats keep it alive
    client = clients(url, transport="ws")
    await client.connect("room", "awake")
    await wait_for(lambda: client.channel == "ws", message="socket")
    # well past the 250 ms timeout, with several reaper passes in between
    await wait_for(lambda: len(beats) >= 8, timeout=20, message="heartbeats")
    assert {b.peer_id for b in beats} == {"awake"}
    assert [p["peerId"] for p in (await client.snapshot())["peers"]] == ["awake"]
    assert client.channel == "ws" and client.closed_reason is None


async def test_connect_with_a_jwt(serve: Factory, clients: Callable[..., RtcClient]) -> None:
    url = await serve(auth_secret=SECRET)
    claims = {"room": "secure", "sub": "alice", "exp": int(time.time()) + 60}
    client = clients(url)
    with pytest.raises(errors.Unauthorized):
        await client.connect("secure", "alice")
    info = await client.connect("secure", "alice", auth_token=jwt.encode(claims, SECRET, algorithm="HS256"))
    assert info["peerId"] == "alice"
    with pytest.raises(errors.Unauthorized):
        await clients(url).connect("secure", "alice", auth_token=jwt.encode(claims, "x" * 32, algorithm="HS256"))


async def test_reconnect_same_peer_replaces_and_keeps_working(
    serve: Factory, clients: Callable[..., RtcClient]
) -> None:
    url = await serve()
    alice, bob = clients(url), clients(url)
    await alice.connect("room", "alice")
    first_token = alice.token
    await alice.connect("room", "alice")  # proves itself with the old token: replaced, not refused
    assert alice.token is not None and first_token is not None
    await bob.connect("room", "bob")
    await bob.signal({"type": "x", "payload": None}, to="alice")
    kinds = [(await alice.next_message(timeout=5))["type"] for _ in range(2)]
    assert kinds == ["peer:connected", "signal"]


async def test_server_errors_are_typed(serve: Factory, clients: Callable[..., RtcClient]) -> None:
    url = await serve(max_peers_per_room=1)
    alice, bob = clients(url), clients(url)
    await alice.connect("small", "alice", listen=False)
    with pytest.raises(errors.RoomFull) as full:
        await bob.connect("small", "bob")
    assert full.value.code == "room_full" and full.value.status == 409
    with pytest.raises(errors.PeerIdTaken):
        await bob.connect("small", "alice")
    with pytest.raises(errors.InvalidRequest):
        await bob.connect("no spaces allowed")
    with pytest.raises(errors.InvalidRequest):
        await alice.signal({"type": "offer", "payload": {}})  # an offer needs an sdp
    with pytest.raises(errors.Unauthorized):
        await bob.snapshot("small")
    with pytest.raises(RuntimeError):
        await bob.signal({"type": "x"})  # bob never connected


def test_error_from_response_mapping() -> None:
    err = error_from_response(503, {"error": {"code": "capacity_exceeded", "message": "busy"}}, "7")
    assert isinstance(err, errors.CapacityExceeded) and err.retry_after == 7 and err.message == "busy"
    err = error_from_response(404, {"error": {"code": "session_not_found", "message": "gone"}})
    assert isinstance(err, errors.SessionNotFound) and isinstance(err, errors.NotFound)
    err = error_from_response(418, {"error": {"code": "teapot", "message": "short and stout", "extra": 1}})
    assert isinstance(err, ServerError) and err.code == "teapot" and err.status == 418
    assert err.details == {"extra": 1}
    err = error_from_response(502, None)  # a proxy's HTML error page
    assert isinstance(err, ServerError) and err.status == 502
    assert isinstance(error_from_response(429, "nope", "2"), errors.RateLimited)


async def test_close_leaves_no_tasks(serve: Factory) -> None:
    url = await serve()
    before = asyncio.all_tasks()
    async with RtcClient(url) as client:
        await client.connect("room", "alice")
        await wait_for(lambda: client.channel == "ws", message="socket")
    assert client.closed_reason == "closed"
    leftover = [t for t in asyncio.all_tasks() - before if not t.done() and "rtc-client" in t.get_name()]
    assert leftover == []


def test_split_candidates_keeps_the_sdp_and_lists_candidates() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\na=end-of-candidates\r\n"
        "m=application 9 DTLS/SCTP 5000\r\na=mid:1\r\n"
        "a=candidate:2 1 udp 2130706431 10.0.0.2 5001 typ host\r\n"
    )
    stripped, candidates = split_candidates(sdp)
    assert "a=candidate" not in stripped and "end-of-candidates" not in stripped
    assert stripped.endswith("a=mid:1\r\n") and "m=application" in stripped
    assert candidates == [
        {"candidate": "candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": "candidate:2 1 udp 2130706431 10.0.0.2 5001 typ host", "sdpMid": "1", "sdpMLineIndex": 1},
    ]


async def test_signals_over_the_websocket_with_acks(
    serve: Factory, clients: Callable[..., RtcClient], config: RtcConfig
) -> None:
    app = create_app(config=config, media=False, static=False)
    http_signals: list[str] = []

    @web.middleware
    async def count_http_signals(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/rtc/signal":
            http_signals.append(request.path)
        return await handler(request)

    app.middlewares.append(count_http_signals)
    url = await serve(app)
    alice, bob = clients(url, send_over="ws"), clients(url)
    await alice.connect("room", "alice")
    await bob.connect("room", "bob")
    await wait_for(lambda: alice.channel == "ws", message="alice's socket")
    results = await asyncio.gather(*(alice.signal({"type": "n", "payload": n}, to="bob") for n in range(5)))
    assert all(r["listenersNotified"] == 1 and r["delivered"] + r["queued"] == ["bob"] for r in results)
    got = [(await bob.next_message(timeout=5))["signal"]["payload"] for _ in range(5)]
    assert sorted(got) == [0, 1, 2, 3, 4]
    with pytest.raises(errors.InvalidRequest):  # the error frame for that id, as a typed error
        await alice.signal({"type": "offer", "payload": {}}, to="bob")
    with pytest.raises(errors.PeerNotFound):
        await alice.signal({"type": "x", "payload": None}, to="nobody")
    assert http_signals == []  # all of it went over the socket
    assert (await alice.next_message(timeout=5))["type"] == "peer:connected"  # acks never reach messages()
