"""JSON for the transports: msgspec when it is installed, the standard library otherwise.

The core (:mod:`fantasize_rtc.protocol`) parses with the standard library only; the transports
parse client frames and bodies here, on the relay's hot path, where msgspec reads a 3 KB SDP
offer several times faster than :func:`json.loads` and writes its payload back faster than
:func:`protocol.dumps` (BENCHMARKS.md). msgspec, unlike orjson, keeps integers past 64 bits exact.
orjson writes a payload back faster still (a 3 KB SDP in about half msgspec's instructions), so
:func:`encode` uses it when it is installed; what it will not write (an integer past 64 bits,
deep nesting) msgspec writes. Either way it is the JSON of the same value.

Results are the standard library's, exactly: whatever msgspec refuses is parsed again by
:func:`protocol.parse_json`, so the accepted inputs, the values and the errors do not depend on
msgspec. Both are strict: ``NaN``, ``Infinity``, ``1e400``, lone surrogates (``"\\ud800"``) and
malformed text are refused with ``invalid_json``; what the fallback accepts (integers too large
for msgspec, nesting msgspec gives up on) is written back by the standard library (``fast`` is
False).
"""

from __future__ import annotations

from typing import Any

from .protocol import check_parsed_depth, dumps, parse_json

__all__ = ["HAVE_MSGSPEC", "HAVE_ORJSON", "encode", "encode_bytes", "parse"]

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is a dependency; this is the fallback's fallback
    msgspec = None  # type: ignore[assignment]

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; msgspec writes payloads without it
    orjson = None  # type: ignore[assignment]

HAVE_MSGSPEC = msgspec is not None
HAVE_ORJSON = orjson is not None
if orjson is not None:
    _dumps = orjson.dumps
    _DumpError = orjson.JSONEncodeError
if msgspec is not None:
    _decode = msgspec.json.Decoder().decode
    _encode = msgspec.json.Encoder().encode
    _Error = msgspec.MsgspecError


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
    if fast and orjson is not None:
        try:
            return _dumps(value).decode()
        except (_DumpError, RecursionError):  # an int past 64 bits, nesting past orjson's limit
            pass
    if fast and msgspec is not None:
        try:
            return _encode(value).decode()
        except (_Error, RecursionError):  # not expected for what msgspec itself read; be safe
            pass
    return dumps(value)
