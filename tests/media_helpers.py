"""Client-side helpers for the media tests: real aiortc peers with small synthetic tracks."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
from collections.abc import AsyncIterator
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AUDIO_PTIME, MediaStreamError, VideoStreamTrack

from tests.helpers import wait_for

AUDIO_RATE = 48000


class SmallVideo(VideoStreamTrack):
    """A 160x120 moving grey ramp: cheap to encode, yet not a constant image."""

    def __init__(self, width: int = 160, height: int = 120) -> None:
        super().__init__()
        self.width, self.height = width, height
        self._ramp = bytes(range(256)) * (1 + (width * height) // 256 + 1)
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        offset = (self._n * 3) % 256
        self._n += 1
        y = self._ramp[offset : offset + self.width * self.height]
        frame.planes[0].update(y)
        chroma = bytes([128]) * (frame.planes[1].buffer_size)
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(MediaStreamTrack):
    """A 400 Hz tone, 20 ms frames of 48 kHz mono s16 (paced in real time)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        import math
        from array import array

        samples = int(AUDIO_RATE * AUDIO_PTIME)
        wave = array("h", (int(8000 * math.sin(2 * math.pi * 400 * i / AUDIO_RATE)) for i in range(samples)))
        self._data = wave.tobytes()
        self._samples = samples
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += self._samples
            wait = self._start + self._pts / AUDIO_RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._data)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


class Sink:
    """Consumes a received track, counting frames and keeping the last one."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames = 0
        self.last: Any = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.last = await self.track.recv()
            except MediaStreamError:
                return
            self.frames += 1

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class ClientPeer:
    """An aiortc peer as a test client: tracks out, sinks for tracks in, data channel helpers."""

    def __init__(self, ice_servers: list[RTCIceServer] | None = None, **config: Any) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or [], **config))
        self.sinks: dict[str, Sink] = {}
        self.messages: list[Any] = []
        self.channel: RTCDataChannel | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.sinks[track.kind] = Sink(track)

    def add_media(self, audio: bool = True, video: bool = True, width: int = 160, height: int = 120) -> None:
        if audio:
            self.pc.addTrack(Tone())
        if video:
            self.pc.addTrack(SmallVideo(width, height))

    def receive_only(self, audio: bool = True, video: bool = True) -> None:
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if video:
            self.pc.addTransceiver("video", direction="recvonly")

    def open_channel(self, label: str = "echo") -> RTCDataChannel:
        channel = self.pc.createDataChannel(label)
        self.channel = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            self.messages.append(message)

        return channel

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def frames(self, kind: str) -> int:
        sink = self.sinks.get(kind)
        return sink.frames if sink else 0

    async def wait_frames(self, kind: str, count: int, timeout: float = 20.0) -> None:
        await wait_for(lambda: self.frames(kind) >= count, timeout, message=f"{count} {kind} frames")

    async def wait_open(self, timeout: float = 20.0) -> None:
        await wait_for(
            lambda: self.channel is not None and self.channel.readyState == "open",
            timeout,
            message="the data channel to open",
        )

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.stop()
        await self.pc.close()


@contextlib.asynccontextmanager
async def client_peer(**kwargs: Any) -> AsyncIterator[ClientPeer]:
    peer = ClientPeer(**kwargs)
    try:
        yield peer
    finally:
        await peer.close()


async def http_offer(
    client: Any, peer: ClientPeer, mode: str = "echo", token: str | None = None, **options: Any
) -> dict[str, Any]:
    """``POST /rtc/offer`` with the peer's offer; applies the answer; returns the JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.post(
        "/rtc/offer", json={"sdp": await peer.offer(), "type": "offer", "mode": mode, **options}, headers=headers
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["type"] == "answer" and body["sessionId"]
    await peer.accept(body["sdp"])
    return dict(body)


def _fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed while we looked
            continue
    return targets


def udp_sockets() -> int:
    """UDP sockets this process holds (ICE opens them; a refused offer must not)."""
    inodes: set[str] = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except FileNotFoundError:
            continue
    return sum(1 for target in _fd_targets() if target.startswith("socket:[") and target[8:-1] in inodes)


def other_fds() -> int:
    """Open file descriptors that are not sockets (files, pipes, event fds)."""
    return sum(1 for target in _fd_targets() if not target.startswith("socket:["))


async def wait_closed(manager: Any, timeout: float = 20.0) -> None:
    await wait_for(lambda: len(manager) == 0, timeout, message="every media session to close")


def encode_vp8(count: int, gop: int = 15) -> list[bytes]:
    """``count`` VP8 frames of a moving picture, a keyframe every ``gop``."""
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 160, 120, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.gop_size = gop
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[bytes] = []
    for i in range(count):
        frame = av.VideoFrame(160, 120, "yuv420p")
        frame.planes[0].update(bytes((i * 7 + x) % 256 for x in range(frame.planes[0].buffer_size)))
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts = i
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


class EncodedVideo(MediaStreamTrack):
    """Sends pre-encoded VP8 frames at 30 fps, so what was sent is known to the byte."""

    kind = "video"

    def __init__(self, frames: list[bytes]) -> None:
        super().__init__()
        self._frames = frames
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._n / 30 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        packet = av.Packet(self._frames[self._n % len(self._frames)])
        packet.pts = self._n * 3000
        packet.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return packet
