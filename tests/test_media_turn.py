"""A real TURN server (coturn) and relay-only peers: sessions connect through it over UDP, TCP and
TLS, the server's own peers relay through it too, and the probe says relay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

import fantasize_rtc.media.session as session_module
from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.config import IceServer
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.media.ice import rtc_configuration
from tests.helpers import wait_for
from tests.media_helpers import SmallVideo, client_peer, http_offer
from tests.turn_fixtures import TURN_SECRET, Coturn, coturn, coturn_tcp_only

__all__ = ["coturn", "coturn_tcp_only"]  # the fixtures


def relay_only_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's own peers gather relay candidates only, as if none of its addresses could be
    reached: the product's configuration with aiortc's relay policy on top."""

    def relay_only(servers: tuple[IceServer, ...], **options: Any) -> RTCConfiguration:
        configuration = rtc_configuration(servers, **options)
        configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        return configuration

    monkeypatch.setattr(session_module, "rtc_configuration", relay_only)


def trust_turn_certificate(monkeypatch: pytest.MonkeyPatch, server: Coturn) -> None:
    """What a deployer of a self-signed TURN/TLS server does (docs/media.md): the process's default
    CAs (OpenSSL's SSL_CERT_FILE) hold its certificate. The client peers here share the process."""
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))


def turn_url(form: str, server: Coturn) -> str:
    return {
        "turns": f"turns:127.0.0.1:{server.tls_port}",
        "turns?transport=tcp": f"turns:127.0.0.1:{server.tls_port}?transport=tcp",
        "turn?transport=tcp": f"turn:127.0.0.1:{server.port}?transport=tcp",
    }[form]


def turn_config(tmp_path: Path, url: str) -> RtcConfig:
    return RtcConfig(recordings_dir=str(tmp_path / "rec"), ice_servers=(IceServer.parse(url),), turn_secret=TURN_SECRET)


async def test_relay_only_client_connects_through_coturn(coturn: int, aiohttp_client: Any, tmp_path: Path) -> None:
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


@pytest.mark.parametrize("form", ["turns", "turns?transport=tcp", "turn?transport=tcp"])
async def test_relay_only_on_both_sides_over_turn_tcp_and_tls(
    coturn_tcp_only: Coturn, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """coturn takes no UDP at all: both sides' relay candidates came over TCP or TLS."""
    turn = coturn_tcp_only
    url = turn_url(form, turn)
    trust_turn_certificate(monkeypatch, turn)
    relay_only_server(monkeypatch)
    client = await aiohttp_client(create_app(config=turn_config(tmp_path, url)))
    connect = await (await client.post("/rtc/connect", json={"roomId": "turn", "peerId": "walled"})).json()
    [server] = connect["iceServers"]
    # handed to browsers as configured, with minted coturn REST credentials ("expiry:peerId", HMAC)
    assert server["urls"] == [url]
    assert server["username"].endswith(":walled") and server["credential"]
    async with client_peer(
        ice_servers=[RTCIceServer(**server)], iceTransportPolicy=RTCIceTransportPolicy.RELAY
    ) as peer:
        peer.add_media(audio=False)
        peer.open_channel("probe")
        # anonymous: the server's own peer uses credentials minted for "@probe"
        body = await http_offer(client, peer, "probe", probeSeconds=0.5)
        assert "typ relay" in body["sdp"] and "typ host" not in body["sdp"]
        await wait_for(lambda: peer.messages, 30, message=f"the probe report through {form}")
    report = json.loads(peer.messages[0])["report"]
    pair = report["candidatePair"]
    assert pair["local"]["type"] == "relay" and pair["remote"]["type"] == "relay", pair
    assert report["verdict"].startswith("connected only through a TURN relay"), report["verdict"]
    assert report["stats"]["framesReceived"]["video"] > 0

    def allocated(user: str) -> list[str]:
        return [line for line in turn.allocations() if f":{user}>" in line]

    await wait_for(lambda: allocated("@probe") and allocated("walled"), 10, message="coturn's allocation lines")
    for line in allocated("@probe") + allocated("walled"):
        assert ("method=TLS" in line) == url.startswith("turns:"), line


async def test_the_server_verifies_a_turns_certificate(
    coturn_tcp_only: Coturn, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aioice checks a turns: server's certificate against the default CAs: a self-signed one gives
    the server's peers no relay candidate (the session goes on without) until it is trusted."""
    turn = coturn_tcp_only
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    client = await aiohttp_client(create_app(config=turn_config(tmp_path, f"turns:127.0.0.1:{turn.tls_port}")))

    async def answer() -> str:
        async with client_peer() as peer:
            peer.add_media(audio=False)
            return str((await http_offer(client, peer, "echo"))["sdp"])

    untrusted = await answer()
    assert "typ relay" not in untrusted and "typ host" in untrusted
    trust_turn_certificate(monkeypatch, turn)
    assert "typ relay" in await answer()


async def test_whip_ingest_relays_over_turns(
    coturn_tcp_only: Coturn, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turn = coturn_tcp_only
    trust_turn_certificate(monkeypatch, turn)
    relay_only_server(monkeypatch)
    client = await aiohttp_client(create_app(config=turn_config(tmp_path, f"turns:127.0.0.1:{turn.tls_port}")))
    connect = await (await client.post("/rtc/connect", json={"roomId": "turn", "peerId": "sender"})).json()
    [server] = connect["iceServers"]
    async with client_peer(
        ice_servers=[RTCIceServer(**server)], iceTransportPolicy=RTCIceTransportPolicy.RELAY
    ) as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        resp = await client.post("/whip", data=await peer.offer(), headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
        assert "typ relay" in answer and "typ host" not in answer
        await peer.accept(answer)
        [session] = client.app[MEDIA_KEY].sessions()
        await wait_for(lambda: session.frames.get("video", 0) >= 5, 20, message="frames ingested through TURN/TLS")
        assert session.pair is not None
        assert session.pair.local.type == "relay" and session.pair.remote.type == "relay", session.pair
        assert (await client.delete(resp.headers["Location"])).status == 200


async def test_server_peers_leave_out_urls_aiortc_cannot_parse(aiohttp_client: Any, tmp_path: Path) -> None:
    """An IPv6 TURN URL is for browsers only: aiortc cannot parse it, and it must not fail the
    server's sessions."""
    urls = ("turn:[2001:db8::1]:3478?transport=tcp", "turns:turn.example.com:5349")
    given = rtc_configuration(tuple(IceServer.parse(u) for u in urls)).iceServers
    assert [s.urls for s in given or []] == [["turns:turn.example.com:5349"]]
    config = RtcConfig(recordings_dir=str(tmp_path / "rec"), ice_servers=(IceServer.parse(urls[0]),))
    client = await aiohttp_client(create_app(config=config))
    connect = await (await client.post("/rtc/connect", json={"roomId": "v6", "peerId": "p"})).json()
    assert connect["iceServers"] == [{"urls": [urls[0]]}]
    async with client_peer() as peer:
        peer.add_media(audio=False)
        await http_offer(client, peer, "echo")
        await peer.wait_frames("video", 5)
