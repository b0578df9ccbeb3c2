"""Frame access for modes, without the pitfalls: read received media, convert it, send media back.

Reading (every received track must be read, or aiortc's queue grows without bound):

- :class:`VideoFrames`: ``async for frame in VideoFrames(session, track)`` yields the *newest*
  decoded frame each time; frames that arrived while the mode was busy are dropped and counted
  (``dropped``). A mode slower than real time thus runs on fresh frames with one frame of memory.
- :class:`AudioFrames`: yields every decoded audio frame in order from a bounded queue; when the
  mode falls a whole queue behind, the oldest go (``dropped``).

Converting (numpy is optional: ``pip install numpy``, or the ``modes`` extra; these say so when
it is missing, and nothing else here needs it):

- :func:`video_to_ndarray` / :func:`ndarray_to_video`: ``rgb24``, ``bgr24`` (H x W x 3),
  ``gray`` (H x W, the Y plane as it is, no colour conversion) or ``yuv420p`` (H*3/2 x W, the
  planes as aiortc decodes them: the cheapest); the new frame keeps the pts and time base of the
  frame it was made from (``like``).
- :func:`audio_to_ndarray` / :func:`ndarray_to_audio`: PCM as channels x samples, ``int16`` or
  ``float32`` (-1 to 1).

Sending: :class:`OutputTrack` is a track a mode feeds with frames (newest video wins, audio in
order); :meth:`OutputTrack.back_to` sends it on the m-line a received track came in on, like the
echo. :func:`transform_video` is all of it in one call: received video -> ``func(ndarray)`` in a
worker thread -> sent back.

Threading rules. The event loop runs every session, so on it go only cheap calls: iterating,
:meth:`OutputTrack.send`, and arithmetic on one 20 ms audio frame (microseconds). Converting
video frames and anything per-pixel go to ``await session.workers.run_in_thread(...)`` (PyAV and
numpy release the GIL: real parallelism), pure-Python heavy work to ``run_in_process``
(:mod:`.workers`). A function running in a worker gets frames or arrays and returns its result;
it never touches the session, a track or the peer connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from types import ModuleType
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from .session import MediaSession

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "AUDIO_QUEUE",
    "AudioFrames",
    "OutputTrack",
    "VideoFrames",
    "audio_to_ndarray",
    "ndarray_to_audio",
    "ndarray_to_video",
    "numpy",
    "transform_video",
    "video_to_ndarray",
]

log = logging.getLogger(__name__)

#: Audio frames :class:`AudioFrames` and an audio :class:`OutputTrack` keep waiting (1 s of 20 ms frames).
AUDIO_QUEUE = 50
#: The clock of video frames an :class:`OutputTrack` stamps itself (RTP's video clock).
VIDEO_CLOCK = 90_000
VIDEO_FORMATS = ("rgb24", "bgr24", "gray", "yuv420p")
#: Decoded formats whose first plane is the luma (gray) image as it is.
_LUMA_FIRST = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"})


def numpy() -> ModuleType:
    """numpy, imported on first use; an ImportError saying how to install it when it is missing."""
    try:
        import numpy
    except ImportError as exc:
        raise ImportError(
            "fantasize_rtc.media.frames' array helpers need numpy: pip install numpy "
            "(or pip install 'fantasize-rtc-server[modes]')"
        ) from exc
    return numpy


# -- reading ---------------------------------------------------------------------------------------


class _Reader:
    """Reads a received track in a task the session owns (so it is always consumed, and the task
    ends with the track or the session) and hands frames to one ``async for`` consumer."""

    def __init__(self, session: MediaSession, track: MediaStreamTrack) -> None:
        self.kind: str = track.kind
        #: Frames read from the track.
        self.received = 0
        #: Frames dropped because the consumer was busy (never yielded).
        self.dropped = 0
        self.ended = False
        self._wake = asyncio.Event()
        self._task = session.spawn(self._pump(session, track), f"frames-{track.kind}")

    async def _pump(self, session: MediaSession, track: MediaStreamTrack) -> None:
        frames, kind = session.frames, self.kind
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.received += 1
                frames[kind] = frames.get(kind, 0) + 1
                self._put(frame)
                self._wake.set()
        finally:
            self.ended = True
            self._wake.set()

    def _put(self, frame: Any) -> None:
        raise NotImplementedError

    def _take(self) -> Any:
        raise NotImplementedError

    def __aiter__(self) -> _Reader:
        return self

    async def _next(self) -> Any:
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            if self.ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class VideoFrames(_Reader):
    """``async for frame in VideoFrames(session, track)``: the newest decoded ``av.VideoFrame``
    each time (see the module's doc). Make it in :meth:`~.session.Mode.on_track` (it starts
    reading at once, so the track is consumed even before the first ``async for``); iterate it
    in a task (``session.spawn``). It ends when the track does (the session closed)."""

    def __init__(self, session: MediaSession, track: MediaStreamTrack) -> None:
        self._slot: VideoFrame | None = None
        super().__init__(session, track)

    def _put(self, frame: Any) -> None:
        if self._slot is not None:
            self.dropped += 1
        self._slot = frame

    def _take(self) -> VideoFrame | None:
        frame, self._slot = self._slot, None
        return frame

    def __aiter__(self) -> VideoFrames:
        return self

    async def __anext__(self) -> VideoFrame:
        frame: VideoFrame = await self._next()
        return frame


class AudioFrames(_Reader):
    """``async for frame in AudioFrames(session, track)``: every decoded ``av.AudioFrame`` in
    order (aiortc's Opus decoder: 20 ms, 48 kHz, stereo s16); at most ``max_frames`` wait, the
    oldest dropped beyond that. Make it in ``on_track``, iterate it in a task, as :class:`VideoFrames`."""

    def __init__(self, session: MediaSession, track: MediaStreamTrack, max_frames: int = AUDIO_QUEUE) -> None:
        self._queue: deque[AudioFrame] = deque(maxlen=max(1, max_frames))
        super().__init__(session, track)

    def _put(self, frame: Any) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(frame)

    def _take(self) -> AudioFrame | None:
        return self._queue.popleft() if self._queue else None

    def __aiter__(self) -> AudioFrames:
        return self

    async def __anext__(self) -> AudioFrame:
        frame: AudioFrame = await self._next()
        return frame


# -- converting ------------------------------------------------------------------------------------


def video_to_ndarray(frame: VideoFrame, format: str = "rgb24") -> NDArray[np.uint8]:
    """A new uint8 array of ``frame``: ``rgb24``/``bgr24`` H x W x 3, ``gray`` H x W, ``yuv420p``
    H*3/2 x W. ``gray`` from a YUV frame is its Y plane, copied (no conversion at all, so in the
    frame's own range: 16-235 for the usual limited-range video, where libswscale's gray would
    stretch it to 0-255); the others convert with PyAV (libswscale). In a worker thread for anything but thumbnails."""
    np = numpy()
    if format not in VIDEO_FORMATS:
        raise ValueError(f"format must be one of {', '.join(VIDEO_FORMATS)}, not {format!r}")
    if format == "gray" and frame.format.name in _LUMA_FIRST:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
        return rows[:, : frame.width].copy()  # type: ignore[no-any-return]
    array: Any = frame.to_ndarray(format=format)
    return array  # type: ignore[no-any-return]


def ndarray_to_video(array: Any, like: VideoFrame | None = None, format: str | None = None) -> VideoFrame:
    """A frame from an array (the other way of :func:`video_to_ndarray`), with the pts and time
    base of ``like``. ``format`` defaults to ``gray`` for H x W and ``rgb24`` for H x W x 3;
    ``yuv420p`` must be named. A non-uint8 array is clipped to 0-255 first. A gray image becomes a
    yuv420p frame (grey chroma) directly, the format encoders take, without a conversion."""
    np = numpy()
    array = np.asarray(array)
    if format is None:
        format = "gray" if array.ndim == 2 else "rgb24"
    if format not in VIDEO_FORMATS:
        raise ValueError(f"format must be one of {', '.join(VIDEO_FORMATS)}, not {format!r}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    height, width = array.shape[:2]
    if format == "gray" and height % 2 == 0 and width % 2 == 0:
        frame = VideoFrame(width, height, "yuv420p")
        luma = frame.planes[0]
        np.frombuffer(luma, np.uint8).reshape(height, luma.line_size)[:, :width] = array
        for chroma in frame.planes[1:]:
            np.frombuffer(chroma, np.uint8).fill(128)
    else:
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(array), format=format)
    _same_timing(frame, like)
    return frame


def _same_timing(frame: VideoFrame | AudioFrame, like: VideoFrame | AudioFrame | None) -> None:
    if like is not None:
        frame.pts = like.pts
        if like.time_base is not None:  # PyAV refuses None
            frame.time_base = like.time_base


_PCM_SCALE = {"s16": 32768.0, "s16p": 32768.0, "s32": 2147483648.0, "s32p": 2147483648.0, "u8": 128.0, "u8p": 128.0}


def audio_to_ndarray(frame: AudioFrame, dtype: str = "int16") -> NDArray[Any]:
    """PCM of ``frame`` as a channels x samples array: ``int16``, or ``float32`` from -1 to 1.
    Cheap for one 20 ms frame (microseconds): fine on the event loop."""
    np = numpy()
    if dtype not in ("int16", "float32"):
        raise ValueError(f"dtype must be 'int16' or 'float32', not {dtype!r}")
    channels = frame.layout.nb_channels
    array: Any = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved L R L R -> one (contiguous) row per channel
        array = np.ascontiguousarray(array.reshape(-1, channels).T)
    name = frame.format.name
    if dtype == "int16":
        if array.dtype == np.int16:
            return array.copy()  # type: ignore[no-any-return]
        if name.startswith("u8"):
            return ((array.astype(np.int16) - 128) << 8).astype(np.int16)  # type: ignore[no-any-return]
        if array.dtype.kind == "f":
            return (np.clip(array, -1.0, 32767 / 32768) * 32768).astype(np.int16)  # type: ignore[no-any-return]
        return (array >> 16).astype(np.int16)  # type: ignore[no-any-return]  # s32
    if array.dtype.kind == "f":
        return array.astype(np.float32)  # type: ignore[no-any-return]
    offset = 128.0 if name.startswith("u8") else 0.0
    return ((array.astype(np.float32) - offset) / _PCM_SCALE.get(name, 32768.0)).astype(np.float32)  # type: ignore[no-any-return]


def ndarray_to_audio(array: Any, like: AudioFrame | None = None, sample_rate: int = 48_000) -> AudioFrame:
    """An s16 frame (what aiortc's Opus encoder takes) from channels x samples PCM (or one row of
    mono samples), ``int16`` or float from -1 to 1; one or two channels. The sample rate, pts and
    time base of ``like`` when given."""
    np = numpy()
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[0] not in (1, 2):
        raise ValueError("PCM must be channels x samples with 1 or 2 channels")
    if array.dtype.kind == "f":
        array = (np.clip(array, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    elif array.dtype != np.int16:
        array = array.astype(np.int16)
    interleaved = np.ascontiguousarray(array.T).reshape(1, -1)
    frame = AudioFrame.from_ndarray(interleaved, format="s16", layout="mono" if array.shape[0] == 1 else "stereo")
    frame.sample_rate = like.sample_rate if like is not None else sample_rate
    _same_timing(frame, like)
    return frame


# -- sending ---------------------------------------------------------------------------------------


class OutputTrack(MediaStreamTrack):
    """A track a mode feeds with :meth:`send`; aiortc's sender pulls from it, encodes and sends.

    Video: the newest frame wins (one waits at most; one the encoder had no time for is dropped
    and counted). Audio: in order, at most ``max_audio_frames`` waiting, the oldest dropped beyond.
    Frames keep their pts and time base (make them with ``like=`` the received frame); one without
    a pts is stamped from the loop's clock (video) or by samples sent (audio). The track ends
    when :meth:`stop` is called or its sender stops (the session closed): frames sent after that
    are ignored. :meth:`send` is for the event loop (a worker thread returns the frame instead).
    """

    def __init__(self, kind: str, session: MediaSession | None = None, max_audio_frames: int = AUDIO_QUEUE) -> None:
        super().__init__()
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be 'audio' or 'video', not {kind!r}")
        self.kind = kind
        self._session = session
        #: Frames handed to the encoder, and frames dropped before it took them.
        self.sent = 0
        self.dropped = 0
        self._video: VideoFrame | None = None
        self._audio: deque[AudioFrame] = deque(maxlen=max(1, max_audio_frames))
        self._wake = asyncio.Event()
        self._start: float | None = None
        self._samples = 0

    @classmethod
    def back_to(cls, session: MediaSession, track: MediaStreamTrack) -> OutputTrack:
        """A new output sent back on the transceiver ``track`` came in on (the answer's m-line
        turns ``sendrecv``), as the echo does; call it from ``on_track``. When that transceiver
        sends already, the output goes on another one (``pc.addTrack``)."""
        out = cls(track.kind, session)
        pc = session.pc
        if pc is None:
            raise RuntimeError("the session has no peer connection yet")
        transceiver = session.transceiver_of(track)
        if transceiver is not None and transceiver.sender.track is None:
            transceiver.sender.replaceTrack(out)
            transceiver.direction = "sendrecv"
        else:
            pc.addTrack(out)
        return out

    def send(self, frame: VideoFrame | AudioFrame) -> bool:
        """Queue ``frame`` to be sent (on the event loop); False once the track ended."""
        if self.readyState != "live":
            return False
        if frame.pts is None:
            self._stamp(frame)
        if self.kind == "video":
            if self._video is not None:
                self.dropped += 1
            self._video = frame  # type: ignore[assignment]
        else:
            if len(self._audio) == self._audio.maxlen:
                self.dropped += 1
            self._audio.append(frame)  # type: ignore[arg-type]
        self._wake.set()
        return True

    def _stamp(self, frame: VideoFrame | AudioFrame) -> None:
        if isinstance(frame, AudioFrame):
            frame.pts, frame.time_base = self._samples, Fraction(1, frame.sample_rate)
            self._samples += frame.samples
            return
        now = asyncio.get_running_loop().time()
        if self._start is None:
            self._start = now
        frame.pts, frame.time_base = int((now - self._start) * VIDEO_CLOCK), Fraction(1, VIDEO_CLOCK)

    def _take(self) -> VideoFrame | AudioFrame | None:
        if self.kind == "video":
            frame, self._video = self._video, None
            return frame
        return self._audio.popleft() if self._audio else None

    async def recv(self) -> VideoFrame | AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self._take()
            if frame is not None:
                self.sent += 1
                if self._session is not None:
                    sent = self._session.frames_sent
                    sent[self.kind] = sent.get(self.kind, 0) + 1
                return frame
            self._wake.clear()
            await self._wake.wait()

    def stop(self) -> None:
        super().stop()
        self._video = None
        self._audio.clear()
        self._wake.set()


# -- all of it -------------------------------------------------------------------------------------


def _result_to_video(result: Any, like: VideoFrame, format: str) -> VideoFrame:
    """``func``'s array as a frame: H x W x 3 in the format that came in (rgb24 or bgr24), H x W
    gray, except that a yuv420p input's H*3/2 x W result stays yuv420p."""
    ndim = getattr(result, "ndim", 0)
    out_format = format if (format == "bgr24" and ndim == 3) or (format == "yuv420p" and ndim == 2) else None
    return ndarray_to_video(result, like=like, format=out_format)


def _apply(func: Callable[[Any], Any], frame: VideoFrame, format: str) -> VideoFrame:
    """In a worker thread: frame -> array -> ``func`` -> frame with the same timing."""
    return _result_to_video(func(video_to_ndarray(frame, format)), frame, format)


def transform_video(
    session: MediaSession,
    track: MediaStreamTrack,
    func: Callable[[Any], Any],
    format: str = "rgb24",
    in_process: bool = False,
) -> OutputTrack:
    """Send ``track``'s video back transformed: every frame the mode has time for goes through
    ``func(array) -> array`` (``format`` as :func:`video_to_ndarray`; the result H x W is gray,
    H x W x 3 ``rgb24``, or ``bgr24``/``yuv420p`` when that came in) and back to the peer on the
    same m-line. ``func`` runs in a worker thread (the conversions too), or with ``in_process``
    in a worker process (``func`` at a module's top level; the arrays are pickled). Call it from
    ``on_track``; stale frames are dropped (:class:`VideoFrames`). Returns the output track."""
    numpy()  # say now, at the offer, that numpy is missing; not in a task's log line later
    if format not in VIDEO_FORMATS:
        raise ValueError(f"format must be one of {', '.join(VIDEO_FORMATS)}, not {format!r}")
    out = OutputTrack.back_to(session, track)
    frames = VideoFrames(session, track)
    session.spawn(_transform(session, frames, out, func, format=format, in_process=in_process), "transform-video")
    return out


async def _transform(
    session: MediaSession,
    frames: VideoFrames,
    out: OutputTrack,
    func: Callable[[Any], Any],
    *,
    format: str,
    in_process: bool,
) -> None:
    workers = session.workers
    async for frame in frames:
        if in_process:
            image = await workers.run_in_thread(video_to_ndarray, frame, format)
            result = await workers.run_in_process(func, image)
            new = await workers.run_in_thread(_result_to_video, result, frame, format)
        else:
            new = await workers.run_in_thread(_apply, func, frame, format)
        out.send(new)
