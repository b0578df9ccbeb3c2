"""The one-line verdict, for every way a session can connect or fail (pure function)."""

from __future__ import annotations

import pytest

from fantasize_rtc.media.ice import CandidateInfo, PairInfo
from fantasize_rtc.media.verdict import verdict


def pair(local: str, remote: str, protocol: str = "udp") -> PairInfo:
    return PairInfo(CandidateInfo(local, protocol, "10.0.0.1", 1000), CandidateInfo(remote, protocol, "10.0.0.2", 2000))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"state": "connected", "pair": pair("host", "host"), "connect_ms": 180},
            "connected directly over UDP in 180 ms",
        ),
        (
            {"state": "connected", "pair": pair("host", "host", "tcp"), "connect_ms": 90},
            "connected directly over TCP in 90 ms",
        ),
        (
            {"state": "connected", "pair": pair("host", "srflx"), "connect_ms": 240},
            "connected over UDP through NAT (server-reflexive/peer-reflexive address) in 240 ms",
        ),
        (
            {"state": "connected", "pair": pair("host", "relay"), "connect_ms": 530},
            "connected only through a TURN relay (UDP) in 530 ms",
        ),
        (
            {"state": "connected", "pair": pair("relay", "prflx"), "connect_ms": 10},
            "connected only through a TURN relay (UDP) in 10 ms",
        ),
        (
            {"state": "closed", "close_reason": "bye", "pair": pair("host", "host"), "connect_ms": 50},
            "connected directly over UDP in 50 ms; ended: bye",
        ),
        ({"state": "closed", "close_reason": "ice_failed"}, "failed: no candidate pair succeeded (ICE failed)"),
        (
            {"state": "closed", "close_reason": "dtls_failed"},
            "failed: ICE connected but the DTLS handshake did not complete",
        ),
        (
            {"state": "closed", "close_reason": "connect_timeout"},
            "failed: not connected within 30 s (no candidate pair succeeded)",
        ),
        ({"state": "closed", "close_reason": "deleted"}, "closed before connecting (deleted)"),
        ({"state": "connecting"}, "connecting: waiting for ICE and DTLS"),
    ],
)
def test_verdicts(kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {"close_reason": None, "pair": None, "connect_ms": None, "connect_timeout_s": 30.0}
    args.update(kwargs)
    assert verdict(**args) == expected  # type: ignore[arg-type]
