"""The core room rules, with a fake clock: no sleeps, no I/O."""

from __future__ import annotations

import pytest

from fantasize_rtc.errors import PeerIdTaken, PeerNotFound, RoomFull
from fantasize_rtc.rooms import Room
from tests.helpers import FakeClock


def test_join_until_full(clock: FakeClock) -> None:
    room = Room("r", 2, {}, clock())
    room.join("a", {}, clock(), token="ta")
    room.join("b", {"name": "Bob"}, clock(), token="tb")
    with pytest.raises(RoomFull):
        room.join("c", {}, clock(), token="tc")
    assert [p.peer_id for p in room.snapshot().peers] == ["a", "b"]
    assert room.snapshot().peers[1].metadata == {"name": "Bob"}


def test_taken_id_needs_its_token(clock: FakeClock) -> None:
    room = Room("r", 2, {}, clock())
    room.join("a", {}, clock(), token="ta")
    with pytest.raises(PeerIdTaken):
        room.join("a", {}, clock(), token="other")
    with pytest.raises(PeerIdTaken):
        room.join("a", {}, clock(), token="other", proof="wrong")
    result = room.join("a", {"v": 2}, clock(), token="new", proof="ta")
    assert result.replaced_token == "ta"
    assert result.token == "ta"  # a reconnecting peer keeps its token
    assert len(room) == 1


def test_trusted_replace_issues_new_token(clock: FakeClock) -> None:
    room = Room("r", 1, {}, clock())
    room.join("a", {}, clock(), token="ta")
    result = room.join("a", {}, clock(), token="tb", trusted=True)
    assert (result.token, result.replaced_token) == ("tb", "ta")


def test_touch_and_expire(clock: FakeClock) -> None:
    room = Room("r", 8, {}, clock())
    room.join("a", {}, clock(), token="ta")
    room.join("b", {}, clock(), token="tb")
    clock.advance(1000)
    assert room.touch("a", clock()) == clock()
    clock.advance(1500)
    assert room.expired(clock(), 2000) == ["b"]
    assert room.expired(clock(), 3000) == []
    with pytest.raises(PeerNotFound):
        room.touch("zed", clock())


def test_recipients(clock: FakeClock) -> None:
    room = Room("r", 8, {}, clock())
    for pid in "abc":
        room.join(pid, {}, clock(), token="t" + pid)
    assert room.recipients("a", None) == ["b", "c"]
    assert room.recipients("a", "c") == ["c"]
    with pytest.raises(PeerNotFound):
        room.recipients("a", "zed")
    with pytest.raises(PeerNotFound):
        room.recipients("zed", None)


def test_leave_and_server_peers(clock: FakeClock) -> None:
    room = Room("r", 1, {}, clock())
    room.join("a", {}, clock(), token="ta")
    assert room.add_server_peer("@echo", clock())
    assert not room.add_server_peer("@echo", clock())
    assert room.snapshot().peer_ids == ("a", "@echo")
    assert len(room) == 1  # server peers never count against capacity
    room.leave("a")
    assert room.empty  # ... nor keep a room open
    with pytest.raises(PeerNotFound):
        room.leave("a")
    assert room.remove_server_peer("@echo")
