"""A real TURN server (coturn) and a relay-only client: the session connects and the probe says relay."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCIceServer, RTCIceTransportPolicy

from fantasize_rtc import RtcConfig
from fantasize_rtc.config import IceServer
from fantasize_rtc.web import create_app
from tests.helpers import free_udp_port, require_program, wait_for, wait_for_sync
from tests.media_helpers import client_peer, http_offer

TURN_SECRET = "turn-test-secret"


def _stun_answers(port: int) -> bool:
    """A STUN binding request to coturn gets an answer once it is listening."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        return data[8:20] == request[8:20]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    """coturn on a free loopback port with the TURN REST (shared secret) scheme; stopped after."""
    binary = require_program("turnserver")
    port = free_udp_port()
    log = tmp_path / "turn.log"
    proc = subprocess.Popen(
        [
            binary,
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            "--allow-loopback-peers",
            "--use-auth-secret",
            f"--static-auth-secret={TURN_SECRET}",
            "--realm=test",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            f"--pidfile={tmp_path / 'turn.pid'}",
            f"--log-file={log}",
            "--simple-log",
            f"--userdb={tmp_path / 'turndb'}",
            "--min-port=40000",
            "--max-port=40999",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        wait_for_sync(lambda: proc.poll() is not None or _stun_answers(port), 10, message="coturn to listen")
        assert proc.poll() is None, log.read_text() if log.exists() else "coturn exited"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
