"""Record mode: a real client streams audio+video; the file opens in PyAV with the right streams.
WebM takes the client's VP8 and Opus as they are (passthrough); MP4 needs them transcoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc.media import MEDIA_KEY, RECORDING_SAVED
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer

ADMIN = {"Authorization": "Bearer admin-secret"}


def file_size(path: Path) -> int:
    return path.stat().st_size


def folder(path: str) -> Path:
    return Path(path).resolve()


def streams_of(path: Path) -> tuple[dict[str, str], float]:
    with av.open(str(path)) as container:
        codecs: dict[str, str] = {s.type: s.codec_context.name for s in container.streams}
        assert container.duration is not None
        return codecs, container.duration / 1_000_000


@pytest.mark.parametrize(
    ("fmt", "video", "audio", "passthrough"), [("webm", "vp8", "opus", True), ("mp4", "h264", "aac", False)]
)
async def test_record_writes_a_playable_file(
    client: TestClient,  # type: ignore[type-arg]
    fmt: str,
    video: str,
    audio: str,
    passthrough: bool,
) -> None:
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.add_media()
        body = await http_offer(client, peer, "record", format=fmt)
        sid = body["sessionId"]
        session = manager.sessions()[0]
        await wait_for(
            lambda: session.frames["video"] >= 60 and session.frames["audio"] >= 100,
            30,
            message="2 s of media recorded",
        )
        resp = await client.delete(f"/rtc/sessions/{sid}")
        assert resp.status == 200
    await wait_for(lambda: saved, 20, message="recording:saved")
    event = saved[0]
    assert event.session_id == sid
    path = Path(event.path)
    assert path.parent == folder(manager.config.recordings_dir)
    codecs, duration = streams_of(path)
    assert codecs == {"video": video, "audio": audio}
    report = await (await client.get(f"/rtc/sessions/{sid}")).json()
    # The file's timeline starts when the recorder starts (as the offer is answered), like the session.
    session_seconds = report["durationMs"] / 1000
    assert abs(duration - session_seconds) <= 0.2 * session_seconds, (duration, session_seconds, report)
    assert report["recording"]["saved"]["id"] == event.recording_id
    assert report["recording"]["passthrough"] == {"audio": passthrough, "video": passthrough}
    listing = await (await client.get("/rtc/recordings", headers=ADMIN)).json()
    assert [r["id"] for r in listing["recordings"]] == [event.recording_id]
    entry = listing["recordings"][0]
    assert entry["size"] == file_size(path) and entry["sessionId"] == sid
    assert entry["state"] == "complete" and entry["complete"] is True
    assert sorted(entry["codecs"]) == sorted([video, audio])
    assert entry["duration"] == pytest.approx(duration, abs=0.01)
