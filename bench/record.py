"""Recording benchmark: what a recorded stream costs the server, passthrough against transcoding,
in the same run on the same machine.

    python -m bench record                      # 1 stream, 5 interleaved rounds, 10 s windows
    python -m bench record --streams 1,2 --repeat 5 --json out.json

Our server (``fantasize-rtc serve``, one process) records N clients (``POST /rtc/offer``, mode
``record``, format ``webm``) two ways: as it does by default (passthrough: the received VP8 is
muxed as it came) and with ``passthrough: false`` (decoded and encoded again: the recorder as it
was before passthrough). Clients send 640x480 30 fps VP8, a moving test pattern encoded once and
sent as packets (a keyframe every second), like ``bench.media``; with ``--audio`` also Opus
(20 ms packets, encoded once). Per way and stream count: the server's CPU seconds (utime + stime
of its process) per stream-second over a window after a warm-up, the video frames per second
the recorder wrote (from the session report), and the recorded file's duration. The two ways run
in interleaved rounds (so the machine's other load hits both alike); each figure is the median
of the rounds, and the ratio is passthrough's median over transcoding's. With ``taskset`` and at
least two cores, the server runs pinned to one core and the clients to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from bench._servers import free_port, plan_cores
from bench.media import PacketSource, Server, encode_source, machine

log = logging.getLogger("bench.record")

ROOT = Path(__file__).resolve().parent.parent
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms
WAYS = {"transcoding": {"passthrough": False}, "passthrough": {}}


def encode_audio() -> list[bytes]:
    """One second of a 440 Hz tone as Opus packets (20 ms each), encoded once."""
    import math

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = AUDIO_RATE, "stereo", "s16"
    codec.time_base = Fraction(1, AUDIO_RATE)
    packets: list[bytes] = []
    for n in range(AUDIO_RATE // AUDIO_SAMPLES):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_SAMPLES)
        samples = bytearray()
        for i in range(AUDIO_SAMPLES):
            value = int(8000 * math.sin(2 * math.pi * 440 * (n * AUDIO_SAMPLES + i) / AUDIO_RATE))
            samples += value.to_bytes(2, "little", signed=True) * 2
        frame.planes[0].update(bytes(samples))
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, n * AUDIO_SAMPLES, Fraction(1, AUDIO_RATE)
        packets.extend(bytes(p) for p in codec.encode(frame))
    return packets


class Recording:
    """One client whose media the server records."""

    def __init__(self, video: list[bytes], audio: list[bytes] | None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(PacketSource(video))
        if audio is not None:
            self.pc.addTrack(PacketSource(audio, kind="audio", rate=AUDIO_RATE // AUDIO_SAMPLES, clock=AUDIO_RATE))
        self.session_id: str | None = None

    async def connect(self, http: aiohttp.ClientSession, server: Server) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **server.extra}
        async with http.post(server.url + "/rtc/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{server.name}: offer refused: {answer}")
        self.session_id = answer["sessionId"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def report(self, http: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
        async with http.get(f"{server.url}/rtc/sessions/{self.session_id}") as resp:
            return dict(await resp.json())

    async def close(self, http: aiohttp.ClientSession, server: Server) -> None:
        if self.session_id:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{server.url}/rtc/sessions/{self.session_id}"):
                    pass
        await self.pc.close()


def written(report: dict[str, Any]) -> int:
    return int(report["recording"]["framesWritten"].get("video", 0))


async def measure(
    http: aiohttp.ClientSession,
    server: Server,
    video: list[bytes],
    audio: list[bytes] | None,
    n: int,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    clients = [Recording(video, audio) for _ in range(n)]
    try:
        await asyncio.gather(*(c.connect(http, server) for c in clients))
        deadline = time.monotonic() + 30
        while not all([written(await c.report(http, server)) for c in clients]):
            if time.monotonic() > deadline:
                return {"way": server.name, "streams": n, "error": "not every stream was written within 30 s"}
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        before = [written(await c.report(http, server)) for c in clients]
        cpu0, t0 = server.cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, t1 = server.cpu(), time.perf_counter()
        reports = [await c.report(http, server) for c in clients]
    finally:
        await asyncio.gather(*(c.close(http, server) for c in clients), return_exceptions=True)
    window = t1 - t0
    fps = [(written(r) - b) / window for r, b in zip(reports, before, strict=True)]
    passthrough = reports[0]["recording"]["passthrough"]
    return {
        "way": server.name,
        "streams": n,
        "cpuPerStreamSecond": round((cpu1 - cpu0) / (n * window), 4),
        "cpuPercentOfCore": round(100 * (cpu1 - cpu0) / window, 1),
        "writtenFpsMean": round(statistics.mean(fps), 1),
        "writtenFpsMin": round(min(fps), 1),
        "passthrough": passthrough,
        "recordings": [r["recording"]["id"] for r in reports],
    }


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def saved_durations(folder: Path, ids: list[str]) -> list[float | None]:
    """The duration each recording's sidecar says, once the server finished it."""
    out: list[float | None] = []
    for recording_id in ids:
        sidecar = folder / f"{recording_id}.json"
        out.append(round(json.loads(sidecar.read_text())["duration"], 2) if sidecar.exists() else None)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cores, client_cores = plan_cores() if args.pin else ([], [])
    if client_cores:
        os.sched_setaffinity(0, client_cores)
    load_at_start = loadavg()
    video = encode_source()
    audio = encode_audio() if args.audio else None
    counts = [int(x) for x in args.streams.split(",") if x]
    folder = Path(tempfile.mkdtemp(prefix="bench-record-"))
    port = free_port()
    cmd = [
        sys.executable, "-m", "fantasize_rtc", "serve", "--port", str(port),
        "--recordings-dir", str(folder), "--max-media-sessions", "64",
        "--max-anonymous-sessions-per-address", "0", "--log-level", "warning", "--event-loop", args.event_loop,
    ]  # fmt: skip
    servers = [
        Server(way, cmd, port, "/rtc/offer", server_cores, {"mode": "record", **extra}) for way, extra in WAYS.items()
    ]
    for server in servers[1:]:
        server.cmd = servers[0].cmd  # the same server, pinned the same way; only the offer differs
    results: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as http:
            for n in counts:
                runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
                for _ in range(args.repeat):
                    for server in servers:  # interleaved: the machine's other load hits both alike
                        await server.start(http)
                        try:
                            result = await measure(http, server, video, audio, n, args.warmup, args.seconds)
                        finally:
                            server.stop()  # SIGTERM: every recording is finalized first
                        result["durations"] = saved_durations(folder, result.pop("recordings", []))
                        runs[server.name].append(result)
                        log.info("%s", result)
                        empty(folder)  # keep the folder small between runs
                results.append(summarize(n, runs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "machine": {
            **machine(),
            "loadavgAtStart": load_at_start,
            "serverCores": server_cores,
            "clientCores": client_cores,
        },
        "settings": {
            "width": 640,
            "height": 480,
            "fps": 30,
            "audio": bool(args.audio),
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.repeat,
            "format": "webm",
        },
        "results": results,
    }


def summarize(n: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(way: str) -> float | None:
        values = [r["cpuPerStreamSecond"] for r in runs[way] if "error" not in r]
        return round(statistics.median(values), 4) if values else None

    transcoding, passthrough = median("transcoding"), median("passthrough")
    return {
        "streams": n,
        "transcodingCpuPerStreamSecond": transcoding,
        "passthroughCpuPerStreamSecond": passthrough,
        "ratio": round(passthrough / transcoding, 3) if transcoding and passthrough is not None else None,
        "runs": runs,
    }


def table(data: dict[str, Any]) -> str:
    lines = [
        "| streams | transcoding: CPU s per stream-s (median) | passthrough (median) | ratio "
        "| written fps (transcoding; passthrough) |",
        "|---|---|---|---|---|",
    ]
    for row in data["results"]:
        fps = "; ".join(
            ", ".join(f"{r.get('writtenFpsMin', '-')}" for r in row["runs"][way])
            for way in ("transcoding", "passthrough")
        )
        lines.append(
            f"| {row['streams']} | {row['transcodingCpuPerStreamSecond']} | {row['passthroughCpuPerStreamSecond']} "
            f"| {row['ratio']} | {fps} |"
        )
    lines += ["", "| streams | way | CPU s per stream-s, each round | recorded durations (s) |", "|---|---|---|---|"]
    for row in data["results"]:
        for way in ("transcoding", "passthrough"):
            rounds = row["runs"][way]
            cpu = ", ".join(str(r.get("cpuPerStreamSecond", r.get("error"))) for r in rounds)
            durations = ", ".join("/".join(str(d) for d in r.get("durations", [])) for r in rounds)
            lines.append(f"| {row['streams']} | {way} | {cpu} | {durations} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench record", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1", help="stream counts to measure (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of recording before measuring")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (medians reported; default 5)")
    parser.add_argument("--audio", action="store_true", help="clients send Opus too (recorded with the video)")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench" / "results" / "record.json",
        help="where to write the raw results (default bench/results/record.json, and .md beside it)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and clients to cores")
    parser.add_argument("--event-loop", default="auto", help="our server's --event-loop (auto, uvloop, asyncio)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    data = asyncio.run(run(args))
    m = data["machine"]
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}, load {' '.join(m['loadavgAtStart'])} at the start, "
        f"{' '.join(m['loadavg'])} at the end, {m['date']}; "
        f"server on cores {m['serverCores'] or 'any'}, clients on {m['clientCores'] or 'any'}\n"
    )
    print(table(data))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
        args.json.with_suffix(".md").write_text(table(data) + "\n")
        print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
