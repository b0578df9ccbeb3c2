"""The lean WebSocket of ``fantasize-rtc serve`` (``web/_lean.py``) on the wire, byte by byte.

The route's behaviour both ways (joins, relays, refusals, bad frames, drain) is tested by the
WebSocket tests that take ``ws_client`` / ``serve_client`` (each runs on aiohttp's route and on the
lean path). These are what only the lean path has: which connections it takes and which it leaves
to aiohttp, its own frame handling and close handshake, frames sent before the answer, and that a
connection leaves nothing behind (its address's count, its channel, the drain's count, tasks).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from fantasize_rtc import RtcConfig, serving
from fantasize_rtc.protocol import CloseCode
from fantasize_rtc.web import DRAIN_KEY, LEAN_KEY, RTC_KEY
from fantasize_rtc.web import create_app as web_create_app
from fantasize_rtc.web._channel import SOCKETS_KEY
from fantasize_rtc.web._lean import parse_upgrade
from tests.helpers import wait_for
from tests.wire import Raw, Served, bound_port

pytestmark = pytest.mark.usefixtures("close_raw_connections")


def upgrade(target: str, *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame (masked, as RFC 6455 requires of clients, unless told otherwise)."""
    head = bytes(((0x80 if fin else 0) | opcode,))
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes((mask_bit | n,))
    elif n < 65536:
        head += bytes((mask_bit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mask_bit | 127,)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(obj: Any) -> bytes:
    return frame(0x1, json.dumps(obj).encode())


async def join(port: int, room: str, peer: str, *extra: str) -> tuple[Raw, dict[str, Any]]:
    raw = await Raw.open(port)
    raw.send(upgrade(f"/rtc/ws?roomId={room}&peerId={peer}", *extra))
    status, headers, _ = await raw.head()
    assert status == 101 and headers["upgrade"].lower() == "websocket", (status, headers)
    first = await raw.json()
    assert first["type"] == "connected" and first["peerId"] == peer
    return raw, first


# -- which connections it takes ---------------------------------------------------------------------


def test_the_heads_it_takes_and_the_ones_it_leaves_to_aiohttp() -> None:
    plain = upgrade("/rtc/ws?roomId=r&peerId=a")
    taken = parse_upgrade(plain + b"rest")
    assert taken is not None and taken[0] == "/rtc/ws?roomId=r&peerId=a" and taken[2] == b"rest"
    assert taken[1]["sec-websocket-version"] == "13"
    assert parse_upgrade(upgrade("/rtc/ws")) is not None  # the two-step form (token in a header)
    # Everything unusual is aiohttp's to judge: it answers each the way it always has.
    for data in (
        plain[:40],  # the head is not all here
        plain.replace(b"GET /rtc/ws", b"GET /rtc/wsx"),
        plain.replace(b"GET /rtc/ws?", b"POST /rtc/ws?"),
        plain.replace(b"HTTP/1.1", b"HTTP/1.0"),
        plain.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        plain.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        plain.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        plain.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nHost: elsewhere"),  # twice
        plain.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\n folded"),  # obs-fold
        plain.replace(b"Host: 127.0.0.1", b"Host: caf\xc3\xa9"),  # not ASCII
        plain.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nContent-Length: 3"),
        plain.replace(b"Host: 127.0.0.1", b"Bad Name: x"),
        upgrade("/rtc/ws", "X: a\x01b"),
        upgrade("/rtc/ws").replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: short"),
    ):
        assert parse_upgrade(data) is None, data


async def test_a_plain_join_is_taken_and_answered_in_one_write(served: Served) -> None:
    raw = await Raw.open(served.port)
    raw.send(upgrade("/rtc/ws?roomId=r&peerId=alice"))
    # the 101 and the join's answer come together
    data = await asyncio.wait_for(raw.reader.read(65536), 5)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and rest[:1] == b"\x81", data[:200]
    assert served.taken == 1
    raw.close()


async def test_what_it_leaves_to_aiohttp_is_answered_as_before(served: Served) -> None:
    # a head in two reads: aiohttp's route serves the same join
    raw = await Raw.open(served.port)
    data = upgrade("/rtc/ws?roomId=r&peerId=alice")
    raw.send(data[:30])
    server = served.runner.server
    assert server is not None
    await wait_for(lambda: server.connections, message="aiohttp given the connection after its first read")
    raw.send(data[30:])
    status, _, _ = await raw.head()
    assert status == 101 and (await raw.json())["type"] == "connected"
    raw.close()
    # an upgrade it does not take, and a malformed one: aiohttp answers with this package's JSON
    for request, want in (
        (upgrade("/rtc/ws?roomId=r&peerId=bob").replace(b"Sec-WebSocket-Key", b"X-Not-A-Key"), 400),
        (b"GET /rtc/ws HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    ):
        raw = await Raw.open(served.port)
        raw.send(request)
        status, _, body = await raw.head()
        assert status == want, (status, body)
        if body:
            assert "error" in json.loads(body)
        raw.close()
    assert served.taken == 0


async def test_refusals_are_the_routes_json_errors_and_close_the_connection(served: Served) -> None:
    alice, _ = await join(served.port, "r", "alice")

    async def refused(request: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        raw = await Raw.open(served.port)
        try:
            raw.send(request)
            status, headers, body = await raw.head()
            assert headers["connection"] == "close" and await raw.closed_by_server()
            assert headers["content-type"].startswith("application/json")
            return status, headers, json.loads(body)
        finally:
            raw.close()

    # taken, and no proof it is the same peer
    status, _, body = await refused(upgrade("/rtc/ws?roomId=r&peerId=alice"))
    assert status == 409 and body["error"]["code"] == "peer_id_taken"
    status, _, body = await refused(upgrade("/rtc/ws", "Authorization: Bearer not-a-token"))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, body = await refused(upgrade("/rtc/ws?roomId=bad%20id&peerId=x"))
    assert status == 400 and body["error"]["code"] == "invalid_request"
    served.app[DRAIN_KEY].begin()
    status, headers, body = await refused(upgrade("/rtc/ws?roomId=r&peerId=carol"))
    assert status == 503 and body["error"]["code"] == "draining" and "retry-after" in headers
    alice.close()


# -- the socket ------------------------------------------------------------------------------------


async def test_pings_fragments_and_the_clients_close(served: Served) -> None:
    raw, _ = await join(served.port, "r", "alice")
    raw.send(frame(0x9, b"are you there"))
    assert await raw.frame() == (0xA, b"are you there")
    raw.send(frame(0xA, b"unasked pong"))  # ignored
    message = json.dumps({"type": "heartbeat", "id": "in-three-parts"}).encode()
    raw.send(frame(0x1, message[:5], fin=False) + frame(0x0, message[5:9], fin=False) + frame(0x0, message[9:]))
    assert await raw.json() == {"type": "ack", "id": "in-three-parts"}
    raw.send(frame(0x8, struct.pack("!H", 4321) + b"bye"))
    assert await raw.frame() == (0x8, struct.pack("!H", 1000))  # answered as aiohttp does
    assert await raw.closed_by_server()
    await wait_for(lambda: not served.app[RTC_KEY].hub.channel("r", "alice"), message="the channel let go")


@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        ("binary", frame(0x2, b"\x00\x01"), 1003),
        ("invalid UTF-8", frame(0x1, b"\xff\xfe"), 1007),
        # the lean socket reads text frames as bytes, their UTF-8 checked by the parse
        ("invalid UTF-8 in a string", frame(0x1, b'{"type":"heartbeat","id":"\xff"}'), 1007),
        ("a surrogate in UTF-8", frame(0x1, b'{"type":"heartbeat","id":"\xed\xa0\x80"}'), 1007),
        ("an overlong encoding", frame(0x1, b'{"type":"heartbeat","id":"\xc0\xaf"}'), 1007),
        ("invalid UTF-8 after the JSON", frame(0x1, b'{"type":"heartbeat"}\xe2\x82'), 1007),
        ("reserved opcode", frame(0x3, b""), 1002),
        ("too large", frame(0x1, b"x" * (64 * 1024 + 1)), 1009),
    ],
)
async def test_a_bad_frame_closes_with_its_code(served: Served, case: str, data: bytes, code: int) -> None:
    raw, _ = await join(served.port, "r", "alice")
    raw.send(data)
    opcode, payload = await raw.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code, (case, payload)
    raw.send(frame(0x8, struct.pack("!H", 1000)))  # the client answers; the server closes
    assert await raw.closed_by_server()
    # the peer is still in the room (its socket went, not the peer), and may come back
    assert [p.peer_id for p in (await served.app[RTC_KEY].get_room_snapshot("r")).peers] == ["alice"]


async def test_text_beyond_ascii_is_read_as_text(served: Served) -> None:
    raw, _ = await join(served.port, "r", "alice")
    bob, _ = await join(served.port, "r", "bob")
    assert (await raw.json())["type"] == "peer:connected"  # bob's
    name = "Zoë \U0001f600 \u00e9t\u00e9"
    raw.send(text({"type": "heartbeat", "id": name}))
    assert await raw.json() == {"type": "ack", "id": name}
    # split inside a character, over fragments
    data = json.dumps(
        {"type": "signal", "id": 1, "signal": {"type": "chat", "to": "bob", "payload": name}}, ensure_ascii=False
    ).encode()
    cut = data.index("\U0001f600".encode()) + 2
    raw.send(frame(0x1, data[:cut], fin=False) + frame(0x0, data[cut:]))
    assert (await raw.json())["id"] == 1
    message = await bob.json()
    assert message["type"] == "signal" and message["signal"]["payload"] == name
    # valid UTF-8, not JSON: an error frame, and the socket stays open
    raw.send(frame(0x1, '{"type":"heartbeat","id":"é"'.encode()))
    assert (await raw.json())["error"]["code"] == "invalid_json"
    raw.send(text({"type": "heartbeat", "id": 2}))
    assert await raw.json() == {"type": "ack", "id": 2}
    raw.close()
    bob.close()


async def test_frames_sent_with_the_upgrade_are_handled_after_the_join_in_order(served: Served) -> None:
    raw = await Raw.open(served.port)
    early = b"".join(text({"type": "heartbeat", "id": i}) for i in range(3))
    raw.send(upgrade("/rtc/ws?roomId=r&peerId=alice") + early + frame(0x9, b"p"))
    status, _, _ = await raw.head()
    assert status == 101 and (await raw.json())["type"] == "connected"
    assert [(await raw.json())["id"] for _ in range(3)] == [0, 1, 2]
    assert await raw.frame() == (0xA, b"p")
    raw.close()


async def test_a_client_that_never_answers_our_close_is_cut_off(served: Served) -> None:
    raw, _ = await join(served.port, "r", "alice")
    raw.send(text({"type": "disconnect"}))
    opcode, payload = await raw.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == CloseCode.LEFT
    # no answer from the client: the server cuts the connection after its close timeout (2 s)
    assert await asyncio.wait_for(raw.closed_by_server(), 5)


async def test_connections_leave_nothing_behind(served: Served) -> None:
    """Joins, relays, leaves, aborted connections, refused upgrades, silent connections: at the
    end the address holds no connection, no channel or socket is left, the drain counts no
    request, and no task of ours runs."""
    app, limiter = served.app, served.limiter
    rtc = app[RTC_KEY]
    tasks_before = len(asyncio.all_tasks())
    for i in range(20):
        alice, _ = await join(served.port, f"room{i}", "alice")
        bob, _ = await join(served.port, f"room{i}", "bob")
        alice.send(text({"type": "signal", "signal": {"type": "app", "to": "bob", "payload": {"n": i}}}))
        while (message := await bob.json())["type"] != "signal":
            pass
        assert message["signal"]["payload"] == {"n": i}
        bob.send(text({"type": "disconnect"}))
        assert (await bob.frame())[0] == 0x8
        bob.send(frame(0x8, struct.pack("!H", 1000)))
        alice.writer.transport.abort()  # gone without a word
        assert await bob.closed_by_server()
        refused = await Raw.open(served.port)
        refused.send(upgrade(f"/rtc/ws?roomId=room{i}&peerId=bad id"))
        assert (await refused.head())[0] == 400
        refused.close()
    silent = await Raw.open(served.port)  # sends nothing: the header timeout closes it
    assert await asyncio.wait_for(silent.closed_by_server(), 3)

    def settled() -> bool:
        return (
            limiter.open_from("127.0.0.1") == 0
            and len(rtc.hub) == 0
            and len(app[SOCKETS_KEY]) == 0
            and app[DRAIN_KEY]._serving_requests == 0
            and not app[LEAN_KEY].handshaking
        )

    await wait_for(settled, 5, message="every connection let go")
    assert len(asyncio.all_tasks()) <= tasks_before
    assert limiter.header_timeouts == 1


async def test_the_connection_limit_per_address_holds_on_this_path(served: Served) -> None:
    held = [await join(served.port, "r", f"p{i}") for i in range(4)]  # the limit is 4
    extra = await Raw.open(served.port)
    assert await extra.closed_by_server()  # refused before a byte is read
    held[0][0].close()
    await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 3, message="a connection let go")
    again, _ = await join(served.port, "r", "p4")
    for raw, _ in held[1:]:
        raw.close()
    again.close()


async def test_a_middleware_added_by_a_plugin_sends_upgrades_through_aiohttp(config: RtcConfig) -> None:
    seen: list[str] = []

    @web.middleware
    async def watching(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = web_create_app(config=config, plugins=[lambda app: app.middlewares.append(watching)])
    runner, site, _ = await serving.start(app, "127.0.0.1", 0, config)
    try:
        raw, _ = await join(bound_port(site), "r", "alice")
        assert seen == ["/rtc/ws"] and app[LEAN_KEY].taken == 0
        raw.close()
    finally:
        await runner.cleanup()


async def test_a_socket_that_cannot_be_attached_is_closed_not_left_open(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    rtc = served.app[RTC_KEY]

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug while attaching")

    monkeypatch.setattr(rtc, "attach_channel", broken)
    raw, _ = await join(served.port, "r", "alice")
    opcode, payload = await raw.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == CloseCode.INTERNAL_ERROR
    raw.send(frame(0x8, struct.pack("!H", 1000)))
    assert await raw.closed_by_server()
    await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 0, message="the connection let go")


async def test_frames_wait_in_order_behind_a_handler_that_waits(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with Redis: while one frame's handler waits, the frames after it (a ping too) are held
    and handled in order when it is done."""
    from fantasize_rtc._aiohttp_compat import run_handler
    from fantasize_rtc.web import _lean
    from fantasize_rtc.web._socket import PeerFrames

    release = asyncio.Event()

    class Waiting(PeerFrames):
        async def handle(self, data: str) -> bool:  # type: ignore[override]
            if json.loads(data).get("id") == "first":
                await release.wait()
            return await run_handler(super().handle, data)

    monkeypatch.setattr(_lean, "PeerFrames", Waiting)
    raw, _ = await join(served.port, "r", "alice")
    raw.send(text({"type": "heartbeat", "id": "first"}))
    raw.send(
        text({"type": "heartbeat", "id": "second"}) + frame(0x9, b"p") + text({"type": "heartbeat", "id": "third"})
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(raw.reader.readexactly(1), 0.3)  # nothing overtakes the waiting frame
    release.set()
    assert (await raw.json())["id"] == "first"
    assert (await raw.json())["id"] == "second"
    assert await raw.frame() == (0xA, b"p")
    assert (await raw.json())["id"] == "third"
