"""Issue 12, the signaling side: one test per defect the adversarial run found (numbered as in the
issue), each against a real server. Media defects (4, 8, 9's sessions, 12's SDP logs) are in
test_media_hardening.py; slow clients and connection limits (7) in test_serving.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig, create_rtc_server, serving
from fantasize_rtc.app import create_app
from fantasize_rtc.errors import InvalidJson
from fantasize_rtc.hub import PollChannel
from fantasize_rtc.web import RTC_KEY
from tests.helpers import wait_for
from tests.test_web import bearer, connect

ADMIN = {"Authorization": "Bearer admin-secret"}
OFFER = {"type": "offer", "payload": {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}}


def strict_json(text: str) -> Any:
    """What a browser's JSON.parse accepts: no NaN, no Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def post_raw(client: TestClient, path: str, text: str, **headers: str) -> tuple[int, Any]:  # type: ignore[type-arg]
    resp = await client.post(path, data=text.encode(), headers={"Content-Type": "application/json", **headers})
    return resp.status, strict_json(await resp.text())


async def next_frame(ws: aiohttp.ClientWebSocketResponse, *types: str) -> dict[str, Any]:
    """The next frame of one of ``types`` (peer:connected notices and the like are skipped)."""
    while True:
        frame: dict[str, Any] = json.loads((await ws.receive(timeout=5)).data)
        if frame["type"] in types:
            return frame


async def poll(client: TestClient, conn: dict[str, Any]) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    resp = await client.get("/rtc/poll", params={"waitMs": "0"}, headers=bearer(conn))
    assert resp.status == 200, await resp.text()
    messages: list[dict[str, Any]] = strict_json(await resp.text())["messages"]
    return messages


# -- 1. lone surrogates ------------------------------------------------------------------------------

SURROGATES = ['"\\ud800"', '"a\\udfffb"', '"\\uDBFF"', '["\\ud83d"]', '{"k": "\\ude00\\ud83d"}']


@pytest.mark.parametrize("value", SURROGATES)
async def test_1_lone_surrogates_are_refused_at_the_edge(client: TestClient, value: str) -> None:  # type: ignore[type-arg]
    status, body = await post_raw(client, "/rtc/connect", f'{{"roomId":"r","metadata":{{"x":{value}}}}}')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "surrogate" in body["error"]["message"]
    alice = await connect(client, "r", "alice")
    status, body = await post_raw(
        client, "/rtc/signal", f'{{"signal":{{"type":"x","payload":{value}}}}}', **bearer(alice)
    )
    assert (status, body["error"]["code"]) == (400, "invalid_json")


async def test_1_a_refused_message_never_poisons_what_is_queued(client: TestClient) -> None:  # type: ignore[type-arg]
    """Before: the bad message was queued for the offline peer; its next poll got a 500 and every
    other queued message was lost, and its next WebSocket closed at once."""
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    assert (
        await client.post("/rtc/signal", json={"signal": {**OFFER, "to": "bob"}}, headers=bearer(alice))
    ).status == 200
    status, _ = await post_raw(
        client, "/rtc/signal", '{"signal":{"type":"x","to":"bob","payload":"\\ud800"}}', **bearer(alice)
    )
    assert status == 400
    async with client.ws_connect("/rtc/ws", params={"token": alice["token"]}) as ws:
        await ws.send_str('{"type":"signal","id":1,"signal":{"type":"x","to":"bob","payload":"\\ud800"}}')
        answer = await next_frame(ws, "error", "ack")
        assert answer["type"] == "error" and answer["error"]["code"] == "invalid_json" and answer["id"] == 1
        await ws.send_str(json.dumps({"type": "signal", "id": 2, "signal": {"type": "after", "to": "bob"}}))
        ack = await next_frame(ws, "error", "ack")
        assert ack["type"] == "ack" and ack["queued"] == ["bob"]  # the socket stayed open
    assert [m["signal"]["type"] for m in await poll(client, bob)] == ["offer", "after"]


async def test_1_the_facade_refuses_them_too() -> None:
    async with create_rtc_server() as rtc:
        with pytest.raises(InvalidJson):
            await rtc.connect_peer("r", "a", {"x": "\ud800"})
        await rtc.connect_peer("r", "a")
        await rtc.connect_peer("r", "b")
        with pytest.raises(InvalidJson):
            await rtc.relay("r", "a", {"type": "x", "payload": {"k": "\udc00"}})
        assert (await rtc.relay("r", "a", {"type": "x", "payload": "\U0001f600"})).queued == ("b",)


# -- 2. NaN and Infinity -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
async def test_2_non_standard_numbers_are_refused(client: TestClient, value: str) -> None:  # type: ignore[type-arg]
    """Before: accepted, and echoed to every later joiner as text JSON.parse refuses."""
    status, body = await post_raw(client, "/rtc/connect", f'{{"roomId":"r","metadata":{{"x":{value}}}}}')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert (await client.get("/rtc/rooms/r", headers=ADMIN)).status == 404  # no state changed
    alice = await connect(client, "r", "alice")
    status, body = await post_raw(
        client, "/rtc/signal", f'{{"signal":{{"type":"x","payload":[{value}]}}}}', **bearer(alice)
    )
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await post_raw(client, "/rtc/connect", '{"roomId":"r","peerId":"bob"}')
    assert status == 200 and body["peers"][0]["metadata"] == {}


async def test_2_the_facade_refuses_them_too() -> None:
    async with create_rtc_server() as rtc:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InvalidJson):
                await rtc.connect_peer("r", "a", {"x": bad})
        await rtc.connect_peer("r", "a")
        await rtc.connect_peer("r", "b")
        with pytest.raises(InvalidJson):
            await rtc.relay("r", "a", {"type": "x", "payload": [math.nan]})


# -- 3. Content-Encoding -------------------------------------------------------------------------------


async def test_3_a_body_that_is_not_what_its_content_encoding_says_is_a_400(client: TestClient) -> None:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    resp = await client.post("/rtc/connect", data=b'{"roomId":"r"}', headers=headers)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "invalid_request", body
    assert "Content-Encoding" in body["error"]["message"]
    resp = await client.post("/rtc/connect", data=gzip.compress(b'{"roomId":"r","peerId":"zipped"}'), headers=headers)
    assert resp.status == 200 and (await resp.json())["peerId"] == "zipped"


async def test_3_a_compressed_body_is_held_to_the_size_limit_once_inflated(client: TestClient) -> None:  # type: ignore[type-arg]
    bomb = gzip.compress(b'{"roomId":"r","metadata":{"x":"' + b"a" * 20_000_000 + b'"}}')
    assert len(bomb) < 64 * 1024
    resp = await client.post(
        "/rtc/connect", data=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "payload_too_large"


# -- 5. a message delivered to a dead long-poll --------------------------------------------------------


async def test_5_a_message_for_a_poll_whose_client_left_stays_queued(config: RtcConfig) -> None:
    """Before: the signal reported ``delivered: ["bob"]`` and bob's next poll returned nothing.

    On the server as ``fantasize-rtc serve`` runs it (serving.start): there aiohttp does not cancel
    a handler whose client left, so the poll waits on (aiohttp's test server would cancel it)."""
    app = create_app(config=config)
    runner, site, _ = await serving.start(app, "127.0.0.1", 0, config)
    client: Any = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{site.port}")
    try:
        rtc = app[RTC_KEY]
        alice = await connect(client, "r", "alice")
        bob = await connect(client, "r", "bob")
        # bob long-polls on a raw socket, then his network drops
        _reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(
            f"GET /rtc/poll?waitMs=20000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bob['token']}\r\n\r\n".encode()
        )
        await writer.drain()
        await wait_for(lambda: rtc.hub.channel("r", "bob") is not None, message="bob's poll to wait")
        channel = rtc.hub.channel("r", "bob")
        assert isinstance(channel, PollChannel)
        writer.transport.abort()
        await wait_for(lambda: not channel.alive(), message="the server to see the poll's client gone")
        assert rtc.hub.channel("r", "bob") is channel  # its handler still waits
        resp = await client.post("/rtc/signal", json={"signal": {**OFFER, "to": "bob"}}, headers=bearer(alice))
        assert await resp.json() == {"listenersNotified": 1, "delivered": [], "queued": ["bob"]}
        assert [m["signal"]["type"] for m in await poll(client, bob)] == ["offer"]
    finally:
        await client.close()
        await runner.cleanup()


async def test_5_what_a_poll_could_not_write_goes_back_in_order(client: TestClient) -> None:  # type: ignore[type-arg]
    """The race left: the poll took the message, then its connection died before the answer was
    written. The transport gives it back (rtc.undelivered), to the next poll, in order."""
    rtc = client.app[RTC_KEY]
    await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    texts = [
        json.dumps({"type": "signal", "roomId": "r", "fromPeerId": "alice", "signal": {"type": t}, "ts": 1})
        for t in ("one", "two")
    ]
    await rtc.undelivered("r", "bob", texts)
    assert [m["signal"]["type"] for m in await poll(client, bob)] == ["one", "two"]


# -- 6. queues capped by bytes -----------------------------------------------------------------------


async def test_6_offline_peers_cannot_make_the_server_hold_unbounded_bytes(
    aiohttp_client: Any, config: RtcConfig
) -> None:
    """Before: 256 x 48 KiB (12 MiB) per offline peer, no cap in all: 16 peers added 182 MB."""
    config = config.replace(rate_limit_per_sec=0, outbox_max_bytes=256 * 1024, outbox_total_max_bytes=1024 * 1024)
    client: TestClient = await aiohttp_client(create_app(config=config))  # type: ignore[type-arg]
    rtc = client.app[RTC_KEY]
    sender = await connect(client, "flood", "sender")
    for i in range(7):
        await connect(client, "flood", f"offline{i}")
    big = {"type": "x", "payload": "y" * (47 * 1024)}
    results = []
    for i in range(7):
        for _ in range(12):
            resp = await client.post(
                "/rtc/signal", json={"signal": {**big, "to": f"offline{i}"}}, headers=bearer(sender)
            )
            assert resp.status == 200
            results.append(await resp.json())
    queued = sum(len(r["queued"]) for r in results)
    dropped = sum(len(r.get("dropped", [])) for r in results)
    health = await (await client.get("/healthz")).json()
    assert health["queuedBytes"] <= config.outbox_total_max_bytes
    assert queued <= config.outbox_total_max_bytes // (47 * 1024) and dropped == 84 - queued
    assert health["droppedMessages"] == dropped and dropped > 0
    assert await rtc.backend.queued_bytes() == health["queuedBytes"]
    # one peer never holds more than its own cap, whatever the total allows
    per_peer = [sum(1 for r in results[i * 12 : (i + 1) * 12] if r["queued"]) for i in range(7)]
    assert max(per_peer) * 47 * 1024 <= config.outbox_max_bytes
    # a normal signal to a live peer still goes through at once
    live = await connect(client, "other", "live")
    other = await connect(client, "other", "talker")
    async with client.ws_connect("/rtc/ws", params={"token": live["token"]}) as ws:
        await wait_for(lambda: rtc.hub.channel("other", "live") is not None, message="live's socket")
        resp = await client.post("/rtc/signal", json={"signal": {**OFFER, "to": "live"}}, headers=bearer(other))
        assert (await resp.json())["delivered"] == ["live"]
        assert (await next_frame(ws, "signal"))["signal"]["type"] == "offer"


# -- 10. cookies ---------------------------------------------------------------------------------------


def set_cookies(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: morsel.OutputString() for name, morsel in resp.cookies.items()}


async def test_10_one_bounded_cookie_per_room_cleared_on_leave_and_after_a_reap(
    aiohttp_client: Any, config: RtcConfig
) -> None:
    """Before: a cookie per (room, peer) without expiry, never cleared for reaped peers; ~115 of
    them made every /rtc request fail."""
    client: TestClient = await aiohttp_client(create_app(config=config))  # type: ignore[type-arg]
    first = await client.post("/rtc/connect", json={"roomId": "r", "peerId": "a1"})
    cookie = set_cookies(first)["rtc!r"]
    assert "Max-Age=86400" in cookie and "HttpOnly" in cookie and "Path=/rtc" in cookie
    await client.post("/rtc/connect", json={"roomId": "r", "peerId": "a2"})  # a reload with a new id
    ours = [c for c in client.session.cookie_jar if c.key.startswith("rtc!")]
    assert [c.key for c in ours] == ["rtc!r"] and ours[0].value.startswith("a2:")
    # the seed's token-less calls work with it; a1's cookie is gone, a2 speaks as itself only
    assert (await client.post("/rtc/heartbeat", json={"roomId": "r", "peerId": "a2"})).status == 200
    assert (await client.post("/rtc/heartbeat", json={"roomId": "r", "peerId": "a1"})).status == 401
    # leaving clears it
    resp = await client.post("/rtc/disconnect", json={"roomId": "r", "peerId": "a2"})
    assert resp.status == 200 and [c for c in client.session.cookie_jar if c.key.startswith("rtc!")] == []
    # a reaped peer's cookie is cleared by the 401 its next call gets
    await client.post("/rtc/connect", json={"roomId": "r2", "peerId": "b"})
    await client.app[RTC_KEY].disconnect_peer("r2", "b", "timeout")
    resp = await client.post("/rtc/heartbeat", json={"roomId": "r2", "peerId": "b"})
    assert resp.status == 401 and "rtc!r2" in resp.cookies
    assert [c for c in client.session.cookie_jar if c.key.startswith("rtc!")] == []


async def test_10_a_pile_of_stale_cookies_is_cleared_by_the_next_connects(client: TestClient) -> None:  # type: ignore[type-arg]
    jar = {f"rtc!room{i}!peer{i}": "x" * 32 for i in range(115)}  # the old form, as browsers kept them
    for attempt in range(5):
        header = "; ".join(f"{k}={v}" for k, v in jar.items())
        resp = await client.post(
            "/rtc/connect", json={"roomId": "r", "peerId": f"p{attempt}"}, headers={"Cookie": header}
        )
        assert resp.status == 200
        for name, morsel in resp.cookies.items():  # what a browser does with the answer
            if morsel["max-age"] == "0":
                jar.pop(name)
            else:
                jar[name] = morsel.value
        if list(jar) == ["rtc!r"]:
            break
    assert list(jar) == ["rtc!r"] and attempt == 3  # 32 cleared per answer: clients limit its headers
    # (a Cookie header too large for the server is refused without echoing it: test_serving.py)


# -- 11. Secure cookies behind TLS ---------------------------------------------------------------------


async def test_11_the_cookie_is_secure_when_the_request_came_over_https(client: TestClient) -> None:  # type: ignore[type-arg]
    plain = await client.post("/rtc/connect", json={"roomId": "r", "peerId": "a"})
    assert "Secure" not in set_cookies(plain)["rtc!r"]
    proxied = await client.post(
        "/rtc/connect", json={"roomId": "r2", "peerId": "b"}, headers={"X-Forwarded-Proto": "https"}
    )
    assert "Secure" in set_cookies(proxied)["rtc!r2"]


# -- decided along the way: the admin key and the WebSocket's Origin ------------------------------------


async def test_the_admin_key_is_taken_only_from_the_authorization_header(client: TestClient) -> None:  # type: ignore[type-arg]
    await connect(client, "r", "alice")
    assert (await client.get("/rtc/rooms/r", headers=ADMIN)).status == 200
    resp = await client.get("/rtc/rooms/r", params={"token": "admin-secret"})
    body = await resp.json()
    assert resp.status == 401 and "Authorization header" in body["error"]["message"]
    assert (await client.get("/rtc/recordings", params={"token": "admin-secret"})).status == 401


async def test_websocket_origin_is_checked_when_cors_origins_are_set(serve_client: Any, config: RtcConfig) -> None:
    client: TestClient = await serve_client(  # type: ignore[type-arg]
        create_app(config=config.replace(cors_origins=("https://app.example",)))
    )
    alice = await connect(client, "r", "alice")
    params = {"token": alice["token"]}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/rtc/ws", params=params, headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    for origin in ("https://app.example", f"http://{client.host}:{client.port}", None):
        headers = {"Origin": origin} if origin else {}
        ws = await client.ws_connect("/rtc/ws", params=params, headers=headers)
        await ws.close()


# -- the whole surface, in strict JSON -----------------------------------------------------------------


async def test_every_error_answer_is_strict_json_without_a_traceback(client: TestClient, caplog: Any) -> None:  # type: ignore[type-arg]
    caplog.set_level(logging.WARNING)
    alice = await connect(client, "r", "alice")
    cases = [
        ("POST", "/rtc/connect", '{"roomId":"r","metadata":{"x":NaN}}'),
        ("POST", "/rtc/signal", '{"signal":{"type":"x","payload":"\\ud800"}}'),
        ("POST", "/rtc/heartbeat", "\xff\xfe"),
        # not UTF-8: a surrogate encoded as UTF-8 (json.loads of bytes let it through), UTF-16
        ("POST", "/rtc/signal", '{"signal":{"type":"x","to":"alice","payload":"\udced\udca0\udc80"}}'),
        ("POST", "/rtc/heartbeat", "\udcff\udcfe{\x00}\x00"),
        ("POST", "/rtc/disconnect", '{"roomId":' * 40),
        ("POST", "/rtc/offer", '{"sdp":"\\udc00","type":"offer"}'),
    ]
    for method, path, text in cases:
        resp = await client.request(
            method,
            path,
            data=text.encode("utf-8", "surrogateescape"),
            headers={"Content-Type": "application/json", **bearer(alice)},
        )
        body = await resp.text()
        assert 400 <= resp.status < 500, (path, resp.status, body)
        assert "Traceback" not in body and strict_json(body)["error"]["code"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_server_without_a_guard_still_answers_bad_bytes_in_json(client: TestClient) -> None:  # type: ignore[type-arg]
    """aiohttp's own test server (no serving.start guard): what the app decides is still JSON."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b'POST /rtc/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{"a":NaN}'
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 400 ")
    body = await asyncio.wait_for(reader.read(500), 5)
    assert strict_json(body.decode())["error"]["code"] == "invalid_json"
    writer.close()
