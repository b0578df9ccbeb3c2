"""Forwarding benchmark (group calls through the server): CPU per forwarded stream, frame rate,
publisher -> subscriber latency, and how many forwarded streams one core carries.

One ``fantasize-rtc serve`` process, pinned to one core (the clients, all in this process, on the
other). Every client sends 640x480 30 fps VP8, pre-encoded once (``bench.media``'s test pattern),
each frame stamped with its number and send time in 12 bytes appended to it (forwarding does not
look inside frames: the stamp arrives as sent). Receivers count complete encoded frames without
decoding them and read the stamp, so the latencies are publisher -> server -> subscriber on
loopback, both aiortc stacks included.

Workloads, interleaved, in the same run:

- **passthrough echo x 4** (the baseline): four clients, ``POST /rtc/offer`` mode echo with
  ``passthrough: true``; each gets its own frames back. Per stream the server receives one and
  sends one: the cheapest per-stream path it had before forwarding.
- **room of 4 through ``@sfu``** (the issue's scenario): four members of one room, each
  publishing and receiving the other three: 4 streams in, 12 forwarded out.
- ``--capacity``: 1, 2, 3 ... rooms of 4 until a subscriber's frame rate falls under 29 fps (or
  the client side, one core, runs out first: its CPU is reported too).
- **late joiner** (``--late-joins N`` of each, alternating): three members publish; a fourth
  joins, and the time from its join (the snapshot before the offer included) to a first frame
  from each of the three is taken, with receive slots (the answer carries the three) and without
  (the baseline: a renegotiation once connected). The sources answer keyframe requests as an
  encoder does (they skip to their next GOP), so the time is the server's, not the GOP's.

    python -m bench sfu                     # 3 interleaved rounds, 10 s windows
    python -m bench sfu --capacity          # and the rooms-per-core sweep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bench._servers import free_port, plan_cores
from bench.media import PacketSource, Server, _CountingTap, encode_source, machine, serve_args, wait_until
from fantasize_rtc.call import GroupCall
from fantasize_rtc.client import RtcClient
from fantasize_rtc.media._aiortc_compat import forward_keyframe_requests, forward_promptly

RESULTS = Path(__file__).resolve().parent / "results"
STAMP = struct.Struct(">Id")  # frame number, time.perf_counter() when it was handed to the sender
MIN_FPS = 29.0


class StampedSource(PacketSource):
    """``PacketSource`` whose frames carry a stamp at their end."""

    async def recv(self) -> av.Packet:
        packet = await super().recv()
        stamped = av.Packet(bytes(packet) + STAMP.pack(self._n, time.perf_counter()))
        stamped.pts, stamped.time_base = packet.pts, packet.time_base
        return stamped


class Receiver:
    """What one peer connection receives: frames counted, latencies sampled."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.frames = 0
        self.latencies: list[float] = []
        self.firsts: dict[int, float] = {}  # id of a track -> when its first frame arrived
        self.sampling = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pc = pc
        pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self._pc.getTransceivers() if t.receiver.track is track)
        key = id(track)

        def arrived(data: bytes) -> None:
            self.firsts.setdefault(key, time.perf_counter())
            self.arrived(data)

        receiver._RTCRtpReceiver__decoder_queue = _CountingTap(arrived)  # type: ignore[attr-defined]
        # The instrument must not add latency of its own: each frame counts when it is complete,
        # not when the next one starts (aiortc's jitter buffer, made for a decoder).
        forward_promptly(receiver, track.kind)
        self._tasks.append(asyncio.get_running_loop().create_task(self._drain(track)))

    def arrived(self, data: bytes) -> None:
        self.frames += 1
        if self.sampling and len(data) > STAMP.size:
            _n, sent = STAMP.unpack_from(data, len(data) - STAMP.size)
            self.latencies.append((time.perf_counter() - sent) * 1000)

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class EchoClient:
    def __init__(self, packets: list[bytes]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(StampedSource(packets))
        self.receiver = Receiver(self.pc)
        self.session_id: str | None = None

    async def start(self, http: aiohttp.ClientSession, url: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "mode": "echo", "passthrough": True}
        async with http.post(url + "/rtc/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused: {answer}")
        self.session_id = answer["sessionId"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def close(self, http: aiohttp.ClientSession, url: str) -> None:
        if self.session_id:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{url}/rtc/sessions/{self.session_id}"):
                    pass
        await self.pc.close()
        await self.receiver.close()


class Member:
    """A room member: publishes the stamped source through ``@sfu``, receives the others."""

    def __init__(self, url: str, packets: list[bytes]) -> None:
        self.client = RtcClient(url, transport="ws", auto_heartbeat=False)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        source = StampedSource(packets)
        forward_keyframe_requests(self.pc.addTrack(source), source.request_keyframe)
        self.receiver = Receiver(self.pc)
        self.call = GroupCall(self.client, self.pc)
        self._pump: asyncio.Task[None] | None = None

    async def join(self, room: str, name: str, receive_slots: bool = True) -> None:
        await self.client.connect(room, name)
        self._pump = asyncio.get_running_loop().create_task(self._handle())
        await self.call.join(receive_slots=receive_slots)

    async def _handle(self) -> None:
        async for message in self.client.messages():
            await self.call.handle(message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call.leave()
        if self._pump is not None:
            self._pump.cancel()
        await self.pc.close()
        await self.receiver.close()
        await self.client.close()


async def _window(
    server: Server, receivers: list[Receiver], warmup: float, seconds: float, expected_tracks: int
) -> dict[str, Any]:
    await asyncio.sleep(warmup)
    for r in receivers:
        r.sampling, r.latencies = True, []
    cpu0, frames0, client0, t0 = server.cpu(), [r.frames for r in receivers], _self_cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, frames1, client1, t1 = server.cpu(), [r.frames for r in receivers], _self_cpu(), time.perf_counter()
    window = t1 - t0
    per_track = [(b - a) / window / expected_tracks for a, b in zip(frames0, frames1, strict=True)]
    latencies = sorted(x for r in receivers for x in r.latencies)
    return {
        "cpuPercentOfCore": round(100 * (cpu1 - cpu0) / window, 1),
        "clientCpuPercentOfCore": round(100 * (client1 - client0) / window, 1),
        "cpu": cpu1 - cpu0,
        "window": window,
        "fpsMean": round(statistics.mean(per_track), 1),
        "fpsMin": round(min(per_track), 1),
        "latencyP50Ms": round(statistics.median(latencies), 2) if latencies else None,
        "latencyP95Ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
    }


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure_echo(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], streams: int, args: Any
) -> dict[str, Any]:
    clients = [EchoClient(packets) for _ in range(streams)]
    try:
        await asyncio.gather(*(c.start(http, server.url) for c in clients))
        if not await wait_until(lambda: all(c.receiver.frames for c in clients), 30):
            return {"workload": "echo", "error": "not every stream echoed a frame in 30 s"}
        figures = await _window(server, [c.receiver for c in clients], args.warmup, args.seconds, 1)
    finally:
        await asyncio.gather(*(c.close(http, server.url) for c in clients), return_exceptions=True)
    forwarded = streams
    return {
        "workload": f"passthrough echo x {streams} (baseline)",
        "streamsOut": forwarded,
        "cpuMsPerStreamSecond": round(1000 * figures.pop("cpu") / (forwarded * figures.pop("window")), 2),
        **figures,
    }


async def measure_rooms(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], rooms: int, args: Any, tag: str
) -> dict[str, Any]:
    members = [Member(server.url, packets) for _ in range(rooms * 4)]
    try:
        for i, member in enumerate(members):
            await member.join(f"{tag}-{i // 4}", f"m{i % 4}")
        if not await wait_until(lambda: all(len(m.call.tracks) == 3 and m.receiver.frames for m in members), 30):
            return {"workload": f"{rooms} room(s) of 4", "error": "not every member received the others in 30 s"}
        figures = await _window(server, [m.receiver for m in members], args.warmup, args.seconds, 3)
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
    forwarded = rooms * 12
    return {
        "workload": f"{rooms} room(s) of 4 through @sfu",
        "streamsOut": forwarded,
        "cpuMsPerStreamSecond": round(1000 * figures.pop("cpu") / (forwarded * figures.pop("window")), 2),
        **figures,
    }


async def measure_late_join(server: Server, packets: list[bytes], slots: bool, room: str) -> dict[str, Any]:
    """Three members publish; a fourth joins: ms from its join to a first frame from each."""
    members = [Member(server.url, packets) for _ in range(3)]
    late = Member(server.url, packets)
    try:
        for i, member in enumerate(members):
            await member.join(room, f"m{i}")
        # A second of video each way first: the publishers' last keyframe requests (from these
        # joins) are then older than the server's rate limit, which would otherwise set the time.
        if not await wait_until(
            lambda: all(len(m.receiver.firsts) == 2 and m.receiver.frames >= 60 for m in members), 30
        ):
            return {"slots": slots, "error": "the three did not receive each other in 30 s"}
        started = time.perf_counter()
        await late.join(room, "late", receive_slots=slots)
        if not await wait_until(lambda: len(late.receiver.firsts) == 3, 30):
            return {"slots": slots, "error": "the late joiner did not receive the three in 30 s"}
        offers = late.call.offers
        return {"slots": slots, "ms": round((max(late.receiver.firsts.values()) - started) * 1000, 1), "offers": offers}
    finally:
        await asyncio.gather(*(m.close() for m in [*members, late]), return_exceptions=True)


def late_join_text(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| late joiner, 3 publishers | first frame from each, ms (median) | all runs | server offers answered first |",
        "|---|---|---|---|",
    ]
    medians: dict[bool, float] = {}
    for slots, name in ((False, "join, then renegotiation (baseline)"), (True, "receive slots in the answer")):
        mine = [r for r in runs if r["slots"] is slots and "error" not in r]
        errors = [r["error"] for r in runs if r["slots"] is slots and "error" in r]
        if not mine:
            lines.append(f"| {name} | {'; '.join(errors) or 'no run'} | | |")
            continue
        medians[slots] = statistics.median(r["ms"] for r in mine)
        all_runs = ", ".join(str(r["ms"]) for r in mine)
        offers = ", ".join(str(r["offers"]) for r in mine)
        lines.append(f"| {name} | {medians[slots]:.1f} | {all_runs} | {offers} |")
    text = "\n".join(lines)
    if len(medians) == 2:
        text += f"\n\nLate joiner's first frames, receive slots / renegotiation: {medians[True] / medians[False]:.2f}x"
    return text


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["cpuMsPerStreamSecond"])
    chosen = dict(good[len(good) // 2]) if good else dict(runs[0])
    chosen["runs"] = [r.get("cpuMsPerStreamSecond") for r in runs]
    return chosen


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | streams out | server CPU ms per stream-second (median; all runs) | server CPU, % of a core "
        "| fps per stream (mean, worst) | latency p50 / p95 ms | client CPU, % of a core |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['error']} | | | | | |")
            continue
        runs = ", ".join(str(x) for x in r.get("runs", [r["cpuMsPerStreamSecond"]]))
        lines.append(
            f"| {r['workload']} | {r['streamsOut']} | {r['cpuMsPerStreamSecond']} ({runs}) | {r['cpuPercentOfCore']} "
            f"| {r['fpsMean']}, {r['fpsMin']} | {r['latencyP50Ms']} / {r['latencyP95Ms']} | {r['clientCpuPercentOfCore']} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cores, client_cores = plan_cores() if args.pin else ([], [])
    if client_cores:
        os.sched_setaffinity(0, client_cores)
    packets = encode_source()
    port = free_port()
    server = Server(
        "fantasize-rtc",
        [sys.executable, "-m", "fantasize_rtc", *serve_args(port, args.event_loop)],
        port,
        "/rtc/offer",
        server_cores,
    )
    results: dict[str, list[dict[str, Any]]] = {"echo": [], "room": []}
    capacity: list[dict[str, Any]] = []
    late_joins: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        await server.start(http)
        try:
            for round_ in range(args.repeat):
                order = ("echo", "room") if round_ % 2 == 0 else ("room", "echo")
                for kind in order:
                    if kind == "echo":
                        row = await measure_echo(http, server, packets, 4, args)
                    else:
                        row = await measure_rooms(http, server, packets, 1, args, f"r{round_}")
                    results[kind].append(row)
                    print(json.dumps(row), flush=True)
                    await asyncio.sleep(1.0)
            for i in range(2 * args.late_joins):
                row = await measure_late_join(server, packets, slots=i % 2 == 1, room=f"late-{i}")
                late_joins.append(row)
                print(json.dumps(row), flush=True)
            if args.capacity:
                rooms = 1
                while rooms <= args.max_rooms:
                    row = await measure_rooms(http, server, packets, rooms, args, f"c{rooms}")
                    capacity.append(row)
                    print(json.dumps(row), flush=True)
                    if "error" in row or row["fpsMin"] < MIN_FPS:
                        break
                    rooms += 1
                    await asyncio.sleep(1.0)
        finally:
            server.stop()
    rows = [_median(results["echo"]), _median(results["room"])] if args.repeat else []
    text = table(rows)
    if rows and "error" not in rows[0] and "error" not in rows[1]:
        echo, room = rows
        text += (
            f"\n\nCPU per forwarded stream / passthrough echo's per stream: "
            f"{room['cpuMsPerStreamSecond'] / echo['cpuMsPerStreamSecond']:.2f}x (target <= 1.5x)"
        )
    if late_joins:
        text += "\n\n" + late_join_text(late_joins)
    if capacity:
        text += "\n\nCapacity (rooms of 4 added until a stream falls under 29 fps):\n\n" + table(capacity)
    return {"machine": machine(), "rows": rows, "lateJoins": late_joins, "capacity": capacity, "table": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sfu", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--capacity", action="store_true", help="add rooms of 4 until frames drop")
    parser.add_argument("--max-rooms", type=int, default=12)
    parser.add_argument("--late-joins", type=int, default=8, help="late joins of each kind (0: none)")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--event-loop", default="auto")
    parser.add_argument("--json", default=str(RESULTS / "sfu.json"))
    args = parser.parse_args(argv)
    out = asyncio.run(run(args))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    Path(args.json).with_suffix(".md").write_text(out["table"] + "\n")
    print(out["machine"])
    print(out["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
