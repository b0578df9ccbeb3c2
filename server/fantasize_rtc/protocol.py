"""Wire protocol v1: id rules, request validation and the messages the server sends.

Pure and synchronous; imports only the standard library. See docs/protocol.md.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import InvalidJson, InvalidRequest, PayloadTooLarge

__all__ = [
    "CloseCode",
    "KNOWN_SIGNAL_TYPES",
    "LeaveReason",
    "RecordingState",
    "SERVER_PEER_PREFIX",
    "SessionEnd",
    "SessionState",
    "Signal",
    "Via",
    "check_json_depth",
    "check_parsed_depth",
    "dumps",
    "dumps_client_value",
    "encoded_size",
    "error_message",
    "is_server_peer",
    "parse_json",
    "peer_connected_message",
    "peer_disconnected_message",
    "require_object",
    "signal_message",
    "validate_id",
    "validate_metadata",
    "validate_signal",
]

SERVER_PEER_PREFIX: Final = "@"
_ID_RE: Final = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_SERVER_ID_RE: Final = re.compile(r"@[A-Za-z0-9._~-]{1,63}")
_TYPE_RE: Final = re.compile(r"[A-Za-z0-9:._-]{1,64}")
KNOWN_SIGNAL_TYPES: Final = frozenset({"offer", "answer", "candidate", "bye"})


class CloseCode(enum.IntEnum):
    """Every WebSocket close code the server sends (docs/protocol.md; rtc-client.js has the same
    names)."""

    #: The peer left (a ``disconnect`` frame or route).
    LEFT = 1000
    #: The server is shutting down.
    GOING_AWAY = 1001
    #: A binary frame: only text frames are spoken.
    UNSUPPORTED_DATA = 1003
    #: A text frame that is not UTF-8 (RFC 6455 8.1).
    INVALID_TEXT = 1007
    #: The peer sent faster than its rate limit.
    POLICY_VIOLATION = 1008
    #: A frame over the frame limit (aiohttp closes with it).
    MESSAGE_TOO_BIG = 1009
    #: A server bug while handling a frame (after an ``internal_error`` frame).
    INTERNAL_ERROR = 1011
    #: The server is restarting (draining): connect the socket again, with the same token; behind a
    #: load balancer another process takes it.
    SERVICE_RESTART = 1012
    #: The peer was removed: reaped for silence, or it left through another process.
    REMOVED = 4000
    #: A newer connection of the same peer took over.
    REPLACED = 4001
    #: The peer stopped reading: 4 MiB waited unsent.
    TOO_SLOW = 4002


class LeaveReason:
    """Why a peer left a room: the ``reason`` of ``peer:disconnected`` (and its event)."""

    LEFT: Final = "left"
    TIMEOUT: Final = "timeout"
    REPLACED: Final = "replaced"
    ALL: Final = (LEFT, TIMEOUT, REPLACED)


class SessionState:
    """A server-side media session's ``state`` (its report, docs/media.md)."""

    NEW: Final = "new"
    CONNECTING: Final = "connecting"
    CONNECTED: Final = "connected"
    CLOSING: Final = "closing"
    CLOSED: Final = "closed"
    ALL: Final = (NEW, CONNECTING, CONNECTED, CLOSING, CLOSED)


class RecordingState:
    """A recording's ``state`` in the listing (docs/media.md, "Recordings")."""

    #: Being written now (its size and duration grow; a download gets what is written so far).
    RECORDING: Final = "recording"
    #: Finalized: the server closed the file (whatever ended the session).
    COMPLETE: Final = "complete"
    #: The process writing it died (killed, crashed, lost power) before finalizing it; what
    #: reached the disk plays, up to within about a second of the end.
    INCOMPLETE: Final = "incomplete"
    ALL: Final = (RECORDING, COMPLETE, INCOMPLETE)


class Via:
    """How a media session was opened: its report's ``via``."""

    HTTP: Final = "http"
    SIGNALING: Final = "signaling"
    WHIP: Final = "whip"
    WHEP: Final = "whep"
    ALL: Final = (HTTP, SIGNALING, WHIP, WHEP)


class SessionEnd:
    """Why a media session ended: its report's ``closeReason`` and ``media:closed``'s ``reason``
    (docs/media.md, "Endings"). ``owner_<leave reason>`` when its owner left the room."""

    BYE: Final = "bye"
    DELETED: Final = "deleted"
    PEER_CLOSED: Final = "peer_closed"
    CONNECTION_LOST: Final = "connection_lost"
    ICE_FAILED: Final = "ice_failed"
    DTLS_FAILED: Final = "dtls_failed"
    ICE_TIMEOUT: Final = "ice_timeout"
    CONNECT_TIMEOUT: Final = "connect_timeout"
    MAX_DURATION: Final = "max_duration"
    RECORDING_LIMIT: Final = "recording_limit"
    RECORDINGS_QUOTA: Final = "recordings_quota"
    OWNER_LEFT: Final = "owner_left"
    OWNER_TIMEOUT: Final = "owner_timeout"
    OWNER_REPLACED: Final = "owner_replaced"
    RENEGOTIATED: Final = "renegotiated"
    REJECTED: Final = "rejected"
    SHUTDOWN: Final = "shutdown"
    PUBLISHER_GONE: Final = "publisher_gone"
    NEGOTIATION_FAILED: Final = "negotiation_failed"
    ALL: Final = (
        BYE,
        DELETED,
        PEER_CLOSED,
        CONNECTION_LOST,
        ICE_FAILED,
        DTLS_FAILED,
        ICE_TIMEOUT,
        CONNECT_TIMEOUT,
        MAX_DURATION,
        RECORDING_LIMIT,
        RECORDINGS_QUOTA,
        OWNER_LEFT,
        OWNER_TIMEOUT,
        OWNER_REPLACED,
        RENEGOTIATED,
        REJECTED,
        SHUTDOWN,
        PUBLISHER_GONE,
        NEGOTIATION_FAILED,
    )

    @staticmethod
    def owner_gone(leave_reason: str) -> str:
        """The ending of a session whose owner left the room for ``leave_reason``."""
        return f"owner_{leave_reason}"


# allow_nan=False: NaN and Infinity are not JSON (RFC 8259); a browser's JSON.parse refuses them.
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)


def dumps(obj: Any) -> str:
    """Compact JSON as the server sends it. Raises ``ValueError`` for NaN or Infinity."""
    return _encoder.encode(obj)


def dumps_client_value(obj: Any, field: str) -> str:
    """:func:`dumps` of a value a client gave (through the facade, not a transport, which parses
    strictly already): :class:`InvalidJson` unless it is standard JSON that UTF-8 can carry."""
    try:
        text = dumps(obj)
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidJson(f"{field} holds a lone UTF-16 surrogate, which UTF-8 cannot carry.") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidJson(f"{field} is not standard JSON ({exc}).") from exc
    return text


def encoded_size(obj: Any, field: str = "value") -> int:
    return len(dumps_client_value(obj, field).encode())


def is_server_peer(peer_id: str) -> bool:
    return peer_id.startswith(SERVER_PEER_PREFIX)


def validate_id(value: Any, field: str, *, allow_server: bool = False) -> str:
    """Return ``value`` if it is a valid room or peer id, else raise :class:`InvalidRequest`."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string.")
    if _ID_RE.fullmatch(value):
        return value
    if value.startswith(SERVER_PEER_PREFIX):
        if allow_server and _SERVER_ID_RE.fullmatch(value):
            return value
        raise InvalidRequest(f"{field} may not start with '@': those ids are reserved for the server's own peers.")
    raise InvalidRequest(f"{field} must be 1 to 64 characters of A-Z a-z 0-9 . _ ~ -.")


def check_json_depth(obj: Any, limit: int, field: str) -> None:
    """Refuse JSON nested deeper than ``limit`` (iteratively: deep input cannot blow the stack)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value  # type: ignore[assignment]
        else:
            continue
        if depth > limit:
            raise InvalidRequest(f"{field} is nested deeper than {limit} levels.")
        stack.extend((child, depth + 1) for child in children)


def validate_metadata(value: Any, *, max_bytes: int, max_depth: int, field: str = "metadata") -> dict[str, Any]:
    """Metadata is an optional JSON object, bounded in size and depth."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object.")
    check_json_depth(value, max_depth, field)
    if encoded_size(value, field) > max_bytes:
        raise PayloadTooLarge(f"{field} is larger than {max_bytes} bytes.")
    return value


@dataclass(slots=True)
class Signal:
    """``{type, payload, to?}``: what a peer asks the server to relay.

    ``payload_json`` is the payload's JSON text, when the transport has it (it parsed the frame
    with msgspec, which writes the payload back several times faster than :func:`dumps`): the relay
    then puts that text in the message instead of encoding the payload (an SDP is most of it).

    Treat it as read-only. It is not a frozen dataclass because one is built per relayed signal
    and a frozen one costs 3% of the relay's instructions to build (BENCHMARKS.md).
    """

    type: str
    payload: Any
    to: str | None = None
    payload_json: str | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "payload": self.payload}
        if self.to is not None:
            out["to"] = self.to
        return out


#: Recipient ids a signal named that passed :func:`validate_id` (the same few, message after
#: message): a set lookup instead of the regular expression on the relay's hot path.
_CHECKED_TO: set[str] = set()
_CHECKED_TO_MAX = 4096


_SDP_KINDS: Final = frozenset({"offer", "answer"})


def _is_signal_type(kind: Any) -> bool:
    return isinstance(kind, str) and (kind in KNOWN_SIGNAL_TYPES or _TYPE_RE.fullmatch(kind) is not None)


def _is_line_index(index: Any) -> bool:
    return isinstance(index, int) and not isinstance(index, bool) and index >= 0


def validate_signal(value: Any, *, max_depth: int = 32, payload_json: str | None = None) -> Signal:
    """Check a ``Signal`` object from a client. Size is checked once, when it is encoded.

    ``payload_json``: the JSON text of ``value["payload"]``, when the transport has it.

    This runs for every relayed message: the common kinds' checks are inline and cheap types are
    tested before ``isinstance`` (each Python call here is a few percent of a relay,
    BENCHMARKS.md); what it accepts and refuses is the same either way."""
    if type(value) is not dict:
        if isinstance(value, Signal):
            return value
        if not isinstance(value, dict):
            raise InvalidRequest("signal must be an object {type, payload, to?}.")
    kind = value.get("type")
    if not (type(kind) is str and kind in KNOWN_SIGNAL_TYPES) and not _is_signal_type(kind):
        raise InvalidRequest("signal.type must be a string of 1 to 64 characters of A-Z a-z 0-9 : . _ -.")
    payload = value.get("payload")
    if kind == "candidate":
        if payload is not None:  # None: the end of candidates
            if not isinstance(payload, dict) or not isinstance(payload.get("candidate"), str):
                raise InvalidRequest("A candidate signal's payload must be {candidate, sdpMid, sdpMLineIndex} or null.")
            mid = payload.get("sdpMid")
            if mid is not None and not isinstance(mid, str):
                raise InvalidRequest("candidate.sdpMid must be a string or null.")
            index = payload.get("sdpMLineIndex")
            if index is not None and not (type(index) is int and index >= 0) and not _is_line_index(index):
                raise InvalidRequest("candidate.sdpMLineIndex must be a non-negative integer or null.")
    elif kind in _SDP_KINDS:
        if not isinstance(payload, dict) or not isinstance(payload.get("sdp"), str):
            raise InvalidRequest(f"An {kind} signal's payload must be an object with an 'sdp' string.")
    elif payload is not None:
        check_json_depth(payload, max_depth, "signal.payload")
    to = value.get("to")
    if to is not None and (type(to) is not str or to not in _CHECKED_TO):
        to = validate_id(to, "signal.to", allow_server=True)
        if len(_CHECKED_TO) >= _CHECKED_TO_MAX:
            _CHECKED_TO.clear()
        _CHECKED_TO.add(to)
    return Signal(kind, payload, to, payload_json)  # type: ignore[arg-type]  # (kind: a str, checked above)


# -- messages from the server -------------------------------------------------------------------


def signal_message(room_id: str, from_peer_id: str, signal: Signal, ts: int) -> dict[str, Any]:
    return {"type": "signal", "roomId": room_id, "fromPeerId": from_peer_id, "signal": signal.to_wire(), "ts": ts}


def peer_connected_message(room_id: str, peer: dict[str, Any]) -> dict[str, Any]:
    return {"type": "peer:connected", "roomId": room_id, "peer": peer}


def peer_disconnected_message(room_id: str, peer_id: str, reason: str) -> dict[str, Any]:
    return {"type": "peer:disconnected", "roomId": room_id, "peerId": peer_id, "reason": reason}


def error_message(code: str, message: str, **details: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    error.update(details)
    return {"type": "error", "error": error}


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


#: A ``\uD800``-``\uDFFF`` escape: a UTF-16 surrogate, which is only text as half of a pair.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(data: bytes | str, *, max_depth: int) -> Any:
    """Parse client JSON strictly (RFC 8259): :class:`InvalidJson` for malformed text, ``NaN`` or
    ``Infinity``, numbers no float can hold, lone UTF-16 surrogates (``"\\ud800"``: valid JSON
    text, but no UTF-8 can carry it, so the message could never be sent on) and text that is not
    UTF-8. :class:`InvalidRequest` for input nested deeper than ``max_depth``."""
    try:
        # Bytes are UTF-8, strictly: json.loads would guess UTF-16 or 32 and let a surrogate
        # encoded as UTF-8 through (a lone surrogate that could never be sent on).
        text = data if isinstance(data, str) else data.decode()
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise InvalidRequest(f"The body is nested deeper than {max_depth} levels.") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, our refusals
        raise InvalidJson("The body is not valid JSON.") from exc
    if _SURROGATE_ESCAPE.search(text):
        # Pairs decode to one character; a lone half stays a surrogate, which UTF-8 refuses.
        try:
            dumps(value).encode()
        except UnicodeEncodeError as exc:
            raise InvalidJson("The body holds a lone UTF-16 surrogate (such as \\ud800), which is not text.") from exc
    check_parsed_depth(data, value, max_depth)
    return value


def check_parsed_depth(data: bytes | str, value: Any, max_depth: int) -> None:
    """Refuse ``value`` (parsed from ``data``) when nested deeper than ``max_depth`` + 4 (the
    envelope around a client's object)."""
    # Nesting cannot be deeper than the number of opening brackets, and signals (SDP text,
    # candidates) have a handful, so counting them spares the walk on the relay hot path (inline:
    # this runs for every frame). A short frame (a candidate) is counted; in a long one (an SDP)
    # finding the few brackets (memchr) is 3x faster than str.count, which looks at every character.
    limit = max_depth + 4
    brackets = ("{", "[") if isinstance(data, str) else (b"{", b"[")
    if len(data) <= 1024:
        if data.count(brackets[0]) + data.count(brackets[1]) > limit:  # type: ignore[arg-type]
            check_json_depth(value, limit, "body")
        return
    n = 0
    for bracket in brackets:
        i = data.find(bracket)  # type: ignore[arg-type]
        while i >= 0:
            n += 1
            if n > limit:
                check_json_depth(value, limit, "body")
                return
            i = data.find(bracket, i + 1)  # type: ignore[arg-type]
