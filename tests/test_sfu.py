"""Group calls through the server (``@sfu``): real aiortc members in a room on a real server.

What is checked is what a member sees: the encoded frames that reach a subscriber are the bytes
its publisher sent (nothing transcoded), a subscriber's keyframe request makes the publisher send
one (and many requests make few), members come and go (receive slots, renegotiation), and bad input gets a
clear error from ``@sfu`` while nothing is left behind.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from fantasize_rtc.call import GroupCall
from fantasize_rtc.client import RtcClient, split_candidates
from fantasize_rtc.errors import InvalidRequest
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.media import session as session_module
from fantasize_rtc.media._aiortc_compat import keyframe_requests, tap_decoder
from fantasize_rtc.media.events import MEDIA_PUBLISHED, MEDIA_UNPUBLISHED, RECORDING_SAVED
from fantasize_rtc.media.record import is_keyframe, probe_file
from fantasize_rtc.media.sfu import SUBSCRIBER_BACKLOG, GroupKey
from tests.helpers import wait_for
from tests.media_helpers import EncodedVideo, SmallVideo, Tone, encode_vp8, other_fds, udp_sockets

ROOM = "call"


class Received:
    """One track a member receives: decoded frames counted, or encoded frames kept (tapped)."""

    def __init__(self, track: MediaStreamTrack, who: dict[str, Any] | None, encoded: asyncio.Queue[Any] | None) -> None:
        self.track, self.who = track, who
        self.frames = 0
        self.first_at: float | None = None
        self.encoded: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._run(encoded))

    async def _run(self, encoded: asyncio.Queue[Any] | None) -> None:
        while True:
            if encoded is not None:
                item = await encoded.get()
                if item is None:
                    return
                self.encoded.append(item[1].data)
            else:
                try:
                    await self.track.recv()
                except MediaStreamError:
                    return
            self.frames += 1
            if self.first_at is None:
                self.first_at = time.monotonic()


class CallMember:
    """A room member with an aiortc peer connection in the room's group call."""

    def __init__(self, url: str, name: str, tap: bool = False) -> None:
        self.name = name
        self.client = RtcClient(url, transport="ws", auto_heartbeat=False)
        self.pc = RTCPeerConnection()
        self.call = GroupCall(self.client, self.pc)
        self.received: list[Received] = []
        self.errors: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.failures: list[Exception] = []
        self._task: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            encoded: asyncio.Queue[Any] | None = None
            if tap and track.kind == "video":
                transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
                encoded = asyncio.Queue()
                assert tap_decoder(transceiver.receiver, encoded)
            self.received.append(Received(track, self.call.who(track), encoded))

    async def connect(self) -> None:
        await self.client.connect(ROOM, self.name)
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def join(self, *tracks: MediaStreamTrack, **options: Any) -> None:
        await self.connect()
        for track in tracks:
            self.pc.addTrack(track)
        await self.call.join(**options)

    async def _pump(self) -> None:
        async for message in self.client.messages():
            if message.get("type") == "error":
                self.errors.append(message)
            try:
                handled = await self.call.handle(message)
            except Exception as exc:  # a test fails on it, with what it was, rather than hang
                self.failures.append(exc)
                raise
            if not handled:
                self.messages.append(message)

    def from_peer(self, peer_id: str, kind: str = "video") -> list[Received]:
        return [
            r
            for r in self.received
            if r.track.kind == kind and (self.call.who(r.track) or r.who or {}).get("peerId") == peer_id
        ]

    def frames_from(self, peer_id: str, kind: str = "video") -> int:
        return sum(r.frames for r in self.from_peer(peer_id, kind))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for received in self.received:
            received.task.cancel()
        await self.pc.close()
        await self.client.close()


@pytest.fixture
async def members(client: TestClient) -> Any:  # type: ignore[type-arg]
    made: list[CallMember] = []
    url = str(client.make_url("")).rstrip("/")

    def make(name: str, tap: bool = False) -> CallMember:
        member = CallMember(url, name, tap)
        made.append(member)
        return member

    yield make
    for member in made:
        await member.close()


def _threads() -> int:
    """Threads, but for the event loop's default executor (a pool: its workers stay for reuse)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def _has_frames(member: CallMember, peer_id: str, count: int) -> bool:
    return member.frames_from(peer_id) >= count


def session_of(client: TestClient, peer_id: str) -> Any:  # type: ignore[type-arg]
    return next(
        (s for s in client.app[MEDIA_KEY].sessions() if s.owner and s.owner.peer_id == peer_id and not s.closed), None
    )


async def test_subscribers_get_the_publishers_bytes_starting_at_a_keyframe(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    sent = encode_vp8(90)
    hashes = [hashlib.sha256(f).digest() for f in sent]
    alice, bob, carol = members("alice"), members("bob", tap=True), members("carol", tap=True)
    published: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(MEDIA_PUBLISHED, published.append)
    await alice.join(EncodedVideo(sent))
    await bob.join(Tone())
    await carol.join(Tone())
    member: CallMember
    for member in (bob, carol):
        await wait_for(functools.partial(_has_frames, member, "alice", 45), 20, message=f"{member.name} gets alice")
        [received] = member.from_peer("alice")
        got = [hashlib.sha256(f).digest() for f in received.encoded]
        assert is_keyframe("VP8", received.encoded[0]), "a subscriber starts at a keyframe"
        start = hashes.index(got[0])
        expected = [hashes[(start + i) % len(hashes)] for i in range(len(got))]
        assert got == expected, "the frames forwarded are the frames sent, in order, none changed or lost"
    # Every member's snapshot shows who publishes what.
    snapshot = await bob.client.snapshot()
    publishers = {p["peerId"]: sorted(t["kind"] for t in p["tracks"]) for p in snapshot["media"]["publishers"]}
    assert publishers == {"alice": ["video"], "bob": ["audio"], "carol": ["audio"]}
    assert {(e.peer_id, e.kind, e.codec) for e in published} >= {("alice", "video", "video/VP8")}
    report = session_of(client, "alice").report()["forwarding"]["published"][0]
    assert report["codec"] == "video/VP8" and report["subscribers"] == 2 and report["framesIn"] >= 45
    metrics = await (await client.get("/metrics", headers={"Authorization": "Bearer admin-secret"})).text()
    for line in (
        'fantasize_rtc_forwarding_publications{kind="video"} 1.0',
        'fantasize_rtc_forwarding_publications{kind="audio"} 2.0',
        'fantasize_rtc_forwarding_subscribers{kind="video"} 2.0',
        'fantasize_rtc_forwarding_subscribers{kind="audio"} 4.0',
    ):
        assert line in metrics.splitlines(), line


async def test_keyframe_requests_reach_the_publisher_rate_limited(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    alice, bob = members("alice"), members("bob", tap=True)
    await alice.join(SmallVideo())
    await bob.join(Tone())
    await wait_for(lambda: bob.frames_from("alice") >= 30, 20, message="bob gets alice's video")
    [received] = bob.from_peer("alice")
    transceiver = next(t for t in bob.pc.getTransceivers() if t.receiver.track is received.track)
    publication = session_of(client, "alice").mode.published[0]
    # aiortc's encoder makes a keyframe only when asked: count them, ask once, see one come.
    before = sum(is_keyframe("VP8", f) for f in received.encoded)
    requested = publication.keyframes_requested
    # the subscription's own request opened an interval: a request now must go out at once
    await wait_for(lambda: publication.keyframe_request_wait() == 0, 5, message="the rate limit open")
    for request in keyframe_requests(transceiver.receiver):
        await request
    await wait_for(lambda: sum(is_keyframe("VP8", f) for f in received.encoded) > before, 5, message="a keyframe")
    assert publication.keyframes_requested >= requested + 1
    # Eight requests at once make at most two keyframe requests to the publisher (now and one
    # for the end of the interval), not eight.
    await wait_for(lambda: publication.keyframe_request_wait() == 0, 5, message="the rate limit open")
    requested, asked = publication.keyframes_requested, publication.keyframe_requests
    for _ in range(8):
        for request in keyframe_requests(transceiver.receiver):
            await request
    await wait_for(lambda: publication.keyframe_requests >= asked + 8, 5, message="the requests arrive")
    await wait_for(lambda: publication.keyframe_request_wait() == 0, 5, message="the folded request sent")
    assert 1 <= publication.keyframes_requested - requested <= 2


async def test_members_leave_and_join_late_with_renegotiation(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    unpublished: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(MEDIA_UNPUBLISHED, unpublished.append)
    alice, bob, carol = members("alice"), members("bob"), members("carol")
    await alice.join(SmallVideo(), Tone())
    await bob.join(SmallVideo())
    await wait_for(lambda: bob.frames_from("alice") >= 10 and alice.frames_from("bob") >= 10, 20, message="a and b")
    # carol joins late: her offer's receive slots (one per track the snapshot lists) are filled in
    # the server's answer, so what alice and bob send plays without a renegotiation.
    joined = time.monotonic()
    await carol.join(SmallVideo())
    await wait_for(lambda: carol.frames_from("alice") and carol.frames_from("bob"), 10, message="carol sees both")
    assert carol.call.offers == 0 and session_of(client, "carol").negotiations == 0
    assert sorted((t["peerId"], t["kind"]) for t in carol.call.tracks.values()) == [
        ("alice", "audio"),
        ("alice", "video"),
        ("bob", "video"),
    ]
    first = max(r.first_at or 0 for r in carol.received if r.track.kind == "video")
    print(f"the late joiner's first pictures {first - joined:.2f} s after she offered")
    await wait_for(lambda: alice.frames_from("carol") and bob.frames_from("carol"), 10, message="both see carol")
    # Each publisher's tracks are one stream (a=msid), named by its peer id: what a browser groups.
    answer = carol.pc.remoteDescription.sdp
    assert answer.count("a=msid:alice ") == 2 and answer.count("a=msid:bob ") == 1, answer
    assert carol.frames_from("alice", "audio") > 0 or await _wait_audio(carol, "alice")
    # alice leaves: the others get an offer without her tracks and go on with each other.
    await alice.call.leave()
    await wait_for(lambda: {e.peer_id for e in unpublished} == {"alice"} and len(unpublished) == 2, 10, message="unpub")
    await wait_for(lambda: not any(t.get("peerId") == "alice" for t in bob.call.tracks.values()), 10, message="bob")
    await wait_for(lambda: not any(t.get("peerId") == "alice" for t in carol.call.tracks.values()), 10, message="carol")
    before = bob.frames_from("carol"), carol.frames_from("bob")
    await wait_for(
        lambda: bob.frames_from("carol") > before[0] + 10 and carol.frames_from("bob") > before[1] + 10,
        10,
        message="the rest go on",
    )
    snapshot = await bob.client.snapshot()
    assert sorted(p["peerId"] for p in snapshot["media"]["publishers"]) == ["bob", "carol"]
    await bob.call.leave()
    await carol.call.leave()
    await wait_for(lambda: not client.app[MEDIA_KEY].forwarding.groups, 10, message="the call's group to go")
    assert "media" not in await bob.client.snapshot()


async def _wait_audio(member: CallMember, peer_id: str) -> bool:
    await wait_for(lambda: member.frames_from(peer_id, "audio") > 0, 10, message="audio")
    return True


def _publications(client: TestClient) -> int:  # type: ignore[type-arg]
    group = client.app[MEDIA_KEY].forwarding.groups.get(GroupKey("room", ROOM))
    return len(group.publications) if group is not None else 0


async def test_receive_slots_that_do_not_fit_are_left_and_their_tracks_come_by_renegotiation(
    client: TestClient,
    members: Any,  # type: ignore[type-arg]
) -> None:
    alice, bob = members("alice"), members("bob")
    await alice.join(SmallVideo(), Tone())
    await wait_for(lambda: session_of(client, "alice") and session_of(client, "alice").connected, 10, message="up")
    await wait_for(lambda: _publications(client) == 2, 10, message="alice's tracks published")
    # bob's slots: audio (fits alice's Opus), video that takes H.264 only (alice sends VP8), and
    # one audio slot more than the call publishes. (His camera's section offers VP8: he can receive
    # it, just not on that slot.)
    await bob.connect()
    bob.pc.addTrack(SmallVideo())
    audio = bob.pc.addTransceiver("audio", direction="recvonly")
    h264_only = bob.pc.addTransceiver("video", direction="recvonly")
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    h264_only.setCodecPreferences(h264)
    spare = bob.pc.addTransceiver("audio", direction="recvonly")
    await bob.call.join(receive_slots=False)
    await wait_for(bob.call.joined.is_set, 10, message="bob's answer")
    assert [info["kind"] for info in bob.call.tracks.values()] == ["audio"]
    assert audio.currentDirection == "recvonly"
    assert h264_only.currentDirection == "inactive" and spare.currentDirection == "inactive"
    # alice's VP8 comes on a section of the server's offer, once bob is connected.
    await wait_for(lambda: bob.frames_from("alice") >= 5, 20, message="alice's video by renegotiation")
    assert bob.call.offers >= 1
    assert bob.frames_from("alice", "audio") > 0 or await _wait_audio(bob, "alice")


async def test_a_slot_whose_publisher_leaves_before_the_joiner_connects_is_retired(
    client: TestClient,
    members: Any,  # type: ignore[type-arg]
) -> None:
    alice, bob, carol = members("alice"), members("bob"), members("carol")
    await alice.join(SmallVideo())
    await wait_for(lambda: _publications(client) == 1, 10, message="alice's video published")
    # bob holds @sfu's answer (his connection cannot come up without it) until alice has left.
    held: list[dict[str, Any]] = []
    handle = bob.call.handle

    async def holding(message: dict[str, Any]) -> bool:
        signal = message.get("signal") or {}
        if message.get("fromPeerId") == "@sfu" and signal.get("type") == "answer" and not held:
            held.append(message)
            return True
        return bool(await handle(message))

    bob.call.handle = holding  # type: ignore[method-assign]
    await bob.join(Tone())
    await wait_for(lambda: held, 10, message="@sfu's answer")
    assert [t["peerId"] for t in held[0]["signal"]["payload"]["tracks"].values()] == ["alice"]
    await alice.call.leave()
    await wait_for(lambda: not client.app[MEDIA_KEY].forwarding.groups, 10, message="the call gone with alice")
    await handle(held[0])
    # Connected, bob gets an offer that makes alice's slot inactive, and he is the call now.
    await wait_for(lambda: bob.call.offers >= 1 and not bob.call.tracks, 10, message="the slot retired")
    mode = session_of(client, "bob").mode
    assert mode.forwarded == {} and len(mode.idle) == 1
    assert [m.session for m in client.app[MEDIA_KEY].forwarding.groups[GroupKey("room", ROOM)].members] == [
        session_of(client, "bob")
    ]
    # carol joins that call: bob receives her, and she him (the idle section is reused for her).
    await carol.join(SmallVideo())
    await wait_for(lambda: bob.frames_from("carol") >= 3, 20, message="bob sees carol")
    assert len(mode.idle) == 0


def _pcmu_only(sdp: str) -> str:
    """The offer with PCMU as its only audio codec."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            lines.append(" ".join([*line.split()[:3], "0"]))
        elif not line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) or line.startswith("a=rtpmap:0 "):
            lines.append(line)
    return "\r\n".join(lines) + "\r\n"


async def test_bad_offers_and_answers_get_clear_errors(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    sockets = udp_sockets()
    alice = members("alice")
    await alice.connect()  # in the room, not in the call
    pc = RTCPeerConnection()
    try:
        pc.addTrack(Tone())
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        # Audio in a codec the server does not forward.
        await alice.client.signal({"type": "offer", "payload": {"sdp": _pcmu_only(offer)}}, to="@sfu")
        await wait_for(lambda: alice.errors, 10, message="an error")
        assert (
            "audio/PCMU" in alice.errors[-1]["error"]["message"] and alice.errors[-1]["error"]["fromPeerId"] == "@sfu"
        )
        # Sections not in one BUNDLE group.
        unbundled = "".join(line for line in offer.splitlines(keepends=True) if not line.startswith("a=group:"))
        await alice.client.signal({"type": "offer", "payload": {"sdp": unbundled}}, to="@sfu")
        await wait_for(lambda: len(alice.errors) >= 2, 10, message="a second error")
        assert "BUNDLE" in alice.errors[-1]["error"]["message"]
        # An answer when the server sent no offer.
        await alice.client.signal({"type": "answer", "payload": {"sdp": "v=0\r\n"}}, to="@sfu")
        await wait_for(lambda: len(alice.errors) >= 3, 10, message="a third error")
        assert "no offer" in alice.errors[-1]["error"]["message"]
        assert all("Traceback" not in e["error"]["message"] for e in alice.errors)
        assert isinstance(alice.call.error, InvalidRequest)
    finally:
        await pc.close()
    await wait_for(lambda: not client.app[MEDIA_KEY].sessions(), 10, message="no session left")
    await wait_for(lambda: udp_sockets() <= sockets, 10, message="no socket left")
    assert client.app[MEDIA_KEY].forwarding.groups == {}


async def test_a_member_that_never_answers_is_ended_and_the_call_goes_on(
    client: TestClient,
    members: Any,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[type-arg]
) -> None:
    monkeypatch.setattr(session_module, "ANSWER_TIMEOUT_SECONDS", 1.5)
    alice, bob, carol = members("alice"), members("bob"), members("carol")
    await alice.join(SmallVideo())
    await bob.join(SmallVideo())
    await wait_for(lambda: bob.frames_from("alice") >= 5, 20, message="bob gets alice")
    # carol's client stops answering the server's offers (it sends its own offer only).
    handle = carol.call.handle

    async def deaf(message: dict[str, Any]) -> bool:
        signal = message.get("signal") or {}
        if message.get("fromPeerId") == "@sfu" and signal.get("type") == "offer":
            return True
        return bool(await handle(message))

    carol.call.handle = deaf  # type: ignore[method-assign]
    await carol.join(Tone(), receive_slots=False)  # what she receives needs the server's offer
    await wait_for(lambda: session_of(client, "carol") is None and _ended(client, "carol"), 15, message="carol ended")
    assert _ended(client, "carol") == "negotiation_failed"
    before = bob.frames_from("alice")
    await wait_for(lambda: bob.frames_from("alice") > before + 10, 10, message="the call goes on")


def _ended(client: TestClient, peer_id: str) -> str | None:  # type: ignore[type-arg]
    for owner, report in client.app[MEDIA_KEY].ended_reports():
        if owner is not None and owner.peer_id == peer_id and report["mode"] == "sfu":
            return str(report["closeReason"])
    return None


async def test_the_answer_of_a_renegotiation_is_checked(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    alice, bob = members("alice"), members("bob")
    await alice.join(SmallVideo())
    handle = bob.call.handle

    async def garbled(message: dict[str, Any]) -> bool:
        signal = message.get("signal") or {}
        if message.get("fromPeerId") == "@sfu" and signal.get("type") == "offer":
            await bob.client.signal({"type": "answer", "payload": {"sdp": "v=0\r\nm=nonsense\r\n"}}, to="@sfu")
            return True
        return bool(await handle(message))

    bob.call.handle = garbled  # type: ignore[method-assign]
    await bob.join(Tone(), receive_slots=False)  # alice's video comes by the server's offer
    await wait_for(lambda: _ended(client, "bob"), 15, message="bob's session ends")
    assert _ended(client, "bob") == "negotiation_failed"
    assert session_of(client, "alice") is not None


async def test_session_report_and_answer_payload(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    alice = members("alice")
    await alice.join(SmallVideo())
    await wait_for(alice.call.joined.is_set, 10, message="answer")
    assert alice.call.session_id and alice.call.tracks == {}
    await wait_for(lambda: session_of(client, "alice") and session_of(client, "alice").connected, 10, message="up")
    report = session_of(client, "alice").report()
    assert report["mode"] == "sfu" and report["forwarding"]["group"] == ROOM


async def test_recording_a_call_keeps_each_publishers_frames_as_they_are(
    client: TestClient,
    members: Any,  # type: ignore[type-arg]
) -> None:
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(RECORDING_SAVED, saved.append)
    alice, bob = members("alice"), members("bob")
    await alice.join(SmallVideo(), Tone(), record=True)
    await bob.join(SmallVideo(), record=True)
    await wait_for(lambda: bob.frames_from("alice") >= 45 and alice.frames_from("bob") >= 45, 20, message="media")
    report = session_of(client, "alice").report()["recording"]
    assert report["passthrough"] == {"video": True, "audio": True} and report["format"] == "webm"
    await alice.call.leave()
    await bob.call.leave()
    await wait_for(lambda: len(saved) == 2, 20, message="two recordings saved")
    by_peer = {s.peer_id: s for s in saved}
    assert set(by_peer) == {"alice", "bob"} and all(s.room_id == ROOM for s in saved)
    assert set(by_peer["alice"].codecs) == {"vp8", "opus"} and set(by_peer["bob"].codecs) == {"vp8"}
    for recording in saved:
        duration, _codecs = probe_file(Path(recording.path))
        assert duration >= 1.0, f"{recording.peer_id}'s recording plays {duration:.2f} s"
    listing = await (
        await client.get("/rtc/recordings", headers={"Authorization": f"Bearer {bob.client.token}"})
    ).json()
    assert [r["roomId"] for r in listing["recordings"]] == [ROOM]  # a member sees its own


class Silent(MediaStreamTrack):
    """A video track that never produces a frame (a camera that hangs)."""

    kind = "video"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


async def test_a_publisher_that_never_sends_and_a_subscriber_that_never_reads(
    client: TestClient,
    members: Any,  # type: ignore[type-arg]
) -> None:
    alice, bob, mute = members("alice"), members("bob"), members("mute")
    await alice.join(SmallVideo())
    await bob.join(SmallVideo())
    await mute.join(Silent())
    await wait_for(lambda: mute.frames_from("alice") >= 10 and mute.frames_from("bob") >= 10, 20, message="mute gets")
    await wait_for(lambda: any(t["peerId"] == "mute" for t in alice.call.tracks.values()), 10, message="listed")
    silent = session_of(client, "mute").mode.published[0]
    assert silent.frames_in == 0 and silent.subscribers  # subscribed to, never sends: nothing breaks
    # A subscriber that never reads: its queue stays bounded, it drops and asks for a keyframe;
    # bob, reading the same publication, is not held back.
    publication = session_of(client, "alice").mode.published[0]
    stuck = publication.subscribe(session_of(client, "mute"))
    frames_in, bob_frames = publication.frames_in, bob.frames_from("alice")
    await wait_for(lambda: publication.frames_in >= frames_in + 90, 20, message="3 s of alice's video")
    assert len(stuck._queue) <= SUBSCRIBER_BACKLOG and stuck.dropped > 0
    assert bob.frames_from("alice") >= bob_frames + 80, "a subscriber that never reads held the others back"
    stuck.stop()
    assert stuck not in publication.subscribers
    await mute.call.leave()
    await wait_for(lambda: not any(t["peerId"] == "mute" for t in alice.call.tracks.values()), 10, message="unlisted")


async def test_a_hundred_join_leave_cycles_leave_nothing_behind(client: TestClient, members: Any) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    alice = members("alice")
    await alice.join(SmallVideo())
    await wait_for(lambda: session_of(client, "alice") and session_of(client, "alice").connected, 10, message="up")
    publication = session_of(client, "alice").mode.published[0]
    churners = [members(f"churn{i}") for i in range(5)]
    for churner in churners:
        await churner.connect()

    async def join(member: CallMember) -> None:
        def on_track(track: MediaStreamTrack) -> None:
            member.received.append(Received(track, member.call.who(track), None))

        member.pc = RTCPeerConnection()  # aiortc's default (balanced): GroupCall makes it max-bundle
        member.call = GroupCall(member.client, member.pc)
        member.received = []
        member.pc.on("track", on_track)
        member.pc.addTrack(Tone())
        await member.call.join()
        await wait_for(lambda: member.frames_from("alice") >= 1, 20, message=f"{member.name} sees alice")

    async def leave(member: CallMember) -> None:
        await member.call.leave()
        await wait_for(lambda: session_of(client, member.name) is None, 10, message=f"{member.name} left")
        for received in member.received:
            received.task.cancel()
        await member.pc.close()

    async def cycles(member: CallMember, count: int) -> None:
        for _ in range(count):
            await join(member)
            await leave(member)

    # A first round gives alice's own (client) peer connection its receivers for five at once (all
    # five heard together); the 95 joins after it must leave nothing behind, on the server or in
    # alice's connection.
    await asyncio.gather(*(join(m) for m in churners))
    # (Each of alice's server offers adds several audio sections at once: on aiortc's default bundle
    # policy the second of them was lost. GroupCall makes the connection max-bundle.)
    await wait_for(lambda: all(alice.frames_from(m.name, "audio") for m in churners), 20, message="alice hears 5")
    await asyncio.gather(*(leave(m) for m in churners))
    await wait_for(lambda: not alice.call.tracks, 10, message="the first round gone from alice's view")

    # alice's connection keeps a receiver (and its decoder thread) per audio section; it may gain
    # one more while churners overlap (see below), which is no leak: threads are counted without.
    def audio_sections() -> int:
        return int(alice.pc.remoteDescription.sdp.count("m=audio"))

    baseline = (udp_sockets(), _threads() - audio_sections(), other_fds())
    await asyncio.gather(*(cycles(m, 19) for m in churners))
    assert len(manager) == 1 and publication.subscribers == []
    group = next(iter(manager.forwarding.groups.values()))
    assert len(manager.forwarding.groups) == 1 and [m.session for m in group.members] == [session_of(client, "alice")]
    await wait_for(lambda: not alice.call.tracks or alice.failures, 10, message="churners gone from alice's view")
    assert not alice.failures, alice.failures
    # alice received 100 churners' audio in turn, on the few sections the call needed at once.
    sections = alice.pc.remoteDescription.sdp.count("m=audio")
    assert sections <= 6, f"{sections} audio sections after 100 joins and leaves: they are not reused"
    await wait_for(lambda: udp_sockets() <= baseline[0], 20, message=f"UDP sockets back to {baseline[0]}")
    await wait_for(
        lambda: _threads() - audio_sections() <= baseline[1],
        20,
        message=f"threads back to {baseline[1]} + alice's sections: {[t.name for t in threading.enumerate()]}",
    )
    await wait_for(lambda: other_fds() <= baseline[2], 20, message=f"descriptors back to {baseline[2]}")


#: Chromium's numbering of the header extensions (aiortc's own puts sdes:mid first).
CHROMIUM_IDS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
    "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
}


def _numbered_like_chromium(sdp: str) -> str:
    """The offer with its header extension ids as Chromium numbers them and its dynamic payload
    types moved up by 10: what the server's renegotiations must keep."""

    def pt(value: str) -> str:
        return str(int(value) + 10) if value.isdigit() and 96 <= int(value) <= 117 else value

    out = []
    for line in sdp.splitlines():
        if line.startswith("a=extmap:"):
            number, uri = line[len("a=extmap:") :].split(" ", 1)
            line = f"a=extmap:{CHROMIUM_IDS.get(uri.split()[0], int(number) + 8)} {uri}"  # noqa: PLW2901
        elif line.startswith(("m=audio", "m=video")):
            parts = line.split()
            line = " ".join([*parts[:3], *(pt(p) for p in parts[3:])])  # noqa: PLW2901
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            head, _, rest = line.partition(" ")
            name, _, number = head.partition(":")
            rest = re.sub(r"apt=(\d+)", lambda m: f"apt={pt(m.group(1))}", rest)
            line = f"{name}:{pt(number)} {rest}"  # noqa: PLW2901
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def test_renegotiations_keep_the_ids_and_payload_types_the_peer_chose(
    client: TestClient,
    members: Any,  # type: ignore[type-arg]
) -> None:
    """Chromium refuses a re-offer that renumbers what was agreed, and when two renegotiations
    follow each other the server must not start a sender with aiortc's own numbering either
    (its bundle would then misread the peer's packets and stop): peers whose ids are not aiortc's
    join, two others publish in quick succession, and media flows every way."""
    alice, bob, carol = members("alice"), members("bob"), members("carol")
    await alice.connect()
    alice.pc.addTrack(SmallVideo())
    alice.pc.addTrack(Tone())
    await alice.pc.setLocalDescription(
        RTCSessionDescription(sdp=_numbered_like_chromium((await alice.pc.createOffer()).sdp), type="offer")
    )
    sdp, candidates = split_candidates(alice.pc.localDescription.sdp)
    await alice.client.signal({"type": "offer", "payload": {"sdp": sdp}}, to="@sfu")
    for candidate in [*candidates, None]:
        await alice.client.signal({"type": "candidate", "payload": candidate}, to="@sfu")
    await wait_for(lambda: session_of(client, "alice") and session_of(client, "alice").connected, 10, message="up")
    await asyncio.gather(bob.join(SmallVideo()), carol.join(SmallVideo()))
    await wait_for(
        lambda: (
            all(m.frames_from(p) >= 15 for m in (alice, bob, carol) for p in ("alice", "bob", "carol") if p != m.name)
            and alice.frames_from("alice", "audio") == 0
        ),
        20,
        message="everyone sees everyone",
    )
    offer = alice.pc.remoteDescription.sdp
    for line in offer.splitlines():
        if line.startswith("a=extmap:"):
            number, uri = line[len("a=extmap:") :].split()[:2]
            assert int(number) == CHROMIUM_IDS.get(uri, int(number)), f"renumbered: {line}"
    assert "a=rtpmap:107 VP8/90000" in offer and "a=rtpmap:97 VP8/90000" not in offer, "VP8 renumbered"
    assert session_of(client, "alice").negotiations >= 1 and not alice.failures
