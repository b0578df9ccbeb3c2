"""JSON for the transports: msgspec when it is installed, the standard library otherwise.

The core (:mod:`fantasize_rtc.protocol`) parses with the standard library only; the transports
parse client frames and bodies here, on the relay's hot path, where msgspec reads a 3 KB SDP
offer several times faster than :func:`json.loads` and writes its payload back faster than
:func:`protocol.dumps` (BENCHMARKS.md). msgspec, unlike orjson, keeps integers past 64 bits exact.

Results are the standard library's, exactly: whatever msgspec refuses is parsed again by
:func:`protocol.parse_json`, so the accepted inputs, the values and the errors do not depend on
msgspec. Both are strict: ``NaN``, ``Infinity``, ``1e400``, lone surrogates (``"\\ud800"``) and
malformed text are refused with ``invalid_json``; what the fallback accepts (integers too large
for msgspec, nesting msgspec gives up on) is written back by the standard library (``fast`` is
False).
"""

from __future__ import annotations

from typing import Annotated, Any

from .protocol import check_parsed_depth, dumps, parse_json

__all__ = ["HAVE_MSGSPEC", "encode", "encode_bytes", "parse", "signal_frame"]

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is a dependency; this is the fallback's fallback
    msgspec = None  # type: ignore[assignment]

HAVE_MSGSPEC = msgspec is not None
if msgspec is not None:
    _decode = msgspec.json.Decoder().decode
    _encode = msgspec.json.Encoder().encode
    _Error = msgspec.MsgspecError

    # The signal frames browsers send most, as typed decoders read them (signal_frame). Every
    # field is typed and nothing else is allowed, so that a decode checks all of the text but the
    # payload, which the payload's own decoder checks: msgspec only skips what it does not read
    # into something (a Raw, an unknown field), and a skip does not check that numbers fit.
    class _Signal(msgspec.Struct, forbid_unknown_fields=True):
        type: str
        payload: msgspec.Raw
        to: str | None = None

    class _SignalFrame(msgspec.Struct, forbid_unknown_fields=True):
        type: str
        signal: _Signal
        id: str | int | msgspec.UnsetType = msgspec.UNSET  # ("id": null is refused: the ack carries it back)

    class _Description(msgspec.Struct, forbid_unknown_fields=True):  # an offer's or answer's payload
        sdp: str
        type: str | None = None

    class _Candidate(msgspec.Struct, forbid_unknown_fields=True):  # RTCIceCandidate.toJSON()
        candidate: str
        sdpMid: str | None = None
        sdpMLineIndex: Annotated[int, msgspec.Meta(ge=0)] | None = None
        usernameFragment: str | None = None

    _frame_decode = msgspec.json.Decoder(_SignalFrame).decode
    _payload_decoders = {
        "offer": msgspec.json.Decoder(_Description).decode,
        "answer": msgspec.json.Decoder(_Description).decode,
        "candidate": msgspec.json.Decoder(_Candidate).decode,
    }


def signal_frame(data: str) -> tuple[str, str | None, str, str | int | None] | None:
    """``(signal type, to, the payload's JSON text, the frame's id or None)`` of a signal frame
    as browsers send most of them: ``{"type": "signal", "signal": {type, payload, to?}, "id"?}``
    with an offer's, answer's or candidate's payload as the browser's ``toJSON()`` writes it.

    Typed decoders check all of it (the same JSON the standard library accepts, the payload's
    shape as ``validate_signal`` requires it) without making the payload's objects, and the
    payload's text is cut out of the frame as the client wrote it: the relay neither parses
    the SDP into a dict nor writes it back (BENCHMARKS.md). None for any other frame, a frame
    these decoders refuse, or one that names ``"payload"`` twice (the first would only have
    been skipped): :func:`parse` then reads it, with the general checks and their errors.
    The type and ``to`` are left to :func:`protocol.signal_from_json` to check."""
    if msgspec is None or data.count('"payload"') != 1:
        return None
    try:
        frame = _frame_decode(data)
        if frame.type != "signal":
            return None
        signal = frame.signal
        check = _payload_decoders.get(signal.type)
        if check is None:
            return None
        payload = signal.payload
        check(payload)
    except (_Error, RecursionError, UnicodeError):  # (a str with a lone surrogate: not from a socket)
        return None
    frame_id = frame.id
    return signal.type, signal.to, bytes(payload).decode(), None if frame_id is msgspec.UNSET else frame_id


def parse(data: str | bytes, *, max_depth: int) -> tuple[Any, bool]:
    """``(value, fast)``: the parsed client JSON and whether msgspec read it (then :func:`encode`
    may write it back with msgspec too). Raises :class:`InvalidRequest` like ``parse_json``."""
    if msgspec is None:
        return parse_json(data, max_depth=max_depth), False
    try:
        value = _decode(data)
    except (_Error, RecursionError):
        return parse_json(data, max_depth=max_depth), False
    check_parsed_depth(data, value, max_depth)
    return value, True


def encode_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of a value the server made from checked parts (an answer), by msgspec
    when it can (the same JSON value as :func:`protocol.dumps`, several times faster)."""
    if msgspec is not None:
        try:
            return _encode(value)
        except (_Error, RecursionError, TypeError, ValueError):  # e.g. an int past 64 bits
            pass
    return dumps(value).encode()


def encode(value: Any, fast: bool) -> str:
    """Compact JSON text of a value :func:`parse` returned (``fast`` as it said)."""
    if fast and msgspec is not None:
        try:
            return _encode(value).decode()
        except (_Error, RecursionError):  # not expected for what msgspec itself read; be safe
            pass
    return dumps(value)
