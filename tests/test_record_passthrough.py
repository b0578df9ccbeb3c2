"""Recording without transcoding: a real aiortc client's encoded frames go into the file as they
were received (VP8 + Opus into WebM, H.264 into MP4 and MKV), starting on a keyframe, with the
right duration, and the file decodes completely with PyAV. A recording in progress is listed and
grows, and what is downloaded meanwhile plays."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from fantasize_rtc.media import MEDIA_KEY, RECORDING_SAVED
from fantasize_rtc.media import _aiortc_compat as compat
from fantasize_rtc.media.record import is_keyframe
from tests.helpers import wait_for
from tests.media_helpers import ClientPeer, client_peer, http_offer

ADMIN = {"Authorization": "Bearer admin-secret"}


def decode_all(path: Path) -> dict[str, Any]:
    """Every packet of the file decoded: frames per kind, the first video packet, the duration a
    player reads, and whether each stream's timestamps only went up."""
    frames = {"audio": 0, "video": 0}
    first_video: bytes | None = None
    first_video_keyframe = False
    monotonic = True
    last: dict[str, float] = {}
    with av.open(str(path)) as container:
        codecs = {s.type: s.codec_context.name for s in container.streams}
        duration = container.duration / 1_000_000 if container.duration is not None else None
        for packet in container.demux():
            kind = packet.stream.type
            if packet.pts is None:
                continue
            at = float(packet.pts * packet.time_base)
            monotonic = monotonic and at > last.get(kind, -1.0)
            last[kind] = at
            if kind == "video" and first_video is None:
                first_video, first_video_keyframe = bytes(packet), packet.is_keyframe
            frames[kind] += len(packet.decode())  # raises on a frame the decoder cannot take
    return {
        "codecs": codecs,
        "frames": frames,
        "duration": duration,
        "first_video": first_video,
        "first_video_keyframe": first_video_keyframe,
        "monotonic": monotonic,
    }


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def prefer_video_codec(peer: ClientPeer, mime: str) -> None:
    capabilities = RTCRtpSender.getCapabilities("video")
    for transceiver in peer.pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType == mime])


async def listed(client: TestClient, session_id: str) -> dict[str, Any] | None:  # type: ignore[type-arg]
    resp = await client.get("/rtc/recordings", headers=ADMIN)
    assert resp.status == 200
    return next((r for r in (await resp.json())["recordings"] if r["sessionId"] == session_id), None)


async def test_vp8_and_opus_go_into_webm_as_received_while_the_listing_grows(
    client: TestClient,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record")  # webm, passthrough by default
        sid = body["sessionId"]
        session = manager.sessions()[0]
        # listed from the start, as "recording"; it grows as clusters are written
        first = await wait_for(lambda: listed(client, sid), 10, message="the recording in the listing")
        assert first["state"] == "recording" and first["complete"] is False and first["closeReason"] is None
        grown = await wait_for(
            lambda: _at_least(client, sid, 1.5), 20, interval=0.1, message="the listed recording to grow to 1.5 s"
        )
        assert grown["size"] > 0
        later = await wait_for(
            lambda: _at_least(client, sid, grown["duration"] + 1.0, larger_than=grown["size"]),
            20,
            interval=0.1,
            message="the listing to grow again",
        )
        report = await (await client.get(f"/rtc/sessions/{sid}")).json()
        assert report["recording"]["passthrough"] == {"audio": True, "video": True}
        # what is downloaded while it is written plays, up to about where it was
        resp = await client.get(later["url"], headers=ADMIN)
        assert resp.status == 200 and resp.headers["Content-Type"] == "video/webm"
        partial = tmp_path / "partial.webm"
        partial.write_bytes(await resp.read())
        growing = decode_all(partial)
        assert growing["frames"]["video"] >= 20 and growing["frames"]["audio"] >= 30, growing["frames"]
        assert growing["first_video_keyframe"] and growing["monotonic"]
        await wait_for(lambda: session.frames["video"] >= 150, 20, message="5 s of video")
        assert (await client.delete(f"/rtc/sessions/{sid}")).status == 200
    event = await wait_for(lambda: saved, 20, message="recording:saved")
    report = await (await client.get(f"/rtc/sessions/{sid}")).json()
    result = decode_all(Path(event[0].path))
    assert result["codecs"] == {"audio": "opus", "video": "vp8"}
    assert result["first_video_keyframe"] and is_keyframe("VP8", result["first_video"])
    assert result["monotonic"]
    written = report["recording"]["framesWritten"]
    # every frame written decodes (the decoder may hold back the last audio frame of the file)
    assert result["frames"]["video"] == written["video"] and result["frames"]["audio"] >= written["audio"] - 1
    session_seconds = report["durationMs"] / 1000
    assert abs(result["duration"] - session_seconds) <= 0.5, (result["duration"], session_seconds)
    entry = await listed(client, sid)
    assert entry is not None and entry["state"] == "complete" and entry["complete"] is True
    assert entry["duration"] == pytest.approx(result["duration"], abs=0.01)


async def _at_least(
    client: TestClient,  # type: ignore[type-arg]
    session_id: str,
    seconds: float,
    larger_than: int = 0,
) -> dict[str, Any] | None:
    entry = await listed(client, session_id)
    if entry and entry["state"] == "recording" and entry["duration"] >= seconds and entry["size"] > larger_than:
        return entry
    return None


@pytest.mark.parametrize(("fmt", "audio"), [("mp4", "aac"), ("mkv", "opus")])
async def test_h264_goes_into_mp4_and_mkv_as_received(client: TestClient, fmt: str, audio: str) -> None:  # type: ignore[type-arg]
    """MP4 keeps AAC (Opus is transcoded), MKV takes Opus as it is."""
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.add_media()
        prefer_video_codec(peer, "video/H264")
        body = await http_offer(client, peer, "record", format=fmt)
        session = manager.sessions()[0]
        await wait_for(lambda: session.mode.recorder.frames["video"] >= 60, 20, message="2 s of video written")
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["recording"]["passthrough"] == {"audio": audio == "opus", "video": True}
        assert (await client.delete(f"/rtc/sessions/{body['sessionId']}")).status == 200
    event = await wait_for(lambda: saved, 20, message="recording:saved")
    report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
    result = decode_all(Path(event[0].path))
    assert result["codecs"] == {"audio": audio, "video": "h264"}
    assert result["first_video_keyframe"] and result["monotonic"]
    assert result["frames"]["video"] == report["recording"]["framesWritten"]["video"]
    session_seconds = report["durationMs"] / 1000
    assert abs(result["duration"] - session_seconds) <= 0.5, (result["duration"], session_seconds)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"passthrough": False}, {"audio": False, "video": False}),  # asked for
        ({"format": "mp4"}, {"audio": False, "video": False}),  # VP8 and Opus do not go into MP4 as they are
    ],
    ids=["passthrough-false", "vp8-into-mp4"],
)
async def test_transcoding_when_asked_or_when_the_container_needs_it(
    client: TestClient,  # type: ignore[type-arg]
    options: dict[str, Any],
    expected: dict[str, bool],
) -> None:
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record", **options)
        session = manager.sessions()[0]
        await wait_for(lambda: session.mode.recorder.frames["video"] >= 5, 20, message="frames written")
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["recording"]["passthrough"] == expected
        # transcoding decodes: the session's received tracks are read as decoded frames
        assert all(session.mode.recorder._tracks.get(k) is not None for k in ("audio", "video"))


async def test_passthrough_falls_back_to_transcoding_on_an_unchecked_aiortc(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compat, "AIORTC_CHECKED", False)
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record")
        session = manager.sessions()[0]
        await wait_for(lambda: session.mode.recorder.frames["video"] >= 20, 20, message="frames written")
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["recording"]["passthrough"] == {"audio": False, "video": False}
        assert (await client.delete(f"/rtc/sessions/{body['sessionId']}")).status == 200
    event = await wait_for(lambda: saved, 20, message="recording:saved")
    assert decode_all(Path(event[0].path))["frames"]["video"] >= 20


# -- keyframes -------------------------------------------------------------------------------------

CLIP = 90  # frames: 3 s at 30 fps, one keyframe (the first)


def encode_clip() -> list[bytes]:
    """160x120 VP8 with a keyframe only at the start (the peer's encoder never sends another
    unless asked)."""
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 160, 120, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.gop_size = 10_000
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "kf-max-dist": "10000"}
    out: list[bytes] = []
    for n in range(CLIP):
        frame = av.VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(n * 5 + plane.line_size) % 256]) * plane.buffer_size)
        frame.pts = n
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    assert is_keyframe("VP8", out[0]) and not any(is_keyframe("VP8", p) for p in out[1:])
    return out[:CLIP]


class MidStreamVideo(MediaStreamTrack):
    """Pre-encoded VP8 that starts in the middle (delta frames only), like a sender whose first
    keyframe was lost, and sends its keyframe (then the rest, in order) once one is requested."""

    kind = "video"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self.packets = packets
        self.keyframe_requested = asyncio.Event()
        self.keyframes_sent = 0
        self._next = 1
        self._n = 0
        self._start: float | None = None

    def request_keyframe(self) -> None:
        self.keyframe_requested.set()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._n += 1
            delay = self._start + self._n / 30 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.keyframe_requested.is_set():
            self.keyframe_requested.clear()
            self._next = 0
        index = self._next % len(self.packets)  # past the end: the clip again, from its keyframe
        self._next += 1
        if index == 0:
            self.keyframes_sent += 1
        packet = av.Packet(self.packets[index])
        packet.pts, packet.time_base = self._n * 3000, fractions.Fraction(1, 90000)
        return packet


async def test_a_passthrough_recording_starts_on_a_keyframe_it_asked_for(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    source = MidStreamVideo(await asyncio.to_thread(encode_clip))
    async with client_peer() as peer:
        sender = peer.pc.addTrack(source)
        # the client's sender hands the server's keyframe requests (RTCP PLI) to the source
        assert compat.forward_keyframe_requests(sender, source.request_keyframe)
        body = await http_offer(client, peer, "record", audio=False)
        session = manager.sessions()[0]
        await wait_for(lambda: source.keyframes_sent >= 1, 20, message="the server to ask for a keyframe")
        await wait_for(lambda: session.mode.recorder.frames["video"] >= 45, 20, message="1.5 s written")
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["recording"]["framesDropped"] >= 1  # the delta frames before the keyframe
        assert (await client.delete(f"/rtc/sessions/{body['sessionId']}")).status == 200
    event = await wait_for(lambda: saved, 20, message="recording:saved")
    result = decode_all(Path(event[0].path))
    assert result["first_video"] == source.packets[0]  # the keyframe, byte for byte
    assert result["frames"]["video"] >= 45 and result["monotonic"]


async def test_deleting_a_recording_in_progress_ends_its_session(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.add_media(audio=False)
        body = await http_offer(client, peer, "record")
        session = manager.sessions()[0]
        await wait_for(lambda: session.mode.recorder.frames["video"] >= 10, 20, message="frames written")
        entry = await listed(client, body["sessionId"])
        assert entry is not None and entry["state"] == "recording"
        resp = await client.delete(entry["url"])  # anonymous: the recording id is the capability
        assert resp.status == 200 and (await resp.json()) == {"deleted": True}
        assert session.closed and session.close_reason == "deleted"
    assert await listed(client, body["sessionId"]) is None
    assert names(Path(manager.store.root)) == []
