"""media/frames.py and media/workers.py: the conversions, numpy as an optional import, the worker
pools' lifecycle, and newest-frame reading under a mode slower than real time (real sessions)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import (
    MEDIA_KEY,
    MediaSession,
    Mode,
    VideoFrames,
    Workers,
    audio_to_ndarray,
    modes,
    ndarray_to_audio,
    ndarray_to_video,
    video_to_ndarray,
)
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer, wait_closed


def _yuv_frame(width: int = 64, height: int = 48) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for index, plane in enumerate(frame.planes):
        rows = plane.buffer_size // plane.line_size
        data = np.arange(plane.buffer_size, dtype=np.uint32).reshape(rows, plane.line_size) * (index + 1) % 251
        plane.update(data.astype(np.uint8).tobytes())
    frame.pts, frame.time_base = 4500, Fraction(1, 90000)
    return frame


def test_gray_is_the_y_plane_and_comes_back_with_its_timing() -> None:
    frame = _yuv_frame()
    gray = video_to_ndarray(frame, "gray")
    assert gray.shape == (48, 64) and gray.dtype == np.uint8
    # the Y plane as it is (no range stretching, as libswscale's gray would do)
    assert np.array_equal(gray, frame.to_ndarray()[:48])
    gray[0, 0] = 255 - gray[0, 0]  # a copy: the frame is not changed
    assert frame.to_ndarray()[0, 0] != gray[0, 0]
    back = ndarray_to_video(gray, like=frame)
    assert back.format.name == "yuv420p" and (back.pts, back.time_base) == (4500, Fraction(1, 90000))
    assert np.array_equal(video_to_ndarray(back, "gray"), gray)
    assert set(np.unique(back.to_ndarray()[48:])) == {128}  # grey chroma


def test_rgb_and_yuv_round_trips_and_float_results() -> None:
    frame = _yuv_frame()
    rgb = video_to_ndarray(frame)
    assert rgb.shape == (48, 64, 3)
    assert np.array_equal(video_to_ndarray(ndarray_to_video(rgb, like=frame), "rgb24"), rgb)
    yuv = video_to_ndarray(frame, "yuv420p")
    assert yuv.shape == (72, 64) and np.array_equal(
        video_to_ndarray(ndarray_to_video(yuv, format="yuv420p"), "yuv420p"), yuv
    )
    clipped = ndarray_to_video(np.full((48, 64), 300.0))
    assert video_to_ndarray(clipped, "gray").min() == 255
    with pytest.raises(ValueError, match="format must be one of"):
        video_to_ndarray(frame, "hsv")


def test_audio_pcm_both_ways() -> None:
    samples = np.arange(960, dtype=np.int16) * 30
    stereo = np.stack([samples, -samples])
    frame = ndarray_to_audio(stereo)
    assert (frame.format.name, frame.layout.name, frame.samples, frame.sample_rate) == ("s16", "stereo", 960, 48000)
    assert np.array_equal(audio_to_ndarray(frame), stereo)  # interleaved in the frame, channels x samples here
    floats = audio_to_ndarray(frame, "float32")
    assert floats.dtype == np.float32 and np.allclose(floats, stereo / 32768)
    planar = av.AudioFrame.from_ndarray(floats, format="fltp", layout="stereo")
    assert np.array_equal(audio_to_ndarray(planar), (floats * 32768).astype(np.int16))
    mono = ndarray_to_audio(np.zeros(480, np.float32), like=frame)
    assert mono.layout.name == "mono" and mono.samples == 480


def test_the_package_imports_without_numpy_and_the_helpers_say_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['numpy'] = None  # as if it were not installed\n"
        "import av\n"
        "from fantasize_rtc.media import VideoFrames, OutputTrack, video_to_ndarray\n"
        "from fantasize_rtc.app import create_app\n"
        "create_app()\n"
        "try:\n"
        "    video_to_ndarray(av.VideoFrame(16, 16, 'yuv420p'))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install numpy" in out.stdout, out.stdout + out.stderr


def _pid() -> int:
    return os.getpid()


async def test_workers_run_off_the_loop_and_shut_down() -> None:
    workers = Workers(threads=2, processes=1)
    assert not workers.started
    loop_thread = threading.get_ident()
    assert await workers.run_in_thread(threading.get_ident) != loop_thread
    assert await workers.run_in_process(_pid) != os.getpid()
    with pytest.raises(ZeroDivisionError):
        await workers.run_in_thread(lambda: 1 / 0)
    assert any(t.name.startswith("fantasize-mode") for t in threading.enumerate())
    await workers.close()
    assert not any(t.name.startswith("fantasize-mode") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shut down"):
        await workers.run_in_thread(time.time)
    await workers.close()  # twice is fine


class SlowReader(Mode):
    """Takes 0.2 s per video frame (in a worker thread): four to six of the sender's 30 fps go by."""

    def __init__(self) -> None:
        self.frames: VideoFrames | None = None
        self.yielded: list[int] = []

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            return session.drain(track)
        self.frames = VideoFrames(session, track)
        session.spawn(self._read(session, self.frames), "slow")

    async def _read(self, session: MediaSession, frames: VideoFrames) -> None:
        async for frame in frames:
            self.yielded.append(frame.pts or 0)
            await session.workers.run_in_thread(time.sleep, 0.2)


@pytest.fixture
async def slow_client(aiohttp_client: Any, config: RtcConfig) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    registry = modes.copy()
    registry.register("slow", SlowReader)
    client: TestClient = await aiohttp_client(create_app(config=config, modes=registry, static=False))  # type: ignore[type-arg]
    yield client
    await wait_closed(client.app[MEDIA_KEY])


async def test_video_frames_yield_the_newest_and_count_the_dropped(slow_client: TestClient) -> None:  # type: ignore[type-arg]
    async with client_peer() as peer:
        peer.add_media(audio=False)
        body = await http_offer(slow_client, peer, mode="slow")
        manager = slow_client.app[MEDIA_KEY]
        session = manager.sessions()[0]
        mode = session.mode
        assert isinstance(mode, SlowReader)
        await wait_for(lambda: len(mode.yielded) >= 6, 20, message="six frames read slowly")
        frames = mode.frames
        assert frames is not None
        # every frame was read off the track; the ones the mode had no time for were dropped
        assert frames.received >= frames.dropped + len(mode.yielded) - 1 >= frames.dropped > 10
        # and the next frame it got was the newest, not the next in line: ~0.2 s apart, not 1/30 s
        gaps = [b - a for a, b in zip(mode.yielded[2:], mode.yielded[3:], strict=False)]
        assert min(gaps) >= 0.1 * 90000, gaps
        assert session.frames["video"] == frames.received  # the report counts what was received
        async with slow_client.delete(f"/rtc/sessions/{body['sessionId']}") as resp:
            assert resp.status == 200
        await wait_for(lambda: frames.ended, 10, message="the reader to end with the session")
