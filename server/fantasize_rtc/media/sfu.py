"""Forwarding: the server passes encoded media between peers without decoding it (an SFU).

A *publication* is one track a peer sends to the server: its receiver's encoded frames are taken
before the decoder (as passthrough echo does) and handed, the same ``av.Packet`` object, to every
*subscriber*: a :class:`ForwardedTrack` on another session's sender, which aiortc only packetizes
again (each subscriber has its own SSRC, payload type, sequence numbers and retransmissions).
Nothing is decoded or encoded; a frame costs one queue put per subscriber.

Publications and subscribers meet in a :class:`ForwardingGroup`: a room's group call (the
``sfu`` mode, reached as ``@sfu``: each member publishes what it sends and receives every other
member's publications on the same peer connection, the server renegotiating as they come and go),
or one WHIP session and its WHEP viewers.

Keyframes: a subscriber's PLI or FIR, and every new subscriber, ask the publisher for a keyframe
through :meth:`Publication.request_keyframe`, which sends at most one request per
:data:`KEYFRAME_INTERVAL` (the rest are folded into one sent when the interval ends): eight
subscribers joining at once make one keyframe, not eight. A video subscriber starts at a keyframe
(frames before it could not be decoded) and, when it falls :data:`SUBSCRIBER_BACKLOG` frames
behind, drops them and waits for the next keyframe.

Codecs: Opus, VP8 and H.264 are forwarded; a publication's codec must be one every member of the
group can receive (H.264 only when every member offered it), else the offer is refused with a
message that says which peer and codec.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from ..errors import InvalidRequest
from ..protocol import SessionEnd, Via
from ._aiortc_compat import (
    codecs_compatible,
    forward_keyframe_requests,
    forward_promptly,
    keyframe_requests,
    received_codec,
    send_first,
    set_stream_id,
    tap_decoder,
)
from .events import MEDIA_PUBLISHED, MEDIA_UNPUBLISHED, MediaPublished
from .record import EncodedSource, RecordMode, is_keyframe
from .session import MediaSession, Mode

if TYPE_CHECKING:
    from ..server import RtcServer

__all__ = [
    "FORWARDED_CODECS",
    "Forwarding",
    "ForwardedTrack",
    "ForwardingGroup",
    "Publication",
    "SfuMode",
    "WhepViewerMode",
    "publisher_of",
]

log = logging.getLogger(__name__)

#: MIME types (lower case) the server forwards.
FORWARDED_CODECS = ("audio/opus", "video/vp8", "video/h264")
#: What a peer is assumed to receive when its offer has no section of that kind to say: the codecs
#: every browser must implement (RFC 7874 for audio, RFC 7742 for video).
_ASSUMED = {"audio": {"audio/opus"}, "video": {"video/vp8", "video/h264"}}
#: At most one keyframe request to a publisher per this many seconds.
KEYFRAME_INTERVAL = 0.5
#: Encoded frames a subscriber may have waiting before it drops them (and, for video, waits for a
#: keyframe): about two seconds of video, one of audio.
SUBSCRIBER_BACKLOG = 60

_publication_ids = itertools.count(1)


class ForwardedTrack(MediaStreamTrack):
    """What one subscriber's sender sends: a publication's encoded frames, as ``av.Packet``.

    It lives as long as its transceiver: when its publication ends (the publisher left) it is
    detached and idles (its sender waits, sending nothing, polling nothing), and a later
    publication of the same kind and codec can be attached to it, so a long call reuses its
    inactive sections instead of growing its SDP. The sender's RTP stream then goes on (same
    SSRC, sequence numbers running on); timestamps are rebased to continue from where the last
    publication's ended, as a receiver's jitter buffer expects of one stream."""

    def __init__(self, publication: Publication, subscriber: MediaSession) -> None:
        super().__init__()
        self.kind = publication.kind
        self.codec = publication.codec
        self.subscriber = subscriber
        self.publication: Publication | None = None
        self._queue: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._video = publication.kind == "video"
        self._waiting_keyframe = self._video  # a decoder can only start at a keyframe
        self._clock = publication.codec.clockRate or 90000
        self._offset = 0  # added to the publication's timestamps (0 for the first one)
        self._rebase = False  # set on attaching a later publication: the next frame sets _offset
        self._last_pts: int | None = None
        self._last_at = 0.0
        self.forwarded = 0
        self.dropped = 0
        self.attach(publication)

    def attach(self, publication: Publication) -> None:
        """Send ``publication``'s frames from now on (starting at its next keyframe)."""
        self.detach()
        self.publication = publication
        self._waiting_keyframe = self._video
        self._rebase = self._last_pts is not None
        publication.add_subscriber(self)

    def detach(self) -> None:
        """Send nothing until the next :meth:`attach` (what is queued is dropped)."""
        if self.publication is not None:
            self.publication.unsubscribe(self)
            self.publication = None
        self._queue.clear()

    def request_keyframe(self) -> None:
        """The subscriber asked (PLI, FIR): its publisher is asked, rate limited."""
        if self.publication is not None:
            self.publication.request_keyframe()

    def push(self, packet: Any, keyframe: bool) -> None:
        """Called by the publication's pump, once per frame (keep it lean)."""
        if self._waiting_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self._waiting_keyframe = False
        queue = self._queue
        if len(queue) >= SUBSCRIBER_BACKLOG:
            # The subscriber's link or sender cannot keep up: start again from a fresh keyframe.
            self.dropped += len(queue)
            queue.clear()
            if self._video and not keyframe:
                self._waiting_keyframe = True
                self.dropped += 1
                self.request_keyframe()
                return
        queue.append(packet)
        self._ready.set()

    async def recv(self) -> Any:
        queue = self._queue
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if not queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            packet = queue.popleft()
            self.forwarded += 1
            sent = self.subscriber.frames_sent
            sent[self.kind] = sent.get(self.kind, 0) + 1
            if self._rebase:
                self._rebase = False
                assert self._last_pts is not None
                gap = max(1, int((time.monotonic() - self._last_at) * self._clock))
                self._offset = self._last_pts + gap - packet.pts
            if self._offset:
                rebased = av.Packet(bytes(packet))  # the packet is shared: never change it
                rebased.pts, rebased.time_base = packet.pts + self._offset, packet.time_base
                packet = rebased
            self._last_pts, self._last_at = packet.pts, time.monotonic()
            return packet

    def stop(self) -> None:
        super().stop()
        self.detach()

    def to_wire(self) -> dict[str, Any]:
        publication = self.publication
        return {
            "publicationId": publication.id if publication else None,
            "peerId": publication.peer_id if publication else None,
            "kind": self.kind,
            "codec": self.codec.mimeType,
            "framesForwarded": self.forwarded,
            "framesDropped": self.dropped,
        }


class Publication:
    """One track a peer publishes: its encoded frames, fanned out to the subscribers."""

    def __init__(
        self, session: MediaSession, kind: str, codec: RTCRtpCodecParameters, receiver: RTCRtpReceiver
    ) -> None:
        self.id = f"p{next(_publication_ids)}"
        self.session = session
        self.kind = kind
        self.codec = codec
        self.peer_id = session.owner.peer_id if session.owner else f"whip-{session.id[:8]}"
        self.frames: asyncio.Queue[Any] = asyncio.Queue()  # (codec, frame) from the decoder tap
        self.subscribers: list[ForwardedTrack] = []
        #: Queues that get every ``(codec, frame)`` as it came (a recording), None at the end.
        self.taps: list[asyncio.Queue[Any]] = []
        self.frames_in = 0
        self.bytes_in = 0
        self.keyframe_requests = 0  # asked for by subscribers (and new subscribers)
        self.keyframes_requested = 0  # sent to the publisher (rate limited)
        self._receiver = receiver
        self._time_base = Fraction(1, codec.clockRate)
        self._codec_name = codec.name
        self._last_request = -KEYFRAME_INTERVAL
        self._request_pending: asyncio.TimerHandle | None = None
        self._ended = False

    def __repr__(self) -> str:
        return f"<Publication {self.id} {self.peer_id} {self.kind} {self.codec.mimeType}>"

    async def pump(self) -> None:
        """Run by the publisher's session: every received frame to every subscriber."""
        frames = self.frames
        time_base = self._time_base
        video = self.kind == "video"
        name = self._codec_name
        try:
            while True:
                item = await frames.get()
                if item is None:
                    return
                _codec, frame = item
                data = frame.data
                self.frames_in += 1
                self.bytes_in += len(data)
                for tap in self.taps:
                    tap.put_nowait(item)
                if not self.subscribers:
                    continue
                packet = av.Packet(data)  # one packet for all: aiortc's senders only read it
                packet.pts = frame.timestamp
                packet.time_base = time_base
                keyframe = is_keyframe(name, data) if video else True
                for subscriber in self.subscribers:
                    subscriber.push(packet, keyframe)
        finally:
            self.end()

    def tap(self) -> asyncio.Queue[Any]:
        """Every frame as it comes, ``(codec, frame)``, and None at the end (for a recording)."""
        frames: asyncio.Queue[Any] = asyncio.Queue()
        if self._ended:
            frames.put_nowait(None)
        else:
            self.taps.append(frames)
        return frames

    def subscribe(self, subscriber: MediaSession) -> ForwardedTrack:
        """A new track for ``subscriber``'s sender, receiving this publication's frames."""
        return ForwardedTrack(self, subscriber)

    def add_subscriber(self, track: ForwardedTrack) -> None:
        if self._ended:
            track.publication = None  # nothing will come: it stays detached
            return
        self.subscribers.append(track)
        if self.kind == "video":
            self.request_keyframe()  # the new subscriber's picture starts at the next keyframe

    def unsubscribe(self, track: ForwardedTrack) -> None:
        if track in self.subscribers:
            self.subscribers.remove(track)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per :data:`KEYFRAME_INTERVAL`."""
        if self.kind != "video" or self._ended:
            return
        self.keyframe_requests += 1
        if self._request_pending is not None:
            return  # one is already planned for the end of the interval
        wait = self._last_request + KEYFRAME_INTERVAL - time.monotonic()
        if wait <= 0:
            self._send_keyframe_request()
        else:
            self._request_pending = asyncio.get_running_loop().call_later(wait, self._send_keyframe_request)

    def keyframe_request_wait(self) -> float:
        """Seconds until a keyframe request would go to the publisher at once (0: now). While one is
        planned for the end of the interval it is never 0."""
        wait = max(0.0, self._last_request + KEYFRAME_INTERVAL - time.monotonic())
        return max(wait, 1e-3) if self._request_pending is not None else wait

    def _send_keyframe_request(self) -> None:
        self._request_pending = None
        if self._ended or self.session.closed:
            return
        self._last_request = time.monotonic()
        self.keyframes_requested += 1
        for request in keyframe_requests(self._receiver):
            self.session.spawn(request, "pli")

    @property
    def ended(self) -> bool:
        return self._ended

    def end(self) -> None:
        """No more frames: every subscriber is detached (it idles; its member is told)."""
        if self._ended:
            return
        self._ended = True
        if self._request_pending is not None:
            self._request_pending.cancel()
            self._request_pending = None
        for subscriber in list(self.subscribers):
            subscriber.detach()  # idle until its member attaches another publication, or closes
        self.subscribers.clear()
        for tap in self.taps:
            tap.put_nowait(None)
        self.taps.clear()

    def to_wire(self) -> dict[str, Any]:
        return {
            "publicationId": self.id,
            "peerId": self.peer_id,
            "sessionId": self.session.id,
            "kind": self.kind,
            "codec": self.codec.mimeType,
            "framesIn": self.frames_in,
            "bytesIn": self.bytes_in,
            "subscribers": len(self.subscribers),
            "keyframeRequests": self.keyframe_requests,
            "keyframesRequested": self.keyframes_requested,
        }


class Member(Protocol):
    """What a group needs of a mode in it: its session, what it can receive, and to be told of
    publications coming and going."""

    session: MediaSession | None
    #: MIME types (lower case) this member can receive, per kind.
    receives: dict[str, set[str]]

    def add_publication(self, publication: Publication) -> None: ...

    def remove_publication(self, publication: Publication) -> None: ...


@dataclass(frozen=True, slots=True)
class GroupKey:
    """``("room", room_id)`` for a room's call, ``("session", session_id)`` for a WHIP session."""

    kind: str
    name: str


class ForwardingGroup:
    """Publications and the members that receive them (a room's call, or a WHIP session and its
    WHEP viewers)."""

    def __init__(self, forwarding: Forwarding, key: GroupKey) -> None:
        self.forwarding = forwarding
        self.key = key
        self.publications: list[Publication] = []
        self.members: list[Member] = []

    @property
    def room_id(self) -> str | None:
        return self.key.name if self.key.kind == "room" else None

    def check_codecs(self, member: Member, publishing: list[Publication]) -> None:
        """InvalidRequest when ``member`` cannot receive a publication of the group, or a member
        cannot receive one of ``publishing``: the error names the peer and the codec."""
        for publication in self.publications:
            if publication.session is member.session:
                continue
            if not _receives(member, publication.codec, publication.kind):
                raise InvalidRequest(
                    f"Peer {publication.peer_id!r} sends {publication.codec.mimeType} in this call and your offer "
                    f"cannot receive it: offer {publication.codec.mimeType}, or publish in another room."
                )
        for publication in publishing:
            for other in self.members:
                if other is not member and not _receives(other, publication.codec, publication.kind):
                    owner = other.session.owner if other.session is not None else None
                    who = owner.peer_id if owner is not None else "a viewer"
                    raise InvalidRequest(
                        f"Peer {who!r} in this call cannot receive {publication.codec.mimeType}: "
                        "send VP8 video and Opus audio (list them first in your offer)."
                    )

    def join(self, member: Member) -> None:
        self.members.append(member)
        for publication in self.publications:
            if publication.session is not member.session:
                member.add_publication(publication)

    def leave(self, member: Member) -> None:
        if member in self.members:
            self.members.remove(member)
        for publication in [p for p in self.publications if p.session is member.session]:
            self.unpublish(publication)
        if not self.members and not self.publications:
            self.forwarding.groups.pop(self.key, None)

    def publish(self, publication: Publication) -> None:
        self.publications.append(publication)
        log.info(
            "%s: publishing %s (%s) as %s to %d other member(s)",
            publication.session.label,
            publication.kind,
            publication.codec.mimeType,
            publication.id,
            sum(1 for m in self.members if m.session is not publication.session),
        )
        for member in list(self.members):
            if member.session is not publication.session:
                member.add_publication(publication)
        self.forwarding.emit(MEDIA_PUBLISHED, self, publication)

    def unpublish(self, publication: Publication) -> None:
        if publication not in self.publications:
            return
        self.publications.remove(publication)
        publication.end()
        for member in list(self.members):
            if member.session is not publication.session:
                member.remove_publication(publication)
        log.info("%s: stopped publishing %s (%s)", publication.session.label, publication.kind, publication.id)
        self.forwarding.emit(MEDIA_UNPUBLISHED, self, publication)

    def to_wire(self) -> dict[str, Any]:
        publishers: dict[str, list[dict[str, Any]]] = {}
        for publication in self.publications:
            publishers.setdefault(publication.peer_id, []).append(
                {"publicationId": publication.id, "kind": publication.kind, "codec": publication.codec.mimeType}
            )
        return {
            "publishers": [{"peerId": peer, "tracks": tracks} for peer, tracks in publishers.items()],
            "members": len(self.members),
        }


def _receives(member: Member, codec: RTCRtpCodecParameters, kind: str) -> bool:
    return codec.mimeType.lower() in member.receives.get(kind, _ASSUMED.get(kind, set()))


class Forwarding:
    """The forwarding groups of one process (the media manager holds one)."""

    def __init__(self, rtc: RtcServer) -> None:
        self.rtc = rtc
        self.groups: dict[GroupKey, ForwardingGroup] = {}

    def group(self, key: GroupKey, create: bool = True) -> ForwardingGroup | None:
        group = self.groups.get(key)
        if group is None and create:
            group = self.groups[key] = ForwardingGroup(self, key)
        return group

    def room(self, room_id: str) -> dict[str, Any] | None:
        """What the room snapshot shows of a room's call: who publishes what."""
        group = self.groups.get(GroupKey("room", room_id))
        return group.to_wire() if group is not None else None

    def emit(self, event: str, group: ForwardingGroup, publication: Publication) -> None:
        session = publication.session
        self.rtc.emit(
            event,
            MediaPublished(
                session_id=session.id,
                room_id=group.room_id,
                peer_id=publication.peer_id,
                publication_id=publication.id,
                kind=publication.kind,
                codec=publication.codec.mimeType,
            ),
        )


def _offered_codecs(sdp: str) -> dict[str, set[str]]:
    """MIME types (lower case) per kind that an offer lists: what its peer can receive."""
    out: dict[str, set[str]] = {}
    for media in SessionDescription.parse(sdp).media:
        if media.kind in ("audio", "video"):
            out.setdefault(media.kind, set()).update(c.mimeType.lower() for c in media.rtp.codecs)
    return out


def _receive_only_mids(sdp: str) -> set[str]:
    """The mids of an offer's audio and video sections that only receive: a joining member's
    receive slots."""
    return {
        media.rtp.muxId
        for media in SessionDescription.parse(sdp).media
        if media.kind in ("audio", "video") and media.direction == "recvonly" and media.rtp.muxId
    }


class SfuMode(Mode):
    """Group calls through the server: what you send is forwarded, as it is, to the other members
    of the room's call, and you receive theirs on the same connection (the server renegotiates).
    A WHIP session in this mode publishes to its WHEP viewers."""

    name = "sfu"
    renegotiates = True

    def __init__(self) -> None:
        self.group: ForwardingGroup | None = None
        self.session: MediaSession | None = None
        self.receives: dict[str, set[str]] = {}
        self.published: list[Publication] = []
        self.recording: RecordMode | None = None
        self._refused: str | None = None
        #: publication id -> (transceiver, track) of what this member receives
        self.forwarded: dict[str, tuple[RTCRtpTransceiver, ForwardedTrack]] = {}
        #: inactive sections (their publisher left), reused for the next publication of the codec
        self.idle: list[tuple[RTCRtpTransceiver, ForwardedTrack]] = []

    # -- what this member publishes --------------------------------------------------------------

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        transceiver = session.transceiver_of(track)
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        codec = received_codec(transceiver) if transceiver is not None else None
        if not wanted or transceiver is None or track.kind not in ("audio", "video"):
            session.drain(track)
            return
        if codec is None or codec.mimeType.lower() not in FORWARDED_CODECS:
            what = codec.mimeType if codec is not None else "an unknown codec"
            self._refused = f"The server forwards Opus audio, VP8 and H.264 video; this offer's {track.kind} is {what}."
            session.drain(track)
            return
        publication = Publication(session, track.kind, codec, transceiver.receiver)
        if not tap_decoder(transceiver.receiver, publication.frames):
            self._refused = "Forwarding needs the aiortc version this server was checked against."
            session.drain(track)
            return
        forward_promptly(transceiver.receiver, track.kind)  # each frame on as soon as it is complete
        self.published.append(publication)
        session.drain(track)  # ends when the receiver stops; no decoded frame ever arrives

    def check(self, session: MediaSession) -> None:
        if self._refused is not None:
            raise InvalidRequest(self._refused)
        pc = session.pc
        if pc is not None and pc.remoteDescription is not None:
            self.receives = _offered_codecs(pc.remoteDescription.sdp)

    async def start_recording(self, session: MediaSession) -> None:
        """``record: true``: each kind published, written as it comes (:class:`.record.RecordMode`)."""
        if not session.options.record:
            return
        if not self.published:
            raise InvalidRequest("Nothing to record: the offer sends no audio or video.")
        session.manager.store.check_quota(session.manager.config.recordings_quota_bytes)
        first = {p.kind: p for p in reversed(self.published)}  # the first track of each kind
        recording = self.recording = RecordMode()
        recording.name = "record"
        recording.record_encoded(
            session, {kind: EncodedSource(p.tap(), p.codec, p.request_keyframe) for kind, p in first.items()}
        )
        await recording.after_remote_description(session)

    async def tick(self, session: MediaSession) -> str | None:
        return await self.recording.tick(session) if self.recording is not None else None

    def start_publishing(self, session: MediaSession) -> None:
        assert self.group is not None
        for publication in self.published:
            session.spawn(publication.pump(), f"forward-{publication.kind}")
            self.group.publish(publication)

    def _key(self, session: MediaSession) -> GroupKey:
        if session.owner is not None and session.via == Via.SIGNALING:
            return GroupKey("room", session.owner.room_id)
        return GroupKey("session", session.id)

    async def after_remote_description(self, session: MediaSession) -> None:
        self.check(session)
        self.session = session
        group = session.manager.forwarding.group(self._key(session))
        assert group is not None
        try:
            group.check_codecs(self, self.published)
        except InvalidRequest:
            if not group.members and not group.publications:
                session.manager.forwarding.groups.pop(group.key, None)
            raise
        self.group = group
        self._fill_slots(session, group)
        await self.start_recording(session)

    def _fill_slots(self, session: MediaSession, group: ForwardingGroup) -> None:
        """What the call publishes already goes out on the receive-only sections of the joining
        member's offer (its *receive slots*: the clients add one per track the room's snapshot
        lists), in the answer itself: a late joiner's pictures need no renegotiation, only the
        publishers' next keyframes (asked for now; the senders start once the connection is up).
        A slot with nothing to carry is answered inactive; a publication without a slot of its
        kind and codec comes by renegotiation once connected, as before."""
        pc = session.pc
        if pc is None or pc.remoteDescription is None or session.notify is None:
            return  # WHIP and POST /rtc/offer sessions only publish
        mids = _receive_only_mids(pc.remoteDescription.sdp)
        slots = [t for t in pc.getTransceivers() if t.mid in mids]
        for publication in group.publications:
            if publication.session is session or publication.ended:
                continue
            slot = next((t for t in slots if t.kind == publication.kind and send_first(t, publication.codec)), None)
            if slot is not None:
                slots.remove(slot)
                self._forward_on(session, slot, publication.subscribe(session))

    async def on_connected(self, session: MediaSession) -> None:
        group = self.group
        if group is None or session.closed:
            return
        # Everyone left between the answer and now, and the group went with them: this member
        # starts the room's call anew (a group of its own would be one nobody else joins).
        current = session.manager.forwarding.group(group.key)
        assert current is not None
        self.group = group = current
        # A publication that ended between the answer and now left its slot's track detached.
        for transceiver, track in list(self.forwarded.values()):
            if track.publication is None:
                self._retire(transceiver, track)
        group.join(self)  # the publications its slots did not take come by renegotiation
        self.start_publishing(session)

    # -- what this member receives ---------------------------------------------------------------

    def add_publication(self, publication: Publication) -> None:
        session = self.session
        pc = session.pc if session is not None else None
        if session is None or pc is None or session.closed or session.notify is None:
            return  # a session without signaling (WHIP, POST /rtc/offer) only publishes
        if publication.id in self.forwarded or publication.ended:
            return  # a receive slot of the member's offer carries it already, or it is ending
        reuse = next(
            (i for i, (_t, track) in enumerate(self.idle) if codecs_compatible(track.codec, publication.codec)), None
        )
        if reuse is not None:
            # An inactive section whose publisher left takes the new one: the SDP does not grow.
            transceiver, track = self.idle.pop(reuse)
            track.attach(publication)
            self._forward_on(session, transceiver, track)
        else:
            transceiver = pc.addTransceiver(publication.kind, direction="sendonly")
            preferred = _capability_of(publication.kind, publication.codec)
            if preferred:
                transceiver.setCodecPreferences(preferred)
            self._forward_on(session, transceiver, publication.subscribe(session))
        if session.connected:
            session.renegotiate()

    def _forward_on(self, session: MediaSession, transceiver: RTCRtpTransceiver, track: ForwardedTrack) -> None:
        """``track`` (attached to its publication) is what ``transceiver`` sends from now on."""
        publication = track.publication
        assert publication is not None
        if transceiver.sender.track is not track:
            transceiver.sender.replaceTrack(track)
            forward_keyframe_requests(transceiver.sender, track.request_keyframe)
        transceiver.direction = "sendonly"
        set_stream_id(transceiver.sender, publication.peer_id)  # a browser groups a publisher's tracks
        self.forwarded[publication.id] = (transceiver, track)

    def remove_publication(self, publication: Publication) -> None:
        entry = self.forwarded.get(publication.id)
        if entry is not None and self.session is not None:
            self._retire(*entry)

    def _retire(self, transceiver: RTCRtpTransceiver, track: ForwardedTrack) -> None:
        """The section's publication ended: it idles, inactive, until one of its codec comes."""
        session = self.session
        assert session is not None
        self.forwarded = {pid: entry for pid, entry in self.forwarded.items() if entry[1] is not track}
        track.detach()  # its sender idles, waiting for the next publication of this codec
        transceiver.direction = "inactive"
        self.idle.append((transceiver, track))
        if not session.closed:
            session.renegotiate()

    def signal_extras(self, session: MediaSession) -> dict[str, Any]:
        """``tracks``: mid -> whose media it carries, for the client to label what it receives."""
        tracks: dict[str, dict[str, Any]] = {}
        for transceiver, track in self.forwarded.values():
            publication = track.publication
            if transceiver.mid is not None and publication is not None:
                tracks[transceiver.mid] = {
                    "peerId": publication.peer_id,
                    "kind": publication.kind,
                    "publicationId": publication.id,
                }
        return {"tracks": tracks}

    async def close(self, session: MediaSession, reason: str) -> None:
        if self.group is not None:
            self.group.leave(self)
        for publication in self.published:
            publication.end()  # the recording's taps end too: it writes what came, then stops
        if self.recording is not None:
            await self.recording.close(session, reason)
        for _transceiver, track in [*self.forwarded.values(), *self.idle]:
            track.stop()
        self.forwarded.clear()
        self.idle.clear()

    def report(self) -> dict[str, Any]:
        return {
            "forwarding": {
                "group": self.group.key.name if self.group is not None else None,
                "published": [p.to_wire() for p in self.published],
                "received": [track.to_wire() for _t, track in self.forwarded.values()],
            },
            **(self.recording.report() if self.recording is not None else {}),
        }


def _capability_of(kind: str, codec: RTCRtpCodecParameters) -> list[Any]:
    """The sender capabilities matching ``codec`` (and RTX for video), for setCodecPreferences."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    out = [
        c
        for c in capabilities
        if c.mimeType.lower() == codec.mimeType.lower()
        and (codec.mimeType.lower() != "video/h264" or _h264_matches(c.parameters, codec.parameters))
    ][:1]
    if out and kind == "video":
        out += [c for c in capabilities if c.mimeType.lower() == "video/rtx"][:1]
    return out


def _h264_matches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def mode(p: dict[str, Any]) -> str:
        return str(p.get("packetization-mode", "0"))

    def profile(p: dict[str, Any]) -> str:
        return str(p.get("profile-level-id", "42001f"))[:2].lower()

    return mode(a) == mode(b) and profile(a) == profile(b)


class WhepViewerMode(Mode):
    """A WHEP viewer: receives a live WHIP session's publications as they are."""

    name = "whep"
    whip = False

    def __init__(self, group: ForwardingGroup) -> None:
        self.group = group
        self.received: list[ForwardedTrack] = []
        self.session: MediaSession | None = None
        self.receives: dict[str, set[str]] = {}

    async def after_remote_description(self, session: MediaSession) -> None:
        self.session = session
        pc = session.pc
        assert pc is not None
        free = {p.kind: p for p in reversed(self.group.publications)}  # the first of each kind
        for transceiver in pc.getTransceivers():
            publication = free.pop(transceiver.kind, None)
            if publication is None:
                continue
            if not send_first(transceiver, publication.codec):
                codec = publication.codec.mimeType
                raise InvalidRequest(f"The stream sends {codec} {publication.kind} and this offer cannot receive it.")
            track = publication.subscribe(session)
            transceiver.sender.replaceTrack(track)
            forward_keyframe_requests(transceiver.sender, track.request_keyframe)
            transceiver.direction = "sendonly"
            self.received.append(track)
        if not self.received:
            raise InvalidRequest("The offer receives no audio or video this stream sends (offer recvonly audio/video).")
        self.group.members.append(self)

    def add_publication(self, publication: Publication) -> None:
        """A WHIP session publishes once: nothing comes later."""

    def remove_publication(self, publication: Publication) -> None:
        """The publisher is gone: so is what this viewer watched."""
        session = self.session
        if session is not None and not session.closed and all(t.publication is None for t in self.received):
            session.manager.spawn(session.close(SessionEnd.PUBLISHER_GONE))

    async def close(self, session: MediaSession, reason: str) -> None:
        for track in self.received:
            track.stop()
        self.group.leave(self)  # and the group goes when its publisher and viewers are gone

    def report(self) -> dict[str, Any]:
        return {"forwarding": {"group": self.group.key.name, "received": [t.to_wire() for t in self.received]}}


def publisher_of(session: MediaSession) -> ForwardingGroup | None:
    """The forwarding group a live WHIP (or HTTP) ``sfu`` session publishes into, for WHEP."""
    mode = session.mode
    if isinstance(mode, SfuMode) and mode.group is not None and mode.group.key.kind == "session":
        return mode.group
    return None
