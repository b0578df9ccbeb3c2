"""Load generator worker: one process, driven over stdin/stdout by :mod:`bench.signaling`.

Protocol: the orchestrator writes one JSON line (the job), the worker sets up its peers and
prints ``{"ready": true}``, waits for a ``go`` line, runs the job and prints one JSON line with
its counts. Several workers run side by side, each pinned (``taskset``) away from the server.

Jobs (``mode``):
- ``relay``: pairs bounce signals back and forth (each received message is answered with the
  next one of the mix) with ``window`` messages in flight per peer: saturation throughput.
- ``latency``: open loop, ``rate`` messages/s spread over the pairs, one-way latency of each.
- ``idle``: hold the peers, each sending a heartbeat every ``heartbeat_s`` seconds.
- ``churn``: ``concurrency`` loops of connect + join + leave.
- ``storm``: hold the peers; at go every socket drops at once (the load generator aborts them)
  and every peer reconnects with the clients' own backoff and jitter (0.2 s, doubling to 10 s,
  times 0.5-1.0 at random): when each is back, and the failed attempts.

Servers (``kind``): ``ours`` (fantasize-rtc), ``peerjs`` (PeerJS server), ``bare`` (bench.baseline_aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._ws import HttpClient, WsClient, open_ws, text_frame

# -- message mix -----------------------------------------------------------------------------------


def _sdp(target: int = 3000) -> str:
    """A plausible ~3 KB SDP offer (audio + video, CRLF lines, as browsers send)."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 103 104 9 0 8 106 105 13 110 112 113 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Xk3b",
        "a=ice-pwd:H1Bq0bH0cVmh8fV0vQ4xW0Aq",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 101",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtcp-rsize",
    ]
    n = 96
    while sum(len(x) + 2 for x in lines) < target:
        lines.append(f"a=rtpmap:{n} VP8/90000")
        lines.append(f"a=rtcp-fb:{n} goog-remb")
        lines.append(f"a=rtcp-fb:{n} nack pli")
        n += 1
    return "\r\n".join(lines) + "\r\n"


SDP = _sdp()
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 192.0.2.10 46154 typ srflx raddr 10.0.0.5 rport 46154 "
    "generation 0 ufrag Xk3b network-id 1 network-cost 10",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}
#: One cycle of a negotiation as seen by the relay: an offer, an answer, four trickled candidates.
MIX: list[tuple[str, dict[str, Any]]] = [
    ("offer", {"type": "offer", "sdp": SDP}),
    ("answer", {"type": "answer", "sdp": SDP}),
    *[("candidate", CANDIDATE)] * 4,
]


class Kind:
    """How one server names things: paths, frames, and which received frames are relayed signals."""

    name = ""

    def parts(self, to: str, sig_type: str) -> tuple[str, str]:
        """The frame's text before and after the payload object."""
        raise NotImplementedError

    def heartbeat(self) -> bytes:
        raise NotImplementedError

    def is_relayed(self, data: bytes) -> bool:
        raise NotImplementedError

    async def ws_path(self, host: str, port: int, http: HttpClient, room: str, peer: str) -> str:
        raise NotImplementedError

    def reconnect(self, peer: Peer) -> tuple[str, bool]:
        """(path, whether a first frame says it is back) for a peer coming back after a drop."""
        raise NotImplementedError

    waits_for_first_frame = False


class Ours(Kind):
    name = "ours"

    def parts(self, to: str, sig_type: str) -> tuple[str, str]:
        return f'{{"type":"signal","signal":{{"type":"{sig_type}","to":"{to}","payload":', "}}"

    def heartbeat(self) -> bytes:
        return text_frame(b'{"type":"heartbeat"}')

    def is_relayed(self, data: bytes) -> bool:
        return data.startswith(b'{"type":"signal"')

    #: The join is in the upgrade (one round trip, as both clients do it); its answer is the
    #: socket's first frame. ``FANTASIZE_BENCH_TWO_STEP=1`` measures POST /rtc/connect + upgrade.
    waits_for_first_frame = not os.environ.get("FANTASIZE_BENCH_TWO_STEP")

    async def ws_path(self, host: str, port: int, http: HttpClient, room: str, peer: str) -> str:
        if self.waits_for_first_frame:
            return f"/rtc/ws?roomId={room}&peerId={peer}"
        status, body = await http.post("/rtc/connect", json.dumps({"roomId": room, "peerId": peer}).encode())
        if status != 200:
            raise RuntimeError(f"connect {room}/{peer} failed: {status} {body[:200]!r}")
        token: str = json.loads(body)["token"]
        return "/rtc/ws?token=" + token

    def reconnect(self, peer: Peer) -> tuple[str, bool]:
        return f"/rtc/ws?token={peer.token}", False  # the membership is kept: the token still works


class PeerJs(Kind):
    name = "peerjs"
    waits_for_first_frame = True  # OPEN

    def parts(self, to: str, sig_type: str) -> tuple[str, str]:
        return f'{{"type":"{sig_type.upper()}","dst":"{to}","payload":', "}"

    def heartbeat(self) -> bytes:
        return text_frame(b'{"type":"HEARTBEAT"}')

    def is_relayed(self, data: bytes) -> bool:
        return data[9:12] in (b"OFF", b"ANS", b"CAN")

    async def ws_path(self, host: str, port: int, http: HttpClient, room: str, peer: str) -> str:
        return f"/peerjs?key=peerjs&id={peer}&token=t{peer}"

    def reconnect(self, peer: Peer) -> tuple[str, bool]:
        return f"/peerjs?key=peerjs&id={peer.id}&token=t{peer.id}", True  # back when OPEN arrives


class Bare(Kind):
    name = "bare"

    def parts(self, to: str, sig_type: str) -> tuple[str, str]:
        return f'{{"to":"{to}","type":"{sig_type}","payload":', "}"

    def heartbeat(self) -> bytes:
        return text_frame(b'{"type":"heartbeat"}')

    def is_relayed(self, data: bytes) -> bool:
        return data.startswith(b'{"to"')

    async def ws_path(self, host: str, port: int, http: HttpClient, room: str, peer: str) -> str:
        return f"/ws?id={peer}"

    def reconnect(self, peer: Peer) -> tuple[str, bool]:
        return f"/ws?id={peer.id}", False


KINDS: dict[str, Callable[[], Kind]] = {"ours": Ours, "peerjs": PeerJs, "bare": Bare}


# -- peers -----------------------------------------------------------------------------------------


class Peer:
    __slots__ = ("frames", "id", "index", "partner", "stamped", "token", "ws")

    def __init__(self, peer_id: str) -> None:
        self.id = peer_id
        self.token: str | None = None  # ours: from the join, for reconnecting
        self.ws: WsClient | None = None
        self.partner: Peer | None = None
        self.frames: list[bytes] = []  # the mix, pre-built, addressed to the partner
        self.stamped: list[tuple[bytes, bytes]] = []  # (before, after) the send time, for latency
        self.index = 0


async def connect_peer(
    kind: Kind,
    host: str,
    port: int,
    http: HttpClient,
    room: str,
    peer: Peer,
    offer_deflate: bool = False,
    attempts: int = 1,
) -> None:
    """Join (ours: POST /rtc/connect) and open the peer's WebSocket.

    ``attempts`` > 1 retries the WebSocket: when thousands of peers connect at once on a busy
    machine, a handshake can time out in the listen backlog; the peer is the same, so retry."""
    path = await kind.ws_path(host, port, http, room, peer.id)
    for attempt in range(attempts):
        first: asyncio.Future[None] | None = None
        if kind.waits_for_first_frame:
            first = asyncio.get_running_loop().create_future()

        def on_first(client: WsClient, data: bytes, first: asyncio.Future[None] | None = first) -> None:
            if first is not None and not first.done():
                if kind.name == "ours" and b'"connected"' in data:
                    peer.token = json.loads(data)["token"]
                first.set_result(None)

        try:
            peer.ws = await open_ws(host, port, path, on_first if first else None, offer_deflate=offer_deflate)
            if first is not None:
                await asyncio.wait_for(first, 10)
            break
        except (OSError, asyncio.TimeoutError):
            if peer.ws is not None:
                peer.ws.abort()
                peer.ws = None
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    assert peer.ws is not None
    peer.ws.tag = peer


async def connect_pairs(
    kind: Kind, job: dict[str, Any], on_connected: Callable[[Peer], None] | None = None
) -> list[Peer]:
    host, port = job["host"], job["port"]
    peers: list[Peer] = []
    for _room, a_id, b_id in job["pairs"]:
        a, b = Peer(a_id), Peer(b_id)
        a.partner, b.partner = b, a
        peers += [a, b]
    rooms = {pid: room for room, a_id, b_id in job["pairs"] for pid in (a_id, b_id)}
    limit = asyncio.Semaphore(job.get("connect_concurrency", 64))
    clients: list[HttpClient] = []

    async def one(peer: Peer) -> None:
        async with limit:
            http = clients.pop() if clients else HttpClient(host, port)
            try:
                await connect_peer(
                    kind, host, port, http, rooms[peer.id], peer, bool(job.get("offer_deflate")), attempts=5
                )
                if on_connected is not None:
                    on_connected(peer)
            finally:
                clients.append(http)

    await asyncio.gather(*(one(p) for p in peers))
    for http in clients:
        await http.close()
    for peer in peers:
        assert peer.partner is not None
        for sig_type, payload in MIX:
            head, tail = kind.parts(peer.partner.id, sig_type)
            body = json.dumps(payload, separators=(",", ":"))
            peer.frames.append(text_frame(head + body + tail))
            # the send time goes last in the payload, where the receiver finds it with rfind
            peer.stamped.append(((head + body[:-1] + ',"bt":').encode(), ("}" + tail).encode()))
    return peers


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- jobs ------------------------------------------------------------------------------------------


async def run_relay(kind: Kind, job: dict[str, Any], peers: list[Peer], go: asyncio.Event) -> dict[str, Any]:
    counter = [0]
    is_relayed = kind.is_relayed
    n_mix = len(MIX)

    def on_text(client: WsClient, data: bytes) -> None:
        if not is_relayed(data):
            return
        counter[0] += 1
        peer: Peer = client.tag
        i = peer.index
        peer.index = i + 1
        client.send_frame(peer.frames[i % n_mix])

    for peer in peers:
        assert peer.ws is not None
        peer.ws.on_text = on_text
    await go.wait()
    for peer in peers:
        assert peer.ws is not None
        for _ in range(job["window"]):
            peer.ws.send_frame(peer.frames[peer.index % n_mix])
            peer.index += 1
    await asyncio.sleep(job["warmup"])
    c0, cpu0, t0 = counter[0], _cpu(), time.monotonic()
    await asyncio.sleep(job["duration"])
    c1, cpu1, t1 = counter[0], _cpu(), time.monotonic()
    return {"delivered": c1 - c0, "elapsed": t1 - t0, "cpu": cpu1 - cpu0}


async def run_latency(kind: Kind, job: dict[str, Any], peers: list[Peer], go: asyncio.Event) -> dict[str, Any]:
    latencies: list[float] = []
    is_relayed = kind.is_relayed
    measure_from = [float("inf")]
    received = [0]

    def on_text(client: WsClient, data: bytes) -> None:
        if not is_relayed(data):
            return
        received[0] += 1
        at = data.rfind(b'"bt":')
        if at < 0:
            return
        sent = float(data[at + 5 : data.index(b"}", at)])
        if sent >= measure_from[0]:
            latencies.append(time.monotonic() - sent)

    for peer in peers:
        assert peer.ws is not None
        peer.ws.on_text = on_text
    await go.wait()
    rate = float(job["rate"])
    warmup, duration = float(job["warmup"]), float(job["duration"])
    n_mix = len(MIX)
    start = time.monotonic()
    end = start + warmup + duration
    measure_from[0] = start + warmup
    sent = 0
    cpu0 = None
    n = len(peers)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if cpu0 is None and now >= measure_from[0]:
            cpu0 = _cpu()
        due = int((now - start) * rate) - sent
        for _ in range(due):
            peer = peers[sent % n]
            before, after = peer.stamped[peer.index % n_mix]
            peer.index += 1
            assert peer.ws is not None
            peer.ws.send_frame(text_frame(before + b"%.6f" % time.monotonic() + after))
            sent += 1
        await asyncio.sleep(0.001)
    cpu1 = _cpu()
    # let the last messages land (bounded) so they are not counted as lost
    deadline = time.monotonic() + 2.0
    while received[0] < sent and time.monotonic() < deadline:  # noqa: ASYNC110 - counted in a callback
        await asyncio.sleep(0.01)
    return {
        "sent": sent,
        "received": received[0],
        "latencies_us": [int(x * 1e6) for x in latencies],
        "cpu": cpu1 - (cpu0 if cpu0 is not None else cpu1),
        "elapsed": duration,
    }


class Heartbeats:
    """Each idle peer sends a heartbeat every ``interval`` s from the moment it is connected
    (random phase), so no server reaps a peer while the others are still connecting."""

    def __init__(self, kind: Kind, interval: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.beat = kind.heartbeat()
        self.interval = interval
        self.sent = 0
        self.handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, peer: Peer) -> None:
        self.handles[peer.id] = self.loop.call_later(random.uniform(0, self.interval), self._tick, peer)

    def _tick(self, peer: Peer) -> None:
        if peer.ws is not None:
            peer.ws.send_frame(self.beat)
            self.sent += 1
        self.handles[peer.id] = self.loop.call_later(self.interval, self._tick, peer)

    def stop(self) -> None:
        for handle in self.handles.values():
            handle.cancel()


async def run_idle(
    kind: Kind, job: dict[str, Any], peers: list[Peer], go: asyncio.Event, beats: Heartbeats
) -> dict[str, Any]:
    await go.wait()
    sent0, cpu0, t0 = beats.sent, _cpu(), time.monotonic()
    await asyncio.sleep(job["duration"])
    beats.stop()
    lost = sum(1 for p in peers if p.ws is None or p.ws.closed.done())
    return {
        "peers": len(peers),
        "heartbeats": beats.sent - sent0,
        "lost": lost,
        "cpu": _cpu() - cpu0,
        "elapsed": time.monotonic() - t0,
    }


async def run_churn(kind: Kind, job: dict[str, Any], go: asyncio.Event) -> dict[str, Any]:
    host, port = job["host"], job["port"]
    counting = [False]
    cycles = [0]
    errors = [0]
    stop = [False]
    leave_frame = text_frame(b'{"type":"disconnect"}')

    async def loop_(worker: int) -> None:
        http = HttpClient(host, port)
        j = 0
        try:
            while not stop[0]:
                j += 1
                peer = Peer(f"c{job['worker']}x{worker}x{j}")
                try:
                    await connect_peer(
                        kind, host, port, http, f"churn{job['worker']}x{worker}", peer, bool(job.get("offer_deflate"))
                    )
                    assert peer.ws is not None
                    if kind.name == "ours":
                        peer.ws.send_frame(leave_frame)  # the server leaves the room and closes
                        await asyncio.wait_for(asyncio.shield(peer.ws.closed), 5)
                    else:
                        await peer.ws.close()
                except (OSError, RuntimeError, asyncio.TimeoutError):
                    errors[0] += 1
                    if peer.ws is not None:
                        peer.ws.abort()
                    continue
                if counting[0]:
                    cycles[0] += 1
        finally:
            await http.close()

    await go.wait()
    tasks = [asyncio.ensure_future(loop_(i)) for i in range(job["concurrency"])]
    await asyncio.sleep(job["warmup"])
    counting[0] = True
    cpu0, t0 = _cpu(), time.monotonic()
    await asyncio.sleep(job["duration"])
    counting[0] = False
    result = {"cycles": cycles[0], "errors": errors[0], "cpu": _cpu() - cpu0, "elapsed": time.monotonic() - t0}
    stop[0] = True
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    return result


async def run_storm(kind: Kind, job: dict[str, Any], peers: list[Peer], go: asyncio.Event) -> dict[str, Any]:
    host, port = job["host"], job["port"]
    back: list[float] = []
    failures = [0]
    await go.wait()
    cpu0, t0 = _cpu(), time.monotonic()
    for peer in peers:  # every socket drops at once
        assert peer.ws is not None
        peer.ws.abort()

    async def come_back(peer: Peer) -> None:
        backoff = 0.2
        while True:
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            path, first_frame = kind.reconnect(peer)
            first: asyncio.Future[None] | None = asyncio.get_running_loop().create_future() if first_frame else None

            def on_text(client: WsClient, data: bytes, first: asyncio.Future[None] | None = first) -> None:
                if first is not None and not first.done():
                    first.set_result(None)

            try:
                peer.ws = await open_ws(host, port, path, on_text, timeout=10)
                if first is not None:
                    await asyncio.wait_for(first, 10)
            except (OSError, asyncio.TimeoutError, RuntimeError):
                failures[0] += 1
                if peer.ws is not None:
                    peer.ws.abort()
                    peer.ws = None
                backoff = min(backoff * 2, 10.0)
                continue
            back.append(time.monotonic() - t0)
            return

    await asyncio.wait_for(asyncio.gather(*(come_back(p) for p in peers)), job.get("limit_s", 120))
    return {"peers": len(peers), "back": back, "failures": failures[0], "cpu": _cpu() - cpu0}


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)  # the job lists every peer
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())
    kind = KINDS[job["kind"]]()
    go = asyncio.Event()
    peers: list[Peer] = []
    beats = Heartbeats(kind, float(job.get("heartbeat_s", 30.0)))
    if job["mode"] != "churn":
        peers = await connect_pairs(kind, job, beats.start if job["mode"] == "idle" else None)
    print(json.dumps({"ready": True}), flush=True)

    async def wait_go() -> None:
        await reader.readline()
        go.set()

    waiter = asyncio.ensure_future(wait_go())
    mode = job["mode"]
    if mode == "relay":
        result = await run_relay(kind, job, peers, go)
    elif mode == "latency":
        result = await run_latency(kind, job, peers, go)
    elif mode == "idle":
        result = await run_idle(kind, job, peers, go, beats)
    elif mode == "churn":
        result = await run_churn(kind, job, go)
    elif mode == "storm":
        result = await run_storm(kind, job, peers, go)
    else:
        raise SystemExit(f"unknown mode {mode}")
    waiter.cancel()
    for peer in peers:
        if peer.ws is not None:
            peer.ws.abort()
    print(json.dumps(result), flush=True)


def main() -> None:
    if "--uvloop" in sys.argv:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    asyncio.run(_main())


if __name__ == "__main__":
    main()
