"""The one-line verdict a person reads: how a media session connected, or why it did not."""

from __future__ import annotations

from ..protocol import SessionEnd, SessionState
from .ice import PairInfo

__all__ = ["verdict"]

_FAILURES = {
    SessionEnd.ICE_FAILED: "failed: no candidate pair succeeded (ICE failed)",
    SessionEnd.DTLS_FAILED: "failed: ICE connected but the DTLS handshake did not complete",
    SessionEnd.ICE_TIMEOUT: "failed: the peer never answered an ICE connectivity check",
}


def _route(pair: PairInfo) -> str:
    protocol = pair.local.protocol.upper() if pair.local.protocol else "UDP"
    types = {pair.local.type, pair.remote.type}
    if "relay" in types:
        return f"only through a TURN relay ({protocol})"
    if types & {"srflx", "prflx"}:
        return f"over {protocol} through NAT (server-reflexive/peer-reflexive address)"
    return f"directly over {protocol}"


def verdict(
    *, state: str, close_reason: str | None, pair: PairInfo | None, connect_ms: int | None, connect_timeout_s: float
) -> str:
    """E.g. ``connected directly over UDP in 180 ms`` or ``failed: no candidate pair succeeded``."""
    took = f" in {connect_ms} ms" if connect_ms is not None else ""
    if connect_ms is not None:  # it did connect at some point
        route = _route(pair) if pair else "(candidate pair unknown)"
        text = f"connected {route}{took}"
        if state in (SessionState.CLOSING, SessionState.CLOSED) and close_reason:
            text += f"; ended: {close_reason}"
        return text
    if close_reason in _FAILURES:
        return _FAILURES[close_reason]
    if close_reason == SessionEnd.CONNECT_TIMEOUT:
        return f"failed: not connected within {connect_timeout_s:g} s (no candidate pair succeeded)"
    if state in (SessionState.CLOSING, SessionState.CLOSED):
        return f"closed before connecting ({close_reason})"
    return "connecting: waiting for ICE and DTLS"
