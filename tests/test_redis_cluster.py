"""Several real ``fantasize-rtc serve --redis-url ...`` processes on one real redis-server act as
one server: relay across processes, capacity across processes, a SIGKILLed process's peers reaped
by the others, and a Redis restart that loses no acknowledged message."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fantasize_rtc.client import RtcClient
from tests import redis_fixtures
from tests.helpers import (
    accepts_tcp,
    free_port,
    nginx_config,
    require_program,
    start_nginx,
    stop_process,
    wait_for,
    wait_for_sync,
)
from tests.redis_fixtures import RedisServer

redis_server = redis_fixtures.redis_server  # the fixture, shared with the other Redis tests


class Process:
    """One ``fantasize-rtc serve`` subprocess; ``start()`` again after ``kill()`` reuses the port."""

    def __init__(self, tmp_path: Path, redis_url: str, name: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp_path / f"server-{name}.log"
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.env = {"FANTASIZE_RTC_ADMIN_KEY": "admin", **env}
        self.proc: subprocess.Popen[str] | None = None
        self._log_start = 0

    def start(self) -> None:
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fantasize_rtc",
                    "serve",
                    "--port",
                    str(self.port),
                    "--redis-url",
                    self.redis_url,
                    "--recordings-dir",
                    str(self.tmp_path / "rec"),
                    "--log-level",
                    "info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **self.env},
            )
        wait_for_sync(self._serving, timeout=30, message=f"server on port {self.port} to start")

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.log.read_text()}")
        text = self.log.read_bytes()[self._log_start :].decode(errors="replace")
        return bool(re.search(rf"serving on http://127.0.0.1:{self.port}/", text))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        assert stop_process(proc, 15) == 0, self.log.read_text()[-4000:]


@pytest.fixture
def start_processes(tmp_path: Path) -> Iterator[Any]:
    started: list[Process] = []

    def start(redis: RedisServer, count: int, **env: str) -> list[Process]:
        procs = [Process(tmp_path, redis.url, f"{len(started) + i}", env) for i in range(count)]
        started.extend(procs)
        for proc in procs:
            proc.start()
        return procs

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Peer:
    """A client: connects over HTTP, then listens on a WebSocket (to any process)."""

    def __init__(self, http: aiohttp.ClientSession, room: str, peer_id: str) -> None:
        self.http, self.room, self.peer_id = http, room, peer_id
        self.token = ""
        self.messages: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._acks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    async def connect(self, proc: Process) -> dict[str, Any]:
        async with self.http.post(proc.url + "rtc/connect", json={"roomId": self.room, "peerId": self.peer_id}) as r:
            assert r.status == 200, await r.text()
            data: dict[str, Any] = await r.json()
        self.token = data["token"]
        return data

    async def open(self, proc: Process) -> None:
        self.ws = await self.http.ws_connect(proc.url + f"rtc/ws?token={self.token}")
        self._reader = asyncio.ensure_future(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = msg.json()
            if data.get("type") in ("ack", "error") and data.get("id") in self._acks:
                future = self._acks.pop(data["id"])
                if not future.done():
                    future.set_result(data)
            else:
                self.messages.append(data)

    async def send(self, signal: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send a signal frame; the server's ack (or error) for it."""
        assert self.ws is not None
        self._next_id += 1
        frame_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[frame_id] = future
        await self.ws.send_json({"type": "signal", "id": frame_id, "signal": signal})
        return await asyncio.wait_for(future, timeout)

    def signals(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "signal" and (kind is None or m["signal"]["type"] == kind)]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@pytest.fixture
async def peers(http: aiohttp.ClientSession) -> AsyncIterator[Any]:
    made: list[Peer] = []

    def make(room: str, peer_id: str) -> Peer:
        peer = Peer(http, room, peer_id)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            await peer.close()


async def _health(http: aiohttp.ClientSession, proc: Process) -> tuple[int, dict[str, Any]]:
    async with http.get(proc.url + "healthz") as r:
        return r.status, await r.json()


async def test_relay_across_two_processes(
    redis_server: RedisServer,
    start_processes: Any,
    peers: Any,
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_processes(redis_server, 2)
    alice, bob, carol = peers("room", "alice"), peers("room", "bob"), peers("room", "carol")
    await alice.connect(a)
    await alice.open(a)
    await bob.connect(b)
    await bob.open(b)
    await wait_for(lambda: alice.events("peer:connected"), message="alice told of bob (other process)")
    assert alice.events("peer:connected")[0]["peer"]["peerId"] == "bob"

    # targeted, both ways, in order
    for i in range(30):
        ack = await alice.send({"type": "n", "payload": i, "to": "bob"})
        assert ack["type"] == "ack" and ack["delivered"] == ["bob"], ack
    ack = await bob.send({"type": "answer", "payload": {"sdp": "v=0"}, "to": "alice"})
    assert ack["delivered"] == ["alice"]
    await wait_for(lambda: len(bob.signals("n")) == 30 and alice.signals("answer"), message="both ways")
    assert [m["signal"]["payload"] for m in bob.signals("n")] == list(range(30))
    assert alice.signals("answer")[0]["fromPeerId"] == "bob"

    # carol joins through B but long-polls A: broadcast from alice reaches bob (WS on B) and carol
    await carol.connect(b)
    ack = await alice.send({"type": "hello", "payload": "all"})
    assert sorted(ack["delivered"] + ack["queued"]) == ["bob", "carol"]
    async with http.get(a.url + "rtc/poll", params={"token": carol.token, "waitMs": "0"}) as r:
        assert r.status == 200
        waiting = (await r.json())["messages"]
    assert [m["signal"]["type"] for m in waiting if m["type"] == "signal"] == ["hello"]

    async def poll_b() -> list[dict[str, Any]]:
        async with http.get(b.url + "rtc/poll", params={"token": carol.token, "waitMs": "20000"}) as r:
            assert r.status == 200
            result: list[dict[str, Any]] = (await r.json())["messages"]
            return result

    # a waiting poll on B is handed a message sent through A (ack says delivered, not queued)
    for attempt in range(100):
        polling = asyncio.ensure_future(poll_b())
        ack = await alice.send({"type": "ping", "payload": attempt, "to": "carol"})
        messages = await asyncio.wait_for(polling, 25)
        assert [m["signal"]["payload"] for m in messages] == [attempt]
        if ack["delivered"] == ["carol"]:
            break
    else:
        raise AssertionError("no ping ever reached a waiting poll")

    status, health = await _health(http, a)
    assert status == 200 and health["backend"]["backend"] == "redis" and health["backend"]["ok"] is True
    assert health["peers"] == 3


async def test_a_burst_across_processes_arrives_in_order_before_the_departure(
    redis_server: RedisServer, start_processes: Any, peers: Any
) -> None:
    """Frames without ``id`` are read ahead (not one Redis round trip each) and batched: 600 of
    them, sent without waiting, reach the other process in order, then the sender's departure."""
    a, b = start_processes(redis_server, 2, FANTASIZE_RTC_RATE_LIMIT_PER_SEC="0")
    alice, bob = peers("room", "alice"), peers("room", "bob")
    await alice.connect(a)
    await alice.open(a)
    await bob.connect(b)
    await bob.open(b)
    await wait_for(lambda: alice.events("peer:connected"), message="alice told of bob")
    assert alice.ws is not None
    for i in range(600):
        await alice.ws.send_json({"type": "signal", "signal": {"type": "n", "payload": i, "to": "bob"}})
    await alice.ws.send_json({"type": "signal", "signal": {"type": "bye", "to": "bob"}})
    await alice.ws.send_json({"type": "disconnect"})
    await wait_for(lambda: bob.events("peer:disconnected"), timeout=20, message="bob told alice left")
    kinds = [m["type"] if m["type"] != "signal" else m["signal"]["type"] for m in bob.messages]
    assert kinds[-2:] == ["bye", "peer:disconnected"], kinds[-5:]
    assert [m["signal"]["payload"] for m in bob.signals("n")] == list(range(600))
    assert "error" not in kinds


async def test_room_capacity_holds_across_processes(
    redis_server: RedisServer,
    start_processes: Any,
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_processes(redis_server, 2)

    async def connect(i: int) -> tuple[int, str]:
        proc = a if i % 2 else b
        async with http.post(proc.url + "rtc/connect", json={"roomId": "crowd", "peerId": f"p{i}"}) as r:
            body = await r.json()
            return r.status, body.get("error", {}).get("code", "")

    results = await asyncio.gather(*(connect(i) for i in range(50)))
    assert sum(status == 200 for status, _ in results) == 8
    assert sorted({(s, c) for s, c in results if s != 200}) == [(409, "room_full")]
    for proc in (a, b):
        async with http.get(proc.url + "rtc/rooms/crowd", headers={"Authorization": "Bearer admin"}) as r:
            assert r.status == 200, await r.text()
            assert len((await r.json())["peers"]) == 8


async def test_killed_process_peers_are_reaped_by_the_others(
    redis_server: RedisServer,
    start_processes: Any,
    peers: Any,
    http: aiohttp.ClientSession,
) -> None:
    a, b, c = start_processes(
        redis_server, 3, FANTASIZE_RTC_HEARTBEAT_INTERVAL_MS="1000", FANTASIZE_RTC_PEER_TIMEOUT_MS="3000"
    )
    alice, bob, carol = peers("room", "alice"), peers("room", "bob"), peers("room", "carol")
    await alice.connect(a)
    await alice.open(b)
    for peer in (bob, carol):
        await peer.connect(c)
        await peer.open(c)
    await wait_for(lambda: len(alice.events("peer:connected")) == 2, message="alice sees bob and carol")

    async def heartbeat() -> None:
        while True:  # a client timer, as the browser client runs one
            assert alice.ws is not None
            await alice.ws.send_json({"type": "heartbeat"})
            await asyncio.sleep(0.3)

    beating = asyncio.ensure_future(heartbeat())
    try:
        c.kill()
        started = time.monotonic()
        # C's presence entries must not swallow messages: nobody listens there, so they wait
        ack = await alice.send({"type": "n", "payload": 1, "to": "bob"})
        assert ack["type"] == "ack" and ack["queued"] == ["bob"] and ack["delivered"] == [], ack
        await wait_for(
            lambda: len(alice.events("peer:disconnected")) == 2, timeout=20, message="bob and carol reaped by A or B"
        )
        elapsed = time.monotonic() - started
        gone = sorted((m["peerId"], m["reason"]) for m in alice.events("peer:disconnected"))
        assert gone == [("bob", "timeout"), ("carol", "timeout")]
        assert elapsed < 15, elapsed
        for proc in (a, b):
            status, health = await _health(http, proc)
            assert status == 200 and health["peers"] == 1 and health["rooms"] == 1

        await asyncio.to_thread(c.start)  # it comes back (alice keeps beating meanwhile): nothing duplicated
        dave = peers("room", "dave")
        joined = await dave.connect(c)
        assert [p["peerId"] for p in joined["peers"]] == ["alice"]
        status, health = await _health(http, c)
        assert status == 200 and health["peers"] == 2
        assert len(alice.events("peer:disconnected")) == 2
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def test_a_hung_process_is_routed_around_and_catches_up(
    redis_server: RedisServer, start_processes: Any, peers: Any
) -> None:
    a, b = start_processes(redis_server, 2)
    alice, bob = peers("room", "alice"), peers("room", "bob")
    await alice.connect(a)
    await alice.open(a)
    await bob.connect(b)
    await bob.open(b)
    ack = await alice.send({"type": "n", "payload": 0, "to": "bob"})
    assert ack["delivered"] == ["bob"], ack  # b holds bob's channel and listens
    await wait_for(lambda: bob.signals("n"), message="the first message at bob")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)  # alive but silent: its Redis connections stay open
    try:
        sent, outcomes = 1, []
        started = time.monotonic()
        while "queued" not in outcomes:  # once its liveness key expires (5 s), messages wait
            ack = await alice.send({"type": "n", "payload": sent, "to": "bob"})
            outcomes.append("queued" if ack["queued"] else "delivered")
            sent += 1
            assert time.monotonic() - started < 30, "messages never went to the outbox"
            await asyncio.sleep(0.05)  # a client sending now and then, not a flood
        for _ in range(3):
            ack = await alice.send({"type": "n", "payload": sent, "to": "bob"})
            assert ack["queued"] == ["bob"], ack
            sent += 1
    finally:
        b.proc.send_signal(signal.SIGCONT)
    assert outcomes[0] == "delivered"  # handed to b's connection before b counted as gone
    await wait_for(lambda: len(bob.signals("n")) >= sent, timeout=15, message="bob gets everything once b is back")
    assert [m["signal"]["payload"] for m in bob.signals("n")] == list(range(sent))


async def test_redis_restart_loses_no_acknowledged_message(
    tmp_path: Path, start_processes: Any, peers: Any, http: aiohttp.ClientSession
) -> None:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    redis = RedisServer(require_program("redis-server"), data_dir, appendonly=True)
    redis.start()
    try:
        a, b = start_processes(redis, 2)
        alice, bob = peers("room", "alice"), peers("room", "bob")
        await alice.connect(a)
        await alice.open(a)
        await bob.connect(b)
        await bob.open(b)
        acked: dict[str, list[int]] = {"alice": [], "bob": []}
        refused = 0

        async def send_round(n: int) -> None:
            nonlocal refused
            for sender, to in ((alice, "bob"), (bob, "alice")):
                reply = await sender.send({"type": "n", "payload": n, "to": to})
                if reply["type"] == "ack" and (reply["delivered"] or reply["queued"]):
                    acked[to].append(n)
                else:
                    assert reply["type"] == "error" and reply["error"]["code"] == "capacity_exceeded", reply
                    refused += 1

        n = 0
        for _ in range(20):
            await send_round(n)
            n += 1
        redis.stop()
        started = time.monotonic()
        while refused < 4:  # fails fast while Redis is away, never hangs
            await send_round(n)
            n += 1
        assert time.monotonic() - started < 20
        status, health = await _health(http, a)
        assert status == 503 and health["backend"]["ok"] is False and health["backend"]["redis"] == "down"
        redis.start()

        async def both_healthy() -> bool:
            statuses = [(await _health(http, p))[0] for p in (a, b)]
            return statuses == [200, 200]

        await wait_for(both_healthy, timeout=20, interval=0.1, message="both processes healthy again")
        for _ in range(20):
            await send_round(n)
            n += 1
        assert len(acked["bob"]) >= 40 and len(acked["alice"]) >= 40

        def received(peer: Peer) -> list[int]:
            return [m["signal"]["payload"] for m in peer.signals("n")]

        await wait_for(
            lambda: set(acked["bob"]) <= set(received(bob)) and set(acked["alice"]) <= set(received(alice)),
            timeout=15,
            message="every acknowledged message received",
        )
        assert received(bob) == sorted(received(bob)) and received(alice) == sorted(received(alice))
    finally:
        redis.stop()


def _nginx_config_from_docs(tmp_path: Path, listen: int, upstreams: list[int], which: int = 0) -> Path:
    """An nginx example of docs/scale-out.md (``which``: 0 round robin, 1 room affinity), pointed
    at our processes, as a runnable config."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scale-out.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", doc, re.S)
    assert len(blocks) == 2, "docs/scale-out.md has two nginx examples"
    example = blocks[which].replace("listen 80;", f"listen 127.0.0.1:{listen};")
    example = example.replace("127.0.0.1:8081", f"127.0.0.1:{upstreams[0]}")
    example = example.replace("127.0.0.1:8082", f"127.0.0.1:{upstreams[1]}")
    return nginx_config(tmp_path, example)


async def test_behind_the_documented_nginx_config_without_sticky_sessions(
    redis_server: RedisServer, start_processes: Any, peers: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = start_processes(redis_server, 2)
    port = free_port()
    conf = _nginx_config_from_docs(tmp_path, port, [a.port, b.port])
    proc = start_nginx(conf, tmp_path)
    try:
        front = Process.__new__(Process)  # the load balancer, addressed like a server process
        front.url = f"http://127.0.0.1:{port}/"
        await wait_for(lambda: accepts_tcp(port), timeout=10, message="nginx listening")
        # round robin spreads connects, WebSockets and requests over both processes
        alice, bob = peers("room", "alice"), peers("room", "bob")
        await alice.connect(front)
        await alice.open(front)
        async with http.get(front.url + "healthz") as r:  # shifts the round robin: WebSockets on both
            assert r.status == 200
        await bob.connect(front)
        await bob.open(front)
        for i in range(10):
            ack = await alice.send({"type": "n", "payload": i, "to": "bob"})
            assert ack["type"] == "ack" and ack["delivered"] == ["bob"], ack
        await bob.send({"type": "answer", "payload": {"sdp": "v=0"}, "to": "alice"})
        await wait_for(lambda: len(bob.signals("n")) == 10 and alice.signals("answer"), message="relay via nginx")
        assert [m["signal"]["payload"] for m in bob.signals("n")] == list(range(10))
        for _ in range(4):  # plain requests land on either process and work the same
            async with http.get(front.url + "rtc/rooms/room", headers={"Authorization": f"Bearer {alice.token}"}) as r:
                assert r.status == 200
                assert sorted(p["peerId"] for p in (await r.json())["peers"]) == ["alice", "bob"]
        sockets = {
            name: [p.port for p in (a, b) if f"peer {name} in room room opened a WebSocket" in p.log.read_text()]
            for name in ("alice", "bob")
        }
        assert len(sockets["alice"]) == len(sockets["bob"]) == 1 and sockets["alice"] != sockets["bob"], sockets
    finally:
        stop_process(proc)


async def test_room_affinity_config_keeps_each_room_on_one_process(
    redis_server: RedisServer, start_processes: Any, tmp_path: Path
) -> None:
    """The room-affinity example with this package's own client (it adds ``?room=``): the peers of
    a room share a process, rooms spread over both, and signals still flow."""
    procs = start_processes(redis_server, 2)
    port = free_port()
    proc = start_nginx(_nginx_config_from_docs(tmp_path, port, [p.port for p in procs], which=1), tmp_path)
    clients: list[RtcClient] = []
    try:
        await wait_for(lambda: accepts_tcp(port), timeout=10, message="nginx listening")
        # Ketama places the two upstreams (random ports) on the ring unevenly; with 6 rooms a 75/25
        # split put every room on one process in about one run of six. 24 rooms make that ~1e-3.
        rooms = [f"room-{i}" for i in range(24)]
        for room in rooms:
            for peer in ("alice", "bob"):
                client = RtcClient(f"http://127.0.0.1:{port}", transport="ws", auto_heartbeat=False)
                clients.append(client)
                await client.connect(room, peer)  # and opens its WebSocket
        await wait_for(lambda: all(c.channel == "ws" for c in clients), timeout=10, message="sockets open")
        where: dict[str, set[int]] = {}
        for room in rooms:
            for name in ("alice", "bob"):
                line = f"peer {name} in room {room} opened a WebSocket"
                where.setdefault(room, set()).update(p.port for p in procs if line in p.log.read_text())
        assert all(len(ports) == 1 for ports in where.values()), where
        assert len(set().union(*where.values())) == 2, f"all rooms on one process: {where}"
        for i in range(0, len(clients), 2):
            alice, bob = clients[i], clients[i + 1]
            result = await alice.signal({"type": "offer", "payload": {"sdp": "v=0"}}, to="bob")
            assert result["delivered"] == ["bob"], result
            message = await bob.next_message(timeout=10)
            while message["type"] != "signal":
                message = await bob.next_message(timeout=10)
            assert message["fromPeerId"] == "alice"
    finally:
        for client in clients:
            await client.close()
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_group_call_behind_the_room_affinity_config_is_one_call(
    redis_server: RedisServer, start_processes: Any, tmp_path: Path
) -> None:
    """docs/scale-out.md and group-calls.md: with room affinity every member of a room reaches
    the same process, so the room's call through ``@sfu`` is one call (each member receives the
    others), while another room may be forwarded by the other process."""
    from tests.media_helpers import SmallVideo
    from tests.test_sfu import CallMember

    procs = start_processes(redis_server, 2)
    port = free_port()
    proc = start_nginx(_nginx_config_from_docs(tmp_path, port, [p.port for p in procs], which=1), tmp_path)
    members: list[CallMember] = []
    try:
        await wait_for(lambda: accepts_tcp(port), timeout=10, message="nginx listening")
        for name in ("alice", "bob", "carol"):
            member = CallMember(f"http://127.0.0.1:{port}", name)
            members.append(member)
            await member.join(SmallVideo())
        await wait_for(
            lambda: all(m.frames_from(p) >= 10 for m in members for p in ("alice", "bob", "carol") if p != m.name),
            30,
            message="every member receives the other two",
        )
        forwarding = [p.port for p in procs if "publishing video" in p.log.read_text()]
        assert len(forwarding) == 1, f"the call was split over processes {forwarding}"
    finally:
        for member in members:
            await member.close()
        stop_process(proc)
