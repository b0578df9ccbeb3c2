"""Record mode: received audio and video go into one playable file in the recordings folder.

Each track is written one of two ways, chosen when the session starts:

- **passthrough** (the default, where the container takes the negotiated codec as it is: VP8 and
  Opus into WebM or MKV, H.264 into MKV or MP4): the encoded frames are muxed as they were
  received, taken from the receiver before its decoder as passthrough echo does
  (:mod:`._aiortc_compat`), with no decoder and no encoder: a fraction of the CPU. Video starts at
  a keyframe (frames before it are dropped and the peer is asked for one, RTCP PLI, at most once a
  second); the picture size is read from that keyframe; timestamps are the RTP ones, rebased on
  arrival and strictly increasing. A size change mid-stream is kept as the peer encoded it;
- **transcoding** (the fallback: another codec, an aiortc whose internals were not checked, or
  the offer's ``passthrough: false``): aiortc's decoded frames are encoded again (VP8/Opus,
  H.264/AAC), like aiortc's ``MediaRecorder`` but safe for a server: frames that change size are
  scaled to the first size, and when the encoder falls behind stale video frames are dropped.

Either way, muxing (and encoding) run in one thread per recording, never on the event loop;
audio and video share one clock from the first frame of either (each stream starts at its first
frame's arrival, so the file starts with media, not with the wait for ICE and DTLS); the
container header is written once the video stream is configured (audio that arrives before it
waits, bounded); ``stop()`` always flushes and closes the container, so the file is finalized.

Crash safety: the muxer closes a WebM/MKV cluster or an MP4 fragment at least every second and
hands it to the OS at once (:data:`~.recordings.FORMATS`' options), and the recorder asks the OS to
put it on the disk every few seconds (:data:`SYNC_SECONDS`): if the process dies, the file plays
up to about a second before. The recordings folder marks it ``recording`` meanwhile, and the
next start lists it as ``incomplete`` with the duration it really holds (:mod:`.recordings`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
from aiortc import MediaStreamTrack, RTCRtpCodecParameters
from aiortc.mediastreams import MediaStreamError

from ..errors import InvalidRequest
from ..protocol import RecordingState, SessionEnd
from ._aiortc_compat import backlog_skipper, end_received_track, keyframe_requests, received_codec, tap_decoder
from .events import RECORDING_SAVED, RecordingSaved
from .recordings import FORMATS, LiveRecording, RecordingFormat, RecordingInfo, probe_media
from .session import MediaSession, Mode

__all__ = ["EncodedSource", "RecordMode", "Recorder", "choose_format", "is_keyframe", "probe_file"]

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
#: Encoded frames allowed to wait for the muxer (a slow disk) before they are dropped, and video
#: waits for a fresh keyframe.
ENCODED_BACKLOG = 300
#: While passthrough video waits for a keyframe, ask the peer for one this often.
KEYFRAME_RETRY_SECONDS = 1.0
#: How often the recorder asks the OS to put what was written on the disk (``fdatasync``).
SYNC_SECONDS = 5.0

#: aiortc's codec names -> FFmpeg's, for the streams of passthrough recordings.
_MUXED_CODECS = {"VP8": "vp8", "H264": "h264", "opus": "opus"}
#: What a transcoded stream holds, as a player names it (for the sidecar before the file is probed).
_ENCODED_AS = {"libvpx": "vp8", "libopus": "opus", "libx264": "h264", "aac": "aac"}


def probe_file(path: Path) -> tuple[float, tuple[str, ...]]:
    """(duration in seconds, codec names) of a media file, as a player sees it."""
    duration, codecs, _ = probe_media(path)
    return duration, codecs


@dataclass(frozen=True, slots=True)
class EncodedSource:
    """Encoded frames of one received track, for passthrough: ``(codec, frame)`` items from the
    receiver's decoder tap (None at the end), and how to ask the peer for a keyframe."""

    frames: asyncio.Queue[Any]
    codec: RTCRtpCodecParameters
    request_keyframe: Callable[[], None]


class _Encoded(NamedTuple):
    data: bytes
    pts: int
    time_base: Fraction
    keyframe: bool


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded frame (as aiortc depacketizes it) can start a recording."""
    if codec_name == "VP8":
        return bool(data) and not data[0] & 0x01  # the frame tag's P bit: 0 for a key frame
    if codec_name == "H264":
        # Annex B: look at each NAL unit's type until a slice says which it is.
        start = data.find(b"\x00\x00\x01")
        while 0 <= start < len(data) - 3:
            nal_type = data[start + 3] & 0x1F
            if nal_type == 5:  # a slice of an IDR picture
                return True
            if nal_type == 1:  # a slice of another picture
                return False
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True  # audio: every frame starts cleanly


def _vp8_size(data: bytes) -> tuple[int, int] | None:
    # A VP8 key frame: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    if len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def _decoded_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The picture size of a keyframe, by decoding it (once per recording: H.264 keeps it in the
    SPS, which is simpler to decode than to parse)."""
    try:
        context: Any = av.CodecContext.create(codec, "r")
        context.thread_count = 1
        frames = list(context.decode(av.Packet(data))) + list(context.decode(None))
    except (av.FFmpegError, ValueError):
        return None
    return (frames[0].width, frames[0].height) if frames else None


class Recorder:
    """Writes at most one audio and one video track to ``path`` (see the module docstring):
    :meth:`add_track` a decoded track (transcoding) or :meth:`add_encoded` an encoded one
    (passthrough), then :meth:`start` and, always, :meth:`stop`."""

    def __init__(self, path: Path, fmt: RecordingFormat, label: str, received: dict[str, int] | None = None) -> None:
        self.path = path
        self.received = received if received is not None else {"audio": 0, "video": 0}
        self.fmt = fmt
        self.label = label
        self.frames = {"audio": 0, "video": 0}
        self.dropped = 0
        #: Seconds of media written so far (the latest timestamp muxed).
        self.written = 0.0
        #: Where the file is registered while it is written (for ``fdatasync``); optional.
        self.live: LiveRecording | None = None
        self._tracks: dict[str, MediaStreamTrack] = {}
        self._encoded: dict[str, EncodedSource] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._container: Any = None
        self._streams: dict[str, Any] = {}
        self._configured = False
        self._pending_audio: list[Any] = []
        self._muxed = False
        self._t0: float | None = None  # the first media frame's arrival, of any stream
        self._next_sync = 0.0
        self._stopped = False

    @property
    def kinds(self) -> list[str]:
        return [*self._tracks, *self._encoded]

    @property
    def passthrough(self) -> dict[str, bool]:
        """Per recorded kind: written as received (True) or transcoded."""
        return {kind: kind in self._encoded for kind in self.kinds}

    def codecs(self) -> tuple[str, ...]:
        """What the file will hold, as a player names the codecs."""
        out = []
        for kind in self.kinds:
            source = self._encoded.get(kind)
            if source is not None:
                out.append(_MUXED_CODECS[source.codec.name])
            else:
                encoder = self.fmt.video_codec if kind == "video" else self.fmt.audio_codec
                out.append(_ENCODED_AS.get(encoder, encoder))
        return tuple(out)

    def add_track(self, track: MediaStreamTrack) -> bool:
        """Take a decoded track to transcode; False if one of its kind is recorded already."""
        if track.kind in self.kinds or track.kind not in ("audio", "video"):
            return False
        self._tracks[track.kind] = track
        return True

    def add_encoded(self, kind: str, source: EncodedSource) -> bool:
        """Take a track's encoded frames to write as they are; False if one of its kind is
        recorded already or the container does not take its codec."""
        if kind in self.kinds or kind not in ("audio", "video") or source.codec.name not in self.fmt.passthrough:
            return False
        self._encoded[kind] = source
        return True

    def _since_first_frame(self) -> float:
        """Seconds since the first frame of any stream arrived (0 for that one): the streams share
        one clock, and the file starts with media, not with the wait for ICE and DTLS."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    async def start(self) -> None:
        """Open the file and start reading the tracks."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"record-{self.label}")
        await self._run(self._open)
        loop = asyncio.get_running_loop()
        for kind, track in self._tracks.items():
            self._tasks.append(loop.create_task(self._read(kind, track), name=f"record-{self.label}-{kind}"))
        for kind, source in self._encoded.items():
            self._tasks.append(
                loop.create_task(self._read_encoded(kind, source), name=f"record-{self.label}-{kind}-passthrough")
            )

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- in the recorder thread ------------------------------------------------------------------

    def _open(self) -> None:
        self._container = av.open(str(self.path), mode="w", format=self.fmt.container, options=dict(self.fmt.options))
        if "video" not in self.kinds:
            self._configure(*DEFAULT_SIZE)

    def _configure(self, width: int, height: int) -> None:
        """Add the streams (the picture size is known now), then write the audio that waited."""
        container = self._container
        for kind in self.kinds:
            source = self._encoded.get(kind)
            if kind == "video" and source is not None:
                stream = container.add_mux_stream(_MUXED_CODECS[source.codec.name], width=width, height=height)
                stream.time_base = Fraction(1, source.codec.clockRate)
            elif kind == "video":
                stream = container.add_stream(self.fmt.video_codec, rate=30)
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = VIDEO_TIME_BASE
                stream.bit_rate = VIDEO_BITRATE
                stream.width, stream.height = width, height
                if self.fmt.video_codec == "libvpx":
                    stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
                else:
                    stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
            else:
                # Opus passed through still gets its stream from the Opus encoder (never fed a frame):
                # it writes the codec header (OpusHead) players need in WebM and MKV.
                stream = container.add_stream(self.fmt.audio_codec if source is None else "libopus", rate=AUDIO_RATE)
                stream.layout = "stereo"
            self._streams[kind] = stream
        self._configured = True
        pending, self._pending_audio = self._pending_audio, []
        for audio in pending:
            self._write_now("audio", audio)

    def _write(self, kind: str, item: Any) -> None:
        """Write one frame: a decoded one (transcoded) or an :class:`_Encoded` one (as it is)."""
        if not self._configured:
            if kind == "video":
                self._configure(*self._size_of(item))
            else:
                # The header needs the picture size first; hold a little audio until video arrives.
                self._pending_audio.append(item)
                if len(self._pending_audio) > MAX_PENDING_AUDIO:
                    self._configure(*DEFAULT_SIZE)
                return
        self._write_now(kind, item)

    def _size_of(self, item: Any) -> tuple[int, int]:
        if isinstance(item, _Encoded):
            codec = self._encoded["video"].codec.name
            size = _vp8_size(item.data) if codec == "VP8" else _decoded_size(_MUXED_CODECS[codec], item.data)
            return size or DEFAULT_SIZE
        return item.width - item.width % 2, item.height - item.height % 2

    def _write_now(self, kind: str, item: Any) -> None:
        stream = self._streams[kind]
        if isinstance(item, _Encoded):
            packet = av.Packet(item.data)
            packet.pts = packet.dts = item.pts
            packet.time_base = item.time_base
            packet.is_keyframe = item.keyframe
            packet.stream = stream
            self._container.mux(packet)
            self._muxed = True
            self.written = max(self.written, float(item.pts * item.time_base))
        else:
            frame = item
            if kind == "video" and (
                (frame.width, frame.height) != (stream.width, stream.height) or frame.format.name != "yuv420p"
            ):
                pts, time_base = frame.pts, frame.time_base
                frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                frame.pts, frame.time_base = pts, time_base
            for packet in stream.encode(frame):
                self._container.mux(packet)
                self._muxed = True
            self.written = max(self.written, float(frame.pts * frame.time_base))
        self.frames[kind] += 1
        if self.live is not None and (now := time.monotonic()) >= self._next_sync:
            self._next_sync = now + SYNC_SECONDS
            self.live.sync()

    def _finish(self) -> bool:
        """Flush encoders and close the container; False if nothing was ever written."""
        container, self._container = self._container, None
        if container is None:
            return False
        try:
            if self._muxed or self._pending_audio:
                if not self._configured:
                    self._configure(*DEFAULT_SIZE)
                for kind, stream in self._streams.items():
                    if kind in self._encoded or self.frames[kind] == 0:
                        continue  # nothing to flush: no encoder, or one that never got a frame
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
                offset = int(self._since_first_frame() * rate)
            pts = source - first_pts + offset
            if pts <= last:
                continue  # reordered or duplicate timestamps would stop the muxer
            last = pts
            frame.pts, frame.time_base = pts, time_base
            try:
                await self._run(self._write, kind, frame)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("recording %s: dropped a %s frame: %s", self.label, kind, exc)

    async def _read_encoded(self, kind: str, source: EncodedSource) -> None:
        frames = source.frames
        codec = source.codec
        mime = codec.mimeType.lower()
        clock = codec.clockRate or 90000
        time_base = Fraction(1, clock)
        first: int | None = None
        offset = 0
        last = -1
        need_keyframe = kind == "video"
        asked_at = -KEYFRAME_RETRY_SECONDS
        warned = False
        while True:
            item = await frames.get()
            if item is None:
                return
            self.received[kind] = self.received.get(kind, 0) + 1
            if frames.qsize() > ENCODED_BACKLOG:
                # The writer is hopelessly behind (a stalled disk): drop what waits, and let video
                # start again from a keyframe.
                while frames.qsize():
                    if frames.get_nowait() is None:
                        return
                    self.dropped += 1
                    self.received[kind] += 1
                need_keyframe = kind == "video"
                continue
            frame_codec, frame = item
            if frame_codec.mimeType.lower() != mime:
                if not warned:
                    warned = True
                    log.warning(
                        "recording %s: dropping %s frames (the %s stream is %s)",
                        self.label,
                        frame_codec.mimeType,
                        kind,
                        codec.mimeType,
                    )
                continue
            keyframe = is_keyframe(codec.name, frame.data)
            if need_keyframe:
                if not keyframe:
                    self.dropped += 1
                    now = time.monotonic()
                    if now - asked_at >= KEYFRAME_RETRY_SECONDS:
                        asked_at = now
                        source.request_keyframe()
                    continue
                need_keyframe = False
            if first is None:
                # Start each stream at its arrival time, so audio and video share one clock.
                first = frame.timestamp
                offset = int(self._since_first_frame() * clock)
            pts = frame.timestamp - first + offset
            if pts <= last:
                continue  # a repeated or reordered timestamp would stop the muxer
            last = pts
            try:
                await self._run(self._write, kind, _Encoded(frame.data, pts, time_base, keyframe))
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
        for source in self._encoded.values():
            source.frames.put_nowait(None)
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


def choose_format(session: MediaSession) -> str:
    """The container for a recording whose offer named none: the first of webm, mkv, mp4 that
    takes every negotiated codec of the tracks to record as it is (VP8/Opus: webm; H.264 alone or
    with Opus, as encoders send: mkv), webm when none does or the codecs are unknown."""
    pc = session.pc
    wanted = {"audio": session.options.audio, "video": session.options.video}
    codecs = set()
    for transceiver in pc.getTransceivers() if pc is not None else ():
        if wanted.get(transceiver.kind):
            codec = received_codec(transceiver)
            if codec is None:
                return "webm"
            codecs.add(codec.name)
    if session.options.passthrough is not False:
        for name in ("webm", "mkv", "mp4"):
            if codecs <= FORMATS[name].passthrough:
                return name
    return "webm"


class RecordMode(Mode):
    """Options: ``format`` (webm, mkv, mp4; by default the one that takes the codecs as they are,
    :func:`choose_format`), ``audio`` / ``video`` (default true), ``passthrough``
    (default: where the codecs allow; ``false`` transcodes every track)."""

    name = "record"
    writes_recordings = True

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.recording_id: str | None = None
        self.live: LiveRecording | None = None
        self.info: RecordingInfo | None = None
        self.limit_reason: str | None = None

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        wanted = session.options.audio if track.kind == "audio" else session.options.video
        if self.recorder is None:
            fmt = FORMATS[session.options.format or choose_format(session)]
            self.recording_id, path = session.manager.store.new_path(session.id, fmt)
            self.recorder = Recorder(path, fmt, session.id[:8], session.frames)
        recorder = self.recorder
        if not wanted or track.kind in recorder.kinds or track.kind not in ("audio", "video"):
            session.drain(track)
            return
        source = self._tap(session, track) if session.options.passthrough is not False else None
        if source is not None and recorder.add_encoded(track.kind, source):
            session.drain(track)  # ends when the receiver stops; no decoded frame ever arrives
        elif not recorder.add_track(track):
            session.drain(track)

    def _tap(self, session: MediaSession, track: MediaStreamTrack) -> EncodedSource | None:
        """The track's encoded frames, diverted from its decoder, when the container takes its
        codec as it is; None (nothing changed: the track is transcoded) otherwise."""
        assert self.recorder is not None
        fmt = self.recorder.fmt
        transceiver = session.transceiver_of(track)
        codec = received_codec(transceiver) if transceiver is not None else None
        if transceiver is None or codec is None:
            log.info("%s: recording %s by transcoding (passthrough needs aiortc internals)", session.label, track.kind)
            return None
        if codec.name not in fmt.passthrough:
            log.info(
                "%s: recording %s by transcoding: %s does not go into %s as it is",
                session.label,
                track.kind,
                codec.name,
                fmt.name,
            )
            return None
        frames: asyncio.Queue[Any] = asyncio.Queue()
        if not tap_decoder(transceiver.receiver, frames):
            log.info("%s: recording %s by transcoding (its receiver cannot be tapped)", session.label, track.kind)
            return None
        receiver = transceiver.receiver

        def request_keyframe() -> None:
            for request in keyframe_requests(receiver):
                session.spawn(request, "pli")

        return EncodedSource(frames, codec, request_keyframe)

    def record_encoded(self, session: MediaSession, sources: dict[str, EncodedSource]) -> None:
        """Record encoded frames another mode receives (a group call's publications), one source
        per kind, as they are: in the offer's ``format``, else the first container that takes
        every codec. InvalidRequest when the container cannot take one. Then
        :meth:`after_remote_description`, :meth:`tick` and :meth:`close` as for this mode's own."""
        codecs = {source.codec.name for source in sources.values()}
        name = session.options.format or next(
            (n for n in ("webm", "mkv", "mp4") if codecs <= FORMATS[n].passthrough), "webm"
        )
        fmt = FORMATS[name]
        self.recording_id, path = session.manager.store.new_path(session.id, fmt)
        self.recorder = Recorder(path, fmt, session.id[:8], session.frames)
        for kind, source in sources.items():
            if not self.recorder.add_encoded(kind, source):
                raise InvalidRequest(
                    f"{source.codec.mimeType} does not go into {fmt.name} without transcoding: "
                    "leave format out (the server picks one that takes it)."
                )

    async def after_remote_description(self, session: MediaSession) -> None:
        recorder = self.recorder
        if recorder is None or not recorder.kinds:
            raise InvalidRequest("Nothing to record: the offer sends no audio or video the options allow.")
        assert self.recording_id is not None
        room_id, peer_id = (session.owner.room_id, session.owner.peer_id) if session.owner else (None, None)
        started = RecordingInfo(
            id=self.recording_id,
            file=recorder.path.name,
            format=recorder.fmt.name,
            session_id=session.id,
            room_id=room_id,
            peer_id=peer_id,
            created=session.created_at,
            size=0,
            duration=0.0,
            codecs=recorder.codecs(),
            owner_key=session.owner.key if session.owner else None,
            state=RecordingState.RECORDING,
        )
        # Listed (state "recording") from now on, and found by the next start if this process dies.
        self.live = session.manager.store.begin(started, recorder.size, lambda: recorder.written)
        recorder.live = self.live
        await recorder.start()
        log.info(
            "%s: recording %s to %s",
            session.label,
            "+".join(f"{kind} ({'passthrough' if p else 'transcoded'})" for kind, p in recorder.passthrough.items()),
            recorder.path.name,
        )

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
        store = session.manager.store
        assert self.recording_id is not None
        if self.live is None:  # it never started: no file, no sidecar
            recorder.path.unlink(missing_ok=True)
            return
        if not has_media:
            log.info("%s: nothing was recorded; no file kept", session.label)
            store.discard(self.recording_id)
            return
        try:
            duration, codecs = await asyncio.get_running_loop().run_in_executor(None, probe_file, recorder.path)
        except av.FFmpegError:
            log.exception("%s: the recording %s does not open", session.label, recorder.path.name)
            duration, codecs = 0.0, ()
        info = dataclasses.replace(
            self.live.info,
            size=recorder.size(),
            duration=duration,
            codecs=codecs,
            close_reason=reason,
            state=RecordingState.COMPLETE,
        )
        store.finish(info)
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
            RecordingSaved(
                info.id, session.id, info.room_id, info.peer_id, info.size, duration, codecs, str(recorder.path)
            ),
        )

    def report(self) -> dict[str, Any]:
        recorder = self.recorder
        return {
            "recording": {
                "id": self.recording_id,
                "format": recorder.fmt.name if recorder else None,
                "tracks": recorder.kinds if recorder else [],
                "passthrough": recorder.passthrough if recorder else {},
                "framesWritten": dict(recorder.frames) if recorder else {},
                "framesDropped": recorder.dropped if recorder else 0,
                "bytes": recorder.size() if recorder else 0,
                "duration": round(recorder.written, 3) if recorder else 0.0,
                "saved": self.info.to_wire() if self.info else None,
            }
        }
