"""ICE glue: configured servers -> aiortc configuration, trickled candidates, the selected pair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCIceTransport, RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

from ..config import IceServer
from ..errors import InvalidRequest
from . import _aiortc_compat as compat

__all__ = [
    "CandidateInfo",
    "PairInfo",
    "heard_from_peer",
    "parse_candidate",
    "rtc_configuration",
    "selected_pair",
    "stun_rtt_ms",
]


def rtc_configuration(servers: tuple[IceServer, ...], *, max_bundle: bool = False) -> RTCConfiguration:
    """aiortc configuration for the given servers.

    An empty list stays empty: aiortc would otherwise add a public STUN server and wait for it.
    ``turns:`` and ``turn:...?transport=tcp`` pass as they are: aiortc reaches the TURN server over
    TLS or TCP (a ``turns:`` certificate is verified against the process's default CAs). aiortc uses
    the first TURN URL it can (one only). A URL aiortc cannot parse (an IPv6 literal host such as
    ``turn:[2001:db8::1]:3478``, a query other than ``?transport=``) is left out here, or it would
    fail every session's offer; browsers still get it in ``Connect.iceServers``.

    ``max_bundle``: tracks added after the first answer share the bundle's transport (a mode that
    renegotiates needs it: a new transport would open sockets and offer ICE credentials the peer
    never saw). Only for offers that bundle every section (what browsers send).
    """

    def aiortc_parses(url: str) -> bool:  # aiortc 1.x: scheme:host[:digits], and turn(s) [?transport=...]
        scheme, _, rest = url.partition(":")
        address, sep, query = rest.partition("?")
        host, colon, port = address.partition(":")
        return (
            scheme in ("stun", "stuns", "turn", "turns")
            and bool(host)
            and (not colon or (port.isascii() and port.isdigit()))
            and (not sep or (scheme.startswith("turn") and query.startswith("transport=")))
        )

    ice_servers = []
    for server in servers:
        urls = [url for url in server.urls if aiortc_parses(url)]
        if urls:
            ice_servers.append(RTCIceServer(urls=urls, username=server.username, credential=server.credential))
    policy = RTCBundlePolicy.MAX_BUNDLE if max_bundle else RTCBundlePolicy.BALANCED
    return RTCConfiguration(iceServers=ice_servers, bundlePolicy=policy)


def parse_candidate(payload: Any) -> Any:
    """A trickled ``{candidate, sdpMid, sdpMLineIndex}`` as an aiortc candidate (None = end)."""
    if payload is None:
        return None
    text = payload.get("candidate") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        raise InvalidRequest("A candidate needs a 'candidate' string.")
    if text == "":
        return None  # browsers send an empty candidate as end-of-candidates
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        candidate = candidate_from_sdp(text)
    except (ValueError, IndexError) as exc:
        raise InvalidRequest("The candidate line could not be parsed.") from exc
    candidate.sdpMid = payload.get("sdpMid")
    candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        raise InvalidRequest("A candidate needs sdpMid or sdpMLineIndex.")
    return candidate


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    type: str  # host, srflx, prflx, relay
    protocol: str  # udp, tcp
    address: str
    port: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "protocol": self.protocol, "address": self.address, "port": self.port}


@dataclass(frozen=True, slots=True)
class PairInfo:
    local: CandidateInfo
    remote: CandidateInfo

    def to_wire(self) -> dict[str, Any]:
        return {"local": self.local.to_wire(), "remote": self.remote.to_wire()}


def _ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    transports: list[RTCIceTransport] = []
    dtls_list = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_list.append(pc.sctp.transport)
    for dtls in dtls_list:
        ice = dtls.transport if dtls is not None else None
        if ice is not None and ice not in transports:
            transports.append(ice)
    return transports


def heard_from_peer(pc: RTCPeerConnection) -> bool:
    """Whether the remote peer has answered any ICE connectivity check (a candidate pair
    succeeded: the peer is there and doing ICE). True when that cannot be known, so that nothing
    is ended early (:func:`._aiortc_compat.heard_from_peer`)."""
    return compat.heard_from_peer(_ice_transports(pc))


def selected_pair(pc: RTCPeerConnection) -> PairInfo | None:
    """The candidate pair ICE nominated, or None before ICE completes (and when aiortc's
    internals do not tell: :func:`._aiortc_compat.selected_candidates`)."""
    candidates = compat.selected_candidates(_ice_transports(pc))
    if candidates is None:
        return None
    local, remote = candidates
    return PairInfo(
        CandidateInfo(local.type, local.transport.lower(), local.host, local.port),
        CandidateInfo(remote.type, remote.transport.lower(), remote.host, remote.port),
    )


async def stun_rtt_ms(pc: RTCPeerConnection, timeout: float = 2.0) -> float | None:
    """Round trip of one STUN binding request on the selected pair (a consent check), in ms; None
    when there is no sample (:func:`._aiortc_compat.stun_round_trip_ms`)."""
    return await compat.stun_round_trip_ms(_ice_transports(pc), timeout)
