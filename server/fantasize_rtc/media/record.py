"""Record mode: received audio and video go into one playable file in the recordings folder.

The :class:`Recorder` is aiortc's ``MediaRecorder`` made safe for a server:

- encoding and muxing run in one thread per recording (never on the event loop);
- timestamps are rebased on arrival so audio and video line up and the file's duration is the
  session's, whatever RTP offsets the sender used;
- the container header is written only once both streams are configured (the first video frame
  fixes the picture size; audio that arrives before it waits, bounded);
- frames that change size mid-stream are scaled to the first size (browsers adapt resolution);
- when encoding falls behind, stale video frames are dropped instead of queueing without bound;
- ``stop()`` always flushes the encoders and closes the container, so the file is playable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ..errors import InvalidRequest
from ..protocol import SessionEnd
from ._aiortc_compat import backlog_skipper, end_received_track
from .events import RECORDING_SAVED, RecordingSaved
from .recordings import FORMATS, RecordingFormat, RecordingInfo
from .session import MediaSession, Mode

__all__ = ["RecordMode", "Recorder", "probe_file"]

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 1000)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
#: Audio frames held while waiting for the first video frame (20 ms each: 2 s).
MAX_PENDING_AUDIO = 100
#: At the end, how long the recorder may spend writing frames that were already received.
DRAIN_SECONDS = 2.0
#: Picture size used when a video stream must be configured before any frame arrived.
DEFAULT_SIZE = (640, 480)
VIDEO_BITRATE = 1_500_000
#: Decoded video frames allowed to wait for the encoder (1 s at 30 fps) before stale ones are dropped.
VIDEO_BACKLOG = 30


class Recorder:
    """Writes at most one audio and one video track to ``path`` (see the module docstring)."""

    def __init__(self, path: Path, fmt: RecordingFormat, label: str, received: dict[str, int] | None = None) -> None:
        self.path = path
        self.received = received if received is not None else {"audio": 0, "video": 0}
        self.fmt = fmt
        self.label = label
        self.frames = {"audio": 0, "video": 0}
        self.dropped = 0
        self._tracks: dict[str, MediaStreamTrack] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._container: Any = None
        self._streams: dict[str, Any] = {}
        self._video_size: tuple[int, int] | None = None
        self._pending_audio: list[Any] = []
        self._muxed = False
        self._t0 = 0.0
        self._stopped = False

    @property
    def kinds(self) -> list[str]:
        return list(self._tracks)

    def add_track(self, track: MediaStreamTrack) -> bool:
        """Take a track to record; False if one of its kind is recorded already."""
        if track.kind in self._tracks or track.kind not in ("audio", "video"):
            return False
        self._tracks[track.kind] = track
        return True

    async def start(self) -> None:
        """Open the file and start reading the tracks."""
        self._t0 = time.monotonic()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"record-{self.label}")
        await self._run(self._open)
        loop = asyncio.get_running_loop()
        for kind, track in self._tracks.items():
            self._tasks.append(loop.create_task(self._read(kind, track), name=f"record-{self.label}-{kind}"))

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- in the recorder thread ------------------------------------------------------------------

    def _open(self) -> None:
        container: Any = av.open(str(self.path), mode="w", format=self.fmt.container)
        self._container = container
        if "audio" in self._tracks:
            audio = container.add_stream(self.fmt.audio_codec, rate=AUDIO_RATE)
            audio.layout = "stereo"
            self._streams["audio"] = audio
        if "video" in self._tracks:
            video = container.add_stream(self.fmt.video_codec, rate=30)
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = VIDEO_TIME_BASE
            video.bit_rate = VIDEO_BITRATE
            if self.fmt.video_codec == "libvpx":
                video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
            else:
                video.options = {"preset": "ultrafast", "tune": "zerolatency"}
            self._streams["video"] = video

    def _configure_video(self, width: int, height: int) -> None:
        stream = self._streams["video"]
        stream.width, stream.height = width, height
        self._video_size = (width, height)

    def _encode(self, kind: str, frame: Any) -> None:
        if kind == "video":
            if self._video_size is None:
                self._configure_video(frame.width - frame.width % 2, frame.height - frame.height % 2)
                pending, self._pending_audio = self._pending_audio, []
                for audio in pending:
                    self._mux("audio", audio)
            width, height = self._video_size  # type: ignore[misc]
            if (frame.width, frame.height) != (width, height) or frame.format.name != "yuv420p":
                pts, time_base = frame.pts, frame.time_base
                frame = frame.reformat(width=width, height=height, format="yuv420p")
                frame.pts, frame.time_base = pts, time_base
            self._mux("video", frame)
            return
        if "video" in self._streams and self._video_size is None:
            # The header needs the picture size first; hold a little audio until video arrives.
            self._pending_audio.append(frame)
            if len(self._pending_audio) > MAX_PENDING_AUDIO:
                self._configure_video(*DEFAULT_SIZE)
                pending, self._pending_audio = self._pending_audio, []
                for audio in pending:
                    self._mux("audio", audio)
            return
        self._mux("audio", frame)

    def _mux(self, kind: str, frame: Any) -> None:
        stream = self._streams[kind]
        for packet in stream.encode(frame):
            self._container.mux(packet)
            self._muxed = True
        self.frames[kind] += 1

    def _finish(self) -> bool:
        """Flush encoders and close the container; False if nothing was ever written."""
        container, self._container = self._container, None
        if container is None:
            return False
        try:
            if self._muxed or self._pending_audio:
                if "video" in self._streams and self._video_size is None:
                    self._configure_video(*DEFAULT_SIZE)
                for audio in self._pending_audio:
                    self._mux("audio", audio)
                self._pending_audio = []
                for kind, stream in self._streams.items():
                    if kind == "video" and self.frames["video"] == 0:
                        continue  # an encoder that never got a frame has nothing to flush
                    for packet in stream.encode(None):
                        container.mux(packet)
        finally:
            container.close()
        return self._muxed

    # -- on the event loop -----------------------------------------------------------------------

    async def _read(self, kind: str, track: MediaStreamTrack) -> None:
        first_pts: int | None = None
        offset = 0
        last = -1
        rate = 1000 if kind == "video" else AUDIO_RATE
        time_base = VIDEO_TIME_BASE if kind == "video" else AUDIO_TIME_BASE
        skip_backlog = backlog_skipper()  # chosen once: the loop runs per frame
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            self.received[kind] = self.received.get(kind, 0) + 1
            if kind == "video":
                dropped = skip_backlog(track, VIDEO_BACKLOG)
                self.dropped += dropped
                self.received[kind] += dropped
            if frame.pts is None or frame.time_base is None:
                continue
            source = int(frame.pts * frame.time_base * rate)
            if first_pts is None:
                # Start each stream at its arrival time, so audio and video share one clock.
                first_pts = source
                offset = int((time.monotonic() - self._t0) * rate)
            pts = source - first_pts + offset
            if pts <= last:
                continue  # reordered or duplicate timestamps would stop the muxer
            last = pts
            frame.pts, frame.time_base = pts, time_base
            try:
                await self._run(self._encode, kind, frame)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("recording %s: dropped a %s frame: %s", self.label, kind, exc)

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    async def stop(self) -> bool:
        """Stop reading, flush and close the file; True if it holds media. Safe to call twice."""
        if self._stopped:
            return False
        self._stopped = True
        # Write what was already received (up to the end of the session), then stop: an end
        # marker behind the queued frames ends each reader once it has caught up.
        # (Where that cannot be done, the readers are cancelled after DRAIN_SECONDS instead.)
        for track in self._tracks.values():
            end_received_track(track)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is None:
            return False
        try:
            return bool(await self._run(self._finish))
        except Exception:
            log.exception("recording %s: finalizing failed", self.label)
            return False
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None


def probe_file(path: Path) -> tuple[float, tuple[str, ...]]:
    """(duration in seconds, codec names) of a media file, as a player sees it."""
    with av.open(str(path)) as container:
        codecs = tuple(s.codec_context.name for s in container.streams if s.type in ("audio", "video"))
        if container.duration is not None:
            return container.duration / 1_000_000, codecs
        longest = 0.0
        for stream in container.streams:
            if stream.duration is not None and stream.time_base is not None:
                longest = max(longest, float(stream.duration * stream.time_base))
        return longest, codecs


class RecordMode(Mode):
    """Options: ``format`` (webm, mkv, mp4), ``audio`` / ``video`` (default true)."""

    name = "record"

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.recording_id: str | None = None
        self.info: RecordingInfo | None = None
        self.limit_reason: str | None = None

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        if self.recorder is None:
            fmt = FORMATS[session.options.format]
            self.recording_id, path = session.manager.store.new_path(session.id, fmt)
            self.recorder = Recorder(path, fmt, session.id[:8], session.frames)
            session.manager.store.writing(self.recording_id, self.recorder.size)
        if not wanted or not self.recorder.add_track(track):
            session.drain(track)

    async def after_remote_description(self, session: MediaSession) -> None:
        if self.recorder is None or not self.recorder.kinds:
            raise InvalidRequest("Nothing to record: the offer sends no audio or video the options allow.")
        await self.recorder.start()
        log.info("%s: recording %s to %s", session.label, "+".join(self.recorder.kinds), self.recorder.path.name)

    async def tick(self, session: MediaSession) -> str | None:
        if self.recorder is None:
            return None
        config = session.manager.config
        if self.recorder.size() >= config.max_recording_bytes:
            return SessionEnd.RECORDING_LIMIT
        if session.manager.store.used_bytes() >= config.recordings_quota_bytes:
            return SessionEnd.RECORDINGS_QUOTA
        return None

    async def close(self, session: MediaSession, reason: str) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        has_media = await recorder.stop()
        assert self.recording_id is not None
        session.manager.store.done_writing(self.recording_id)
        if not has_media:
            log.info("%s: nothing was recorded; no file kept", session.label)
            recorder.path.unlink(missing_ok=True)
            return
        assert self.recording_id is not None
        try:
            duration, codecs = await asyncio.get_running_loop().run_in_executor(None, probe_file, recorder.path)
        except av.FFmpegError:
            log.exception("%s: the recording %s does not open", session.label, recorder.path.name)
            duration, codecs = 0.0, ()
        room_id, peer_id = (session.owner.room_id, session.owner.peer_id) if session.owner else (None, None)
        info = RecordingInfo(
            id=self.recording_id,
            file=recorder.path.name,
            format=session.options.format,
            session_id=session.id,
            room_id=room_id,
            peer_id=peer_id,
            created=session.created_at,
            size=recorder.size(),
            duration=duration,
            codecs=codecs,
            close_reason=reason,
            owner_key=session.owner.key if session.owner else None,
        )
        session.manager.store.save(info)
        self.info = info
        log.info(
            "%s: recording %s saved (%d bytes, %.1f s, %s)",
            session.label,
            info.id,
            info.size,
            duration,
            "+".join(codecs),
        )
        session.manager.rtc.emit(
            RECORDING_SAVED,
            RecordingSaved(info.id, session.id, room_id, peer_id, info.size, duration, codecs, str(recorder.path)),
        )

    def report(self) -> dict[str, Any]:
        recorder = self.recorder
        return {
            "recording": {
                "id": self.recording_id,
                "format": recorder.fmt.name if recorder else None,
                "tracks": recorder.kinds if recorder else [],
                "framesWritten": dict(recorder.frames) if recorder else {},
                "framesDropped": recorder.dropped if recorder else 0,
                "bytes": recorder.size() if recorder else 0,
                "saved": self.info.to_wire() if self.info else None,
            }
        }
