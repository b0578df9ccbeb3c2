"""Probe and play modes against real aiortc client peers."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from fantasize_rtc.media import MEDIA_KEY
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer


async def test_probe_reports_pair_timings_and_verdict_on_the_data_channel(client: TestClient) -> None:  # type: ignore[type-arg]
    async with client_peer() as peer:
        peer.add_media(audio=False)
        peer.open_channel("probe")
        body = await http_offer(client, peer, "probe", probeSeconds=1)
        await wait_for(lambda: peer.messages, 30, message="the probe report")
        message = json.loads(peer.messages[0])
        assert message["type"] == "probe:report"
        report = message["report"]
        assert report["sessionId"] == body["sessionId"] and report["mode"] == "probe"
        pair = report["candidatePair"]
        assert pair["local"]["type"] == "host" and pair["remote"]["type"] == "host"
        assert pair["local"]["protocol"] == "udp"
        assert report["verdict"].startswith("connected directly over UDP in ")
        timings = report["timings"]
        for key in ("iceGatheringMs", "iceConnectionMs", "dtlsMs", "connectMs"):
            assert isinstance(timings[key], int) and timings[key] >= 0, (key, timings)
        assert report["rttMs"] is not None and report["rttMs"] >= 0
        assert report["stats"]["packetsReceived"] > 0 and report["stats"]["framesReceived"]["video"] > 0
        assert report["stats"]["lossPercent"] >= 0
        assert report["probe"]["state"] == "done"
        same = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert same["candidatePair"] == pair and same["probe"]["state"] == "done"
        assert same["probe"]["sentTo"] == ["datachannel:probe"]


async def test_play_delivers_decodable_video_and_audio(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.receive_only()
        body = await http_offer(client, peer, "play", width=160, height=120, fps=15)
        await peer.wait_frames("video", 10)
        await peer.wait_frames("audio", 10)
        frame = peer.sinks["video"].last
        assert (frame.width, frame.height) == (160, 120)
        audio = peer.sinks["audio"].last
        assert audio.sample_rate == 48000
        # the tone is not silence
        assert max(memoryview(bytes(audio.planes[0])).cast("h")) > 1000
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["stats"]["framesSent"]["video"] >= 10
    await wait_for(lambda: len(manager) == 0, 20, message="the session to end when the client hangs up")
