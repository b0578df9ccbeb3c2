from __future__ import annotations

import pytest

from fantasize_rtc.errors import InvalidRequest, PayloadTooLarge
from fantasize_rtc.protocol import (
    Signal,
    check_json_depth,
    parse_json,
    validate_id,
    validate_metadata,
    validate_signal,
)


@pytest.mark.parametrize("value", ["a", "room-1", "A.b_c~d-9", "x" * 64])
def test_valid_ids(value: str) -> None:
    assert validate_id(value, "roomId") == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a/b", "../etc", "é", "a\n", 5, None, ["a"]])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(InvalidRequest):
        validate_id(value, "roomId")


def test_server_ids_are_reserved_unless_allowed() -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        validate_id("@echo", "peerId")
    assert validate_id("@echo", "to", allow_server=True) == "@echo"


def test_signal_shapes() -> None:
    assert validate_signal({"type": "offer", "payload": {"sdp": "v=0"}}) == Signal("offer", {"sdp": "v=0"})
    assert validate_signal({"type": "candidate", "payload": None, "to": "bob"}).to == "bob"
    cand = {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    assert validate_signal({"type": "candidate", "payload": cand}).payload == cand
    assert validate_signal({"type": "app:chat", "payload": {"text": "hi"}}).type == "app:chat"


@pytest.mark.parametrize(
    "signal",
    [
        None,
        "offer",
        {},
        {"type": ""},
        {"type": "has space"},
        {"type": "offer", "payload": {}},
        {"type": "answer", "payload": {"sdp": 1}},
        {"type": "candidate", "payload": {"sdpMid": "0"}},
        {"type": "candidate", "payload": {"candidate": "c", "sdpMLineIndex": -1}},
        {"type": "candidate", "payload": {"candidate": "c", "sdpMLineIndex": True}},
        {"type": "bye", "to": "@@"},
        {"type": "bye", "to": 7},
        # what the fast checks pass on to the full ones (validate_signal)
        {"type": ["offer"]},
        {"type": "candidate", "payload": {"candidate": "c", "sdpMLineIndex": 1.0}},
        {"type": "candidate", "payload": {"candidate": "c", "sdpMid": 0}},
        {"type": "offer", "payload": [{"sdp": "v=0"}]},
        {"type": "bye", "to": ["bob"]},
        {"type": "bye", "to": "bob!"},
        {"type": "bye", "to": "bob!"},  # refused again: only good ids are remembered
    ],
)
def test_invalid_signals(signal: object) -> None:
    with pytest.raises(InvalidRequest):
        validate_signal(signal)


def test_signals_of_subclasses_are_checked_as_their_base_types() -> None:
    class Kind(str):
        pass

    class Payload(dict):  # type: ignore[type-arg]
        pass

    class Index(int):
        pass

    cand = Payload(candidate="c", sdpMid=Kind("0"), sdpMLineIndex=Index(2))
    signal = validate_signal(Payload(type=Kind("candidate"), payload=cand, to=Kind("bob")))
    assert (signal.type, signal.payload, signal.to) == ("candidate", cand, "bob")
    assert validate_signal({"type": Kind("app:x"), "payload": None}).type == "app:x"
    assert validate_signal(signal) is signal


def test_depth_is_checked_without_recursion() -> None:
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="nested"):
        check_json_depth(deep, 32, "payload")
    check_json_depth({"a": [{"b": 1}]}, 3, "payload")


def test_parse_json_refuses_garbage_and_deep_nesting() -> None:
    # (bytes are UTF-8 only: not a surrogate encoded as UTF-8, not UTF-16 with its mark)
    for text in ("{", "", "\xff", "[" * 100_000 + "]" * 100_000, b"\xff\xfe", b'"\xed\xa0\x80"', b"\xff\xfe{\x00}\x00"):
        with pytest.raises(InvalidRequest):
            parse_json(text, max_depth=32)
    assert parse_json('{"a": 1}', max_depth=32) == {"a": 1}


def test_metadata_limits() -> None:
    assert validate_metadata(None, max_bytes=10, max_depth=4) == {}
    with pytest.raises(InvalidRequest):
        validate_metadata([1], max_bytes=100, max_depth=4)
    with pytest.raises(PayloadTooLarge):
        validate_metadata({"name": "x" * 100}, max_bytes=50, max_depth=4)
