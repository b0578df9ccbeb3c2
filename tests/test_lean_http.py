"""The lean JSON POSTs of ``fantasize-rtc serve`` (``web/_lean_http.py``) on the wire, byte by byte.

What the routes answer (auth, validation, errors, cookies) is tested by the HTTP tests that take
``http_serve_client`` (each runs on aiohttp's routes and on the lean path), and the fuzzer checks
that the lean path answers any POST as aiohttp's routes do. These are what only the lean path has:
which requests it takes and which it hands to aiohttp (at a connection's start and in the middle),
keep-alive, pipelining, ``Connection: close``, the idle timeout, answers that wait, shutdown, and
that a connection leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fantasize_rtc import RtcConfig
from fantasize_rtc.web import DRAIN_KEY, LEAN_KEY, RTC_KEY
from fantasize_rtc.web._lean_http import parse_post
from tests import redis_fixtures
from tests.helpers import wait_for
from tests.redis_fixtures import RedisServer
from tests.wire import Raw, Served, serve_guarded

pytestmark = pytest.mark.usefixtures("close_raw_connections")

CANDIDATE = {"type": "candidate", "to": "bob", "payload": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}}


def post(path: str, body: Any, *extra: str, token: str | None = None) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def answer(raw: Raw) -> tuple[int, dict[str, str], Any]:
    status, headers, body = await raw.head()
    assert headers["content-type"] == "application/json; charset=utf-8", headers
    return status, headers, json.loads(body)


async def connect(served: Served, room: str, peer: str) -> str:
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/connect", {"roomId": room, "peerId": peer}, "Connection: close"))
    status, _, body = await answer(raw)
    assert status == 200, body
    token: str = body["token"]
    return token


# -- which requests it takes ---------------------------------------------------------------------


def test_the_requests_it_takes_and_the_ones_it_leaves_to_aiohttp() -> None:
    body = b'{"roomId":"r"}'
    plain = post("/rtc/signal", body)
    taken = parse_post(plain, 1024)
    assert taken is not None and taken.path == "/rtc/signal" and taken.body == body and taken.end == len(plain)
    assert not taken.close
    assert parse_post(post("/rtc/connect", body, "Connection: close"), 1024).close  # type: ignore[union-attr]
    assert parse_post(post("/rtc/heartbeat?token=x", body), 1024).target == "/rtc/heartbeat?token=x"  # type: ignore[union-attr]
    assert parse_post(plain + GET_HEALTH, 1024).end == len(plain)  # type: ignore[union-attr]
    left = {
        "another route": post("/rtc/rooms/r", body),
        "a route prefix": post("/rtc/signals", body),
        "HTTP/1.0": plain.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "a GET": plain.replace(b"POST", b"GET", 1),
        "chunked": post("/rtc/signal", body, "Transfer-Encoding: chunked"),
        "gzip": post("/rtc/signal", body, "Content-Encoding: gzip"),
        "expect": post("/rtc/signal", body, "Expect: 100-continue"),
        "an upgrade": post("/rtc/signal", body, "Upgrade: h2c"),
        "connection upgrade": post("/rtc/signal", body, "Connection: Upgrade"),
        "two lengths": post("/rtc/signal", body, f"Content-Length: {len(body)}"),
        "two content types": post("/rtc/signal", body, "Content-Type: text/plain"),
        "no host": plain.replace(b"Host: 127.0.0.1\r\n", b""),
        "no length": plain.replace(f"Content-Length: {len(body)}\r\n".encode(), b""),
        "a signed length": plain.replace(
            f"Content-Length: {len(body)}".encode(), f"Content-Length: +{len(body)}".encode()
        ),
        "a head still coming": plain[:20],
        "too large": post("/rtc/signal", b"[" + b" " * 2000 + b"]"),
        "not ASCII": post("/rtc/signal", body, "X-Name: caf\u00e9".encode().decode("latin-1")).replace(
            b"caf\xc3\xa9", "café".encode()
        ),
        "a bare LF": plain.replace(b"\r\nHost", b"\nHost", 1),
    }
    for case, data in left.items():
        assert parse_post(data, 1024) is None, case
    coming = parse_post(plain[:-1], 1024)  # taken: its body is on the way
    assert coming is not None and coming.body is None and coming.end == len(plain)


async def test_a_keep_alive_connection_is_served_here_throughout(served: Served) -> None:
    """connect, heartbeat, signal (relayed), disconnect: one connection, four answers, all here."""
    bob = await connect(served, "r", "bob")
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/connect", {"roomId": "r", "peerId": "alice"}))
    status, headers, body = await answer(raw)
    assert status == 200 and body["peerId"] == "alice" and "date" in headers
    assert headers["set-cookie"].startswith("rtc!r=alice:") and "HttpOnly" in headers["set-cookie"]
    token = body["token"]
    raw.send(post("/rtc/heartbeat", {}, token=token))
    assert (await answer(raw))[0] == 200
    raw.send(post("/rtc/signal", {"signal": CANDIDATE}, token=token))
    status, _, body = await answer(raw)
    assert status == 200 and body["queued"] == ["bob"]
    rtc = served.app[RTC_KEY]
    relayed = [json.loads(text) for text in await rtc.poll("r", "bob", 0)]
    assert [m["signal"]["payload"] for m in relayed if m["type"] == "signal"] == [CANDIDATE["payload"]]
    raw.send(post("/rtc/disconnect", {}, token=token))
    status, headers, body = await answer(raw)
    assert status == 200 and body == {"disconnected": True}
    assert served.answered == 5  # (bob's connect too)
    del bob


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    token = await connect(served, "r", "alice")
    raw = await Raw.open(served.port)
    raw.send(
        post("/rtc/heartbeat", {}, token=token)
        + post("/rtc/signal", {"signal": {**CANDIDATE, "to": "nobody"}}, token=token)
        + post("/rtc/heartbeat", {}, token="wrong")
        + post("/rtc/heartbeat", {}, token=token)
    )
    assert [(await answer(raw))[0] for _ in range(4)] == [200, 404, 401, 200]
    assert served.answered == 5


async def test_other_requests_hand_the_connection_to_aiohttp(served: Served) -> None:
    """A request this path does not take (another route, a body split over reads, chunked) goes to
    aiohttp with everything after it, and aiohttp keeps the connection."""
    token = await connect(served, "r", "alice")
    posts = served.app[LEAN_KEY].posts
    assert posts is not None
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/heartbeat", {}, token=token) + GET_HEALTH + post("/rtc/heartbeat", {}, token=token))
    assert (await answer(raw))[0] == 200
    status, _, body = await answer(raw)
    assert status == 200 and body["status"] == "ok"
    assert (await answer(raw))[0] == 200
    assert served.answered == 2  # the connect and the first heartbeat; aiohttp answered the rest

    split = await Raw.open(served.port)
    split.send(post("/rtc/heartbeat", {}, token=token))
    assert (await answer(split))[0] == 200
    assert len(posts.connections) == 1
    whole = post("/rtc/heartbeat", {}, token=token)
    split.send(whole[:20])  # a head in pieces: the rest comes after aiohttp has it
    await wait_for(lambda: not posts.connections, message="the split head went to aiohttp")
    split.send(whole[20:])
    assert (await answer(split))[0] == 200

    chunked = await Raw.open(served.port)
    chunked.send(
        b"POST /rtc/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    assert (await answer(chunked))[0] == 200
    assert served.answered == 3


async def test_a_body_in_pieces_is_waited_for(served: Served) -> None:
    """A body that comes over several reads (a browser often sends the head first) is answered
    here, on the connection's first request and later ones."""
    token = await connect(served, "r", "alice")
    posts = served.app[LEAN_KEY].posts
    assert posts is not None
    raw = await Raw.open(served.port)
    first = post("/rtc/signal", {"signal": {**CANDIDATE, "to": "x"}}, token=token)
    head = first.index(b"\r\n\r\n") + 4
    raw.send(first[:head])
    await wait_for(lambda: len(posts.connections) == 1, message="the head alone was taken")
    raw.send(first[head : head + 5])
    raw.send(first[head + 5 :])
    assert (await answer(raw))[0] == 404  # (no peer x)
    second = post("/rtc/heartbeat", {"roomId": "r"}, token=token)
    raw.send(second[:-1])
    raw.send(second[-1:] + post("/rtc/heartbeat", {}, token=token))
    assert [(await answer(raw))[0] for _ in range(2)] == [200, 200]
    assert served.answered == 4


async def test_a_body_that_does_not_come_is_answered_408(config: RtcConfig) -> None:
    async with serve_guarded(config.replace(body_timeout_ms=300)) as served:
        raw = await Raw.open(served.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw.send(post("/rtc/connect", {"roomId": "r"})[:-2])
        status, headers, body = await answer(raw)
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close" and loop.time() - started >= 0.25
        assert await raw.closed_by_server()
        await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 0, message="the connection let go")


async def test_a_request_before_a_malformed_one_in_the_same_read_is_answered(served: Served) -> None:
    """aiohttp's parser drops a whole request that shares a read with a malformed one; this path
    answers it, then aiohttp answers the malformed one (400, in the JSON error shape) and closes."""
    token = await connect(served, "r", "alice")
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/heartbeat", {}, token=token) + b"NOT HTTP\r\n\r\n")
    assert (await answer(raw))[0] == 200
    status, _, body = await answer(raw)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert await raw.closed_by_server()


async def test_connection_close_is_answered_and_closed(served: Served) -> None:
    token = await connect(served, "r", "alice")
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/heartbeat", {}, "Connection: close", token=token) + post("/rtc/heartbeat", {}, token=token))
    status, headers, _ = await answer(raw)
    assert status == 200 and headers["connection"] == "close"
    assert await raw.closed_by_server()  # the pipelined second request is not answered


async def test_errors_keep_the_connection_and_carry_cors_headers(config: RtcConfig) -> None:
    async with serve_guarded(config.replace(cors_origins=("https://app.example",))) as served:
        raw = await Raw.open(served.port)
        raw.send(post("/rtc/signal", b"{nope", "Origin: https://app.example"))
        status, headers, body = await answer(raw)
        assert status == 400 and body["error"]["code"] == "invalid_json"
        assert headers["access-control-allow-origin"] == "https://app.example"
        raw.send(post("/rtc/heartbeat", {}, "Origin: https://evil.example"))
        status, headers, body = await answer(raw)
        assert status == 401 and "access-control-allow-origin" not in headers
        raw.send(post("/rtc/connect", {"roomId": "r"}, "Origin: https://app.example"))
        status, headers, body = await answer(raw)
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        assert served.answered == 3

        # A cross-origin page's first request is the preflight: answered here too, the POSTs after it as well.
        cross = await Raw.open(served.port)
        preflight = (
            "OPTIONS /rtc/signal HTTP/1.1\r\nHost: x\r\nOrigin: {}\r\n"
            "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        )
        cross.send(preflight.format("https://app.example").encode())
        status, headers, body = await cross.head()
        assert status == 204 and body == b"" and "content-length" not in headers
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert "Authorization" in headers["access-control-allow-headers"]
        assert "POST" in headers["access-control-allow-methods"]
        cross.send(post("/rtc/connect", {"roomId": "r"}, "Origin: https://app.example"))
        assert (await answer(cross))[0] == 200
        cross.send(preflight.format("https://evil.example").encode())
        status, headers, body = await answer(cross)
        assert status == 403 and body["error"]["code"] == "forbidden" and "access-control-allow-origin" not in headers
        assert served.answered == 6


async def test_an_idle_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    token = await connect(served, "r", "alice")
    raw = await Raw.open(served.port)
    raw.send(post("/rtc/heartbeat", {}, token=token))
    assert (await answer(raw))[0] == 200
    loop = asyncio.get_running_loop()
    answered_at = loop.time()
    assert await raw.closed_by_server()
    assert loop.time() - answered_at >= 0.4  # not before the timeout (500 ms from the answer)
    await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 0, message="the connection let go")


async def test_answers_that_wait_hold_the_ones_after_them(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with Redis: while one answer waits, the requests after it wait, and go out in order."""
    rtc = served.app[RTC_KEY]
    token = await connect(served, "r", "alice")
    release = asyncio.Event()
    heartbeat = rtc.heartbeat

    async def waiting(room_id: str, peer_id: str) -> int:
        await release.wait()
        return await heartbeat(room_id, peer_id)

    monkeypatch.setattr(rtc, "heartbeat", waiting)
    raw = await Raw.open(served.port)
    raw.send(
        post("/rtc/heartbeat", {}, token=token) + post("/rtc/signal", {"signal": {**CANDIDATE, "to": "x"}}, token=token)
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(raw.reader.readexactly(1), 0.3)  # nothing overtakes the waiting answer
    raw.send(post("/rtc/signal", {"signal": CANDIDATE}, token="wrong"))  # comes while it waits
    release.set()
    assert [(await answer(raw))[0] for _ in range(3)] == [200, 404, 401]


async def test_connections_leave_nothing_behind(served: Served) -> None:
    """Requests, errors, aborted and handed-over connections: at the end the address holds no
    connection, the lean path none, the drain counts no request, and no task of ours runs."""
    app, limiter = served.app, served.limiter
    tasks_before = len(asyncio.all_tasks())
    token = await connect(served, "r", "alice")
    for i in range(20):
        raw = await Raw.open(served.port)
        raw.send(post("/rtc/heartbeat", {}, token=token) + post("/rtc/signal", b"[", token=token))
        assert [(await answer(raw))[0] for _ in range(2)] == [200, 400]
        if i % 3 == 0:
            raw.writer.transport.abort()
        elif i % 3 == 1:
            raw.send(GET_HEALTH)
            assert (await answer(raw))[0] == 200
            raw.close()
        else:
            raw.close()

    def settled() -> bool:
        posts = app[LEAN_KEY].posts
        return (
            limiter.open_from("127.0.0.1") == 0
            and posts is not None
            and not posts.connections
            and app[DRAIN_KEY]._serving_requests == 0
        )

    await wait_for(settled, 5, message="every connection let go")
    assert len(asyncio.all_tasks()) <= tasks_before
    assert served.answered == 41


async def test_shutdown_closes_idle_connections(config: RtcConfig) -> None:
    async with serve_guarded(config) as served:
        raw = await Raw.open(served.port)
        raw.send(post("/rtc/connect", {"roomId": "r"}))
        assert (await answer(raw))[0] == 200
        posts = served.app[LEAN_KEY].posts
        assert posts is not None and len(posts.connections) == 1
        await served.runner.cleanup()
        assert await raw.closed_by_server()
        assert not posts.connections


redis_server = redis_fixtures.redis_server


async def test_with_redis_answers_run_as_tasks_in_order(config: RtcConfig, redis_server: RedisServer) -> None:
    """With a store that waits (Redis) each answer runs in a task (a Redis client's timeouts need
    one), still in order on the connection; a relay between two processes' peers goes through."""
    config = config.replace(redis_url=redis_server.url)  # (a Redis server of its own)
    async with serve_guarded(config) as served:
        token = await connect(served, "r", "alice")
        bob = await connect(served, "r", "bob")
        raw = await Raw.open(served.port)
        raw.send(
            post("/rtc/heartbeat", {}, token=token)
            + post("/rtc/signal", {"signal": CANDIDATE}, token=token)
            + post("/rtc/heartbeat", {}, token="wrong")
        )
        statuses = [(await answer(raw))[0] for _ in range(3)]
        assert statuses == [200, 200, 401]
        assert served.answered == 5
        rtc = served.app[RTC_KEY]
        relayed = [json.loads(text) for text in await rtc.poll("r", "bob", 0)]
        assert [m["signal"]["payload"] for m in relayed if m["type"] == "signal"] == [CANDIDATE["payload"]]
        del bob
