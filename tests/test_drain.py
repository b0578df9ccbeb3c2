"""Drain and restart (docs/operations.md): what SIGTERM does to real ``fantasize-rtc serve``
processes and their clients, one process alone and two on Redis behind nginx, and a shutdown that
stays bounded whatever Redis does (the shutdown hang once seen in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import errors
from fantasize_rtc.backends.redis import RedisBackend
from fantasize_rtc.client import RtcClient
from fantasize_rtc.hub import Hub
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.protocol import CloseCode
from fantasize_rtc.web import drain
from tests import redis_fixtures, test_redis_cluster
from tests.helpers import accepts_tcp, free_port, start_nginx, stop_process, wait_for, wait_for_sync
from tests.media_helpers import client_peer, http_offer
from tests.redis_fixtures import RedisServer, unique_prefix
from tests.test_redis_cluster import _nginx_config_from_docs

redis_server = redis_fixtures.redis_server

ROOM = "drain-room"


def from_server_peer(name: str, kind: str) -> Any:
    return lambda m: m.get("type") == "signal" and m["fromPeerId"] == name and m["signal"]["type"] == kind


async def _until_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[aiohttp.WSMessage, list[dict[str, Any]]]:
    """Read a socket (answering its close) until it closes: (the close message, what came before)."""
    before: list[dict[str, Any]] = []
    while True:
        message = await ws.receive()
        if message.type is not aiohttp.WSMsgType.TEXT:
            return message, before
        before.append(message.json())


async def request_in_progress(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A ``POST /rtc/heartbeat`` the server is handling, its body not sent yet: the server says
    ``100 Continue`` once the request reached its handler. Finish it with :func:`finish_request`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /rtc/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 100"), head
    return reader, writer


async def finish_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send the body of :func:`request_in_progress`'s request; its answer's status line."""
    writer.write(b"{}")
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    return status


def decoded_video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# -- one app, in this process ----------------------------------------------------------------------


async def test_a_draining_app_refuses_new_work_and_asks_sockets_to_reconnect(ws_client: TestClient) -> None:  # type: ignore[type-arg]
    """Everything ``drain`` promises, route by route, on the real app on a real port."""
    client = ws_client
    resp = await client.post("/rtc/connect", json={"roomId": ROOM, "peerId": "alice"})
    alice = (await resp.json())["token"]
    resp = await client.post("/rtc/connect", json={"roomId": ROOM, "peerId": "bob"})
    bob = (await resp.json())["token"]
    ws = await client.ws_connect(f"/rtc/ws?token={alice}")
    polling = asyncio.ensure_future(client.get(f"/rtc/poll?token={bob}&waitMs=20000"))
    await wait_for(lambda: client.app[MEDIA_KEY].rtc.hub.channel(ROOM, "bob") is not None, message="bob's poll")
    async with client_peer() as peer:
        peer.add_media(audio=False)
        offer_sdp = await peer.offer()  # a valid offer, to be refused
        closing = asyncio.ensure_future(_until_close(ws))

        report = await drain(client.app, 5)

        closed, _ = await asyncio.wait_for(closing, 5)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, CloseCode.SERVICE_RESTART)
        poll = await asyncio.wait_for(polling, 5)
        assert poll.status == 200 and (await poll.json()) == {"messages": []}
        assert (report.sockets, report.polls, report.complete) == (1, 1, True)

        health = await client.get("/healthz")
        assert health.status == 503 and (await health.json())["status"] == "draining"
        assert health.headers["Retry-After"] == "1"
        refused = [
            await client.post("/rtc/connect", json={"roomId": ROOM, "peerId": "carol"}),
            await client.get(f"/rtc/poll?token={bob}&waitMs=0"),
            await client.post("/rtc/offer", json={"sdp": offer_sdp, "type": "offer", "mode": "echo"}),
            await client.post("/whip", data=offer_sdp, headers={"Content-Type": "application/sdp"}),
        ]
        for answer in refused:
            body = await answer.json()
            assert (answer.status, body["error"]["code"], answer.headers["Retry-After"]) == (503, "draining", "1")
        with pytest.raises(aiohttp.WSServerHandshakeError) as upgrade:
            await client.ws_connect(f"/rtc/ws?token={alice}")
        headers = upgrade.value.headers
        assert upgrade.value.status == 503 and headers is not None and headers.get("Retry-After") == "1"
    # Peers that are here already keep working until the process is gone.
    beat = await client.post("/rtc/heartbeat", json={}, headers={"Authorization": f"Bearer {alice}"})
    assert beat.status == 200
    relay = await client.post(
        "/rtc/signal",
        json={"signal": {"type": "n", "payload": 1, "to": "bob"}},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert relay.status == 200 and (await relay.json())["queued"] == ["bob"]


async def test_drain_says_bye_for_signaled_sessions_and_finishes_recordings(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    resp = await client.post("/rtc/connect", json={"roomId": ROOM, "peerId": "alice"})
    token = (await resp.json())["token"]
    ws = await client.ws_connect(f"/rtc/ws?token={token}")
    async with client_peer() as signaled, client_peer() as anonymous:
        signaled.add_media()
        frame = {
            "type": "signal",
            "signal": {"type": "offer", "payload": {"sdp": await signaled.offer()}, "to": "@record"},
        }
        await ws.send_json(frame)
        while not from_server_peer("@record", "answer")(message := await ws.receive_json(timeout=20)):
            pass
        recording = message["signal"]["payload"]["sessionId"]
        await signaled.accept(message["signal"]["payload"]["sdp"])
        anonymous.add_media(audio=False)
        await http_offer(client, anonymous, "echo")
        await anonymous.wait_frames("video", 5)
        session = manager.get(recording)[1]
        assert session is not None
        await wait_for(lambda: session.frames["video"] >= 20, 20, message="recorded frames")

        closing = asyncio.ensure_future(_until_close(ws))

        report = await drain(client.app, 8)

        # The bye comes over the socket before it closes with 1012.
        closed, before = await asyncio.wait_for(closing, 5)
        assert closed.data == CloseCode.SERVICE_RESTART
        assert [m["signal"] for m in before if from_server_peer("@record", "bye")(m)] == [
            {"type": "bye", "payload": {"reason": "shutdown", "sessionId": recording}}
        ], before
        assert report.complete and report.counts == {
            "byes sent": 1,
            "media sessions closed": 2,
            "recordings finished": 1,
        }, report
        assert len(manager) == 0
        await wait_for(lambda: anonymous.pc.connectionState != "connected", 10, message="the echo's peer to see it end")
    saved = manager.store.list()
    assert len(saved) == 1 and saved[0].close_reason == "shutdown"
    assert decoded_video_frames(manager.store.path_of(saved[0])) >= 10


async def test_the_python_client_reconnects_at_once_on_1012(serve_app: Any) -> None:
    """A socket closed with 1012 comes back within a fraction of a second, with the same token
    (the membership is kept), where any other drop backs off."""
    app, url = await serve_app()
    rtc = app[MEDIA_KEY].rtc
    async with RtcClient(url, transport="ws", auto_heartbeat=False) as alice:
        await alice.connect(ROOM, "alice")
        await wait_for(lambda: rtc.hub.channel(ROOM, "alice") is not None, message="alice's socket")
        token = alice.token
        channel = rtc.hub.channel(ROOM, "alice")
        assert channel is not None
        started = time.monotonic()
        await channel.close(CloseCode.SERVICE_RESTART, "server restarting")
        await wait_for(lambda: rtc.hub.channel(ROOM, "alice") not in (None, channel), message="the socket back")
        assert time.monotonic() - started < 1.0
        assert (alice.last_close_code, alice.reconnects, alice.token) == (CloseCode.SERVICE_RESTART, 1, token)
        async with RtcClient(url, auto_heartbeat=False) as bob:
            await bob.connect(ROOM, "bob", listen=False)
            await bob.signal({"type": "hello", "payload": 1}, to="alice")
        message = await alice.next_message(timeout=5)
        while message["type"] != "signal":
            message = await alice.next_message(timeout=5)
        assert message["signal"]["type"] == "hello"


@pytest.fixture
async def serve_app(aiohttp_server: Any, config: Any) -> Any:
    from fantasize_rtc.app import create_app

    async def make() -> tuple[Any, str]:
        app = create_app(config=config)
        server = await aiohttp_server(app)
        return app, str(server.make_url("")).rstrip("/")

    return make


# -- a real process ------------------------------------------------------------------------------


class Served:
    """``fantasize-rtc serve`` in a subprocess, logging to a file."""

    def __init__(self, tmp_path: Path, *args: str, redis_url: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        self.recordings = tmp_path / "rec"
        command = [sys.executable, "-m", "fantasize_rtc", "serve", "--port", str(self.port)]
        command += ["--recordings-dir", str(self.recordings), "--admin-key", "admin", *args]
        if redis_url:
            command += ["--redis-url", redis_url]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
        wait_for_sync(self._serving, timeout=30, interval=0.05, message=f"the server on port {self.port}")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited early:\n{self.output()}")
        return "serving on" in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 15)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str, redis_url: str | None = None) -> Served:
        server = Served(tmp_path, *args, redis_url=redis_url)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


async def _status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def _read_all(client: RtcClient, into: list[dict[str, Any]]) -> None:
    with contextlib.suppress(errors.RtcError):
        async for message in client.messages():
            into.append(message)


async def test_sigterm_drains_a_real_server_and_exits_within_drain_seconds(served: Any, tmp_path: Path) -> None:
    server = served("--drain-seconds", "5")
    clients: list[RtcClient] = []
    readers: list[asyncio.Task[None]] = []
    slow: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    async with aiohttp.ClientSession() as http, client_peer() as recorded, client_peer() as echoed:
        try:
            alice = RtcClient(server.url, transport="ws")
            clients.append(alice)
            await alice.connect(ROOM, "alice")
            heard: list[dict[str, Any]] = []
            readers.append(asyncio.ensure_future(_read_all(alice, heard)))
            recorded.add_media()
            await alice.signal({"type": "offer", "payload": {"sdp": await recorded.offer()}}, to="@record")
            answer = await wait_for(lambda: next(filter(from_server_peer("@record", "answer"), heard), None), 20)
            session_id = answer["signal"]["payload"]["sessionId"]
            await recorded.accept(answer["signal"]["payload"]["sdp"])
            echoed.add_media(audio=False)
            await http_offer(_Base(http, server.url), echoed, "echo")

            async def recording() -> bool:
                report = await alice.media_session(session_id)
                return int(report["stats"]["framesReceived"]["video"]) >= 20

            await wait_for(recording, 30, interval=0.1, message="recorded frames")
            await echoed.wait_frames("video", 5)
            # A request in progress at SIGTERM is let finish while the process still listens; it
            # is held here, so what the process answers meanwhile can be seen.
            assert alice.token is not None
            slow = await request_in_progress(server.port, alice.token)

            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                status, body = await _status(http, server.url + "/healthz")
                return status == 503 and body["status"] == "draining"

            await wait_for(draining, 1, message="/healthz to answer 503 draining")
            assert time.monotonic() - started < 1 and server.proc.poll() is None
            async with http.post(server.url + "/rtc/connect", json={"roomId": ROOM, "peerId": "late"}) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]["code"], resp.headers["Retry-After"]) == (503, "draining", "1")
            await wait_for(lambda: alice.last_close_code == CloseCode.SERVICE_RESTART, 3, message="alice's 1012")
            # The bye came before the 1012, but the reader task may not have taken it in yet.
            bye = await wait_for(lambda: next(filter(from_server_peer("@record", "bye"), heard), None), 2)
            assert bye["signal"]["payload"] == {"reason": "shutdown", "sessionId": session_id}
            await wait_for(lambda: echoed.pc.connectionState != "connected", 5, message="the echo to end")
            assert server.proc.poll() is None  # still answering, while the request is in progress
            assert await finish_request(*slow) == b"HTTP/1.1 200 OK\r\n"

            code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 10)
            took = time.monotonic() - started
            assert code == 0, server.output()[-3000:]
            assert took < 5, f"the process took {took:.1f} s to exit"
        finally:
            if slow is not None:
                slow[1].close()  # finished (and closed) by the test, unless it failed before
            for reader in readers:
                reader.cancel()
            for client in clients:
                await client.close()
            await asyncio.gather(*readers, return_exceptions=True)
    log = server.output()
    summary = next(line for line in log.splitlines() if "drained in" in line)
    for part in ("WebSockets asked to reconnect (1012): 1", "byes sent: 1", "media sessions closed: 2"):
        assert part in summary, summary
    assert "recordings finished: 1" in summary, summary
    sidecars = [json.loads(p.read_text()) for p in server.recordings.glob("*.json")]
    assert [s["closeReason"] for s in sidecars] == ["shutdown"], sidecars
    assert decoded_video_frames(server.recordings / str(sidecars[0]["file"])) >= 10


class _Base:
    """An aiohttp session with a base URL, as ``http_offer`` expects a test client to be."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.base + path, **kwargs)


# -- two processes on Redis behind nginx -----------------------------------------------------------

start_processes = test_redis_cluster.start_processes  # the fixture: serve processes on one Redis


class Relaying:
    """One peer of a pair: sends numbered signals to its partner, each acknowledged (or sent again
    after a failure), and keeps what it receives."""

    def __init__(self, client: RtcClient, room: str, name: str, partner: str) -> None:
        self.client, self.room, self.name, self.partner = client, room, name, partner
        self.acked: list[int] = []
        self.failures = 0
        self.received: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, stop: asyncio.Event) -> None:
        self.tasks = [
            asyncio.ensure_future(self._send(stop)),
            asyncio.ensure_future(_read_all(self.client, self.received)),
        ]

    async def _send(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            try:
                result = await self.client.signal({"type": "n", "payload": n}, to=self.partner)
            except (errors.RtcError, aiohttp.ClientError, asyncio.TimeoutError):
                self.failures += 1  # not acknowledged: sent again
            else:
                if self.partner in result["delivered"] or self.partner in result["queued"]:
                    self.acked.append(n)
                    n += 1
            await asyncio.sleep(0.1)  # a client's pace (10 signals a second), not a wait for anything

    def numbers(self) -> set[int]:
        return {m["signal"]["payload"] for m in self.received if m["type"] == "signal" and m["signal"]["type"] == "n"}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


async def test_draining_one_of_two_processes_behind_nginx_loses_no_acknowledged_message(
    redis_server: RedisServer, start_processes: Any, tmp_path: Path
) -> None:
    """50 peers (25 pairs) relay numbered, acknowledged signals through the documented nginx
    config; the process holding most of their sockets gets SIGTERM. Every socket comes back on the
    other process within a few seconds, with the same token and room, and every acknowledged
    message arrives."""
    procs = start_processes(redis_server, 2, FANTASIZE_RTC_DRAIN_SECONDS="5")
    port = free_port()
    nginx = start_nginx(_nginx_config_from_docs(tmp_path, port, [p.port for p in procs]), tmp_path)
    peers: list[Relaying] = []
    stop = asyncio.Event()
    try:
        await wait_for(lambda: accepts_tcp(port), timeout=10, message="nginx listening")
        front = f"http://127.0.0.1:{port}"
        for i in range(25):
            for name, partner in (("alice", "bob"), ("bob", "alice")):
                client = RtcClient(front, transport="ws", send_over="ws", auto_heartbeat=False, timeout=10)
                peers.append(Relaying(client, f"pair-{i}", name, partner))
                await client.connect(f"pair-{i}", name)
        await wait_for(lambda: all(p.client.channel == "ws" for p in peers), 10, message="50 sockets open")
        async with aiohttp.ClientSession() as http:

            async def sockets(proc: Any) -> int:
                return int((await _status(http, proc.url + "healthz"))[1]["channels"])

            held = [await sockets(p) for p in procs]
            assert sum(held) == 50, held
            target, other = (procs[0], procs[1]) if held[0] >= held[1] else (procs[1], procs[0])
            moving = max(held)
            tokens = {(p.room, p.name): p.client.token for p in peers}
            for peer in peers:
                peer.start(stop)
            await wait_for(lambda: all(len(p.acked) >= 3 for p in peers), 20, message="every pair relaying")

            assert target.proc is not None
            drained = target.proc
            started = time.monotonic()
            drained.send_signal(signal.SIGTERM)

            async def all_back() -> bool:
                return all(p.client.channel == "ws" for p in peers) and await sockets(other) == 50

            await wait_for(all_back, 5, interval=0.05, message="every socket back, on the other process")
            back = time.monotonic() - started
            code = await asyncio.wait_for(asyncio.to_thread(drained.wait), 10)
            exited = time.monotonic() - started
            assert code == 0 and exited < 5, (code, exited)
            assert sum(p.client.last_close_code == CloseCode.SERVICE_RESTART for p in peers) == moving
            assert {(p.room, p.name): p.client.token for p in peers} == tokens  # the same peers, no rejoin
            marks = {p.name: len(p.acked) for p in peers}
            await wait_for(
                lambda: all(len(p.acked) >= marks[p.name] + 3 for p in peers), 20, message="relaying after the drain"
            )
            stop.set()
            await asyncio.gather(*(p.tasks[0] for p in peers))
            partner_of = {(p.room, p.name): p for p in peers}

            def delivered() -> bool:
                return all(set(p.acked) <= partner_of[(p.room, p.partner)].numbers() for p in peers)

            await wait_for(delivered, 15, message="every acknowledged message received")
            snapshot = await peers[0].client.snapshot()
            assert sorted(m["peerId"] for m in snapshot["peers"]) == ["alice", "bob"]
        log = target.log.read_text()
        summary = next(line for line in log.splitlines() if "drained in" in line)
        assert f"WebSockets asked to reconnect (1012): {moving}" in summary, summary
        print(  # the numbers for docs/operations.md
            f"\n{moving} sockets moved in {back:.2f} s, process exited after {exited:.2f} s, "
            f"{sum(len(p.acked) for p in peers)} messages acknowledged, {sum(p.failures for p in peers)} sent again; "
            f"{summary.split(': ', 1)[-1]}"
        )
    finally:
        stop.set()
        for peer in peers:
            await peer.close()
        stop_process(nginx)


# -- a shutdown bounded whatever Redis does ---------------------------------------------------------


async def test_redis_backend_close_ends_even_right_after_a_wakeup(redis_server: RedisServer) -> None:
    """The CI shutdown hang, reproduced exactly. While Redis is down the listener wakes the
    refresher after each failed reconnect (every backoff). A close that came in the same loop pass
    as such a wake-up lost its cancel inside ``asyncio.wait_for`` (Python < 3.12 returns instead of
    raising when the awaited event is set at that moment): the refresher looped on, and close(),
    runner.cleanup() and the process never ended."""
    backend = RedisBackend(redis_server.url, prefix=unique_prefix(), max_backoff=0.05)
    await backend.start(Hub())
    redis_server.stop()
    await wait_for(lambda: not backend.health()["ok"], 10, message="the backend to see Redis gone")
    backend._wake.set()  # what the listener does after each failed reconnect
    await asyncio.wait_for(backend.close(), 5)


@pytest.mark.parametrize("fate", ["stopped", "hung"])
async def test_sigterm_right_after_redis_goes_exits_within_drain_seconds(
    redis_server: RedisServer, served: Any, fate: str
) -> None:
    """The conditions of the CI hang on real processes: peers relaying over Redis, then Redis stops
    (or hangs: SIGSTOP, its connections open and silent), then SIGTERM, at a few moments after.
    The process exits 0 within --drain-seconds every time."""
    delays = (0.0, 0.05, 0.5) if fate == "stopped" else (0.0,)
    for delay in delays:
        if redis_server.process is None:
            redis_server.start()
        server = served("--drain-seconds", "3", redis_url=redis_server.url)
        async with (
            RtcClient(server.url, transport="ws", send_over="ws", auto_heartbeat=False) as alice,
            RtcClient(server.url, transport="ws", auto_heartbeat=False) as bob,
        ):
            await alice.connect(ROOM, "alice")
            await bob.connect(ROOM, "bob")
            await wait_for(lambda: bob.channel == "ws", 10, message="bob's socket")
            for n in range(10):
                await alice.signal({"type": "n", "payload": n}, to="bob")
            redis = redis_server.process
            assert redis is not None
            if fate == "stopped":
                redis_server.stop()
            else:
                redis.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(delay)  # the moment of SIGTERM, varied: that is the point here
                started = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(asyncio.to_thread(server.proc.wait), 10)
                took = time.monotonic() - started
            finally:
                if fate == "hung":
                    redis.send_signal(signal.SIGCONT)
            assert code == 0 and took < 3, (fate, delay, code, took, server.output()[-3000:])
