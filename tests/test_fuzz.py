"""Fuzzing the signaling surface (issue 12): any JSON, any frame, any header set, against a real
server. After every case: no 5xx, no traceback in an answer or as an ERROR log, JSON answers a
browser can parse, and a refused request changed nothing. A message queued before the run is still
there, intact, after it. ``make fuzz`` runs the same tests with thousands of cases (tests/fuzzing.py).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fantasize_rtc import RtcConfig, serving
from fantasize_rtc._aiohttp_compat import GUARDED_SERVER
from fantasize_rtc.app import create_app
from fantasize_rtc.web import RTC_KEY
from tests import fuzzing
from tests.conftest import MakeClient
from tests.fuzzing import body_of, check_answer, check_log, hostile_json, ids, json_values, strict_json
from tests.helpers import IN_CI

CANARY = {"type": "offer", "to": "bob", "payload": {"sdp": "v=0\r\ncanary\r\n", "n": [1, 2.5, "é"]}}

#: Inputs that broke something in issue 12's adversarial run, replayed on every run.
CORPUS_BODIES: list[tuple[str, bytes]] = [
    ("/rtc/connect", b'{"roomId":"r","metadata":{"x":"\\ud800"}}'),
    ("/rtc/connect", b'{"roomId":"r","metadata":{"x":NaN}}'),
    ("/rtc/connect", b'{"roomId":"r","metadata":{"x":Infinity}}'),
    ("/rtc/connect", b'{"roomId":"r","metadata":{"x":1e400}}'),
    ("/rtc/signal", b'{"signal":{"type":"x","to":"bob","payload":"\\ud800"}}'),
    ("/rtc/signal", b'{"signal":{"type":"x","to":"bob","payload":[NaN]}}'),
    ("/rtc/signal", b'{"signal":{"type":"offer","to":"@echo","payload":{"sdp":"\\udc00"}}}'),
    ("/rtc/heartbeat", b"\xed\xa0\x80"),
    ("/rtc/offer", b'{"sdp":"v=0\\r\\nm=audio\\ud800","type":"offer"}'),
]


class World:
    """A real server with a room to fuzz in and a canary: a message queued for bob, offline in
    the same room, so cases can relay to him (and could poison his queue, as issue 12 found)."""

    def __init__(self, client: TestClient) -> None:  # type: ignore[type-arg]
        self.client = client
        self.rtc = client.app[RTC_KEY]
        self.fuzzer = ""
        self.bob = ""

    async def setup(self) -> None:
        alice = await self._connect("canary", "alice")
        self.bob = await self._connect("canary", "bob")
        resp = await self.client.post("/rtc/signal", json={"signal": CANARY}, headers=self.auth(alice))
        assert (await resp.json())["queued"] == ["bob"]
        await self.ensure_fuzzer()

    async def _connect(self, room: str, peer: str, proof: str = "") -> str:
        headers = self.auth(proof) if proof else {}
        resp = await self.client.post("/rtc/connect", json={"roomId": room, "peerId": peer}, headers=headers)
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["token"]
        return token

    async def ensure_fuzzer(self) -> str:
        """The fuzzing peer, back in its room if a case made it leave (same token when it stayed)."""
        try:
            self.fuzzer = await self._connect("canary", "fuzzer", proof=self.fuzzer)
        except AssertionError:  # its id is taken by a case that connected as "fuzzer": take another
            self.fuzzer = await self._connect("canary", f"fuzzer{len(self.fuzzer)}")
        return self.fuzzer

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def digest(self) -> tuple[Any, ...]:
        stats = await self.rtc.stats()
        canary = (await self.rtc.get_room_snapshot("canary")).to_wire()
        for peer in canary["peers"]:
            peer.pop("lastSeen")
        return stats["rooms"], stats["peers"], stats["queuedBytes"], json.dumps(canary, sort_keys=True)

    async def canary_intact(self) -> None:
        """Bob's queue: the canary first, intact, then whatever cases relayed, all readable."""
        resp = await self.client.get("/rtc/poll", params={"waitMs": "0"}, headers=self.auth(self.bob))
        assert resp.status == 200, await resp.text()
        messages = strict_json(await resp.text())["messages"]
        signals = [m["signal"] for m in messages if m["type"] == "signal"]
        assert signals and signals[0] == CANARY, signals[:3]


def _fuzz_config(config: RtcConfig) -> RtcConfig:
    # No per-peer rate limit: thousands of cases from one peer would only ever see 429 otherwise.
    return config.replace(rate_limit_per_sec=0, max_rooms_per_address=0, max_connections_per_address=0)


@pytest.fixture
async def world(aiohttp_client: Any, config: RtcConfig) -> AsyncIterator[World]:
    async for w in _world(await aiohttp_client(create_app(config=_fuzz_config(config)))):
        yield w


@pytest.fixture
async def ws_world(serve_client: MakeClient, config: RtcConfig) -> AsyncIterator[World]:
    """The world, served each way a WebSocket comes in (aiohttp's route, the lean upgrade)."""
    async for w in _world(await serve_client(create_app(config=_fuzz_config(config)))):
        yield w


async def _world(client: TestClient) -> AsyncIterator[World]:  # type: ignore[type-arg]
    w = World(client)
    await w.setup()
    yield w
    await w.canary_intact()  # a queued message outlives every refused (and every accepted) case


SIGNALS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["offer", "answer", "candidate", "bye", "x:y"]), json_values),
        "payload": json_values,
        "to": st.one_of(ids, st.just("bob"), st.just("@echo"), json_values),
    },
)
ROUTES: dict[str, dict[str, Any]] = {
    "/rtc/connect": {"roomId": ids, "peerId": ids, "metadata": json_values, "authToken": json_values},
    "/rtc/heartbeat": {"roomId": ids, "peerId": ids},
    "/rtc/signal": {
        "roomId": ids,
        "fromPeerId": ids,
        "signal": SIGNALS,
    },
    "/rtc/disconnect": {"roomId": ids, "peerId": ids},
    "/rtc/offer": {"sdp": json_values, "type": json_values, "mode": json_values, "roomId": json_values},
}
CONTENT_TYPES = ["application/json", "application/json", "text/plain", "", "application/x+json", "application/sdp"]


@st.composite
def http_cases(draw: Any) -> tuple[str, bytes, dict[str, str], str]:
    path = draw(st.sampled_from(sorted(ROUTES)))
    body = body_of(draw, ROUTES[path])
    headers: dict[str, str] = {}
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype:
        headers["Content-Type"] = ctype
    if draw(st.integers(0, 5)) == 0:
        headers["Content-Encoding"] = "gzip"
        if draw(st.booleans()):
            body = gzip.compress(body)
    auth = draw(st.sampled_from(["fuzzer", "fuzzer", "none", "garbage", "admin"]))
    return path, body, headers, auth


async def _send(world: World, path: str, body: bytes, headers: dict[str, str], auth: str, caplog: Any) -> None:
    token = {"fuzzer": await world.ensure_fuzzer(), "garbage": "x.y.z", "admin": "admin-secret"}.get(auth)
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    caplog.clear()
    before = await world.digest()
    resp = await world.client.post(path, data=body, headers=headers)
    text = await resp.text(errors="replace")
    check_answer(resp.status, resp.content_type, text)
    if resp.status >= 400:
        assert await world.digest() == before, (path, body[:200], resp.status, text[:200])
    for live in world.rtc.hub.server_peer_ids():
        assert live.startswith("@")
    check_log(caplog.records)


@given(case=http_cases())
async def test_fuzz_http_bodies(world: World, case: tuple[str, bytes, dict[str, str], str], caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    path, body, headers, auth = case
    await _send(world, path, body, headers, auth, caplog)


@pytest.mark.parametrize(("path", "body"), CORPUS_BODIES)
async def test_fuzz_corpus_http(world: World, path: str, body: bytes, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    for auth in ("fuzzer", "none"):
        await _send(world, path, body, {"Content-Type": "application/json"}, auth, caplog)


@st.composite
def ws_frames(draw: Any) -> str | bytes:
    kind = draw(st.sampled_from(["signal", "signal", "heartbeat", "other", "raw", "binary"]))
    if kind == "binary":
        return bytes(draw(st.binary(max_size=64)))
    if kind == "raw":
        return bytes(draw(hostile_json())).decode("utf-8", "replace")
    frame: dict[str, Any] = {"type": kind if kind != "other" else draw(json_values)}
    if draw(st.booleans()):
        frame["id"] = draw(json_values)
    if kind == "signal":
        frame["signal"] = draw(SIGNALS)
    raw = draw(hostile_json(frame)) if draw(st.booleans()) else json.dumps(frame).encode()
    return raw.decode("utf-8", "replace")


#: Close codes a socket may end with after fuzzed frames (docs/protocol.md); never 1011 (a bug).
EXPECTED_CLOSE = {1000, 1003, 1007, 1008, 1009, 4001}


@example(frames=['{"type":"signal","id":1,"signal":{"type":"x","to":"bob","payload":"\\ud800"}}'])
@example(frames=['{"type":"signal","signal":{"type":"x","to":"bob","payload":[NaN]}}'])
@example(frames=['{"type":"signal","signal":{"type":"offer","to":"@echo","payload":{"sdp":"\\udc00"}}}'])
@example(frames=['{"type":"signal","signal":{"type":"x","payload":' + "[" * 40 + "]" * 40 + "}}"])
@example(frames=[b"\x00\x01"])
@given(frames=st.lists(ws_frames(), min_size=1, max_size=6))
async def test_fuzz_websocket_frames(ws_world: World, frames: list[str | bytes], caplog: Any) -> None:
    world = ws_world
    caplog.set_level(logging.INFO)
    token = await world.ensure_fuzzer()
    caplog.clear()
    before = await world.digest()
    async with world.client.ws_connect("/rtc/ws", params={"token": token}) as ws:
        for frame in frames:
            if ws.closed:
                break
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        if not ws.closed:
            await ws.send_str('{"type":"heartbeat","id":"probe"}')
        answered = False
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            check_answer(200, "application/json", msg.data)
            parsed = strict_json(msg.data)
            assert parsed.get("error", {}).get("code") != "internal_error", parsed
            if parsed.get("type") == "ack" and parsed.get("id") == "probe":
                answered = True
                break
        assert answered or ws.close_code in EXPECTED_CLOSE, (ws.close_code, frames)
    del before  # frames may legitimately relay (to bob, to @echo); the canary check covers loss
    check_log(caplog.records)


# -- any header set, on the guarded server -------------------------------------------------------------

header_names = st.one_of(
    st.sampled_from([b"Cookie", b"Authorization", b"Content-Type", b"Origin", b"X-Forwarded-Proto", b"Connection"]),
    st.binary(min_size=1, max_size=30),
)
header_values = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([b"rtc!r=alice:ZZSECRET", b"Bearer ZZSECRET", b"ZZSECRET" * 1200, b"gzip"]),
)


@pytest.fixture
async def guarded(config: RtcConfig) -> AsyncIterator[int]:
    if not GUARDED_SERVER:
        if IN_CI:
            pytest.fail("the guarded server needs the aiohttp version _aiohttp_compat was checked against")
        pytest.skip("this aiohttp is newer than _aiohttp_compat knows")
    runner, site, _ = await serving.start(create_app(config=config), "127.0.0.1", 0, config)
    try:
        yield site.port
    finally:
        await runner.cleanup()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of an HTTP answer; a 101's body is the WebSocket's, not read; a 204
    has none."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    if status in (101, 204):
        return status, head, b""
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        None,
    )
    body = await asyncio.wait_for(reader.readexactly(length) if length is not None else reader.read(), 10)
    return status, head, body


@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    method=st.sampled_from([b"GET /healthz", b"POST /rtc/connect", b"GET /rtc/ws", b"GET /rtc/poll?token=ZZSECRET"]),
)
async def test_fuzz_header_sets(guarded: int, headers: list[tuple[bytes, bytes]], method: bytes, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded)
    try:
        lines = [method + b" HTTP/1.1", b"Host: fuzz", b"Content-Length: 0"]
        lines += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        status, head, body = await _read_answer(reader)
    finally:
        writer.transport.abort()
    answer = head + body
    assert b"ZZSECRET" not in answer, answer[:300]
    ctype = "application/json" if b"application/json" in head else ""
    check_answer(status, ctype, body.decode("utf-8", "replace"))
    check_log(caplog.records)


# -- WebSocket upgrades with any extra headers and query, on the guarded server (the lean path) ---------

query_parts = st.lists(
    st.tuples(
        st.sampled_from(["roomId", "peerId", "metadata", "token", "authToken", "room", "x"]),
        st.text(max_size=40),
    ),
    max_size=5,
)


@given(headers=st.lists(st.tuples(header_names, header_values), max_size=6), query=query_parts)
async def test_fuzz_upgrade_heads(
    guarded: int, headers: list[tuple[bytes, bytes]], query: list[tuple[str, str]], caplog: Any
) -> None:
    """What a browser's upgrade looks like plus anything: the lean path takes it or leaves it to
    aiohttp; either way the answer is a 101 or this package's JSON error, never a secret echoed or
    an ERROR logged."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    target = "/rtc/ws?" + urllib.parse.urlencode(query)
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded)
    try:
        lines = [
            f"GET {target} HTTP/1.1".encode(),
            b"Host: fuzz",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13",
        ]
        lines += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        status, head, body = await _read_answer(reader)
    finally:
        writer.transport.abort()
    assert b"ZZSECRET" not in head + body, (head + body)[:300]
    if status != 101:
        ctype = "application/json" if b"application/json" in head else ""
        check_answer(status, ctype, body.decode("utf-8", "replace"))
    check_log(caplog.records)


# -- JSON POSTs on kept-alive connections: the lean path answers as aiohttp's routes do -------------


CORS_ORIGIN = "https://app.example"


@pytest.fixture
async def lean_and_route(config: RtcConfig) -> AsyncIterator[tuple[int, int]]:
    """(port, port): the app on the guarded server as ``serve`` runs it (the lean path on), and
    the same app with every request through aiohttp's routes (a middleware of its own, any, here
    one that passes, turns the lean path off); both allow CORS from one origin."""
    if not GUARDED_SERVER:
        if IN_CI:
            pytest.fail("the guarded server needs the aiohttp version _aiohttp_compat was checked against")
        pytest.skip("this aiohttp is newer than _aiohttp_compat knows")
    config = config.replace(cors_origins=(CORS_ORIGIN,))

    @web.middleware
    async def passing(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        return response

    lean_app = create_app(config=config)
    route_app = create_app(config=config)
    route_app.middlewares.append(passing)
    lean_runner, lean_site, _ = await serving.start(lean_app, "127.0.0.1", 0, config)
    route_runner, route_site, _ = await serving.start(route_app, "127.0.0.1", 0, config)
    try:
        yield lean_site._bound_port, route_site._bound_port  # type: ignore[misc]
    finally:
        await lean_runner.cleanup()
        await route_runner.cleanup()


post_paths = st.builds(
    lambda path, query: path + query,
    st.sampled_from(["/rtc/connect", "/rtc/heartbeat", "/rtc/signal", "/rtc/disconnect"]),
    st.one_of(
        st.just(""),
        st.builds(lambda q: "?" + urllib.parse.urlencode(q), query_parts),
        st.sampled_from(["?", "?token=%zz", "?token=ZZSECRET&token=x", "?%00=%ff"]),
    ),
)
post_bodies = st.one_of(
    hostile_json(),
    st.binary(max_size=200),
    st.builds(
        lambda room, peer, extra: json.dumps({"roomId": room, "peerId": peer, "fromPeerId": peer, **extra}).encode(),
        st.sampled_from(["r", "s", "", "a b"]),
        st.sampled_from(["alice", "bob", "@x", ""]),
        st.dictionaries(st.sampled_from(["signal", "metadata", "authToken"]), json_values, max_size=2),
    ),
)
post_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"Content-Type",
                b"Authorization",
                b"Cookie",
                b"Origin",
                b"Connection",
                b"Content-Encoding",
                b"Access-Control-Request-Method",
                b"X-Any",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    b"application/json",
                    b"application/json; charset=utf-8",
                    b"Application/JSON",
                    b"text/plain",
                    b"application/problem+json",
                    b"keep-alive",
                    b"close",
                    b"Bearer ZZSECRET",
                    b"gzip",
                    CORS_ORIGIN.encode(),
                    b"https://elsewhere.example",
                    b"POST",
                ]
            ),
            # (no line feed, which could end the head early: the rest would be a request of its own,
            # and aiohttp drops a whole request that shares a read with a malformed one, where the
            # lean path answers it; header injection is test_fuzz_header_sets's)
            st.binary(max_size=40).filter(lambda value: b"\n" not in value),
        ),
    ),
    max_size=4,
)


async def _exchange(
    port: int, requests: list[bytes], cuts: Sequence[int] = ()
) -> list[tuple[int, str | None, str | None]]:
    """Each request on one connection, in turn: (status, error code, CORS origin allowed) of each
    answer, until the server closes. The first request goes out in pieces, cut at ``cuts``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[tuple[int, str | None, str | None]] = []
    try:
        for i, request in enumerate(requests):
            if i == 0:
                for a, b in itertools.pairwise([0, *sorted(set(cuts)), len(request)]):
                    writer.write(request[a:b])
                    await writer.drain()
                    await asyncio.sleep(0)  # (a pass of the loop: the pieces often arrive as reads of their own)
            else:
                writer.write(request)
            try:
                status, head, body = await _read_answer(reader)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                break
            assert b"ZZSECRET" not in head + body, (head + body)[:300]
            ctype = "application/json" if b"application/json" in head else ""
            check_answer(status, ctype, body.decode("utf-8", "replace"))
            code = json.loads(body)["error"]["code"] if status >= 400 else None
            allowed = re.search(rb"(?im)^access-control-allow-origin: *(.*?)\r$", head)
            out.append((status, code, allowed[1].decode("latin-1") if allowed else None))
            if b"connection: close" in head.lower():
                break
    finally:
        writer.transport.abort()
    return out


@example(  # a cross-origin page's preflight, then (the probe) its POST
    method="OPTIONS",
    path="/rtc/signal",
    headers=[(b"Origin", CORS_ORIGIN.encode()), (b"Access-Control-Request-Method", b"POST")],
    body=b"",
    cuts=[],
)
@example(  # a join, its head and body in pieces
    method="POST",
    path="/rtc/connect",
    headers=[(b"Content-Type", b"application/json"), (b"Origin", CORS_ORIGIN.encode())],
    body=b'{"roomId": "r"}',
    cuts=[10, 60],
)
@example(  # found by seed 1796138599: aiohttp reads an unread body after the answer and logged
    # its undecodable gzip as an "Unhandled exception" (GuardedRequestHandler.log_exception)
    method="OPTIONS",
    path="/rtc/connect",
    headers=[(b"Content-Encoding", b"gzip"), (b"Access-Control-Request-Method", b"application/json")],
    body=b'{"roomId": "r", "peerId": "@x", "fromPeerId": "@x"}',
    cuts=[],
)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "OPTIONS"]),
    path=post_paths,
    headers=post_headers,
    body=post_bodies,
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=3),
)
async def test_fuzz_lean_posts_answer_as_aiohttp(
    lean_and_route: tuple[int, int],
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    cuts: list[int],
    caplog: Any,
) -> None:
    """A JSON POST (or a preflight) with any headers and body, sent in pieces, then a plain one on
    the same connection: the guarded server (which answers plain JSON POSTs and their preflights
    itself, ``web._lean_http``) answers both as aiohttp's routes do, status, error code and CORS
    headers; neither echoes a secret or logs an ERROR."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    guarded, route_only = lean_and_route
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: fuzz", b"Content-Length: " + str(len(body)).encode()]
    lines += [name + b": " + value for name, value in headers]
    first = b"\r\n".join(lines) + b"\r\n\r\n" + body
    probe = (
        b"POST /rtc/heartbeat HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    lean = await _exchange(guarded, [first, probe], [cut for cut in cuts if cut < len(first)])
    plain = await _exchange(route_only, [first, probe])
    assert lean == plain
    check_log(caplog.records)


def test_profiles_are_registered() -> None:
    assert settings.get_profile("fuzz").max_examples >= settings.get_profile("default").max_examples
    assert fuzzing.HOSTILE_TOKENS


@example(b'{"a":"\\ud800"}')
@example(b'{"a":NaN}')
@given(text=hostile_json())
def test_fuzz_the_parsers_agree(text: bytes) -> None:
    """msgspec's fast path and the standard library's strict parse accept and refuse alike."""
    from fantasize_rtc import _json
    from fantasize_rtc.errors import InvalidRequest
    from fantasize_rtc.protocol import parse_json

    try:
        plain: Any = parse_json(text, max_depth=32)
    except InvalidRequest as err:
        plain = err
    try:
        fast: Any = _json.parse(text, max_depth=32)[0]
    except InvalidRequest as err:
        fast = err
    if isinstance(plain, InvalidRequest):
        assert isinstance(fast, InvalidRequest) and (fast.code, fast.message) == (plain.code, plain.message)
    else:
        assert repr(fast) == repr(plain)
        json.dumps(plain, allow_nan=False).encode()  # what was accepted can be sent on
