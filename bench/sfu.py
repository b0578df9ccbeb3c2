"""Forwarding benchmark (group calls, WHIP -> WHEP): what the server spends per forwarded frame.

One ``fantasize-rtc serve`` process (pinned to one core, clients on the others). Two workloads,
interleaved, in the same run:

- **baseline: passthrough echo x N** (``POST /rtc/offer`` mode echo, ``passthrough: true``): N
  clients each send 640x480 30 fps VP8 and get it back. Per echoed frame the server receives
  one frame and sends one: the cheapest per-frame path the server had before forwarding.
- **forwarding 1 -> N**: one WHIP publisher (``POST /whip?mode=sfu``) sends the same video; N
  WHEP viewers (``POST /whep/{id}``) receive it. Per forwarded frame the server sends one
  frame; the publisher's receive is shared by the N.

Reported per N: server CPU % of a core, CPU ms per frame delivered to a client (echoed or
forwarded), the frame rate each client gets (mean, worst), and the ratio forwarding/echo of CPU
per delivered frame. Clients count complete encoded frames without decoding them (as in
``bench.media``), so the figures are the server's.

    python -m bench sfu                      # N = 1, 4, 8; 10 s windows; 3 interleaved rounds
    python -m bench sfu --viewers 1,2 --seconds 5 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bench._servers import free_port, plan_cores
from bench.media import PacketSource, Server, Stream, _CountingTap, encode_source, machine, serve_args, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
SDP = {"Content-Type": "application/sdp"}


class Viewer:
    """A WHEP viewer that counts the complete frames it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.frames = 0
        self.location: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        receiver._RTCRtpReceiver__decoder_queue = _CountingTap(self._arrived)  # type: ignore[attr-defined]
        self._tasks.append(asyncio.get_running_loop().create_task(self._drain(track)))

    def _arrived(self) -> None:
        self.frames += 1

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def connect(self, http: aiohttp.ClientSession, url: str, session_id: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(f"{url}/whep/{session_id}", data=self.pc.localDescription.sdp, headers=SDP) as resp:
            answer = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"WHEP refused: {resp.status} {answer}")
            self.location = resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self, http: aiohttp.ClientSession, url: str) -> None:
        if self.location:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(url + self.location):
                    pass
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _publish(http: aiohttp.ClientSession, url: str, packets: list[bytes]) -> tuple[RTCPeerConnection, str, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PacketSource(packets), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(f"{url}/whip?mode=sfu", data=pc.localDescription.sdp, headers=SDP) as resp:
        answer = await resp.text()
        if resp.status != 201:
            raise RuntimeError(f"WHIP refused: {resp.status} {answer}")
        location, session_id = resp.headers["Location"], resp.headers["X-Session-Id"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc, location, session_id


async def measure_forwarding(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], n: int, warmup: float, seconds: float
) -> dict[str, Any]:
    publisher, location, session_id = await _publish(http, server.url, packets)
    viewers = [Viewer() for _ in range(n)]
    try:

        async def live() -> bool:
            async with http.get(f"{server.url}/rtc/sessions/{session_id}") as resp:
                report = await resp.json()
            return bool(report.get("forwarding", {}).get("published")) and report["state"] == "connected"

        deadline = time.monotonic() + 20
        while not await live():
            if time.monotonic() > deadline:
                return {"workload": "forwarding", "clients": n, "error": "the publisher did not connect"}
            await asyncio.sleep(0.1)
        await asyncio.gather(*(v.connect(http, server.url, session_id) for v in viewers))
        if not await wait_until(lambda: all(v.frames for v in viewers), 30):
            return {"workload": "forwarding", "clients": n, "error": "not every viewer got a frame in 30 s"}
        await asyncio.sleep(warmup)
        cpu0, frames0, t0 = server.cpu(), [v.frames for v in viewers], time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, frames1, t1 = server.cpu(), [v.frames for v in viewers], time.perf_counter()
    finally:
        await asyncio.gather(*(v.close(http, server.url) for v in viewers), return_exceptions=True)
        with contextlib.suppress(aiohttp.ClientError):
            async with http.delete(server.url + location):
                pass
        await publisher.close()
    return _figures("forwarding 1 -> N (WHIP -> WHEP)", n, cpu1 - cpu0, t1 - t0, frames0, frames1)


async def measure_echo(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], n: int, warmup: float, seconds: float
) -> dict[str, Any]:
    streams = [Stream(packets) for _ in range(n)]
    try:
        await asyncio.gather(*(s.connect(http, server) for s in streams))
        if not await wait_until(lambda: all(s.first_frame_at for s in streams), 30):
            return {"workload": "echo", "clients": n, "error": "not every stream echoed a frame in 30 s"}
        await asyncio.sleep(warmup)
        cpu0, frames0, t0 = server.cpu(), [s.frames for s in streams], time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, frames1, t1 = server.cpu(), [s.frames for s in streams], time.perf_counter()
    finally:
        await asyncio.gather(*(s.close(http, server) for s in streams), return_exceptions=True)
    return _figures("passthrough echo x N (baseline)", n, cpu1 - cpu0, t1 - t0, frames0, frames1)


def _figures(
    workload: str, n: int, cpu: float, window: float, frames0: list[int], frames1: list[int]
) -> dict[str, Any]:
    fps = [(b - a) / window for a, b in zip(frames0, frames1, strict=True)]
    delivered = sum(frames1) - sum(frames0)
    return {
        "workload": workload,
        "clients": n,
        "cpuPercentOfCore": round(100 * cpu / window, 1),
        "cpuMsPerDeliveredFrame": round(1000 * cpu / delivered, 3) if delivered else None,
        "fpsMean": round(statistics.mean(fps), 1),
        "fpsMin": round(min(fps), 1),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["cpuMsPerDeliveredFrame"])
    chosen = dict(good[len(good) // 2]) if good else dict(runs[0])
    chosen["runs"] = [r.get("cpuMsPerDeliveredFrame") for r in runs]
    return chosen


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | clients | server CPU, % of a core | CPU ms per delivered frame (median; all runs) | fps (mean, worst) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['clients']} | {r['error']} | | |")
            continue
        runs = ", ".join(str(x) for x in r["runs"])
        lines.append(
            f"| {r['workload']} | {r['clients']} | {r['cpuPercentOfCore']} | {r['cpuMsPerDeliveredFrame']} ({runs}) "
            f"| {r['fpsMean']}, {r['fpsMin']} |"
        )
    ratios = []
    by = {(r["workload"].split()[0], r["clients"]): r for r in rows if "error" not in r}
    for (kind, n), r in sorted(by.items()):
        echo = by.get(("passthrough", n))
        if kind == "forwarding" and echo:
            ratios.append(
                f"- {n} client(s): forwarding/echo CPU per delivered frame "
                f"{r['cpuMsPerDeliveredFrame'] / echo['cpuMsPerDeliveredFrame']:.2f}x"
            )
    return "\n".join([*lines, "", *ratios])


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
        {"mode": "echo", "passthrough": True},
    )
    counts = [int(x) for x in args.viewers.split(",") if x]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    async with aiohttp.ClientSession() as http:
        await server.start(http)
        try:
            for round_ in range(args.repeat):
                for n in counts:
                    order = (
                        (measure_echo, measure_forwarding) if round_ % 2 == 0 else (measure_forwarding, measure_echo)
                    )
                    for measure in order:
                        row = await measure(http, server, packets, n, args.warmup, args.seconds)
                        results.setdefault((measure.__name__, n), []).append(row)
                        print(json.dumps(row), flush=True)
                        await asyncio.sleep(0.5)
        finally:
            server.stop()
    rows = [_median(runs) for _key, runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return {"machine": machine(), "rows": rows, "table": table(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sfu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,4,8", help="client counts (default 1,4,8)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
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
