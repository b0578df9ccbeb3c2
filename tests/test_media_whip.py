"""WHIP ingest (RFC 9725) against a real aiortc sender."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from fantasize_rtc.media import MEDIA_KEY, RECORDING_SAVED
from tests.helpers import wait_for
from tests.media_helpers import SmallVideo, Tone, client_peer


async def test_whip_ingest_records_until_delete(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    async with client_peer() as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        peer.pc.addTransceiver(Tone(), direction="sendonly")
        resp = await client.post("/whip", data=await peer.offer(), headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/sdp")
        location = resp.headers["Location"]
        assert location.startswith("/whip/")
        await peer.accept(await resp.text())
        session = manager.sessions()[0]
        assert session.mode.name == "record" and session.via == "whip"
        await wait_for(lambda: session.frames["video"] >= 15, 20, message="ingested frames")
        resp = await client.delete(location)
        assert resp.status == 200
    await wait_for(lambda: saved, 20, message="recording:saved")
    assert set(saved[0].codecs) == {"vp8", "opus"}
    assert (await client.delete(location)).status == 200  # ending an ended session is fine
    assert (await client.delete("/whip/nosuchsession")).status == 404


async def test_whip_refuses_other_content_types_and_modes(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post("/whip", json={"sdp": "v=0"})
    assert resp.status == 415 and (await resp.json())["error"]["code"] == "unsupported_media_type"
    resp = await client.post("/whip?mode=play", data="v=0\r\n", headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await client.post("/whip", data=b"\xff\xfe", headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await client.post("/whip", data="garbage", headers={"Content-Type": "application/sdp"})
    assert resp.status == 400
    resp = await client.patch(
        "/whip/whatever", data="a=candidate:1", headers={"Content-Type": "application/trickle-ice-sdpfrag"}
    )
    assert resp.status == 405
    assert len(client.app[MEDIA_KEY]) == 0
