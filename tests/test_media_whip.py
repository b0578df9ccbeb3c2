"""WHIP ingest (RFC 9725) against a real aiortc sender."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig, create_app
from fantasize_rtc.config import IceServer
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
    assert resp.status == 404  # PATCH is trickle ICE on a session that exists
    assert len(client.app[MEDIA_KEY]) == 0


async def test_whip_201_carries_ice_servers_and_an_etag_and_options_says_what_it_takes(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    config = RtcConfig(
        recordings_dir=str(tmp_path),
        ice_servers=(
            IceServer(("stun:stun.example.org:3478",)),
            IceServer(("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349")),
        ),
        turn_secret="s3cret",
        cors_origins=("https://encoder.example",),
    )
    client = await aiohttp_client(create_app(config=config))
    options = await client.options("/whip")
    assert options.status == 204 and options.headers["Accept-Post"] == "application/sdp"
    preflight = await client.options(
        "/whip/x", headers={"Origin": "https://encoder.example", "Access-Control-Request-Method": "PATCH"}
    )
    assert preflight.status == 204 and "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "If-Match" in preflight.headers["Access-Control-Allow-Headers"]
    async with client_peer() as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        resp = await client.post(
            "/whip?mode=probe",
            data=await peer.offer(),
            headers={"Content-Type": "application/sdp", "Origin": "https://encoder.example"},
        )
        assert resp.status == 201, await resp.text()
        links = resp.headers.getall("Link")
        assert links[0] == '<stun:stun.example.org:3478>; rel="ice-server"'
        turn = [link for link in links if link.startswith("<turn")]
        assert len(turn) == 2 and all('credential-type="password"' in link for link in turn)
        user = re.search(r'username="([^"]+)"', turn[0])
        assert user and user.group(1).endswith(":whip-" + resp.headers["X-Session-Id"][:8])  # minted, expiring
        ufrag = re.search(r"a=ice-ufrag:(\S+)", await resp.text())
        assert ufrag and resp.headers["ETag"] == f'"{ufrag.group(1)}"'
        assert {"Link", "ETag"} <= set(resp.headers["Access-Control-Expose-Headers"].replace(" ", "").split(","))


async def test_whip_patch_trickles_candidates_and_refuses_ice_restarts(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        offer = await peer.offer()
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates
        trickled = ("a=candidate:", "a=end-of-candidates")  # a trickling client's offer has neither
        bare = "\r\n".join(line for line in offer.splitlines() if not line.startswith(trickled)) + "\r\n"
        resp = await client.post("/whip?mode=probe", data=bare, headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        location, etag = resp.headers["Location"], resp.headers["ETag"]
        ufrag = re.search(r"a=ice-ufrag:(\S+)", offer)
        assert ufrag
        sdpfrag = {"Content-Type": "application/trickle-ice-sdpfrag"}

        async def patch(body: str, **headers: str) -> Any:
            return await client.patch(location, data=body, headers={**sdpfrag, **headers})

        wrong = await patch("a=ice-ufrag:" + ufrag.group(1) + "\r\n", **{"If-Match": '"not-it"'})
        assert wrong.status == 412 and (await wrong.json())["error"]["code"] == "precondition_failed"
        restart = await patch("a=ice-ufrag:newufrag\r\na=ice-pwd:newpassword0123456789\r\n")
        assert restart.status == 422 and "ICE restart" in (await restart.json())["error"]["message"]
        assert (await patch("", **{"If-Match": "*"})).status == 422  # RFC 9725: If-Match * is a restart
        bad_type = await client.patch(location, data="a=end-of-candidates", headers={"Content-Type": "text/plain"})
        assert bad_type.status == 415
        body = (
            "a=ice-ufrag:"
            + ufrag.group(1)
            + "\r\na=mid:0\r\n"
            + "\r\n".join(candidates)
            + "\r\na=end-of-candidates\r\n"
        )
        ok = await patch(body, **{"If-Match": etag})
        assert ok.status == 204 and ok.headers["ETag"] == etag
        await peer.accept(await resp.text())
        session = manager.sessions()[0]
        await wait_for(lambda: session.connected, 20, message="connected with trickled candidates")
        assert (await client.delete(location)).status == 200
    gone = await client.patch(location, data="a=end-of-candidates", headers=sdpfrag)
    assert gone.status in (404, 422)
