"""The transports' JSON (``fantasize_rtc._json``): client frames parsed by msgspec, the payload
written back by msgspec and spliced into the relayed message. Everything must behave exactly like
the standard library path of the core (``protocol.parse_json`` and ``dumps``): same objects, same
refusals with the same errors, the same message on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fantasize_rtc import _json, create_rtc_server
from fantasize_rtc.errors import InvalidJson, InvalidRequest
from fantasize_rtc.protocol import parse_json, require_object, validate_signal

FRAMES = [
    '{"type":"signal","signal":{"type":"offer","to":"b","payload":{"sdp":"v=0\\r\\no=- 1 2 IN IP4 0.0.0.0\\r\\n"}}}',
    ' { "type" : "signal" , "signal" : { "payload" : { "sdp" : "x" } , "type" : "offer" } } \n',
    '{"type":"signal","signal":{"type":"candidate","payload":null}}',
    '{"type":"signal","signal":{"type":"x","payload":[1,2.5,-0,1e300,123456789012345678901234567890,{"a":"\\u00e9\\n\\"\\\\"}]}}',
    '{"type":"signal","signal":{"type":"x","payload":1,"payload":{"b":2}}}',  # the last key wins
    '{"type":"signal","signal":{"type":"x","payload":{"b":2}},"signal":{"type":"y"}}',
    '{"type":"signal","signal":{"type":"x","payload":{"b":2}},"signal":"not an object"}',
    '{"type":"signal","signal":{"type":"x","payload":"\u00e9\\u00e9 \U0001f600"},"id":7}',
    '{"type":"heartbeat"}',
    "{}",
    '{"type":"signal","signal":{}}',
]
#: What msgspec refuses and the strict standard library parse accepts (parsed by the fallback,
#: same values). Since both refuse NaN, Infinity, 1e400 and lone surrogates (issue 12) none is known;
#: the list stays so that one found later is pinned here.
FALLBACK: list[str] = []
BAD = [
    "[]",
    '"x"',
    "",
    "   ",
    "{",
    '{"',
    '{"a"',
    '{"a":',
    '{"a":1',
    '{"a":1,}',
    '{"a":1} x',
    '{"a" 1}',
    '{"a":"\x01"}',
    '{"signal":{"payload":' + "[" * 50 + "]" * 50 + "}}",
    # Not standard JSON (issue 12): a browser's JSON.parse or UTF-8 cannot carry them on.
    '{"type":"signal","signal":{"type":"x","payload":{"a":NaN}}}',
    '{"type":"signal","signal":{"type":"x","payload":{"b":-Infinity}}}',
    '{"type":"signal","signal":{"type":"x","payload":Infinity}}',
    '{"type":"signal","signal":{"type":"x","payload":[1,2.5,{"a":"\\ud800"}]}}',
    '{"type":"signal","signal":{"type":"x","payload":"\\udfff\\ud800"}}',
    '{"metadata":{"x":"a\\uDC00"}}',
    '{"type":"signal","signal":{"type":"x","payload":[1e400]}}',
    '{"type":"signal","signal":{"type":"x","payload":[-1e400]}}',
]


def _plain(text: str) -> dict[str, Any]:
    return require_object(parse_json(text, max_depth=32))


def _fast(text: str | bytes) -> tuple[dict[str, Any], bool]:
    value, fast = _json.parse(text, max_depth=32)
    return require_object(value), fast


def test_msgspec_is_installed() -> None:
    assert _json.HAVE_MSGSPEC  # a dependency: the fast path is what the benchmarks measure


def test_orjson_is_installed() -> None:
    assert _json.HAVE_ORJSON  # a dependency: it writes the payloads back (_json.encode)


@pytest.mark.parametrize("text", FRAMES + FALLBACK + BAD)
def test_utf8_bytes_parse_as_their_text(text: str) -> None:
    """The lean socket hands over a text frame's bytes, and HTTP bodies are bytes."""
    try:
        expected: Any = _json.parse(text, max_depth=32)
    except InvalidRequest as err:
        with pytest.raises(InvalidRequest) as fast:
            _json.parse(text.encode(), max_depth=32)
        assert str(fast.value) == str(err) and fast.value.code == err.code
    else:
        value, fast_flag = _json.parse(text.encode(), max_depth=32)
        assert (repr(value), fast_flag) == (repr(expected[0]), expected[1])


@pytest.mark.parametrize(
    "data", [b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}', b'{"a":1}\xe2\x82', b"\xff\xfe{\x00}\x00"]
)
def test_bytes_that_are_not_utf8_are_invalid_json(data: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        data.decode()
    with pytest.raises(InvalidJson):
        _json.parse(data, max_depth=32)


@pytest.mark.parametrize("text", FRAMES + FALLBACK)
def test_fast_parse_gives_the_same_object(text: str) -> None:
    for data in (text, text.encode("utf-8", "surrogatepass")):
        frame, fast = _fast(data)
        assert fast == (text in FRAMES)
        assert repr(frame) == repr(_plain(text))


@pytest.mark.parametrize("text", FRAMES + FALLBACK)
def test_encode_writes_back_what_parse_read(text: str) -> None:
    frame, fast = _fast(text)
    for value in (frame, frame.get("signal")):
        assert repr(json.loads(_json.encode(value, fast))) == repr(value)


@pytest.mark.parametrize("text", BAD)
def test_fast_parse_refuses_what_the_plain_parse_refuses_with_the_same_error(text: str) -> None:
    with pytest.raises(InvalidRequest) as plain:
        _plain(text)
    with pytest.raises(InvalidRequest) as fast:
        _fast(text)
    assert str(fast.value) == str(plain.value) and fast.value.code == plain.value.code


@pytest.mark.parametrize("text", [t for t in BAD if "NaN" in t or "Infinity" in t or "\\u" in t or "e400" in t])
def test_non_standard_json_is_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson):
        _fast(text.encode())


def test_surrogate_pairs_are_text_and_pass() -> None:
    frame, _ = _fast('{"x":"\\ud83d\\ude00 \\uD83D\\uDE00"}')
    assert frame == {"x": "\U0001f600 \U0001f600"}
    assert _plain('{"x":"\\\\ud800"}') == {"x": "\\ud800"}  # an escaped backslash, then text


@pytest.mark.parametrize("depth", [30, 300])
def test_deep_values_round_trip(depth: int) -> None:
    deep = "[" * depth + "]" * depth
    value, fast = _json.parse(deep, max_depth=depth)
    assert json.loads(_json.encode(value, fast)) == value


class _Channel:
    kind = "ws"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def send(self, text: str) -> bool:
        self.texts.append(text)
        return True

    async def close(self, code: int, reason: str) -> None:
        pass


def _has_payload(text: str) -> bool:
    signal = json.loads(text).get("signal")
    return isinstance(signal, dict) and "payload" in signal


@pytest.mark.parametrize("text", [t for t in FRAMES + FALLBACK if _has_payload(t)])
async def test_relay_of_the_written_back_payload_sends_the_same_message(text: str) -> None:
    async with create_rtc_server(rate_limit_per_sec=0) as rtc:
        await rtc.connect_peer("r", "a")
        await rtc.connect_peer("r", "b")
        channel = _Channel()
        await rtc.attach_channel("r", "b", channel)
        frame, fast = _fast(text)
        signal = dict(frame["signal"], to="b")
        await rtc.relay("r", "a", validate_signal(signal, payload_json=_json.encode(signal["payload"], fast)))
        await rtc.relay("r", "a", signal)
        fast_msg, plain_msg = (json.loads(t) for t in channel.texts[-2:])
        fast_msg.pop("ts")
        plain_msg.pop("ts")
        assert repr(fast_msg) == repr(plain_msg)
