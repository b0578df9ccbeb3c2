"""Two aiortc peers find each other through a running fantasize-rtc server and talk peer to peer.

Start a server (``fantasize-rtc serve``), then::

    python examples/two_peers.py http://127.0.0.1:8080

Alice and Bob join a room with :class:`~fantasize_rtc.client.RtcClient`. Alice, already in the
room when Bob arrives, offers; Bob answers; both trickle their ICE candidates as ``candidate``
signals. Then they exchange a data channel message and video frames directly, not through the
server. Exits 0 when both got the other's message and ``--frames`` video frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

from fantasize_rtc.client import RtcClient, split_candidates


class MovingGray(VideoStreamTrack):
    """A small synthetic video: 320x240 frames whose brightness changes every frame."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240)
        level = pts // 3000 % 200 + 16
        for plane in frame.planes:
            plane.update(bytes([level]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


class Peer:
    """One side: a signaling client plus an RTCPeerConnection, and what it received."""

    def __init__(self, name: str, url: str, room: str, frames_wanted: int) -> None:
        self.name, self.room = name, room
        self.client = RtcClient(url)
        self.pc: RTCPeerConnection | None = None
        self.frames = 0
        self.frames_wanted = frames_wanted
        self.message: str | None = None
        self.done = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def join(self) -> None:
        info = await self.client.connect(self.room, self.name)
        ice = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in info["iceServers"]]
        # An explicit (possibly empty) list: without one aiortc waits on a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.pc.addTrack(MovingGray())

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._count_frames(track))

        @self.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            self._listen(channel)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _listen(self, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self.message = message if isinstance(message, str) else message.decode()
            if channel.label == "chat" and self.name == "bob":
                channel.send(f"hello from {self.name}")  # answer alice's greeting
            self._check()

    async def _count_frames(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):  # the other side hung up
            while True:
                await track.recv()  # every received track must be read, or it piles up
                self.frames += 1
                self._check()

    def _check(self) -> None:
        if self.message and self.frames >= self.frames_wanted:
            self.done.set()

    async def send_description(self, to: str) -> None:
        """Send our description without candidates, then trickle each one, then end-of-candidates."""
        assert self.pc is not None and self.pc.localDescription is not None
        sdp, candidates = split_candidates(self.pc.localDescription.sdp)
        kind = self.pc.localDescription.type
        await self.client.signal({"type": kind, "payload": {"sdp": sdp}}, to=to)
        for candidate in candidates:
            await self.client.signal({"type": "candidate", "payload": candidate}, to=to)
        await self.client.signal({"type": "candidate", "payload": None}, to=to)

    async def offer_to(self, other: str) -> None:
        assert self.pc is not None
        channel = self.pc.createDataChannel("chat")
        self._listen(channel)
        channel.on("open", lambda: channel.send(f"hello from {self.name}"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_description(other)

    async def handle(self, message: dict[str, Any]) -> None:
        """Apply one signaling message (in order: a candidate never comes before its description)."""
        assert self.pc is not None
        if message["type"] != "signal":
            return
        signal, sender = message["signal"], message["fromPeerId"]
        if signal["type"] in ("offer", "answer"):
            await self.pc.setRemoteDescription(RTCSessionDescription(signal["payload"]["sdp"], signal["type"]))
            if signal["type"] == "offer":
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.send_description(sender)
        elif signal["type"] == "candidate":
            payload = signal["payload"]
            if payload is None:
                await self.pc.addIceCandidate(None)
                return
            candidate = candidate_from_sdp(payload["candidate"].split(":", 1)[1])
            candidate.sdpMid, candidate.sdpMLineIndex = payload.get("sdpMid"), payload.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)

    async def run(self, offer_to_newcomers: bool) -> None:
        async for message in self.client.messages():
            if message["type"] == "peer:connected" and offer_to_newcomers:
                await self.offer_to(message["peer"]["peerId"])
            await self.handle(message)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.pc is not None:
            await self.pc.close()
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        await self.client.close()


async def main(url: str, room: str = "two-peers", frames: int = 30, timeout: float = 30) -> bool:
    alice, bob = Peer("alice", url, room, frames), Peer("bob", url, room, frames)
    try:
        await alice.join()  # alice is in the room first, so she offers when bob arrives
        await bob.join()
        loops = [asyncio.ensure_future(alice.run(True)), asyncio.ensure_future(bob.run(False))]
        try:
            await asyncio.wait_for(asyncio.gather(alice.done.wait(), bob.done.wait()), timeout)
            ok = True
        except asyncio.TimeoutError:
            ok = False
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for peer in (alice, bob):
            state = peer.pc.connectionState if peer.pc else "none"
            print(f"{peer.name}: connection {state}, got {peer.message!r} and {peer.frames} video frames")
        return ok
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument("--room", default="two-peers")
    parser.add_argument("--frames", type=int, default=30, help="video frames each side must receive")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.url, args.room, args.frames, args.timeout)) else 1)
