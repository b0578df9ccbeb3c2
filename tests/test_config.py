from __future__ import annotations

import pytest

from fantasize_rtc import IceServer, RtcConfig
from fantasize_rtc.auth import mint_turn_credentials
from fantasize_rtc.errors import InvalidRequest


def test_defaults_match_the_seed() -> None:
    config = RtcConfig()
    assert config.max_peers_per_room == 8
    assert config.heartbeat_interval_ms == 30_000
    assert config.peer_timeout_ms == 75_000
    assert config.ice_servers == ()  # no hidden public STUN server


def test_peer_timeout_follows_interval() -> None:
    assert RtcConfig(heartbeat_interval_ms=1000).peer_timeout_ms == 2500
    assert RtcConfig().replace(heartbeat_interval_ms=2000).peer_timeout_ms == 5000
    assert RtcConfig(peer_timeout_ms=10).peer_timeout_ms == 10
    assert RtcConfig(peer_timeout_ms=1000).reaper_interval_ms == 250


def test_ice_server_urls() -> None:
    assert IceServer.parse("stun:stun.example.org:3478").to_wire() == {"urls": ["stun:stun.example.org:3478"]}
    turn = IceServer.parse("turn:al%40ice:s3cr%3At@turn.example.org:3478?transport=udp")
    assert turn.to_wire() == {
        "urls": ["turn:turn.example.org:3478?transport=udp"],
        "username": "al@ice",
        "credential": "s3cr:t",
    }
    assert RtcConfig(ice_servers=("stun:a:1",)).ice_servers == (IceServer(("stun:a:1",)),)  # type: ignore[arg-type]
    for bad in ("http://x", "turn:", "turn:user@host"):
        with pytest.raises(InvalidRequest):
            IceServer.parse(bad)


def test_turn_rest_credentials_are_coturns() -> None:
    # Reference: echo -n 4600:alice | openssl dgst -sha1 -hmac secret -binary | base64
    user, password = mint_turn_credentials("secret", "alice", 3600, 1_000)
    assert user == "4600:alice"
    assert password == "a3AFq0ZxH8TvdQLL5U+temOYdmc="


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        RtcConfig(max_peers_per_room=0)
