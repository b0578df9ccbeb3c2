"""Media benchmark: our echo (``POST /rtc/offer`` mode echo) against a plain aiortc ``MediaRelay``
echo server (the approach of aiortc's ``examples/server``), in the same run on the same machine.
Our echo runs twice: as it is by default (decode + re-encode, like the baseline) and with
``passthrough: true`` (encoded frames sent back as they are; ``--no-passthrough`` skips it).
``--modes`` adds a server running no-op numpy modes built with ``fantasize_rtc.media.frames``
(decode, ``video_to_ndarray``, ``ndarray_to_video``, re-encode; rgb24 and yuv420p arrays): what
a mode of your own costs over the transcoding echo (issue 17).

    python -m bench.media                       # 1, 2, 4 streams, 10 s windows, 10 latency runs
    python -m bench.media --streams 1,2 --seconds 5 --json out.json

Per server and stream count it reports the server's CPU seconds per stream-second (utime+stime
of the server process over the window), the echoed frame rate each client receives (mean and
worst stream), and separately the time from sending the offer to the first echoed frame (p50,
p95 over sequential single-stream sessions). Sources are 640x480 30 fps VP8, pre-encoded once
(a moving test pattern) and sent as packets, so the clients spend no CPU encoding; the servers
decode and re-encode as in real use. Both servers get an empty ICE server list (the aiortc
example's default public STUN server would only add a gathering wait) and, when ``taskset``
exists and there are at least two cores, the server runs pinned to one core and the clients to
the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from bench._servers import free_port, plan_cores
from fantasize_rtc.media.play import PatternVideoTrack

log = logging.getLogger("bench.media")

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
WIDTH, HEIGHT, FPS = 640, 480, 30
SOURCE_FRAMES = 90  # 3 s loop, a keyframe every second
VIDEO_CLOCK = 90000


# -- the baseline server: aiortc's examples/server approach ---------------------------------------


def run_baseline_server(port: int) -> None:
    """``POST /offer`` -> answer; every received track goes back through a ``MediaRelay``."""
    relay = MediaRelay()
    pcs: set[RTCPeerConnection] = set()

    async def offer(request: web.Request) -> web.Response:
        params = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                pcs.discard(pc)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            @channel.on("message")
            def on_message(message: Any) -> None:
                channel.send(message)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(relay.subscribe(track))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pcs": len(pcs)})

    async def on_shutdown(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in list(pcs)))

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", health)
    app.on_shutdown.append(on_shutdown)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- a server with no-op numpy modes (--modes) -----------------------------------------------------


def _same(image: Any) -> Any:
    return image


def serve_args(port: int, event_loop: str) -> list[str]:
    """``fantasize-rtc serve`` as every server under test here runs: room for many sessions from
    one address, quiet logs."""
    return [
        "serve",
        "--port",
        str(port),
        "--max-media-sessions",
        "64",
        "--max-anonymous-sessions-per-address",
        "0",
        "--log-level",
        "warning",
        "--event-loop",
        event_loop,
    ]


def run_modes_server(port: int, event_loop: str) -> int:
    """``fantasize-rtc serve`` with two more modes: every received video frame through
    :func:`~fantasize_rtc.media.transform_video` with a function that returns its array as it is
    (``noop-rgb``: rgb24 arrays, ``noop-yuv``: yuv420p arrays, no colour conversion)."""
    from fantasize_rtc.cli import main as serve_main
    from fantasize_rtc.media import MediaSession, Mode, modes, transform_video

    def noop(format: str) -> type[Mode]:
        class Noop(Mode):
            def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
                if track.kind == "video":
                    transform_video(session, track, _same, format=format)
                else:
                    session.drain(track)

        return Noop

    modes.register("noop-rgb", noop("rgb24"), description="no-op numpy mode, rgb24 arrays")
    modes.register("noop-yuv", noop("yuv420p"), description="no-op numpy mode, yuv420p arrays")
    return serve_main(serve_args(port, event_loop))


# -- servers under test ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Server:
    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        offer_path: str,
        cores: list[int],
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.port, self.offer_path = name, port, offer_path
        self.extra = extra or {}  # added to every offer request
        if cores:
            cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'server'}"}
        return subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# -- clients --------------------------------------------------------------------------------------


def encode_source() -> list[bytes]:
    """The test pattern, encoded once as VP8 (keyframe every second) for passthrough sending."""
    pattern = PatternVideoTrack(WIDTH, HEIGHT, FPS)
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = Fraction(1, FPS)
    codec.framerate = Fraction(FPS, 1)
    codec.bit_rate = 1_000_000
    codec.gop_size = FPS
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "kf-max-dist": str(FPS)}
    packets: list[bytes] = []
    for n in range(SOURCE_FRAMES):
        frame = pattern.frame(n)
        frame.pts, frame.time_base = n, Fraction(1, FPS)
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    return packets[:SOURCE_FRAMES]


class PacketSource(MediaStreamTrack):
    """Sends pre-encoded packets in a loop at a fixed rate (aiortc packetizes them without
    encoding): VP8 at 30 fps by default; ``kind="audio", rate=50, clock=48000`` for 20 ms of Opus."""

    def __init__(self, packets: list[bytes], kind: str = "video", rate: int = FPS, clock: int = VIDEO_CLOCK) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._rate, self._ticks = rate, clock // rate
        self._time_base = Fraction(1, clock)
        self._n = 0
        self._shift = 0  # packets skipped to start a GOP early (request_keyframe)
        self._keyframe_next = False
        self._start: float | None = None

    def request_keyframe(self) -> None:
        """Make the next video frame a keyframe, as an encoder does on a PLI: the loop skips to the
        start of its next GOP (the test pattern has a keyframe every ``FPS`` packets)."""
        self._keyframe_next = self.kind == "video"

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._n += 1
            wait = self._start + self._n / self._rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        if self._keyframe_next:
            self._keyframe_next = False
            self._shift += -(self._n + self._shift) % FPS
        packet = av.Packet(self._packets[(self._n + self._shift) % len(self._packets)])
        packet.pts, packet.time_base = self._n * self._ticks, self._time_base
        return packet


class _CountingTap(queue.Queue[Any]):
    """Stands in for a client receiver's decoder queue: hands each complete encoded frame's bytes
    to ``arrived`` instead of decoding it."""

    def __init__(self, arrived: Callable[[bytes], None]) -> None:
        super().__init__()
        self._arrived = arrived

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None)  # lets the idle decoder thread end
        else:
            self._arrived(item[1].data)


class Stream:
    """One client: sends the source, counts echoed frames, notes when the first one came."""

    decode = False  # --decode: clients decode the echo (as a browser would) instead of counting frames

    def __init__(self, packets: list[bytes]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(PacketSource(packets))
        self.frames = 0
        self.offer_at = 0.0
        self.first_frame_at: float | None = None
        self.session_id: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.decode:
            self._tasks.append(asyncio.get_running_loop().create_task(self._count(track)))
            return
        # Count complete encoded frames as the jitter buffer hands them to the decoder, without
        # decoding: the clients then cost little, and the figures are the server's.
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        receiver._RTCRtpReceiver__decoder_queue = _CountingTap(self._frame_arrived)
        self._tasks.append(asyncio.get_running_loop().create_task(self._drain(track)))

    def _frame_arrived(self, _data: bytes) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()
        self.frames += 1

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def _count(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if self.first_frame_at is None:
                self.first_frame_at = time.perf_counter()
            self.frames += 1

    async def connect(self, http: aiohttp.ClientSession, server: Server) -> None:
        self.offer_at = time.perf_counter()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        body.update(server.extra)
        async with http.post(server.url + server.offer_path, json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{server.name}: offer refused: {answer}")
        self.session_id = answer.get("sessionId")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def report(self, http: aiohttp.ClientSession, server: Server) -> dict[str, Any] | None:
        if not self.session_id:
            return None
        async with http.get(f"{server.url}/rtc/sessions/{self.session_id}") as resp:
            return dict(await resp.json()) if resp.status == 200 else None

    @property
    def first_frame_ms(self) -> float | None:
        return None if self.first_frame_at is None else (self.first_frame_at - self.offer_at) * 1000

    async def close(self, http: aiohttp.ClientSession, server: Server) -> None:
        if self.session_id:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{server.url}/rtc/sessions/{self.session_id}"):
                    pass
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def measure_streams(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], n: int, warmup: float, seconds: float
) -> dict[str, Any]:
    streams = [Stream(packets) for _ in range(n)]
    try:
        await asyncio.gather(*(s.connect(http, server) for s in streams))
        if not await wait_until(lambda: all(s.first_frame_at for s in streams), 30):
            return {"server": server.name, "streams": n, "error": "not every stream echoed a frame in 30 s"}
        await asyncio.sleep(warmup)
        cpu0, frames0, t0 = server.cpu(), [s.frames for s in streams], time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, frames1, t1 = server.cpu(), [s.frames for s in streams], time.perf_counter()
        reports = [await s.report(http, server) for s in streams]
    finally:
        await asyncio.gather(*(s.close(http, server) for s in streams), return_exceptions=True)
    window = t1 - t0
    fps = [(b - a) / window for a, b in zip(frames0, frames1, strict=True)]
    echoed = sum(frames1) - sum(frames0)
    server_side: dict[str, Any] = {}
    if all(reports):
        # our server reports what it decoded and re-sent over the whole session
        server_side = {
            "serverFramesReceived": sum(r["stats"]["framesReceived"]["video"] for r in reports if r),
            "serverFramesSent": sum(r["stats"]["framesSent"]["video"] for r in reports if r),
        }
    return {
        "server": server.name,
        "streams": n,
        "cpuPerStreamSecond": round((cpu1 - cpu0) / (n * window), 4),
        "cpuPercentOfCore": round(100 * (cpu1 - cpu0) / window, 1),
        "fpsMean": round(statistics.mean(fps), 1),
        "fpsMin": round(min(fps), 1),
        "cpuMsPerEchoedFrame": round(1000 * (cpu1 - cpu0) / echoed, 2) if echoed else None,
        **server_side,
        "firstFrameMs": [round(s.first_frame_ms or 0, 1) for s in streams],
    }


async def measure_latency(
    http: aiohttp.ClientSession, server: Server, packets: list[bytes], runs: int
) -> dict[str, Any]:
    samples: list[float] = []
    for _ in range(runs):
        stream = Stream(packets)
        try:
            await stream.connect(http, server)
            if await wait_until(lambda s=stream: s.first_frame_at is not None, 20):  # type: ignore[misc]
                samples.append(stream.first_frame_ms or 0.0)
        finally:
            await stream.close(http, server)
        await asyncio.sleep(0.2)  # let the server finish closing before the next one
    if not samples:
        return {"server": server.name, "error": "no echoed frame"}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "server": server.name,
        "runs": len(samples),
        "p50Ms": round(statistics.median(ordered), 1),
        "p95Ms": round(p95, 1),
        "samplesMs": [round(x, 1) for x in samples],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of repeated runs, the one with the median server CPU per stream-second, the figure the
    targets compare (all runs kept under "runs"; the frame rates say whether a run kept up)."""
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["cpuPerStreamSecond"])
    chosen = dict(good[len(good) // 2]) if good else dict(runs[0])
    if len(runs) > 1:
        chosen["runs"] = runs
    return chosen


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "loadavg": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "av": av.__version__,
    }


def table(results: list[dict[str, Any]], latency: list[dict[str, Any]]) -> str:
    lines = [
        "| server | streams | CPU s per stream-s | CPU ms per echoed frame | server CPU % of a core"
        " | echoed fps mean | worst stream fps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['server']} | {r['streams']} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['server']} | {r['streams']} | {r['cpuPerStreamSecond']:.3f} | {r['cpuMsPerEchoedFrame']} | "
            f"{r['cpuPercentOfCore']} | "
            f"{r['fpsMean']} | {r['fpsMin']} |"
        )
    lines += ["", "| server | offer -> first echoed frame p50 | p95 | runs |", "|---|---|---|---|"]
    for r in latency:
        if "error" in r:
            lines.append(f"| {r['server']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['server']} | {r['p50Ms']} ms | {r['p95Ms']} ms | {r['runs']} |")
    return "\n".join(lines)


def mode_ratios(results: list[dict[str, Any]]) -> list[str]:
    """Lines saying what each no-op numpy mode costs per stream-second against the transcoding
    echo with the same stream count (medians of the same run)."""
    echo = {r["streams"]: r for r in results if r["server"] == "fantasize-rtc echo" and "error" not in r}
    lines = []
    for r in results:
        base = echo.get(r["streams"])
        if r["server"].startswith("no-op numpy mode") and "error" not in r and base and base["cpuPerStreamSecond"]:
            ratio = r["cpuPerStreamSecond"] / base["cpuPerStreamSecond"]
            lines.append(
                f"{r['server']}, {r['streams']} stream(s): {r['cpuPerStreamSecond']:.4f} vs echo "
                f"{base['cpuPerStreamSecond']:.4f} CPU s per stream-s = {ratio:.2f}x"
            )
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cores, client_cores = plan_cores() if args.pin else ([], [])
    if client_cores:
        os.sched_setaffinity(0, client_cores)
    packets = encode_source()
    counts = [int(x) for x in args.streams.split(",") if x]
    ours = Server(
        "fantasize-rtc echo",
        [
            sys.executable,
            "-m",
            "fantasize_rtc",
            *serve_args(free_port(), args.event_loop),
        ],
        0,
        "/rtc/offer",
        server_cores,
        {"mode": "echo"},
    )
    ours.port = int(ours.cmd[ours.cmd.index("--port") + 1])
    passthrough = Server(
        "fantasize-rtc echo, passthrough", ours.cmd, ours.port, "/rtc/offer", [], {"mode": "echo", "passthrough": True}
    )
    passthrough.cmd = ours.cmd  # same server, same pinning; only the offer option differs
    base_port = free_port()
    baseline = Server(
        "aiortc MediaRelay echo (baseline)",
        [sys.executable, "-m", "bench.media", "--baseline-server", "--port", str(base_port)],
        base_port,
        "/offer",
        server_cores,
    )
    servers: tuple[Server, ...] = (baseline, ours, passthrough) if args.passthrough else (baseline, ours)
    if args.modes:
        modes_port = free_port()
        modes_cmd = [
            sys.executable,
            "-m",
            "bench.media",
            "--modes-server",
            "--port",
            str(modes_port),
            "--event-loop",
            args.event_loop,
        ]
        servers = (
            *servers,
            *(
                Server(
                    f"no-op numpy mode ({fmt} arrays)",
                    modes_cmd,
                    modes_port,
                    "/rtc/offer",
                    server_cores,
                    {"mode": name},
                )
                for name, fmt in (("noop-rgb", "rgb24"), ("noop-yuv", "yuv420p"))
            ),
        )
    if args.udp_port:
        # The same two echoes with every session on one UDP port (the mux): what the mux costs.
        mux_cmd = [*ours.cmd, "--udp-port", str(args.udp_port)]
        mux = Server("fantasize-rtc echo, one UDP port", [], ours.port, "/rtc/offer", [], {"mode": "echo"})
        mux.cmd = mux_cmd
        mux_passthrough = Server(
            "fantasize-rtc echo, passthrough, one UDP port",
            [],
            ours.port,
            "/rtc/offer",
            [],
            {"mode": "echo", "passthrough": True},
        )
        mux_passthrough.cmd = mux_cmd
        servers = (*servers, mux, *((mux_passthrough,) if args.passthrough else ()))
    results: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for server in servers:
            await server.start(http)
            try:
                latency.append(await measure_latency(http, server, packets, args.latency_runs))
                log.info("%s latency: %s", server.name, latency[-1])
            finally:
                server.stop()
        for n in counts:
            runs: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
            for _ in range(args.repeat):
                # interleave: the machine's other load hits both servers alike
                for server in servers:
                    await server.start(http)
                    try:
                        runs[server.name].append(
                            await measure_streams(http, server, packets, n, args.warmup, args.seconds)
                        )
                        log.info("%s", runs[server.name][-1])
                    finally:
                        server.stop()
            results.extend(median_run(r) for r in runs.values())
    return {
        "machine": {**machine(), "serverCores": server_cores, "clientCores": client_cores},
        "settings": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "seconds": args.seconds, "warmup": args.warmup},
        "streams": results,
        "latency": latency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench media", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,2,4", help="stream counts to measure (default 1,2,4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of echo before measuring")
    parser.add_argument("--latency-runs", type=int, default=10, help="sequential sessions for first-frame latency")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench" / "results" / "media.json",
        help="where to write the raw results (default bench/results/media.json)",
    )
    parser.add_argument(
        "--no-passthrough",
        dest="passthrough",
        action="store_false",
        help="skip our echo with passthrough: true (encoded frames sent back as they are)",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="clients decode the echoed video (costs client CPU) instead of counting frames",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per server and stream count (median reported)")
    parser.add_argument(
        "--udp-port",
        type=int,
        default=0,
        help="also run our echo (and passthrough) with every session on this one UDP port (--udp-port)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and clients to cores")
    parser.add_argument("--event-loop", default="auto", help="our server's --event-loop (auto, uvloop, asyncio)")
    parser.add_argument(
        "--modes",
        action="store_true",
        help="also run no-op numpy modes made with fantasize_rtc.media.frames (rgb24 and yuv420p arrays)",
    )
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modes-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        run_baseline_server(args.port)
        return 0
    if args.modes_server:
        return run_modes_server(args.port, args.event_loop)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    Stream.decode = args.decode
    data = asyncio.run(run(args))
    m = data["machine"]
    print(
        f"\nmachine: {m['nproc']} cores, {m['cpu']}, load {' '.join(m['loadavg'])}, {m['date']}; "
        f"server on cores {m['serverCores'] or 'any'}, clients on {m['clientCores'] or 'any'}\n"
    )
    print(table(data["streams"], data["latency"]))
    for line in mode_ratios(data["streams"]):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
        (args.json.with_suffix(".md")).write_text(table(data["streams"], data["latency"]) + "\n")
        print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
