"""One contract for every backend: the memory one and the Redis one (on a real redis-server).

The first half drives the :class:`Backend` interface directly with a real :class:`Hub` as the
sink; the second half drives the facade. For Redis, "two processes" are two facades with their
own backends (own connections, own pub/sub channel) on the same Redis; for memory both names
point at one facade, so the same assertions hold for one process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fantasize_rtc import RtcConfig, RtcServer, create_rtc_server
from fantasize_rtc.backends import Backend, Envelope, MemoryBackend, OutboxLimits
from fantasize_rtc.errors import (
    CapacityExceeded,
    PeerIdTaken,
    PeerNotFound,
    RoomExists,
    RoomFull,
    RoomNotFound,
    Unauthorized,
)
from fantasize_rtc.hub import Hub
from tests import redis_fixtures
from tests.helpers import FakeClock, wait_for
from tests.redis_fixtures import RedisServer, unique_prefix

NOW = 1_700_000_000_000


redis_server = redis_fixtures.redis_server  # the fixture, shared with the other Redis tests


class ListChannel:
    """A live channel that keeps what it is sent (a real Channel implementation, not a mock)."""

    kind = "ws"

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    def send(self, text: str) -> bool:
        if self.closed is not None:
            return False
        self.texts.append(text)
        return True

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]

    def signals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "signal"]


BackendFactory = Callable[[], Backend]


@pytest.fixture(params=["memory", "redis"])
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    """Makes backends that share state (one memory backend, or Redis backends on one prefix)."""
    if request.param == "memory":
        shared = MemoryBackend()
        return lambda: shared
    from fantasize_rtc.backends.redis import RedisBackend

    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = unique_prefix()
    return lambda: RedisBackend(server.url, prefix=prefix, refresh_interval=0.2, process_ttl=2.0)


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> AsyncIterator[tuple[Backend, Hub]]:
    hub = Hub()
    b = backend_factory()
    await b.start(hub)
    try:
        yield b, hub
    finally:
        await b.close()


def _envelope(text: str, ts: int = NOW, sender: str | None = "alice") -> Envelope:
    message = {
        "type": "signal",
        "roomId": "r",
        "fromPeerId": sender,
        "signal": {"type": "x", "payload": text},
        "ts": ts,
    }
    return Envelope(message, json.dumps(message), ts, sender)


async def _join(
    b: Backend,
    room: str,
    peer: str,
    now: int = NOW,
    *,
    max_peers_room: int = 8,
    proof: str | None = None,
    trusted: bool = False,
    token: str | None = None,
    max_peers: int = 1000,
    max_rooms: int = 100,
) -> Any:
    return await b.join(
        room,
        peer,
        {"name": peer},
        now,
        token=token or f"tok-{room}-{peer}-{now}",
        proof=proof,
        trusted=trusted,
        default_max_peers=max_peers_room,
        max_rooms=max_rooms,
        max_peers=max_peers,
    )


# -- the Backend interface -------------------------------------------------------------------------


async def test_create_room_and_snapshot(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    snap = await b.create_room("lobby", 4, {"topic": "x", "list": []}, NOW, max_rooms=2)
    assert (snap.room_id, snap.max_peers, snap.metadata, snap.created_at, snap.peers) == (
        "lobby",
        4,
        {"topic": "x", "list": []},
        NOW,
        (),
    )
    with pytest.raises(RoomExists):
        await b.create_room("lobby", 4, {}, NOW, max_rooms=2)
    await b.create_room("second", 4, {}, NOW, max_rooms=2)
    with pytest.raises(CapacityExceeded):
        await b.create_room("third", 4, {}, NOW, max_rooms=2)
    assert (await b.snapshot("lobby")).metadata == {"topic": "x", "list": []}
    with pytest.raises(RoomNotFound):
        await b.snapshot("nope")
    assert await b.counts() == (2, 0)


async def test_join_creates_room_and_tokens_resolve(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    first = await _join(b, "r", "alice")
    assert first.room_created and not first.replaced
    assert first.peer.peer_id == "alice" and first.peer.metadata == {"name": "alice"} and first.peer.connected_at == NOW
    second = await _join(b, "r", "bob", NOW + 5)
    assert not second.room_created
    assert [p.peer_id for p in second.room.peers] == ["alice", "bob"]
    assert await b.resolve(first.token) == ("r", "alice")
    assert await b.resolve(second.token) == ("r", "bob")
    with pytest.raises(Unauthorized):
        await b.resolve("no-such-token")
    assert await b.counts() == (1, 2)


async def test_taken_id_needs_proof_or_trust(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    first = await _join(b, "r", "alice")
    with pytest.raises(PeerIdTaken):
        await _join(b, "r", "alice", NOW + 1)
    again = await _join(b, "r", "alice", NOW + 2, proof=first.token)
    assert again.replaced and again.token == first.token and again.peer.connected_at == NOW + 2
    trusted = await _join(b, "r", "alice", NOW + 3, trusted=True, token="fresh-token")
    assert trusted.replaced and trusted.token == "fresh-token"
    with pytest.raises(Unauthorized):
        await b.resolve(first.token)
    assert await b.resolve("fresh-token") == ("r", "alice")
    assert await b.counts() == (1, 1)


async def test_room_full_and_server_capacity(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    await _join(b, "small", "a", max_peers_room=2)
    await _join(b, "small", "b", max_peers_room=2)
    with pytest.raises(RoomFull):
        await _join(b, "small", "c", max_peers_room=2)
    with pytest.raises(CapacityExceeded):
        await _join(b, "other", "c", max_peers=2)
    with pytest.raises(CapacityExceeded):
        await _join(b, "other", "c", max_rooms=1)
    assert await b.counts() == (1, 2)


async def test_concurrent_joins_never_overfill_a_room(backend_factory: BackendFactory) -> None:
    hubs = [Hub(), Hub()]
    backends = [backend_factory(), backend_factory()]
    for b, hub in zip(backends, hubs, strict=True):
        await b.start(hub)
    try:

        async def attempt(i: int) -> bool:
            try:
                await _join(backends[i % 2], "crowd", f"p{i}", max_peers_room=8)
            except RoomFull:
                return False
            return True

        results = await asyncio.gather(*(attempt(i) for i in range(40)))
        assert sum(results) == 8
        assert len((await backends[1].snapshot("crowd")).peers) == 8
        assert await backends[0].counts() == (1, 8)
    finally:
        for b in backends:
            await b.close()


async def test_leave_is_reported_once_and_closes_empty_rooms(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    alice = await _join(b, "r", "alice")
    await _join(b, "r", "bob")
    out = await b.leave("r", "alice")
    assert out is not None and out.peer.peer_id == "alice" and out.remaining == ("bob",) and not out.room_closed
    assert out.peer.metadata == {"name": "alice"}
    assert await b.leave("r", "alice") is None
    with pytest.raises(Unauthorized):
        await b.resolve(alice.token)
    last = await b.leave("r", "bob")
    assert last is not None and last.room_closed and last.remaining == ()
    with pytest.raises(RoomNotFound):
        await b.snapshot("r")
    assert await b.counts() == (0, 0)


async def test_concurrent_leaves_have_one_winner(backend_factory: BackendFactory) -> None:
    backends = [backend_factory(), backend_factory(), backend_factory()]
    for b in backends:
        await b.start(Hub())
    try:
        await _join(backends[0], "r", "alice")
        await _join(backends[0], "r", "bob")
        outcomes = await asyncio.gather(*(b.leave("r", "alice") for b in backends))
        assert sum(o is not None for o in outcomes) == 1
        assert await backends[2].counts() == (1, 1)
    finally:
        for b in backends:
            await b.close()


async def test_touch_and_expired_peers(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    await _join(b, "r", "alice")
    await _join(b, "r", "bob")
    assert await b.touch("r", "alice", NOW + 1000) == NOW + 1000
    assert await b.touch("r", "alice", NOW + 500) == NOW + 1000  # never goes back
    with pytest.raises(PeerNotFound):
        await b.touch("r", "carol", NOW)
    with pytest.raises(RoomNotFound):
        await b.touch("nope", "alice", NOW)
    assert sorted(await b.expired_peers(NOW + 1500, 1000)) == [("r", "bob")]
    assert sorted(await b.expired_peers(NOW + 2500, 1000)) == [("r", "alice"), ("r", "bob")]
    snap = await b.snapshot("r")
    assert {p.peer_id: p.last_seen for p in snap.peers} == {"alice": NOW + 1000, "bob": NOW}


async def test_recipients(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    for peer in ("alice", "bob", "carol"):
        await _join(b, "r", peer)
    assert sorted(await b.recipients("r", "alice", None)) == ["bob", "carol"]
    assert await b.recipients("r", "alice", "carol") == ["carol"]
    with pytest.raises(PeerNotFound):
        await b.recipients("r", "alice", "dave")
    with pytest.raises(PeerNotFound):
        await b.recipients("r", "dave", None)
    with pytest.raises(RoomNotFound):
        await b.recipients("nope", "alice", None)


async def test_join_without_creating_and_member_tokens(backend: tuple[Backend, Hub]) -> None:
    """What the per-address room limit and owner keys ask of a backend."""
    b, _ = backend
    with pytest.raises(RoomNotFound):
        await b.join(
            "new",
            "a",
            {},
            NOW,
            token="t-a",
            proof=None,
            trusted=False,
            default_max_peers=4,
            max_rooms=10,
            max_peers=10,
            may_create=False,
        )
    assert await b.counts() == (0, 0)
    first = await _join(b, "r", "alice")
    joined = await b.join(
        "r",
        "bob",
        {},
        NOW,
        token="t-b",
        proof=None,
        trusted=False,
        default_max_peers=4,
        max_rooms=10,
        max_peers=10,
        may_create=False,
    )
    assert not joined.room_created
    assert await b.member_token("r", "alice") == first.token
    assert await b.member_token("r", "bob") == "t-b"
    assert await b.member_token("r", "nobody") is None and await b.member_token("nope", "alice") is None
    await b.leave("r", "alice")
    assert await b.member_token("r", "alice") is None


async def test_outboxes_are_capped_in_bytes_per_peer_and_in_all(backend: tuple[Backend, Hub]) -> None:
    """Issue 12: a count cap alone let 256 x 48 KiB (12 MiB) wait for one offline peer, with no cap
    on the sum. Bytes are capped per peer and over all outboxes; what does not fit is dropped for
    that recipient (reported), and the bytes come back when outboxes are drained, expire or go."""
    b, _ = backend
    big = "x" * 1000
    size = _envelope(big).size  # ~1,100 bytes; Redis also counts each item's "ts \t from \t" (~20)
    b.outbox_limits = OutboxLimits(max_bytes=3 * size + 200, total_max_bytes=5 * size + 300)
    for peer in ("alice", "bob", "carol", "dave"):
        await _join(b, "r", peer)
    assert await b.queued_bytes() == 0
    kept = [await b.deliver("r", ["bob"], _envelope(big, NOW + i), outbox_max=100, now=NOW) for i in range(5)]
    assert [k.queued for k in kept] == [["bob"]] * 3 + [[]] * 2
    assert [k.dropped for k in kept] == [[]] * 3 + [["bob"]] * 2
    queued = await b.queued_bytes()
    assert 3 * size <= queued <= 3 * size + 200  # Redis counts each item's "ts \t from \t" prefix too
    # two more fit for carol; then the sum over all outboxes is at its limit, so dave gets none
    for _ in range(2):
        assert (await b.deliver("r", ["carol"], _envelope(big), outbox_max=100, now=NOW)).queued == ["carol"]
    assert (await b.deliver("r", ["dave"], _envelope(big), outbox_max=100, now=NOW)).dropped == ["dave"]
    # a small message still fits for dave under the total once bob's outbox is drained
    assert len(await b.take_outbox("r", "bob")) == 3
    assert (await b.deliver("r", ["dave"], _envelope(big), outbox_max=100, now=NOW)).queued == ["dave"]
    # expiry and departure give the bytes back too
    await b.expire_outboxes(NOW + 10**6, 1)
    assert await b.queued_bytes() == 0
    assert (await b.deliver("r", ["carol"], _envelope(big), outbox_max=100, now=NOW)).queued == ["carol"]
    await b.leave("r", "carol")
    assert await b.queued_bytes() == 0


async def test_deliver_live_queued_dropped_and_in_order(backend: tuple[Backend, Hub]) -> None:
    b, hub = backend
    for peer in ("alice", "bob", "carol"):
        await _join(b, "r", peer)
    bob = ListChannel()
    hub.attach("r", "bob", bob)
    await b.take_outbox("r", "bob")  # the facade does this right after attaching
    report = await b.deliver("r", ["bob", "carol", "ghost"], _envelope("m0"), outbox_max=3, now=NOW)
    assert report.delivered == ["bob"] and report.queued == ["carol"] and report.dropped == []
    assert [m["signal"]["payload"] for m in bob.signals()] == ["m0"]
    for i in range(1, 4):
        report = await b.deliver("r", ["carol"], _envelope(f"m{i}", NOW + i), outbox_max=3, now=NOW + i)
    assert report.dropped == ["carol"]
    taken = await b.take_outbox("r", "carol")
    assert [e.message["signal"]["payload"] for e in taken] == ["m0", "m1", "m2"]
    assert [e.ts for e in taken] == [NOW, NOW + 1, NOW + 2] and taken[0].from_peer_id == "alice"
    assert json.loads(taken[1].text) == taken[1].message
    assert await b.take_outbox("r", "carol") == []


async def test_push_now_only_hands_a_members_signal_to_a_member_with_a_channel_here(
    backend: tuple[Backend, Hub],
) -> None:
    """The synchronous relay (``push_now``): the memory backend delivers to a live channel of a
    member from a member, and does nothing else (``submit`` then does it, and raises what is
    wrong); a backend whose rooms live elsewhere (Redis) always leaves it to ``submit``."""
    b, hub = backend
    for peer in ("alice", "bob", "carol"):
        await _join(b, "r", peer)
    bob = ListChannel()
    hub.attach("r", "bob", bob)
    text = _envelope("now").text
    local = isinstance(b, MemoryBackend)
    assert b.push_now("r", "alice", "bob", text) is local
    assert [m["signal"]["payload"] for m in bob.signals()] == (["now"] if local else [])
    # Nothing done: no channel (carol), not a member (ghost, either way), no such room.
    assert not b.push_now("r", "alice", "carol", text)
    assert not b.push_now("r", "ghost", "bob", text)
    assert not b.push_now("r", "alice", "ghost", text)
    assert not b.push_now("nowhere", "alice", "bob", text)
    assert len(bob.texts) == (1 if local else 0)
    assert await b.take_outbox("r", "carol") == []


async def test_outbox_expiry_notifies_once_and_leave_drops_outbox(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    for peer in ("alice", "bob", "carol"):
        await _join(b, "r", peer)
    await b.deliver("r", ["bob"], _envelope("old", NOW), outbox_max=10, now=NOW)
    await b.deliver("r", ["bob"], _envelope("new", NOW + 900), outbox_max=10, now=NOW + 900)
    await b.deliver("r", ["carol"], _envelope("gone-with-carol", NOW), outbox_max=10, now=NOW)
    assert await b.leave("r", "carol") is not None
    notices = await b.expire_outboxes(NOW + 1000, 500)
    assert [(n.room_id, n.to_peer_id, n.envelope.message["signal"]["payload"]) for n in notices] == [
        ("r", "bob", "old")
    ]
    assert notices[0].envelope.from_peer_id == "alice"
    assert await b.expire_outboxes(NOW + 1000, 500) == []
    assert [e.message["signal"]["payload"] for e in await b.take_outbox("r", "bob")] == ["new"]


async def test_server_peers_are_listed_not_counted(backend: tuple[Backend, Hub]) -> None:
    b, _ = backend
    assert not await b.add_server_peer("nope", "@echo", NOW)
    await _join(b, "r", "alice")
    assert await b.add_server_peer("r", "@echo", NOW + 1)
    assert not await b.add_server_peer("r", "@echo", NOW + 2)
    snap = await b.snapshot("r")
    assert [(p.peer_id, p.metadata) for p in snap.peers] == [("alice", {"name": "alice"}), ("@echo", {"server": True})]
    assert await b.recipients("r", "alice", None) == []
    assert await b.counts() == (1, 1)
    assert await b.remove_server_peer("r", "@echo")
    assert not await b.remove_server_peer("r", "@echo")
    assert [p.peer_id for p in (await b.snapshot("r")).peers] == ["alice"]


# -- the facade on top ---------------------------------------------------------------------------


@pytest.fixture
async def pair(backend_factory: BackendFactory, tmp_path: Path) -> AsyncIterator[tuple[RtcServer, RtcServer]]:
    """Two facades acting as one server (for memory: the same facade twice)."""
    config = RtcConfig(recordings_dir=str(tmp_path), heartbeat_interval_ms=60_000, rate_limit_per_sec=0)
    a = create_rtc_server(config, backend=backend_factory())
    shared_memory = isinstance(a.backend, MemoryBackend)
    b = a if shared_memory else create_rtc_server(config, backend=backend_factory())
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_facade_relay_both_ways_and_broadcast(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    await b.connect_peer("r", "bob")
    await a.connect_peer("r", "carol")
    alice, bob, carol = ListChannel(), ListChannel(), ListChannel()
    await a.attach_channel("r", "alice", alice)
    await b.attach_channel("r", "bob", bob)
    await a.attach_channel("r", "carol", carol)
    # bob's join reached alice (and carol's reached bob) across processes
    assert [m["peer"]["peerId"] for m in alice.messages if m["type"] == "peer:connected"] == ["bob", "carol"]
    assert [m["peer"]["peerId"] for m in bob.messages if m["type"] == "peer:connected"] == ["carol"]

    result = await a.relay("r", "alice", {"type": "offer", "payload": {"sdp": "v=0"}, "to": "bob"})
    assert result.delivered == ("bob",)
    await wait_for(bob.signals, message="alice's offer at bob")
    assert bob.signals()[0]["fromPeerId"] == "alice" and bob.signals()[0]["signal"]["payload"] == {"sdp": "v=0"}

    await b.relay("r", "bob", {"type": "answer", "payload": {"sdp": "v=0"}, "to": "alice"})
    await wait_for(alice.signals, message="bob's answer at alice")

    result = await b.relay("r", "bob", {"type": "bye", "payload": None})
    assert sorted(result.delivered) == ["alice", "carol"]
    await wait_for(lambda: len(carol.signals()) == 1 and len(alice.signals()) == 2, message="broadcast")


async def test_facade_a_new_member_is_reachable_once_announced(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    alice = ListChannel()
    await a.attach_channel("r", "alice", alice)
    for n in range(3):  # a's view of the room is warm, then members come and go through b
        peer = f"p{n}"
        await b.connect_peer("r", peer)
        await wait_for(
            lambda: any(m.get("peer", {}).get("peerId") == peer for m in alice.messages),  # noqa: B023
            message=f"alice told of {peer}",
        )
        result = await a.relay("r", "alice", {"type": "hi", "payload": n, "to": peer})  # known, so reachable
        assert result.queued == (peer,)
        assert sorted((await a.relay("r", "alice", {"type": "all", "payload": n})).queued) == [
            f"p{i}" for i in range(n + 1)
        ]
    assert await b.disconnect_peer("r", "p0")
    await wait_for(lambda: any(m.get("peerId") == "p0" for m in alice.messages), message="alice told p0 left")
    with pytest.raises(PeerNotFound):
        await a.relay("r", "alice", {"type": "hi", "payload": 0, "to": "p0"})


async def test_facade_order_holds_across_detach_and_reattach(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    await b.connect_peer("r", "bob")
    first = ListChannel()
    await b.attach_channel("r", "bob", first)
    sent = 0

    async def send(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            await a.relay("r", "alice", {"type": "n", "payload": sent, "to": "bob"})
            sent += 1

    await send(20)
    b.detach_channel("r", "bob", first)
    await send(20)  # to the outbox (or re-queued by the old holder)
    second = ListChannel()
    sender = asyncio.ensure_future(send(60))  # keeps sending while bob attaches again
    await b.attach_channel("r", "bob", second)
    await sender
    got = [m["signal"]["payload"] for m in first.signals()]
    await wait_for(lambda: len(got) + len(second.signals()) >= 100, message="all 100 messages")
    got += [m["signal"]["payload"] for m in second.signals()]
    assert got == list(range(100))


async def test_facade_peer_reconnects_on_the_other_process_and_gets_its_outbox(
    pair: tuple[RtcServer, RtcServer],
) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    bob_connect = await a.connect_peer("r", "bob")
    for i in range(3):
        result = await a.relay("r", "alice", {"type": "n", "payload": i, "to": "bob"})
        assert result.queued == ("bob",)
    assert await b.authenticate(bob_connect.token) == ("r", "bob")
    assert [json.loads(t)["signal"]["payload"] for t in await b.poll("r", "bob", 0)] == [0, 1, 2]


async def test_facade_long_poll_wakes_across_processes(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    await b.connect_peer("r", "bob")
    waiting = asyncio.ensure_future(b.poll("r", "bob", 20_000))
    await wait_for(lambda: b.hub.channel("r", "bob") is not None, message="bob's poll waiting")
    started = time.monotonic()
    await a.relay("r", "alice", {"type": "hello", "payload": 1, "to": "bob"})
    texts = await asyncio.wait_for(waiting, 10)
    assert [json.loads(t)["signal"]["type"] for t in texts] == ["hello"]
    assert time.monotonic() - started < 10  # woken by the message, not by the poll's end


async def test_facade_replacing_a_peer_closes_its_old_channel_anywhere(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    bob = await b.connect_peer("r", "bob")
    old = ListChannel()
    await b.attach_channel("r", "bob", old)
    again = await a.connect_peer("r", "bob", proof=bob.token)
    assert again.replaced and again.token == bob.token
    await wait_for(lambda: old.closed is not None, message="old channel closed")
    assert old.closed is not None and old.closed[0] == 4001


async def test_facade_a_peer_removed_anywhere_loses_its_channel(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    await a.connect_peer("r", "alice")
    await b.connect_peer("r", "bob")
    channel = ListChannel()
    await b.attach_channel("r", "bob", channel)
    assert await a.disconnect_peer("r", "bob")  # e.g. its HTTP disconnect went to the other process
    await wait_for(lambda: channel.closed is not None, message="bob's channel closed")
    assert b.hub.channel("r", "bob") is None


async def test_facade_server_peers_hear_departures_from_any_process(pair: tuple[RtcServer, RtcServer]) -> None:
    a, b = pair
    heard: list[tuple[str, str, dict[str, Any]]] = []

    async def echo(room_id: str, server_peer_id: str, message: dict[str, Any]) -> None:
        heard.append((room_id, server_peer_id, message))

    b.register_server_peer("@echo", echo)
    await a.connect_peer("r", "alice")
    await a.connect_peer("r", "bob")
    assert await a.disconnect_peer("r", "alice")
    await wait_for(lambda: heard, message="@echo told of alice leaving")
    assert [(r, sp, m["type"], m["peerId"]) for r, sp, m in heard] == [("r", "@echo", "peer:disconnected", "alice")]


async def test_facade_exactly_one_process_reaps(backend_factory: BackendFactory, tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    config = RtcConfig(recordings_dir=str(tmp_path), heartbeat_interval_ms=1000, rate_limit_per_sec=0)
    servers = [create_rtc_server(config, backend=backend_factory(), clock=clock) for _ in range(3)]
    if isinstance(servers[0].backend, MemoryBackend):
        servers = [servers[0]] * 3
    for s in servers:
        await s.start()
    try:
        disconnected: list[str] = []
        for s in set(servers):
            s.on("peer:disconnected", lambda e: disconnected.append(e.peer_id))
        await servers[0].connect_peer("r", "alice")
        await servers[1].connect_peer("r", "bob")
        watcher = ListChannel()
        await servers[2].attach_channel("r", "alice", watcher)
        clock.now += 2000
        await servers[0].heartbeat("r", "alice")
        clock.now += 1000
        reaped = await asyncio.gather(*(s.reap() for s in servers))
        assert sum(reaped) == 1 and disconnected == ["bob"]
        await wait_for(
            lambda: [m for m in watcher.messages if m["type"] == "peer:disconnected"],
            message="alice told of bob's timeout",
        )
        gone = [m for m in watcher.messages if m["type"] == "peer:disconnected"]
        assert [(m["peerId"], m["reason"]) for m in gone] == [("bob", "timeout")]
        assert await servers[1].backend.counts() == (1, 1)
    finally:
        for s in set(servers):
            await s.close()


# -- Redis only ------------------------------------------------------------------------------------


async def test_redis_down_fails_fast_and_service_resumes(redis_server: RedisServer, tmp_path: Path) -> None:
    from fantasize_rtc.backends.redis import RedisBackend

    config = RtcConfig(recordings_dir=str(tmp_path), rate_limit_per_sec=0)
    backend = RedisBackend(redis_server.url, prefix=unique_prefix(), max_backoff=0.2)
    async with create_rtc_server(config, backend=backend) as rtc:
        await rtc.connect_peer("r", "alice")
        assert rtc.backend.health()["ok"] is True
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(CapacityExceeded) as info:
            await rtc.connect_peer("r", "bob")
        assert info.value.status == 503
        assert time.monotonic() - started < 5  # a fast failure, never a hang
        assert rtc.backend.health()["ok"] is False and rtc.backend.health()["redis"] == "down"
        with pytest.raises(CapacityExceeded):
            await rtc.relay("r", "alice", {"type": "x", "payload": 1})
        assert await rtc.reap() == 0  # the reaper waits quietly
        redis_server.start()
        await wait_for(lambda: rtc.backend.health()["ok"], timeout=10, message="redis back")
        await rtc.connect_peer("r2", "bob")  # fresh Redis: state is gone, service is back
        assert await rtc.backend.counts() == (1, 1)


async def test_redis_relays_in_flight_when_redis_goes_away_fail_fast(redis_server: RedisServer, tmp_path: Path) -> None:
    """A relay handed over for the next delivery batch (the WebSocket path reads on meanwhile)
    ends with 503 when Redis is gone, never hangs, and batches work again once Redis is back."""
    from fantasize_rtc.backends.redis import RedisBackend

    prefix = unique_prefix()
    config = RtcConfig(recordings_dir=str(tmp_path), rate_limit_per_sec=0)
    a = create_rtc_server(config, backend=RedisBackend(redis_server.url, prefix=prefix, max_backoff=0.2))
    b = create_rtc_server(config, backend=RedisBackend(redis_server.url, prefix=prefix, max_backoff=0.2))
    async with a, b:
        await a.connect_peer("r", "alice")
        await b.connect_peer("r", "bob")
        bob = ListChannel()
        await b.attach_channel("r", "bob", bob)
        first = await a.submit_relay("r", "alice", {"type": "n", "payload": 0, "to": "bob"})
        assert isinstance(first, asyncio.Future)  # bob is on the other process: through Redis
        assert (await first).delivered == ("bob",)
        redis_server.stop()
        started = time.monotonic()
        outcomes: list[Any] = []
        for i in range(1, 20):
            try:
                outcomes.append(await a.submit_relay("r", "alice", {"type": "n", "payload": i, "to": "bob"}))
            except CapacityExceeded as exc:  # Redis already known to be down: refused at once
                outcomes.append(exc)
        # no await reached the event loop since the stop: the process does not know yet, so
        # these are all on their way in the batch, not refused
        assert all(isinstance(o, asyncio.Future) for o in outcomes), outcomes
        for outcome in outcomes:
            if isinstance(outcome, asyncio.Future):
                with pytest.raises(CapacityExceeded):
                    await asyncio.wait_for(outcome, 5)
        assert time.monotonic() - started < 5
        redis_server.start()
        await wait_for(lambda: a.backend.health()["ok"] and b.backend.health()["ok"], timeout=15, message="back")


async def test_redis_reaper_spares_a_peer_seen_again_meanwhile(redis_server: RedisServer) -> None:
    from fantasize_rtc.backends.redis import RedisBackend

    prefix = unique_prefix()
    reaper, other = RedisBackend(redis_server.url, prefix=prefix), RedisBackend(redis_server.url, prefix=prefix)
    await reaper.start(Hub())
    await other.start(Hub())
    try:
        await _join(reaper, "r", "alice")
        await _join(reaper, "r", "bob")
        assert sorted(await reaper.expired_peers(NOW + 2000, 1000)) == [("r", "alice"), ("r", "bob")]
        await other.touch("r", "alice", NOW + 2000)  # alice heartbeats through another process
        assert await reaper.leave("r", "alice") is None
        bob = await reaper.leave("r", "bob")
        assert bob is not None and bob.remaining == ("alice",)
        assert await reaper.leave("r", "alice") is not None  # an explicit leave is not conditional
    finally:
        await reaper.close()
        await other.close()


async def test_redis_messages_published_while_a_process_was_not_listening_arrive(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    from fantasize_rtc.backends.redis import RedisBackend

    prefix = unique_prefix()
    config = RtcConfig(recordings_dir=str(tmp_path), rate_limit_per_sec=0)
    a = create_rtc_server(config, backend=RedisBackend(redis_server.url, prefix=prefix))
    b = create_rtc_server(config, backend=RedisBackend(redis_server.url, prefix=prefix))
    admin = aioredis.Redis.from_url(redis_server.url)
    async with a, b:
        await a.connect_peer("r", "alice")
        await b.connect_peer("r", "bob")
        bob = ListChannel()
        await b.attach_channel("r", "bob", bob)
        acked: list[int] = []
        queued = 0
        n = 0
        for _attempt in range(20):
            # Every listener drops; once b has seen it, nothing is in flight to it any more (a
            # message published at the very instant a connection breaks is the one case pub/sub
            # can lose: see docs/scale-out.md).
            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
            try:
                await wait_for(lambda: not b.backend.health()["subscribed"], timeout=2, interval=0.001)
            except AssertionError:
                continue  # it was back before we looked: again
            while True:
                n += 1
                try:
                    result = await a.relay("r", "alice", {"type": "n", "payload": n, "to": "bob"})
                except CapacityExceeded:
                    continue
                acked.append(n)
                queued += len(result.queued)
                if b.backend.health()["subscribed"]:
                    break
            if queued:
                break
        assert queued, "no message was sent while b was not listening: the test tested nothing"
        await wait_for(
            lambda: len(bob.signals()) >= len(acked),
            timeout=10,
            message="every acknowledged message at bob",
        )
        assert [m["signal"]["payload"] for m in bob.signals()] == acked  # all of them, in order
    await admin.aclose()


async def test_redis_errors_are_503_not_500(redis_server: RedisServer, tmp_path: Path) -> None:
    import redis.asyncio as aioredis

    from fantasize_rtc.backends.redis import RedisBackend

    config = RtcConfig(recordings_dir=str(tmp_path), rate_limit_per_sec=0)
    admin = aioredis.Redis.from_url(redis_server.url)
    async with create_rtc_server(config, backend=RedisBackend(redis_server.url, prefix=unique_prefix())) as rtc:
        await rtc.connect_peer("r", "alice")
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")  # every write is refused: out of memory
        try:
            with pytest.raises(CapacityExceeded) as info:
                await rtc.connect_peer("r", "bob")
            assert info.value.status == 503
            assert rtc.backend.health()["ok"] is True  # Redis answers: it is up, just refusing
        finally:
            await admin.config_set("maxmemory", "0")
        await rtc.connect_peer("r", "bob")
    await admin.aclose()
