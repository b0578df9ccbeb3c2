"""Play mode: the server sends a generated test video and a tone, to test the receive direction.

The video is a moving diagonal ramp with a white box sweeping across and the frame number in
big digits at the top left (so a viewer sees motion and can read frame loss); the audio is a
400 Hz tone. Both are made with plain bytes (no numpy) and paced in real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from fractions import Fraction
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel
from aiortc.mediastreams import MediaStreamError

from .session import MediaSession, Mode

__all__ = ["PatternVideoTrack", "PlayMode", "ToneAudioTrack"]

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms
TONE_HZ = 400  # 960 samples hold exactly 8 periods: frames repeat seamlessly

# 3x5 bitmap digits, one string of 15 bits per digit (row by row).
_DIGITS = (
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001001001001",
    "111101111101111",
    "111101111001111",
)


class _Paced:
    """Real-time pacing: the n-th frame is due at start + n * period."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.count = 0
        self._start: float | None = None

    async def next(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self.count += 1
            wait = self._start + self.count * self.period - now
            if wait > 0:
                await asyncio.sleep(wait)
        return self.count


class PatternVideoTrack(MediaStreamTrack):
    """``width`` x ``height`` at ``fps``: moving ramp, sweeping box, frame counter."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._pace = _Paced(1 / fps)
        period = 256
        self._ramp = bytes((x * 2) % 256 for x in range(width + period + height))
        self._period = period
        self._chroma = bytes([128]) * ((width // 2) * (height // 2))
        self._scale = max(1, height // 40)

    def _luma(self, n: int) -> bytearray:
        w, h = self.width, self.height
        shift = (n * 4) % self._period
        ramp = self._ramp
        y = bytearray(b"".join(ramp[shift + row : shift + row + w] for row in range(h)))
        # a white box sweeping left to right
        box = max(8, h // 6)
        bx = (n * 6) % max(1, w - box)
        by = (h - box) // 2
        white = b"\xeb" * box
        for row in range(by, by + box):
            y[row * w + bx : row * w + bx + box] = white
        # the frame number, black on white, top left
        s = self._scale
        digits = str(n)
        pad_w = (len(digits) * 4 + 1) * s
        for row in range(7 * s):
            y[row * w : row * w + min(pad_w, w)] = b"\xeb" * min(pad_w, w)
        dark = b"\x10" * s
        for i, ch in enumerate(digits):
            bits = _DIGITS[ord(ch) - 48]
            x0 = (1 + i * 4) * s
            for r in range(5):
                for c in range(3):
                    if bits[r * 3 + c] == "1" and x0 + (c + 1) * s <= w:
                        for dy in range(s):
                            off = ((1 + r) * s + dy) * w + x0 + c * s
                            y[off : off + s] = dark
        return y

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return self.frame(await self._pace.next())

    def frame(self, n: int) -> av.VideoFrame:
        """Frame number ``n`` (no pacing): also used to pre-encode benchmark sources."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        frame.planes[0].update(self._luma_plane(frame, n))
        frame.planes[1].update(self._chroma_plane(frame))
        frame.planes[2].update(self._chroma_plane(frame))
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame

    def _luma_plane(self, frame: av.VideoFrame, n: int) -> bytes:
        data = self._luma(n)
        line = frame.planes[0].line_size
        if line == self.width:
            return bytes(data)
        pad = b"\x00" * (line - self.width)  # planes may be padded to an aligned line size
        return b"".join(bytes(data[r * self.width : (r + 1) * self.width]) + pad for r in range(self.height))

    def _chroma_plane(self, frame: av.VideoFrame) -> bytes:
        return bytes([128]) * frame.planes[1].buffer_size


class ToneAudioTrack(MediaStreamTrack):
    """A 400 Hz tone, 48 kHz mono, 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        wave = array("h", (int(6000 * math.sin(2 * math.pi * TONE_HZ * i / AUDIO_RATE)) for i in range(AUDIO_SAMPLES)))
        self._data = wave.tobytes()
        self._pace = _Paced(AUDIO_SAMPLES / AUDIO_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = await self._pace.next()
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._data)
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * AUDIO_SAMPLES
        frame.time_base = Fraction(1, AUDIO_RATE)
        return frame


class CountingTrack(MediaStreamTrack):
    """Counts what the session sends (for its report)."""

    def __init__(self, source: MediaStreamTrack, session: MediaSession) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._session = session

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self._session.frames_sent[self.kind] = self._session.frames_sent.get(self.kind, 0) + 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class PlayMode(Mode):
    """Options: ``audio`` / ``video`` (default true), ``width``, ``height``, ``fps`` (default 640x480 at 30)."""

    name = "play"
    whip = False  # it only sends; a WHIP client only sends too

    async def after_remote_description(self, session: MediaSession) -> None:
        pc = session.pc
        assert pc is not None
        options = session.options
        for transceiver in pc.getTransceivers():
            # Send on every audio/video m-line of the offer (its direction decides if we may).
            if transceiver.sender.track is not None:
                continue
            if transceiver.kind == "video" and options.video:
                source: MediaStreamTrack = PatternVideoTrack(options.width, options.height, options.fps)
            elif transceiver.kind == "audio" and options.audio:
                source = ToneAudioTrack()
            else:
                continue
            transceiver.sender.replaceTrack(CountingTrack(source, session))
            transceiver.direction = "sendrecv" if transceiver.receiver.track is not None else "sendonly"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1
