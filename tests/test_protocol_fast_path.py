"""The relay's fast path: a WebSocket frame parsed with the payload's raw text kept
(``parse_signal_frame``), and a relay that sends that text on instead of encoding it again.
Both must behave exactly like the plain path: same objects, same errors, same message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fantasize_rtc import create_rtc_server
from fantasize_rtc.errors import InvalidRequest
from fantasize_rtc.protocol import parse_json, parse_signal_frame, require_object, validate_signal

FRAMES = [
    '{"type":"signal","signal":{"type":"offer","to":"b","payload":{"sdp":"v=0\\r\\no=- 1 2 IN IP4 0.0.0.0\\r\\n"}}}',
    ' { "type" : "signal" , "signal" : { "payload" : { "sdp" : "x" } , "type" : "offer" } } \n',
    '{"type":"signal","signal":{"type":"candidate","payload":null}}',
    '{"type":"signal","signal":{"type":"x","payload":[1,2.5,{"a":"\\ud800"}]}}',
    '{"type":"signal","signal":{"type":"x","payload":1,"payload":{"b":2}}}',  # the last key wins
    '{"type":"signal","signal":{"type":"x","payload":{"b":2}},"signal":{"type":"y"}}',
    '{"type":"signal","signal":{"type":"x","payload":{"b":2}},"signal":"not an object"}',
    '{"type":"signal","signal":{"type":"x","payload":"\u00e9\\u00e9"},"id":7}',
    '{"type":"heartbeat"}',
    "{}",
    '{"type":"signal","signal":{}}',
    '{"type":"signal","signal":{"payload":{"a":NaN}}}',
]
BAD = [
    "[]",
    '"x"',
    "NaN",
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
]


def _plain(text: str) -> dict[str, Any]:
    return require_object(parse_json(text, max_depth=32))


@pytest.mark.parametrize("text", FRAMES)
def test_fast_parse_gives_the_same_object_and_the_payload_text(text: str) -> None:
    frame, raw = parse_signal_frame(text, max_depth=32)
    assert json.dumps(frame) == json.dumps(_plain(text))
    signal: Any = frame.get("signal")
    if raw is None:
        assert not isinstance(signal, dict) or "payload" not in signal
    else:
        assert json.dumps(json.loads(raw)) == json.dumps(signal["payload"])


@pytest.mark.parametrize("text", BAD)
def test_fast_parse_refuses_what_the_plain_parse_refuses_with_the_same_error(text: str) -> None:
    with pytest.raises(InvalidRequest) as plain:
        _plain(text)
    with pytest.raises(InvalidRequest) as fast:
        parse_signal_frame(text, max_depth=32)
    assert str(fast.value) == str(plain.value)


class _Channel:
    kind = "ws"

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send(self, text: str) -> bool:
        self.texts.append(text)
        return True

    async def close(self, code: int, reason: str) -> None:
        pass


@pytest.mark.parametrize("text", FRAMES[:5] + FRAMES[7:8])
async def test_relay_of_the_raw_payload_sends_the_same_message(text: str) -> None:
    async with create_rtc_server(rate_limit_per_sec=0) as rtc:
        await rtc.connect_peer("r", "a")
        await rtc.connect_peer("r", "b")
        channel = _Channel()
        await rtc.attach_channel("r", "b", channel)
        frame, raw = parse_signal_frame(text, max_depth=32)
        signal = dict(frame["signal"], to="b")
        await rtc.relay("r", "a", validate_signal(signal, payload_json=raw))
        await rtc.relay("r", "a", signal)
        fast, plain = (json.loads(t) for t in channel.texts[-2:])
        fast.pop("ts")
        plain.pop("ts")
        assert json.dumps(fast) == json.dumps(plain)
