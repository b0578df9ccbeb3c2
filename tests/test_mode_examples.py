"""The modes of examples/ (video_filter, audio_meter, datachannel_bot) run for real: aiortc
clients against the app with the example registered in a registry copy, asserting what the peer
gets back; and each example starts as ``python examples/<name>.py`` with its mode listed."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AUDIO_PTIME, VideoStreamTrack

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_KEY, modes
from tests.helpers import wait_for
from tests.media_helpers import AUDIO_RATE, client_peer, http_offer, wait_closed
from tests.test_examples import running

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


video_filter, audio_meter, datachannel_bot = load("video_filter"), load("audio_meter"), load("datachannel_bot")


@pytest.fixture
async def app_client(aiohttp_client: Any, config: RtcConfig) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    registry = modes.copy()
    for example in (video_filter, audio_meter, datachannel_bot):
        example.register(registry)
    client: TestClient = await aiohttp_client(create_app(config=config, modes=registry, static=False))  # type: ignore[type-arg]
    yield client
    await wait_closed(client.app[MEDIA_KEY])


def test_the_examples_register_only_into_the_registry_given() -> None:
    assert "filter" not in modes and "meter" not in modes and "bot" not in modes


class Halves(VideoStreamTrack):
    """160x120 frames, left half dark, right half bright: one strong vertical edge in the middle."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.full((120, 160, 3), 30, np.uint8)
        image[:, 80:] = 220
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def test_video_filter_sends_back_the_edges_of_what_it_gets(app_client: TestClient) -> None:  # type: ignore[type-arg]
    async with client_peer() as peer:
        peer.pc.addTrack(Halves())
        body = await http_offer(app_client, peer, mode="filter")
        await peer.wait_frames("video", 10)
        # the sender's first frames may be from before the encoder settled: look at a late one
        seen = peer.frames("video")
        await wait_for(lambda: peer.frames("video") >= seen + 5, 20, message="more filtered frames")
        echoed = peer.sinks["video"].last
        gray = echoed.to_ndarray(format="gray").astype(int)
        assert gray.shape == (120, 160)
        # the input is half dark (30) and half bright (220); its edges are dark but for the middle
        middle, elsewhere = gray[8:-8, 76:84], np.concatenate([gray[8:-8, 8:68], gray[8:-8, 92:-8]], axis=1)
        assert middle.max() > 120, middle.max()
        assert elsewhere.mean() < 25, elsewhere.mean()
        assert gray[8:-8, 92:-8].mean() < 60  # the bright half came back dark: filtered, not echoed
        expected = video_filter.edges(
            np.where(np.arange(160) < 80, 30, 220).astype(np.uint8)[np.newaxis].repeat(120, 0)
        )
        assert np.abs(gray[8:-8, 8:-8] - expected[8:-8, 8:-8].astype(int)).mean() < 12
        async with app_client.get(f"/rtc/sessions/{body['sessionId']}") as resp:
            report = await resp.json()
        assert report["mode"] == "filter" and report["stats"]["framesSent"]["video"] >= 10


class Level(MediaStreamTrack):
    """A 400 Hz stereo tone whose amplitude (0 to 1 of full scale) can change while it plays (stereo:
    aiortc's encoder would upmix mono to stereo at -3 dB)."""

    kind = "audio"

    def __init__(self, amplitude: float) -> None:
        super().__init__()
        self.amplitude = amplitude
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        import asyncio

        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += self._samples
            await asyncio.sleep(max(0.0, self._start + self._pts / AUDIO_RATE - loop.time()))
        t = (self._pts + np.arange(self._samples)) / AUDIO_RATE
        pcm = (self.amplitude * 32767 * np.sin(2 * np.pi * 400 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[np.newaxis], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self._pts, Fraction(1, AUDIO_RATE)
        return frame


async def test_audio_meter_tracks_a_loud_tone_then_silence(app_client: TestClient) -> None:  # type: ignore[type-arg]
    async with client_peer() as peer:
        tone = Level(0.5)  # a sine at half scale: RMS 0.354, -9.0 dBFS
        peer.pc.addTrack(tone)
        peer.open_channel("meter")
        body = await http_offer(app_client, peer, mode="meter")
        url = f"/rtc/sessions/{body['sessionId']}"

        async def meter() -> dict[str, Any]:
            async with app_client.get(url) as resp:
                return dict((await resp.json())["meter"])

        async def loud() -> bool:
            m = await meter()
            return bool(m["frames"] > 20 and -12 < m["dbfs"] < -6 and m["voice"])

        await wait_for(loud, 20, message="the meter to read the tone at about -9 dBFS")
        expected = 20 * math.log10(0.5 / math.sqrt(2))
        assert abs((await meter())["dbfs"] - expected) < 3
        # the data channel gets the same, every 200 ms
        await wait_for(lambda: any(json.loads(m)["type"] == "audio:level" for m in peer.messages), 20)
        said = [json.loads(m) for m in peer.messages]
        assert any(m["voice"] and -12 < m["dbfs"] < -6 for m in said), said[-3:]

        tone.amplitude = 0.0

        async def silent() -> bool:
            m = await meter()
            return bool(m["dbfs"] < -60 and not m["voice"])

        await wait_for(silent, 20, message="the meter to read silence")
        peer.messages.clear()
        await wait_for(lambda: peer.messages, 20, message="a level message during the silence")
        assert json.loads(peer.messages[-1])["voice"] is False


async def test_datachannel_bot_answers(app_client: TestClient) -> None:  # type: ignore[type-arg]
    async with client_peer() as peer:
        channel = peer.open_channel("bot")
        body = await http_offer(app_client, peer, mode="bot")
        await peer.wait_open()
        for text in ("help", "reverse stressed", "count", "dance"):
            channel.send(text)
        await wait_for(lambda: len(peer.messages) >= 4, 20, message="four answers")
        assert peer.messages[0].startswith("commands: help, time")
        assert peer.messages[1] == "desserts"
        assert peer.messages[2] == "3 messages so far"
        assert peer.messages[3].startswith("I do not know 'dance'")
        channel.send("time")
        await wait_for(lambda: len(peer.messages) >= 5, 20, message="the time")
        assert peer.messages[4].endswith("Z") and peer.messages[4][:2] == "20"
        async with app_client.get(f"/rtc/sessions/{body['sessionId']}") as resp:
            report = await resp.json()
        assert report["bot"] == {"answered": 5} and report["stats"]["dataMessages"] == 5


@pytest.mark.parametrize(
    ("script", "mode"), [("video_filter.py", "filter"), ("audio_meter.py", "meter"), ("datachannel_bot.py", "bot")]
)
async def test_each_example_runs_as_a_script_with_its_mode(script: str, mode: str) -> None:
    async with running(script, "--log-level", "warning") as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/rtc/modes") as resp:
            listed = [m["name"] for m in (await resp.json())["modes"]]
        assert mode in listed and "echo" in listed
        async with http.get(url + "/") as resp:
            assert resp.status == 200 and "<html" in (await resp.text()).lower()  # the demo page


def invert(gray: Any) -> Any:
    """At a module's top level, so a worker process can import it (transform_video in_process)."""
    return 255 - gray


async def test_transform_video_in_a_worker_process(aiohttp_client: Any, config: RtcConfig) -> None:
    from fantasize_rtc.media import Mode, transform_video

    class Invert(Mode):
        whip = False

        def on_track(self, session: Any, track: MediaStreamTrack) -> None:
            if track.kind == "video":
                transform_video(session, track, invert, format="gray", in_process=True)
            else:
                session.drain(track)

    registry = modes.copy()
    registry.register("invert", Invert)
    client = await aiohttp_client(create_app(config=config, modes=registry, static=False))
    async with client_peer() as peer:
        peer.pc.addTrack(Halves())
        await http_offer(client, peer, mode="invert")
        await peer.wait_frames("video", 10)  # the pool's first call starts a fresh interpreter
        seen = peer.frames("video")
        await wait_for(lambda: peer.frames("video") >= seen + 5, 20, message="more inverted frames")
        gray = peer.sinks["video"].last.to_ndarray(format="gray").astype(int)
        # dark (30) came back bright, bright (220) dark: luma of limited-range video, roughly inverted
        assert gray[8:-8, 8:68].mean() > 180 and gray[8:-8, 92:-8].mean() < 80, (
            gray[:, :80].mean(),
            gray[:, 80:].mean(),
        )
    assert client.app[MEDIA_KEY].workers.started
    await wait_closed(client.app[MEDIA_KEY])
