"""Send a media file (or a generated video) to the server in record mode, then download the recording.

Start a server (``fantasize-rtc serve``), then::

    python examples/record_file.py http://127.0.0.1:8080 --file talk.mp4 --out ./downloads
    python examples/record_file.py http://127.0.0.1:8080 --seconds 3      # generated video + tone

The peer joins a room with :class:`~fantasize_rtc.client.RtcClient`, offers its tracks with
``POST /rtc/offer`` (``mode: "record"``), streams for ``--seconds`` (or until the file ends),
ends the session with ``DELETE /rtc/sessions/{id}`` (which finalizes the file), and downloads
``GET /rtc/recordings/{id}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import math
import sys
from pathlib import Path
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaPlayer
from av import AudioFrame, VideoFrame

from fantasize_rtc.client import RtcClient


class MovingGray(VideoStreamTrack):
    """320x240 frames whose brightness changes every frame."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240)
        level = pts // 3000 % 200 + 16
        for plane in frame.planes:
            plane.update(bytes([level]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(MediaStreamTrack):
    """A 440 Hz tone, 20 ms mono frames at 48 kHz, paced in real time."""

    kind = "audio"
    rate, samples = 48_000, 960

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._pts / self.rate - loop.time()))
        pcm = b"".join(
            int(8000 * math.sin(2 * math.pi * 440 * (self._pts + i) / self.rate)).to_bytes(2, "little", signed=True)
            for i in range(self.samples)
        )
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self._pts, fractions.Fraction(1, self.rate)
        self._pts += self.samples
        return frame


async def record(url: str, file: str | None, seconds: float, fmt: str, out: Path) -> Path:
    async with RtcClient(url) as client:
        info = await client.connect("recordings", metadata={"example": "record_file"})
        ice = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in info["iceServers"]]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))  # explicit list: no public STUN wait
        player = MediaPlayer(file) if file else None
        try:
            tracks: list[MediaStreamTrack] = (
                [t for t in (player.audio, player.video) if t is not None] if player else [MovingGray(), Tone()]
            )
            ended = asyncio.Event()
            for track in tracks:
                pc.addTrack(track)
                track.on("ended", ended.set)  # the file ran out
            connected = asyncio.Event()
            pc.on("connectionstatechange", lambda: connected.set() if pc.connectionState == "connected" else None)

            await pc.setLocalDescription(await pc.createOffer())
            answer = await client.offer(pc.localDescription.sdp, "record", format=fmt)
            session_id = answer["sessionId"]
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await asyncio.wait_for(connected.wait(), 30)
            print(f"connected; recording session {session_id[:8]} for up to {seconds:g} s ...")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), seconds)

            await client.close_media_session(session_id)  # the server stops and finalizes the file
            report = await client.media_session(session_id)
        finally:
            await pc.close()
            if player is not None:
                for player_track in (player.audio, player.video):
                    if player_track is not None:
                        player_track.stop()
        saved: dict[str, Any] | None = report.get("recording", {}).get("saved")
        if not saved:
            raise SystemExit(f"the server saved no recording (session ended: {report.get('closeReason')})")
        path = await client.download_recording(saved["id"], out / f"{saved['id']}.{saved['format']}")
        print(f"saved {path} ({path.stat().st_size} bytes, {saved['duration']:.1f} s, {', '.join(saved['codecs'])})")
        await client.disconnect()
        return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument("--file", help="a media file to send (anything FFmpeg reads); default: generated")
    parser.add_argument("--seconds", type=float, default=5.0, help="longest time to record")
    parser.add_argument("--format", default="webm", choices=["webm", "mkv", "mp4"])
    parser.add_argument("--out", default=".", help="folder for the downloaded recording")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(record(args.url, args.file, args.seconds, args.format, Path(args.out)))
    sys.exit(0)
