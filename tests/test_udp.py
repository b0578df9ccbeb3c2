"""The server's media on known UDP ports (media/udp.py), on this machine's own interfaces: many
sessions on one port, a port range that fills up, garbage thrown at the port, and many sessions
opened and closed leaving no route, task or socket behind. Through real NATs: tests/test_nat.py."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.media._aiortc_compat import host_addresses
from fantasize_rtc.media.udp import PortRange, UdpMux, mapped_address, parse_stun, stun_binding
from tests.helpers import IN_CI, free_udp_port, wait_for
from tests.media_helpers import client_peer, http_offer, udp_sockets, wait_closed


def _udp_ports_of_this_process() -> set[int]:
    """Local ports of the UDP sockets this process holds."""
    inodes: dict[str, int] = {}
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    ports = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            ports.add(inodes[target[8:-1]])
    return ports


async def served(aiohttp_client: Any, config: RtcConfig, **changes: Any) -> TestClient:  # type: ignore[type-arg]
    if not host_addresses():
        if IN_CI:
            pytest.fail("CI needs an interface address besides loopback (aiortc gathers none on loopback)")
        pytest.skip("no interface address but loopback: aiortc gathers none")
    client: TestClient = await aiohttp_client(create_app(config=config.replace(**changes)))  # type: ignore[type-arg]
    return client


@pytest.fixture
async def mux_client(aiohttp_client: Any, config: RtcConfig) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    yield await served(aiohttp_client, config, udp_port=free_udp_port(), max_anonymous_sessions_per_address=0)


async def test_many_sessions_share_one_port_and_leave_nothing_when_they_close(mux_client: TestClient) -> None:  # type: ignore[type-arg]
    manager = mux_client.app[MEDIA_KEY]
    mux = manager.udp
    assert isinstance(mux, UdpMux)
    before = udp_sockets()
    tasks_before = _tasks()

    async def one(passthrough: bool) -> None:
        async with client_peer() as peer:
            peer.add_media(audio=False)
            body = await http_offer(mux_client, peer, "echo", passthrough=passthrough)
            hosts = [line for line in body["sdp"].split("\r\n") if "typ host" in line]
            assert hosts and all(f" {mux.port} typ host" in line for line in hosts), hosts
            await peer.wait_frames("video", 5)

    for _ in range(25):  # 100 sessions, 4 at a time
        await asyncio.gather(*(one(i % 2 == 0) for i in range(4)))
    await wait_closed(manager)
    assert udp_sockets() == before  # the mux's sockets were there before; none was added
    await wait_for(lambda: mux.routes() == 0, 10, message="every route gone")
    await wait_for(lambda: _tasks() <= tasks_before, 10, message="no task left")


async def test_a_full_port_range_answers_503_and_opens_nothing_outside_it(
    aiohttp_client: Any, config: RtcConfig
) -> None:
    first = free_udp_port()
    while any(_busy(p) for p in range(first, first + 3)):
        first = free_udp_port()
    client = await served(
        aiohttp_client, config, udp_port_range=f"{first}-{first + 2}", max_anonymous_sessions_per_address=0
    )
    manager = client.app[MEDIA_KEY]
    assert isinstance(manager.udp, PortRange)
    before = _udp_ports_of_this_process()
    async with client_peer() as p1, client_peer() as p2, client_peer() as p3, client_peer() as p4:
        for peer in (p1, p2, p3, p4):
            peer.add_media(audio=False)
        for peer in (p1, p2, p3):
            await http_offer(client, peer, "echo")
        resp = await client.post("/rtc/offer", json={"sdp": await p4.offer(), "type": "offer"})
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "capacity_exceeded", body
        assert resp.headers["Retry-After"] == "5" and f"{first}-{first + 2}" in body["error"]["message"]
        opened = _udp_ports_of_this_process() - before - _client_ports(p1, p2, p3, p4)
        assert opened == {first, first + 1, first + 2}, opened
        for peer in (p1, p2, p3):
            await peer.wait_frames("video", 5)
    await wait_closed(manager)


def _tasks() -> int:
    """Tasks of this loop, but the HTTP connection handlers (the client keeps connections alive)."""
    return sum(1 for t in asyncio.all_tasks() if "RequestHandler.start" not in repr(t.get_coro()))


def _busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _client_ports(*peers: Any) -> set[int]:
    """The UDP ports the test's own aiortc peers bound (they live in this process too)."""
    ports = set()
    for peer in peers:
        for transceiver in peer.pc.getTransceivers():
            for candidate in transceiver.receiver.transport.transport.iceGatherer.getLocalCandidates():
                ports.add(candidate.port)
    return ports


async def test_garbage_on_the_port_is_dropped_and_counted_while_sessions_keep_their_media(
    mux_client: TestClient,  # type: ignore[type-arg]
) -> None:
    manager = mux_client.app[MEDIA_KEY]
    mux = manager.udp
    assert isinstance(mux, UdpMux)
    address = next(a for a in mux.endpoints if ":" not in a)
    rss_before = 0
    async with client_peer() as peer:
        peer.add_media(audio=False)
        await http_offer(mux_client, peer, "echo", passthrough=True)
        await peer.wait_frames("video", 10)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sent = await _throw_garbage(address, mux.port, per_second=5000, seconds=10)
        frames = peer.frames("video")
        await peer.wait_frames("video", frames + 30)  # media still flows
        health = await (await mux_client.get("/healthz")).json()
        assert health["status"] == "ok"
    assert mux.dropped >= sent * 0.9, (mux.dropped, sent)  # a few may be lost on loopback
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: flat
    await wait_closed(manager)
    await wait_for(lambda: mux.routes() == 0, 10, message="routes gone")


async def _throw_garbage(address: str, port: int, per_second: int, seconds: float) -> int:
    """Random bytes, truncated STUN, STUN with unknown usernames, DTLS-looking records, from many
    source ports, paced to ``per_second``."""
    rng = random.Random(12)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    for s in sockets:
        s.setblocking(False)
    request, _ = stun_binding()
    with_username = struct.pack("!HH", 0x0001, 12) + request[4:20] + struct.pack("!HH", 0x0006, 8) + b"nobody:x"
    shapes = [
        lambda: rng.randbytes(rng.randrange(1, 300)),
        lambda: request[: rng.randrange(1, 20)],
        lambda: with_username,
        lambda: b"\x16\xfe\xfd" + rng.randbytes(60),  # a DTLS record from nobody we know
        lambda: b"\x80" + rng.randbytes(100),  # RTP from nobody
    ]
    sent = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            for _ in range(per_second // 100):
                try:
                    rng.choice(sockets).sendto(rng.choice(shapes)(), (address, port))
                    sent += 1
                except BlockingIOError:
                    pass
            await asyncio.sleep(0.01)  # pacing the flood, not waiting for anything
    finally:
        for s in sockets:
            s.close()
    return sent


@given(data=st.binary(max_size=200))
def test_the_stun_parser_never_raises(data: bytes) -> None:
    head = parse_stun(data)
    assert head is None or head.cls in (0, 1, 2, 3)
    assert mapped_address(data, b"\0" * 12) is None or isinstance(mapped_address(data, b"\0" * 12), tuple)


def test_the_stun_parser_reads_what_routing_needs() -> None:
    request, transaction_id = stun_binding()
    head = parse_stun(request)
    assert head is not None and head.cls == 0 and head.transaction_id == transaction_id and head.ufrag is None
    username = b"abcd:efgh"
    attr = struct.pack("!HH", 0x0006, len(username)) + username + b"\0" * (-len(username) % 4)
    message = struct.pack("!HH", 0x0001, len(attr)) + request[4:20] + attr
    assert parse_stun(message) == type(head)(0, transaction_id, "abcd")
    # a success carrying XOR-MAPPED-ADDRESS 203.0.113.9:40000
    xport = 40000 ^ 0x2112
    xaddr = bytes(b ^ k for b, k in zip(bytes([203, 0, 113, 9]), b"\x21\x12\xa4\x42", strict=True))
    value = b"\0\x01" + struct.pack("!H", xport) + xaddr
    attr = struct.pack("!HH", 0x0020, len(value)) + value
    success = struct.pack("!HH", 0x0101, len(attr)) + request[4:20] + attr
    assert mapped_address(success, transaction_id) == ("203.0.113.9", 40000)
    assert mapped_address(success, b"x" * 12) is None
    for cut in range(len(message)):
        assert parse_stun(message[:cut]) is None
