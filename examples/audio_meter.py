"""A mode of your own: your audio level (dBFS) and voice activity, live on the data channel and in
the session report.

    pip install numpy            # or: pip install 'fantasize-rtc-server[modes]'
    python examples/audio_meter.py [--port 8080 ...]     # any `fantasize-rtc serve` flag

Offer audio (and, to hear back, a data channel) to the mode "meter": every 200 ms each open
channel gets ``{"type": "audio:level", "dbfs": -23.5, "peakDbfs": -17.1, "voice": true}``, and
``GET /rtc/sessions/{id}`` has the same under ``"meter"``. Voice activity here is the simplest
kind: the level above -50 dBFS within the last 300 ms (a tone counts as voice; a real detector
would look at the spectrum too).

One 20 ms frame's arithmetic takes microseconds, so it runs on the event loop; anything heavier
(a model, an FFT of seconds of audio) belongs in ``await session.workers.run_in_thread(...)``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel

from fantasize_rtc.media import AudioFrames, MediaSession, Mode, ModeRegistry, audio_to_ndarray, modes

FLOOR_DBFS = -100.0
VOICE_DBFS = -50.0
HANGOVER_FRAMES = 15  # 300 ms of 20 ms frames
REPORT_EVERY = 10  # frames: 200 ms


def dbfs(value: float) -> float:
    return round(max(FLOOR_DBFS, 20 * math.log10(value)) if value > 0 else FLOOR_DBFS, 1)


class AudioMeter(Mode):
    """reports your audio level (dBFS) and voice activity on the data channel and in the session report"""

    def __init__(self) -> None:
        self.level = self.peak = FLOOR_DBFS
        self.frames = 0
        self._loud_ago = HANGOVER_FRAMES  # frames since the level was last above VOICE_DBFS
        self.channels: list[RTCDataChannel] = []

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            session.spawn(self._measure(AudioFrames(session, track)), "meter")
        else:
            session.drain(track)

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        self.channels.append(channel)

    async def _measure(self, frames: AudioFrames) -> None:
        async for frame in frames:
            pcm = audio_to_ndarray(frame, "float32")
            self.level, self.peak = dbfs(float(np.sqrt(np.mean(pcm**2)))), dbfs(float(np.abs(pcm).max()))
            self._loud_ago = 0 if self.level > VOICE_DBFS else self._loud_ago + 1
            self.frames += 1
            if self.frames % REPORT_EVERY == 0:
                message = json.dumps({"type": "audio:level", **self.report()["meter"]})
                for channel in self.channels:
                    if channel.readyState == "open":
                        channel.send(message)

    def report(self) -> dict[str, Any]:
        voice = self._loud_ago < HANGOVER_FRAMES
        return {"meter": {"dbfs": self.level, "peakDbfs": self.peak, "voice": voice, "frames": self.frames}}


def register(registry: ModeRegistry = modes) -> None:
    registry.register("meter", AudioMeter)


if __name__ == "__main__":
    from fantasize_rtc.cli import main

    register()
    sys.exit(main(["serve", *sys.argv[1:]]))
