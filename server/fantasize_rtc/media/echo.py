"""Echo mode: every received audio/video track goes back to its sender; data channel messages too.

Two ways to send media back:

- re-encode (default): the sender pulls decoded frames from the received track and encodes them
  again, like aiortc's ``MediaRelay`` examples; works whatever the codecs;
- ``passthrough: true``: the received *encoded* frames are sent back as they are (like Janus's
  EchoTest), skipping the decoder and the encoder: a fraction of the CPU, and the peer's own
  keyframe requests are forwarded to it. Both directions of an m-line negotiate the same codec,
  which passthrough needs; a frame in another codec is dropped (and logged once).
"""

from __future__ import annotations

import asyncio
import logging
import queue
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel
from aiortc.mediastreams import MediaStreamError

from .session import MediaSession, Mode, skip_backlog

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

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._source.recv()
        dropped = skip_backlog(self._source, self._keep)
        frames = self._session.frames
        frames[self.kind] = frames.get(self.kind, 0) + 1 + dropped
        self._session.frames_sent[self.kind] = self._session.frames_sent.get(self.kind, 0) + 1
        return frame  # type: ignore[return-value]

    def stop(self) -> None:
        super().stop()
        self._source.stop()


#: Encoded frames allowed to wait in passthrough before they are dropped and a keyframe is asked for.
PASSTHROUGH_BACKLOG = 60


class _DecoderTap(queue.Queue[Any]):
    """Stands in for a receiver's decoder queue: encoded frames go to the echo instead of the
    decoder thread, which idles until the end marker (passed on, so the thread still exits)."""

    def __init__(self, out: asyncio.Queue[Any]) -> None:
        super().__init__()
        self._out = out

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        # Called on the event loop thread (RTP handling and receiver shutdown both run there).
        if item is None:
            super().put(None)
        self._out.put_nowait(item)


class PassthroughTrack(MediaStreamTrack):
    """Sends back the encoded frames a receiver gets, as ``av.Packet`` (aiortc then only packetizes)."""

    def __init__(self, kind: str, session: MediaSession, transceiver: Any) -> None:
        super().__init__()
        self.kind = kind
        self._session = session
        self._transceiver = transceiver
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._warned = False
        transceiver.receiver._RTCRtpReceiver__decoder_queue = _DecoderTap(self._queue)
        # The far end's keyframe requests reach our sender; only the peer's encoder can answer.
        transceiver.sender._send_keyframe = self.request_keyframe

    def request_keyframe(self) -> None:
        receiver = self._transceiver.receiver
        for ssrc in list(getattr(receiver, "_RTCRtpReceiver__remote_streams", {})):
            self._session.spawn(receiver._send_rtcp_pli(ssrc), "pli")

    async def recv(self) -> Any:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await self._queue.get()
            if item is None:
                self.stop()
                raise MediaStreamError
            if self._queue.qsize() > PASSTHROUGH_BACKLOG:
                # Hopelessly behind: drop it all and restart from a fresh keyframe.
                while self._queue.qsize():
                    if self._queue.get_nowait() is None:
                        self._queue.put_nowait(None)
                        break
                self.request_keyframe()
                continue
            codec, frame = item
            self._session.frames[self.kind] = self._session.frames.get(self.kind, 0) + 1
            codecs = self._transceiver._codecs
            if codecs and codecs[0].mimeType.lower() != codec.mimeType.lower():
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "%s: passthrough cannot send %s frames on a %s sender; dropping them",
                        self._session.label,
                        codec.mimeType,
                        codecs[0].mimeType,
                    )
                continue
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp
            packet.time_base = Fraction(1, codec.clockRate)
            self._session.frames_sent[self.kind] = self._session.frames_sent.get(self.kind, 0) + 1
            return packet


class EchoMode(Mode):
    """Options: ``audio`` / ``video`` (default true): echo that kind, or only drain it;
    ``passthrough`` (default false): send the encoded frames back without re-encoding."""

    name = "echo"

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        pc = session.pc
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None) if pc else None
        if not wanted or transceiver is None or transceiver.sender.track is not None:
            session.drain(track)
            return
        # Send on the same transceiver the track came in on, so the echo is the answer's m-line.
        if session.options.passthrough:
            transceiver.sender.replaceTrack(PassthroughTrack(track.kind, session, transceiver))
            session.drain(track)  # ends when the receiver stops; no decoded frame ever arrives
        else:
            transceiver.sender.replaceTrack(EchoTrack(track, session))
        transceiver.direction = "sendrecv"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1
            if channel.readyState == "open":
                channel.send(message)
