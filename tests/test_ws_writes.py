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


async def test_after_a_quiet_pass_frames_go_out_at_once_until_the_pass_turns_busy() -> None:
    """After a pass that read few frames (``QUIET_PASS``) each frame is written as it is sent;
    once a pass reads that many, the rest of it is batched, and so is the next pass."""
    batch = rtc_channel.WriteBatch()
    transport = _Transport()
    channel = rtc_channel.WebSocketChannel(_Socket(), transport, batch)  # type: ignore[arg-type]
    t = 1000.0
    assert batch.eager  # a new server is quiet
    batch.received(t)
    channel.send("a")
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"a")
    assert batch.counters.frames_out == 1 and batch.counters.relay_latency.count == 1
    for i in range(1, rtc_channel.QUIET_PASS + 3):
        batch.received(t + i * 1e-6)
        channel.send(str(i))
    quiet = rtc_channel.QUIET_PASS  # frames 1 .. QUIET_PASS - 1 went out at once too, the rest waits
    assert len(transport.writes) == quiet
    await wait_for(lambda: len(transport.writes) == quiet + 1, message="the end of the pass")
    assert not batch.eager  # that pass was busy: the next one batches
    batch.received(t + 1)
    channel.send("next")
    assert len(transport.writes) == quiet + 1
    await wait_for(lambda: len(transport.writes) == quiet + 2, message="the end of the pass")
    assert batch.eager  # one frame in that pass: quiet again
    assert batch.counters.frames_out == rtc_channel.QUIET_PASS + 4
