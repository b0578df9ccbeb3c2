"""A real TURN server (coturn) and a relay-only client: the session connects and the probe says relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiortc import RTCIceServer, RTCIceTransportPolicy

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.config import IceServer
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer
from tests.turn_fixtures import TURN_SECRET, coturn

__all__ = ["coturn"]  # the fixture


async def test_relay_only_client_connects_through_coturn(aiohttp_client: Any, coturn: int, tmp_path: Path) -> None:
    config = RtcConfig(
        recordings_dir=str(tmp_path / "rec"),
        ice_servers=(IceServer.parse(f"turn:127.0.0.1:{coturn}"),),
        turn_secret=TURN_SECRET,
        turn_ttl_seconds=600,
    )
    client = await aiohttp_client(create_app(config=config))
    connect = await (await client.post("/rtc/connect", json={"roomId": "turn", "peerId": "walled"})).json()
    servers = connect["iceServers"]
    # minted coturn REST credentials: "expiry:peerId" and an HMAC
    assert servers[0]["username"].endswith(":walled") and servers[0]["credential"]
    ice = [RTCIceServer(urls=s["urls"], username=s["username"], credential=s["credential"]) for s in servers]
    async with client_peer(ice_servers=ice, iceTransportPolicy=RTCIceTransportPolicy.RELAY) as peer:
        peer.add_media(audio=False)
        peer.open_channel("probe")
        sdp = await peer.offer()
        assert "typ relay" in sdp and "typ host" not in sdp
        body = await http_offer(client, peer, "probe", token=connect["token"], probeSeconds=0.5)
        await wait_for(lambda: peer.messages, 30, message="the probe report through TURN")
        report = await (
            await client.get(
                f"/rtc/sessions/{body['sessionId']}", headers={"Authorization": f"Bearer {connect['token']}"}
            )
        ).json()
    pair = report["candidatePair"]
    assert pair["remote"]["type"] == "relay", pair
    assert report["verdict"].startswith("connected only through a TURN relay"), report["verdict"]
    assert report["stats"]["framesReceived"]["video"] > 0
