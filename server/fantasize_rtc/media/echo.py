"""Echo mode: every received audio/video track goes back to its sender; data channel messages too.

Two ways to send media back:

- re-encode (default): the sender pulls decoded frames from the received track and encodes them
  again, like aiortc's ``MediaRelay`` examples; works whatever the codecs;
- ``passthrough: true``: the received *encoded* frames are sent back as they are (like Janus's
  EchoTest), skipping the decoder and the encoder: a fraction of the CPU, and the peer's own
  keyframe requests are forwarded to it. Both directions of an m-line negotiate the same codec,
  which passthrough needs; a frame in another codec is dropped (and logged once).

Passthrough needs aiortc internals (:mod:`._aiortc_compat`): on an aiortc that module was not
checked against, a ``passthrough`` echo falls back to re-encoding (and says so once in the log), so
the peer still gets its media back, at the re-encoding's CPU cost.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from ._aiortc_compat import (
    backlog_skipper,
    forward_keyframe_requests,
    forward_promptly,
    keyframe_requests,
    sender_codec,
    tap_decoder,
)
from .session import MediaSession, Mode

if TYPE_CHECKING:
    from av.frame import Frame

__all__ = ["EchoMode", "EchoTrack", "PassthroughTrack"]

log = logging.getLogger(__name__)

#: Frames allowed to wait before the oldest are dropped (about 200 ms of audio, 330 ms of video).
#: The decoder hands frames over in bursts and a loaded machine stalls the encoder now and then,
#: so a short backlog is normal; a longer one means the encoder cannot keep up, and then the
#: newest frames are the ones worth sending (and memory stays bounded).
AUDIO_BACKLOG = 10
VIDEO_BACKLOG = 10


class EchoTrack(MediaStreamTrack):
    """Sends back what ``source`` receives, dropping stale frames when the encoder falls behind.

    The sender pulls frames itself (no relay task, no extra queue): this is the cheapest echo
    aiortc allows short of passing encoded packets through.
    """

    def __init__(self, source: MediaStreamTrack, session: MediaSession) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._session = session
        self._keep = VIDEO_BACKLOG if source.kind == "video" else AUDIO_BACKLOG
        self._skip_backlog = backlog_skipper()  # chosen once: recv() runs per frame

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._source.recv()
        dropped = self._skip_backlog(self._source, self._keep)
        frames = self._session.frames
        frames[self.kind] = frames.get(self.kind, 0) + 1 + dropped
        self._session.frames_sent[self.kind] = self._session.frames_sent.get(self.kind, 0) + 1
        return frame  # type: ignore[return-value]

    def stop(self) -> None:
        super().stop()
        self._source.stop()


#: Encoded frames allowed to wait in passthrough before they are dropped and a keyframe is asked for.
PASSTHROUGH_BACKLOG = 60


class PassthroughTrack(MediaStreamTrack):
    """Sends back the encoded frames a receiver gets, as ``av.Packet`` (aiortc then only packetizes).

    Made by :meth:`tap`, which diverts the receiver's encoded frames to it."""

    def __init__(
        self, kind: str, session: MediaSession, receiver: RTCRtpReceiver, codec: RTCRtpCodecParameters
    ) -> None:
        super().__init__()
        self.kind = kind
        self._session = session
        self._receiver = receiver
        self._frames: asyncio.Queue[Any] = asyncio.Queue()
        self._sender_mime = codec.mimeType
        self._sender_mime_lower = codec.mimeType.lower()
        self._warned = False

    @classmethod
    def tap(cls, kind: str, session: MediaSession, transceiver: RTCRtpTransceiver) -> PassthroughTrack | None:
        """A passthrough track for ``transceiver``, its receiver's encoded frames diverted to it;
        call it from the ``track`` event, before the receiver starts. None when this aiortc does
        not allow passthrough (nothing is changed then: echo by re-encoding instead)."""
        codec = sender_codec(transceiver)  # fixed once the offer is applied: read once, not per frame
        if codec is None:
            return None
        track = cls(kind, session, transceiver.receiver, codec)
        if not tap_decoder(transceiver.receiver, track._frames):
            return None
        forward_promptly(transceiver.receiver, kind)  # each frame back as soon as it is complete
        # The far end's keyframe requests reach our sender; only the peer's encoder can answer.
        forward_keyframe_requests(transceiver.sender, track.request_keyframe)
        return track

    def request_keyframe(self) -> None:
        for request in keyframe_requests(self._receiver):
            self._session.spawn(request, "pli")

    async def recv(self) -> Any:
        frames = self._frames
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await frames.get()
            if item is None:
                self.stop()
                raise MediaStreamError
            if frames.qsize() > PASSTHROUGH_BACKLOG:
                # Hopelessly behind: drop it all and restart from a fresh keyframe.
                while frames.qsize():
                    if frames.get_nowait() is None:
                        frames.put_nowait(None)
                        break
                self.request_keyframe()
                continue
            codec, frame = item
            self._session.frames[self.kind] = self._session.frames.get(self.kind, 0) + 1
            if codec.mimeType.lower() != self._sender_mime_lower:
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "%s: passthrough cannot send %s frames on a %s sender; dropping them",
                        self._session.label,
                        codec.mimeType,
                        self._sender_mime,
                    )
                continue
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp
            packet.time_base = Fraction(1, codec.clockRate)
            self._session.frames_sent[self.kind] = self._session.frames_sent.get(self.kind, 0) + 1
            return packet


_passthrough_unavailable_logged = False


def _passthrough_unavailable(session: MediaSession) -> None:
    """Say once per process, as a warning, that passthrough echo re-encodes here (then at debug)."""
    global _passthrough_unavailable_logged
    level = logging.DEBUG if _passthrough_unavailable_logged else logging.WARNING
    _passthrough_unavailable_logged = True
    log.log(level, "%s: passthrough echo is not available with this aiortc; echoing by re-encoding", session.label)


class EchoMode(Mode):
    """Options: ``audio`` / ``video`` (default true): echo that kind, or only drain it;
    ``passthrough`` (default false): send the encoded frames back without re-encoding."""

    name = "echo"

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        transceiver = session.transceiver_of(track)
        if not wanted or transceiver is None or transceiver.sender.track is not None:
            session.drain(track)
            return
        # Send on the same transceiver the track came in on, so the echo is the answer's m-line.
        passthrough = PassthroughTrack.tap(track.kind, session, transceiver) if session.options.passthrough else None
        if passthrough is not None:
            transceiver.sender.replaceTrack(passthrough)
            session.drain(track)  # ends when the receiver stops; no decoded frame ever arrives
        else:
            if session.options.passthrough:
                _passthrough_unavailable(session)
            transceiver.sender.replaceTrack(EchoTrack(track, session))
        transceiver.direction = "sendrecv"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1
            if channel.readyState == "open":
                channel.send(message)
