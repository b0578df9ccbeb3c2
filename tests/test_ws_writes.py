"""The WebSocket write path: frames queued per socket and written once per loop pass
(``WebSocketChannel``), in order and well formed at every length, and a peer that stops reading
is closed with 4002 while what it could not take waits in its outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig
from fantasize_rtc import web as rtc_web
from fantasize_rtc.app import create_app
from fantasize_rtc.web import _channel as rtc_channel
from tests.helpers import wait_for
from tests.test_web import bearer, connect


async def test_a_burst_arrives_in_order_and_intact_at_every_frame_length(serve_client: Any, config: RtcConfig) -> None:
    config = dataclasses.replace(config, rate_limit_per_sec=0, max_frame_bytes=200_000, max_signal_bytes=150_000)
    client: TestClient = await serve_client(create_app(config=config))
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    ws_a = await client.ws_connect("/rtc/ws", headers=bearer(alice))
    ws_b = await client.ws_connect("/rtc/ws", headers=bearer(bob))
    # lengths around the three header forms: < 126, < 65536 (16-bit length), >= 65536 (64-bit)
    sizes = [0, 1, 40, 60, 124, 125, 126, 127, 3000, 65_400, 65_535, 65_536, 70_000, 140_000]
    texts = ["x" * n for n in sizes] * 12
    # One send_str per frame without awaiting the server in between: many frames reach the server
    # in one read, so their relays queue up in bob's channel and go out in shared writes.
    for i, text in enumerate(texts):
        await ws_a.send_str(
            json.dumps({"type": "signal", "signal": {"type": "app", "to": "bob", "payload": [i, text]}})
        )
    for i, text in enumerate(texts):
        msg = await ws_b.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        got = json.loads(msg.data)
        assert got["signal"]["payload"] == [i, text], f"message {i} ({len(text)} characters)"
    await ws_a.close()
    await ws_b.close()


async def _raw_websocket_that_never_reads(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up after a few frames
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        (
            f"GET /rtc/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status.startswith(b"HTTP/1.1 101"), status
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()  # from here on nothing is read: the kernel buffers fill
    return reader, writer


async def test_a_peer_that_stops_reading_is_closed_and_keeps_what_it_missed(
    serve_client: Any, config: RtcConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtc_channel, "SEND_BUFFER_LIMIT", 256 * 1024)
    config = dataclasses.replace(config, rate_limit_per_sec=0)
    client: TestClient = await serve_client(create_app(config=config))
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    ws_a = await client.ws_connect("/rtc/ws", headers=bearer(alice))
    assert client.port is not None
    raw_reader, raw_writer = await _raw_websocket_that_never_reads(client.port, bob["token"])
    rtc = client.app[rtc_web.RTC_KEY]
    await wait_for(lambda: rtc.hub.channel("r", "bob") is not None, timeout=5)

    payload = "y" * 3000
    first_queued = None
    for n in range(2000):  # 6 MB at most: more than the kernel's buffers and the limit
        await ws_a.send_str(
            json.dumps({"type": "signal", "id": n, "signal": {"type": "app", "to": "bob", "payload": [n, payload]}})
        )
        ack = await ws_a.receive_json(timeout=5)
        while ack.get("type") != "ack":  # bob's departure notices may come in between
            ack = await ws_a.receive_json(timeout=5)
        assert ack["id"] == n
        if ack["queued"] == ["bob"]:
            first_queued = n
            break
        assert ack["delivered"] == ["bob"]
    assert first_queued is not None, "the server never stopped handing frames to a socket that reads nothing"
    # bob's channel is gone from the hub at once
    assert rtc.hub.channel("r", "bob") is None
    await ws_a.send_str(json.dumps({"type": "signal", "signal": {"type": "app", "to": "bob", "payload": ["after"]}}))

    transport = raw_writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.resume_reading()  # read what bob's socket got: it ends with the close frame
    received = await asyncio.wait_for(raw_reader.read(-1), 15)
    assert received[-40:].endswith(b"\x0f\xa2too slow: messages were not read"), received[-60:]
    raw_writer.close()  # bob's client connects again: its outbox is waiting
    ws_b = await client.ws_connect("/rtc/ws", headers=bearer(bob))
    got = [(await ws_b.receive_json(timeout=5))["signal"]["payload"][0] for _ in range(2)]
    assert got == [first_queued, "after"]
    await ws_a.close()
    await ws_b.close()


class _Transport:
    """What a channel writes to, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _Socket:
    closed = False


def _frames(data: bytes) -> list[bytes]:
    """The short server frames (header, payload under 126 bytes) one write carries."""
    out = []
    while data:
        n = data[1]
        out.append(data[: 2 + n])
        data = data[2 + n :]
    return out


async def test_a_burst_goes_out_in_slices_while_the_server_keeps_up_and_whole_when_it_is_behind() -> None:
    """The write batching's two regimes (``WriteBatch.received``), with the clock given: frames
    read within MAX_HOLD of the pass's first go out together at the end of the pass; a frame read
    later in a short pass first sends what is queued; past SHORT_PASS frames nothing goes out
    before the end of the pass."""
    batch = rtc_channel.WriteBatch()
    transport = _Transport()
    channel = rtc_channel.WebSocketChannel(_Socket(), transport, batch)  # type: ignore[arg-type]
    hold = rtc_channel.MAX_HOLD
    t = 1000.0
    batch.eager = False  # (the last pass was busy: see the test below)
    batch.received(t)
    channel.send("a")
    batch.received(t + hold / 2)  # still within the hold: queued
    channel.send("b")
    assert transport.writes == []
    batch.received(t + hold * 1.5)  # past it: what the pass queued so far goes out now
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"b")
    channel.send("c")
    await wait_for(lambda: len(transport.writes) == 2, message="the end of the pass")
    assert transport.writes[1].endswith(b"c")
    # a long pass (the server is behind) after a busy one: one write at its end, however long it takes
    transport.writes.clear()
    batch.eager = False
    batch.received(t)
    for i in range(rtc_channel.SHORT_PASS + 10):
        channel.send(str(i))
        batch.received(t + (i + 1) * hold * (2 if i >= rtc_channel.SHORT_PASS else 0.001))
    assert len(transport.writes) == 0
    await wait_for(lambda: len(transport.writes) == 1, message="the end of the pass")


async def test_messages_the_server_sends_of_its_own_go_out_at_once_pass_after_pass() -> None:
    """No frame read (a peer:connected, an ack of an HTTP call): each write at once, and the next
    one, in a later pass, too."""
    batch = rtc_channel.WriteBatch()
    transport = _Transport()
    channel = rtc_channel.WebSocketChannel(_Socket(), transport, batch)  # type: ignore[arg-type]
    for i in range(3):
        channel.send(f"m{i}")
        assert len(transport.writes) == i + 1
        await wait_for(lambda i=i: batch.passes == i + 1, message="the pass's end")  # type: ignore[misc]
    assert batch.eager


async def test_frames_go_out_at_once_unless_a_socket_gets_several_in_a_pass() -> None:
    """Each socket's first frame of a pass is written as it is sent; what follows it to the same
    socket in that pass waits for the pass's end, and the next pass batches whole. A batched pass
    in which no socket took two frames in one write (batching saved nothing) lets the next pass
    write at once again; one in which a socket did keeps batching."""
    batch = rtc_channel.WriteBatch()
    transport_a, transport_b = _Transport(), _Transport()
    a = rtc_channel.WebSocketChannel(_Socket(), transport_a, batch)  # type: ignore[arg-type]
    b = rtc_channel.WebSocketChannel(_Socket(), transport_b, batch)  # type: ignore[arg-type]

    def sent(transport: _Transport) -> list[bytes]:
        return [frame[2:] for write in transport.writes for frame in _frames(write)]

    t = 1000.0
    assert batch.eager  # a new server writes at once
    batch.received(t)
    a.send("a1")
    b.send("b1")
    assert (sent(transport_a), sent(transport_b)) == ([b"a1"], [b"b1"])  # at once, each
    assert batch.counters.frames_out == 2 and batch.counters.relay_latency.count == 2
    batch.received(t + 1e-6)
    a.send("a2")  # a's second frame in this pass waits
    b.send("b2")
    assert (len(transport_a.writes), len(transport_b.writes)) == (1, 1)
    await wait_for(lambda: len(transport_a.writes) == 2 and len(transport_b.writes) == 2, message="the pass's end")
    assert (sent(transport_a), sent(transport_b)) == ([b"a1", b"a2"], [b"b1", b"b2"])
    assert not batch.eager  # sockets got two frames in that pass: the next one batches
    # a batched pass in which each socket got one frame: batching saved nothing
    batch.received(t + 1)
    a.send("a3")
    b.send("b3")
    assert (len(transport_a.writes), len(transport_b.writes)) == (2, 2)
    await wait_for(lambda: len(transport_a.writes) == 3 and len(transport_b.writes) == 3, message="the pass's end")
    assert batch.eager  # so the next pass writes at once again
    batch.received(t + 2)
    a.send("a4")
    assert len(transport_a.writes) == 4
    await wait_for(lambda: batch.passes == 3, message="the pass's end")
    # a batched pass in which a socket took two frames in one write keeps batching
    batch.eager = False
    batch.received(t + 3)
    a.send("a5")
    a.send("a6")
    await wait_for(lambda: len(transport_a.writes) == 5, message="the pass's end")
    assert transport_a.writes[-1].endswith(b"a6") and sent(transport_a)[-2:] == [b"a5", b"a6"]
    assert not batch.eager
    assert batch.counters.frames_out == 9
