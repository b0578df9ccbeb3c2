"""The facade without any web framework: the seed's API, events, reaper (fake clock), limits."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import pytest

from fantasize_rtc import RtcServer, create_rtc_server
from fantasize_rtc.errors import (
    CapacityExceeded,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    PeerIdTaken,
    PeerNotFound,
    RateLimited,
    RoomExists,
    RoomFull,
    RoomNotFound,
    Unauthorized,
)
from fantasize_rtc.hub import PollChannel
from tests.helpers import FakeClock, wait_for

OFFER = {"type": "offer", "payload": {"sdp": "v=0\r\n"}}


class ListChannel:
    """A live channel that records what it is sent (the hub's contract, without a socket)."""

    kind = "ws"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    def send(self, text: str) -> bool:
        if self.closed:
            return False
        self.sent.append(text)
        return True

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@pytest.fixture
async def srv(clock: FakeClock) -> Any:
    async with create_rtc_server(clock=clock, rate_limit_per_sec=0) as server:
        yield server


async def test_seed_quick_start(srv: RtcServer) -> None:
    seen: list[Any] = []
    srv.on("signal", seen.append)
    alice = await srv.connect_peer("demo-room", "alice", {"name": "Alice"})
    bob = await srv.connect_peer("demo-room", "bob")
    assert alice.token != bob.token
    assert [p.peer_id for p in bob.peers] == ["alice"]
    assert bob.to_wire()["room"] == {"roomId": "demo-room", "maxPeers": 8, "metadata": {}}
    result = await srv.relay("demo-room", "alice", OFFER)
    assert result.to_wire() == {"listenersNotified": 1, "delivered": [], "queued": ["bob"]}
    assert seen[0].from_peer_id == "alice" and seen[0].signal.type == "offer"
    snapshot = await srv.get_room_snapshot("demo-room")
    assert snapshot.peer_ids == ("alice", "bob")
    assert snapshot.peers[0].metadata == {"name": "Alice"}


async def test_events_as_call_and_decorator_sync_and_async(srv: RtcServer) -> None:
    names: list[str] = []
    done = asyncio.Event()

    @srv.on("room:created")
    def created(event: Any) -> None:
        names.append("room:created " + event.room_id)

    async def connected(event: Any) -> None:
        await asyncio.sleep(0)
        names.append("peer:connected " + event.peer.peer_id)
        done.set()

    srv.on("peer:connected", connected)
    srv.on("peer:disconnected", lambda e: names.append(f"peer:disconnected {e.peer_id} {e.reason}"))
    srv.on("room:closed", lambda e: names.append("room:closed " + e.room_id))
    srv.on("peer:heartbeat", lambda e: names.append(f"peer:heartbeat {e.last_seen}"))
    await srv.connect_peer("r", "a")
    await asyncio.wait_for(done.wait(), 5)
    last_seen = await srv.heartbeat("r", "a")
    assert await srv.disconnect_peer("r", "a")
    assert names == [
        "room:created r",
        "peer:connected a",
        f"peer:heartbeat {last_seen}",
        "peer:disconnected a left",
        "room:closed r",
    ]


async def test_failing_handler_never_breaks_a_relay(srv: RtcServer, caplog: pytest.LogCaptureFixture) -> None:
    after: list[Any] = []

    def boom(event: Any) -> None:
        raise RuntimeError("handler bug")

    async def async_boom(event: Any) -> None:
        raise RuntimeError("async handler bug")

    srv.on("signal", boom)
    srv.on("signal", async_boom)
    srv.on("signal", after.append)
    await srv.connect_peer("r", "a")
    await srv.connect_peer("r", "b")
    with caplog.at_level(logging.ERROR):
        result = await srv.relay("r", "a", OFFER)
        await wait_for(lambda: "async handler bug" in caplog.text)
    assert result.listeners_notified == 1
    assert len(after) == 1
    assert "handler bug" in caplog.text


async def test_create_room(srv: RtcServer) -> None:
    snapshot = await srv.create_room("meeting", max_peers=2, metadata={"topic": "x"})
    assert (snapshot.max_peers, snapshot.metadata, snapshot.peers) == (2, {"topic": "x"}, ())
    with pytest.raises(RoomExists):
        await srv.create_room("meeting")
    for bad in (0, 1001, "2", True):
        with pytest.raises(InvalidRequest):
            await srv.create_room("other", max_peers=bad)  # type: ignore[arg-type]
    await srv.connect_peer("meeting", "a")
    await srv.connect_peer("meeting", "b")
    with pytest.raises(RoomFull):
        await srv.connect_peer("meeting", "c")


async def test_generated_peer_id_and_unknowns(srv: RtcServer) -> None:
    conn = await srv.connect_peer("r")
    assert conn.peer_id.startswith("peer-")
    with pytest.raises(RoomNotFound):
        await srv.get_room_snapshot("nope")
    with pytest.raises(RoomNotFound):
        await srv.heartbeat("nope", "a")
    with pytest.raises(PeerNotFound):
        await srv.heartbeat("r", "nobody")
    with pytest.raises(PeerNotFound):
        await srv.relay("r", conn.peer_id, {"type": "bye", "to": "nobody"})
    with pytest.raises(PeerNotFound):
        await srv.relay("r", "nobody", {"type": "bye"})
    assert not await srv.disconnect_peer("r", "nobody")
    with pytest.raises(InvalidRequest):
        await srv.connect_peer("r", "@echo")


async def test_replace_with_token(srv: RtcServer) -> None:
    reasons: list[str] = []
    srv.on("peer:disconnected", lambda e: reasons.append(e.reason))
    first = await srv.connect_peer("r", "a")
    channel = ListChannel()
    await srv.attach_channel("r", "a", channel)
    with pytest.raises(PeerIdTaken):
        await srv.connect_peer("r", "a")
    again = await srv.connect_peer("r", "a", proof=first.token)
    assert again.replaced and again.token == first.token
    assert channel.closed == (4001, "replaced")
    assert reasons == ["replaced"]
    assert (await srv.get_room_snapshot("r")).peer_ids == ("a",)


async def test_broadcast_targeted_live_and_queued(srv: RtcServer) -> None:
    for pid in "abc":
        await srv.connect_peer("r", pid)
    live = ListChannel()
    await srv.attach_channel("r", "b", live)
    result = await srv.relay("r", "a", OFFER)
    assert (result.delivered, result.queued) == (("b",), ("c",))
    result = await srv.relay("r", "a", {"type": "answer", "payload": {"sdp": "x"}, "to": "c"})
    assert (result.delivered, result.queued) == ((), ("c",))
    late = ListChannel()
    await srv.attach_channel("r", "c", late)
    kinds = [m for m in late.sent]
    assert len(kinds) == 2 and '"offer"' in kinds[0] and '"answer"' in kinds[1]  # outbox flushed in order


async def test_outbox_bound_and_expiry_tells_sender(clock: FakeClock) -> None:
    async with create_rtc_server(
        clock=clock, outbox_max=2, rate_limit_per_sec=0, peer_timeout_ms=10_000, outbox_ttl_ms=1000
    ) as srv:
        await srv.connect_peer("r", "a")
        await srv.connect_peer("r", "b")
        sender = ListChannel()
        await srv.attach_channel("r", "a", sender)
        sender.sent.clear()
        assert (await srv.relay("r", "a", OFFER)).queued == ("b",)
        assert (await srv.relay("r", "a", OFFER)).queued == ("b",)
        dropped = await srv.relay("r", "a", OFFER)
        assert dropped.dropped == ("b",) and "dropped" in dropped.to_wire()
        clock.advance(1001)
        await srv.reap()
        assert len(sender.sent) == 2 and all('"undelivered"' in m for m in sender.sent)
        receiver = ListChannel()
        await srv.attach_channel("r", "b", receiver)
        assert receiver.sent == []


async def test_reaper_with_fake_clock(clock: FakeClock) -> None:
    async with create_rtc_server(clock=clock, heartbeat_interval_ms=1000) as srv:
        gone: list[tuple[str, str]] = []
        srv.on("peer:disconnected", lambda e: gone.append((e.peer_id, e.reason)))
        closed: list[str] = []
        srv.on("room:closed", lambda e: closed.append(e.room_id))
        await srv.connect_peer("r", "quiet")
        await srv.connect_peer("r", "chatty")
        watcher = ListChannel()
        await srv.attach_channel("r", "chatty", watcher)
        clock.advance(2000)
        await srv.heartbeat("r", "chatty")
        clock.advance(600)  # quiet: 2600 ms silent > 2500 ms timeout; chatty: 600 ms
        assert await srv.reap() == 1
        assert gone == [("quiet", "timeout")]
        assert '"reason":"timeout"' in watcher.sent[-1]
        clock.advance(3000)
        assert await srv.reap() == 1
        assert watcher.closed == (4000, "timeout")
        assert closed == ["r"]


async def test_waiting_poll_counts_as_liveness(clock: FakeClock) -> None:
    async with create_rtc_server(clock=clock, heartbeat_interval_ms=1000) as srv:
        await srv.connect_peer("r", "p")
        await srv.connect_peer("r", "q")
        assert '"peer:connected"' in (await srv.poll("r", "p", 0))[0]  # q's arrival, queued
        poll = asyncio.create_task(srv.poll("r", "p", 5000))
        await wait_for(lambda: isinstance(srv.hub.channel("r", "p"), PollChannel))
        clock.advance(10_000)
        assert await srv.reap() == 1  # q reaped, p kept by its waiting poll
        assert (await srv.get_room_snapshot("r")).peer_ids == ("p",)
        texts = await asyncio.wait_for(poll, 5)  # the waiting poll is woken by q's departure
        assert texts == ['{"type":"peer:disconnected","roomId":"r","peerId":"q","reason":"timeout"}']


async def test_rate_limit(clock: FakeClock) -> None:
    async with create_rtc_server(clock=clock, rate_limit_per_sec=10, rate_limit_burst=3) as srv:
        await srv.connect_peer("r", "a")
        await srv.connect_peer("r", "b")
        for _ in range(3):
            await srv.relay("r", "a", OFFER)
        with pytest.raises(RateLimited):
            await srv.relay("r", "a", OFFER)
        clock.advance(100)  # one more token
        await srv.relay("r", "a", OFFER)


async def test_capacity_limits() -> None:
    async with create_rtc_server(max_rooms=1, max_peers=2) as srv:
        await srv.connect_peer("r", "a")
        with pytest.raises(CapacityExceeded) as info:
            await srv.connect_peer("other", "a")
        assert info.value.retry_after > 0
        await srv.connect_peer("r", "b")
        with pytest.raises(CapacityExceeded):
            await srv.connect_peer("r", "c")
        with pytest.raises(CapacityExceeded):
            await srv.create_room("other")


async def test_signal_size_limit() -> None:
    async with create_rtc_server(max_signal_bytes=1024) as srv:
        await srv.connect_peer("r", "a")
        await srv.connect_peer("r", "b")
        with pytest.raises(PayloadTooLarge):
            await srv.relay("r", "a", {"type": "offer", "payload": {"sdp": "x" * 2000}})
        await srv.relay("r", "a", {"type": "offer", "payload": {"sdp": "x" * 500}})


async def test_jwt_gate() -> None:
    secret = "s3cret-that-is-long-enough-for-hs256!"
    async with create_rtc_server(auth_secret=secret) as srv:

        def make(**claims: Any) -> str:
            base = {"room": "r", "sub": "alice", "exp": int(time.time()) + 60}
            base.update(claims)
            return jwt.encode({k: v for k, v in base.items() if v is not None}, secret, algorithm="HS256")

        with pytest.raises(Unauthorized):
            await srv.connect_peer("r", "alice")
        with pytest.raises(Unauthorized):
            await srv.connect_peer("r", None, auth_token=make(exp=int(time.time()) - 5))
        with pytest.raises(Unauthorized):
            await srv.connect_peer("r", None, auth_token=make(room="other"))
        with pytest.raises(Unauthorized):
            await srv.connect_peer("r", None, auth_token=make()[:-2] + "xx")
        with pytest.raises(Unauthorized):
            await srv.connect_peer(
                "r",
                None,
                auth_token=jwt.encode({"room": "r", "sub": "a", "exp": 2**40}, "another-secret-long-enough-for-hs256"),
            )
        with pytest.raises(Forbidden):
            await srv.connect_peer("r", "mallory", auth_token=make())
        with pytest.raises(RoomNotFound):
            await srv.get_room_snapshot("r")  # refused attempts changed nothing
        conn = await srv.connect_peer("r", None, auth_token=make())
        assert conn.peer_id == "alice"


async def test_turn_credentials_in_connect() -> None:
    async with create_rtc_server(
        ice_servers=["stun:127.0.0.1:3478", "turn:127.0.0.1:3478"], turn_secret="k", turn_ttl_seconds=60
    ) as srv:
        conn = await srv.connect_peer("r", "alice")
        stun, turn = conn.to_wire()["iceServers"]
        assert stun == {"urls": ["stun:127.0.0.1:3478"]}
        assert turn["username"].endswith(":alice") and turn["credential"]
        expiry = int(turn["username"].split(":")[0])
        assert 0 < expiry - time.time() <= 61


async def test_server_peer_hooks(srv: RtcServer) -> None:
    got: list[dict[str, Any]] = []

    async def echo(room_id: str, server_peer_id: str, message: dict[str, Any]) -> None:
        got.append(message)
        if message["type"] == "signal":
            await srv.signal_from_server_peer(
                room_id, server_peer_id, message["fromPeerId"], {"type": "answer", "payload": {"sdp": "ans"}}
            )

    srv.register_server_peer("@echo", echo)
    await srv.connect_peer("r", "a")
    channel = ListChannel()
    await srv.attach_channel("r", "a", channel)
    assert await srv.add_server_peer("r", "@echo")
    result = await srv.relay("r", "a", {"type": "offer", "payload": {"sdp": "o"}, "to": "@echo"})
    assert result.delivered == ("@echo",)
    assert '"fromPeerId":"@echo"' in channel.sent[-1] and '"answer"' in channel.sent[-1]
    assert (await srv.get_room_snapshot("r")).peer_ids == ("a", "@echo")
    with pytest.raises(PeerNotFound):
        await srv.relay("r", "a", {"type": "offer", "payload": {"sdp": "o"}, "to": "@nobody"})
    await srv.disconnect_peer("r", "a")
    assert got[-1] == {"type": "peer:disconnected", "roomId": "r", "peerId": "a", "reason": "left"}


async def test_close_is_idempotent_and_cancels_handler_tasks() -> None:
    srv = create_rtc_server()
    await srv.start()
    started = asyncio.Event()

    async def slow(event: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    srv.on("peer:connected", slow)
    await srv.connect_peer("r", "a")
    await asyncio.wait_for(started.wait(), 5)
    await srv.close()
    await srv.close()
    assert not srv._tasks
