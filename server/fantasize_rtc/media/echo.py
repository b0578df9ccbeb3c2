"""Echo mode: every received audio/video track goes back to its sender; data channel messages too."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack, RTCDataChannel
from aiortc.mediastreams import MediaStreamError

from .session import MediaSession, Mode, skip_backlog

if TYPE_CHECKING:
    from av.frame import Frame

__all__ = ["EchoMode", "EchoTrack"]

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


class EchoMode(Mode):
    """Options: ``audio`` / ``video`` (default true): echo that kind, or only drain it."""

    name = "echo"

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        pc = session.pc
        transceiver = next((t for t in pc.getTransceivers() if t.receiver.track is track), None) if pc else None
        if not wanted or transceiver is None or transceiver.sender.track is not None:
            session.drain(track)
            return
        # Send on the same transceiver the track came in on, so the echo is the answer's m-line.
        transceiver.sender.replaceTrack(EchoTrack(track, session))
        transceiver.direction = "sendrecv"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1
            if channel.readyState == "open":
                channel.send(message)
