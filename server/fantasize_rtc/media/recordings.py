"""The recordings folder: server-chosen file names, a JSON sidecar per recording, quota.

A recording ``<id>`` is the media file ``<id>.<ext>`` plus ``<id>.json`` (who made it, when, size,
duration, codecs, its state). Ids are ``<UTC time>-<session id>``: made by the server only, and
checked against a strict pattern before any path is built from one, so no request can name a
file outside the folder.

Crash safety: a recording's sidecar is written when it starts (state ``recording``), while the
writing process holds an exclusive ``flock`` on the media file; it is rewritten once the file is
finalized (``complete``). The kernel drops the lock when the process dies, however it dies, so at
the next start (:meth:`RecordingStore.load`) a sidecar still saying ``recording`` whose file can be
locked was left by a process that died mid-recording: the file is scanned for how much media it
really holds and the recording is kept as ``incomplete`` (or removed when it holds none). A file
another live process is still writing (a shared folder) stays locked and is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from ..errors import CapacityExceeded, RecordingNotFound
from ..protocol import RecordingState

__all__ = [
    "FORMATS",
    "LiveRecording",
    "RecordingFormat",
    "RecordingInfo",
    "RecordingStore",
    "probe_media",
]

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,100}")


#: Matroska (WebM, MKV): a new cluster at least every second (and every MiB), each written out
#: whole when it closes, so a killed process loses about the last second.
_MATROSKA_OPTIONS = (("cluster_time_limit", "1000"), ("cluster_size_limit", str(1 << 20)))
#: MP4: fragmented (an empty ``moov`` up front, then a ``moof`` + ``mdat`` at each keyframe and at
#: least every second), so what was written plays without the index a plain MP4 writes at the end.
_MP4_OPTIONS = (("movflags", "frag_keyframe+empty_moov+default_base_moof"), ("frag_duration", "1000000"))
#: Both: hand what the muxer has finished to the OS at once (flush the AVIO buffer after every
#: packet, instead of when its 32 KiB fill up), and never hold one stream's packets longer than a
#: second in the interleaving queue waiting for the other stream.
_WRITE_OPTIONS = (("flush_packets", "1"), ("max_interleave_delta", "1000000"))


@dataclass(frozen=True, slots=True)
class RecordingFormat:
    name: str
    container: str  # the FFmpeg muxer
    ext: str
    video_codec: str  # the encoder when transcoding
    audio_codec: str
    content_type: str
    #: Negotiated codecs (aiortc's names: ``VP8``, ``H264``, ``opus``) this container takes as
    #: they are: tracks in them are recorded without transcoding (passthrough).
    passthrough: frozenset[str] = frozenset()
    #: Muxer options (see above): what keeps the file playable if the process dies.
    options: tuple[tuple[str, str], ...] = ()


#: ``format`` option -> how it is written. WebM and MKV hold VP8 + Opus (MKV also H.264 as
#: received); MP4 holds H.264 + AAC (Opus is transcoded to AAC, which every player takes in MP4).
FORMATS: dict[str, RecordingFormat] = {
    "webm": RecordingFormat(
        "webm",
        "webm",
        "webm",
        "libvpx",
        "libopus",
        "video/webm",
        frozenset({"VP8", "opus"}),
        _MATROSKA_OPTIONS + _WRITE_OPTIONS,
    ),
    "mkv": RecordingFormat(
        "mkv",
        "matroska",
        "mkv",
        "libvpx",
        "libopus",
        "video/x-matroska",
        frozenset({"VP8", "H264", "opus"}),
        _MATROSKA_OPTIONS + _WRITE_OPTIONS,
    ),
    "mp4": RecordingFormat(
        "mp4", "mp4", "mp4", "libx264", "aac", "video/mp4", frozenset({"H264"}), _MP4_OPTIONS + _WRITE_OPTIONS
    ),
}


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One recording, as listed by ``GET /rtc/recordings`` (and kept in its sidecar)."""

    id: str
    file: str
    format: str
    session_id: str
    room_id: str | None
    peer_id: str | None
    created: int  # ms since the epoch
    size: int
    duration: float  # seconds
    codecs: tuple[str, ...]
    close_reason: str | None = None
    #: Whose it is (``Owner.key``: a token hash or an identity); never sent to clients.
    owner_key: str | None = None
    state: str = RecordingState.COMPLETE  # a RecordingState

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "complete": self.state == RecordingState.COMPLETE,
            "format": self.format,
            "contentType": FORMATS[self.format].content_type if self.format in FORMATS else None,
            "size": self.size,
            "duration": round(self.duration, 3),
            "codecs": list(self.codecs),
            "created": self.created,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "sessionId": self.session_id,
            "closeReason": self.close_reason,
            "url": f"/rtc/recordings/{self.id}",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "format": self.format,
            "sessionId": self.session_id,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "created": self.created,
            "size": self.size,
            "duration": self.duration,
            "codecs": list(self.codecs),
            "closeReason": self.close_reason,
            "ownerKey": self.owner_key,
            "state": self.state,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordingInfo:
        state = data.get("state", RecordingState.COMPLETE)  # sidecars from before states: complete
        if state not in RecordingState.ALL:
            raise ValueError(f"unknown recording state {state!r}")
        return cls(
            id=str(data["id"]),
            file=str(data["file"]),
            format=str(data["format"]),
            session_id=str(data["sessionId"]),
            room_id=data.get("roomId"),
            peer_id=data.get("peerId"),
            created=int(data["created"]),
            size=int(data["size"]),
            duration=float(data["duration"]),
            codecs=tuple(data.get("codecs") or ()),
            close_reason=data.get("closeReason"),
            owner_key=data.get("ownerKey") if isinstance(data.get("ownerKey"), str) else None,
            state=state,
        )


class LiveRecording:
    """A recording this process is writing: the lock on its file (held from before its sidecar
    exists until after its final sidecar is written) and how far it got."""

    def __init__(self, info: RecordingInfo, fd: int, size: Callable[[], int], duration: Callable[[], float]) -> None:
        self.info = info
        self.size = size
        self.duration = duration
        self._fd = fd

    def sync(self) -> None:
        """Ask the OS to put what was written on the disk (the page cache survives the process
        dying, but not the machine). Called from the recorder's thread now and then."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # releases the lock


def probe_media(path: Path, scan: bool = False) -> tuple[float, tuple[str, ...], int]:
    """(duration in seconds, codec names, packets read) of a media file, as a player sees it.

    A finalized file says its duration in its header. One whose writer died has none (or a
    wrong one): ``scan`` reads every packet (no decoding) to find where the media really ends,
    stopping quietly at a cut-off last cluster or fragment. Blocking: not for the event loop."""
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        codecs = tuple(s.codec_context.name for s in streams)
        if not scan and container.duration is not None:
            return container.duration / 1_000_000, codecs, -1
        end = 0.0
        packets = 0
        try:
            for packet in container.demux(streams):
                if packet.pts is None or packet.time_base is None:
                    continue
                packets += 1
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except (av.FFmpegError, EOFError):
            pass  # a cut-off end: what was read before it counts
        return end, codecs, packets


class RecordingStore:
    """The recordings folder (created on first use).

    What it holds is counted once (:meth:`load`, at startup) and then kept up to date as
    recordings are saved and deleted, plus the recordings being written (:meth:`begin`): the
    quota is checked on every new session and every half second of every recording, and a scan
    of the folder each time would block the event loop as the folder grows. Files other
    processes put there meanwhile are seen at the next start.

    A recording's life here: :meth:`begin` (file created and locked, sidecar ``recording``),
    then :meth:`finish` (sidecar ``complete``, lock released) or :meth:`discard` (nothing was
    recorded: both files go). Recordings that never got either, because their process died, are
    found by :meth:`load` at the next start (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._saved: int | None = None  # bytes of what is in the folder, apart from what is written now
        self._live: dict[str, LiveRecording] = {}

    def _inside(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if path.parent != self.root:  # defence in depth: ids are already pattern-checked
            raise RecordingNotFound("No such recording.")
        return path

    def new_path(self, session_id: str, fmt: RecordingFormat) -> tuple[str, Path]:
        """A fresh (id, path) for a session's recording: UTC time + session id, never client input."""
        self.root.mkdir(parents=True, exist_ok=True)
        recording_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + session_id
        if not _ID_RE.fullmatch(recording_id):
            raise ValueError("session ids are url-safe tokens")
        return recording_id, self._inside(f"{recording_id}.{fmt.ext}")

    def scan(self) -> int:
        """Bytes in the folder now (a walk over it: not for the event loop)."""
        try:
            with os.scandir(self.root) as entries:
                return sum(e.stat().st_size for e in entries if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return 0

    def load(self) -> None:
        """Recover the recordings a dead process left unfinished (:meth:`recover`), then count
        what the folder holds. At startup, before the server takes requests, in a thread: it
        blocks (scanning an unfinished file reads all of it), once."""
        self.recover()
        self._saved = self.scan() - sum(live.size() for live in self._live.values())

    async def load_async(self) -> None:
        """:meth:`load` in a thread of its own, which ends with it: off the event loop, and no
        idle worker is left behind."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="recordings-load")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.load)
        finally:
            executor.shutdown(wait=False)

    def recover(self) -> list[RecordingInfo]:
        """Sidecars still saying ``recording`` whose file no live process holds locked: their
        writer died. Each becomes ``incomplete`` with the duration its file really holds (or
        goes, with its file, when that holds no media). Returns what was kept. Blocking."""
        kept: list[RecordingInfo] = []
        try:
            sidecars = sorted(self.root.glob("*.json"))
        except FileNotFoundError:
            return kept
        for sidecar in sidecars:
            recording_id = sidecar.name[:-5]
            info = self._read_sidecar(recording_id)
            if info is None or info.state != RecordingState.RECORDING or recording_id in self._live:
                continue
            try:
                media = self._inside(info.file)
                fd = os.open(media, os.O_RDONLY)
            except (OSError, RecordingNotFound):
                log.warning("recording %s: its file is gone; removing its sidecar", recording_id)
                with contextlib.suppress(OSError):
                    sidecar.unlink()
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process is writing it now
                again = self._read_sidecar(recording_id)  # it may have finished meanwhile
                if again is None or again.state != RecordingState.RECORDING:
                    continue
                recovered = self._recover_one(again, media)
                if recovered is not None:
                    kept.append(recovered)
            finally:
                os.close(fd)
        return kept

    def _recover_one(self, info: RecordingInfo, media: Path) -> RecordingInfo | None:
        started = time.monotonic()
        try:
            duration, codecs, packets = probe_media(media, scan=True)
        except (av.FFmpegError, OSError, ValueError):
            duration, codecs, packets = 0.0, (), 0
        if packets <= 0:
            log.warning("recording %s was interrupted before any media reached its file; removing it", info.id)
            for path in (media, self._inside(f"{info.id}.json")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return None
        recovered = dataclasses.replace(
            info,
            state=RecordingState.INCOMPLETE,
            size=media.stat().st_size,
            duration=duration,
            codecs=codecs or info.codecs,
        )
        self._write_sidecar(recovered)
        log.warning(
            "recording %s was interrupted (its server process died while writing it): %.1f s of media "
            "kept, listed as incomplete (scanned in %.2f s)",
            info.id,
            duration,
            time.monotonic() - started,
        )
        return recovered

    def begin(self, info: RecordingInfo, size: Callable[[], int], duration: Callable[[], float]) -> LiveRecording:
        """A recording starts: create its file and lock it (the lock says "being written" to
        other processes and to the next start), then write its sidecar (``recording``).
        ``size()`` and ``duration()`` tell how far it got (size counts to the quota)."""
        self.root.mkdir(parents=True, exist_ok=True)
        media = self._inside(info.file)
        fd = os.open(media, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            live = LiveRecording(dataclasses.replace(info, state=RecordingState.RECORDING), fd, size, duration)
            self._write_sidecar(live.info)
        except BaseException:
            os.close(fd)
            raise
        self._live[info.id] = live
        return live

    def finish(self, info: RecordingInfo) -> None:
        """The file is finalized: write its sidecar for good (``complete``), release the lock."""
        try:
            self.save(dataclasses.replace(info, state=RecordingState.COMPLETE))
        finally:
            self._release(info.id)

    def discard(self, recording_id: str) -> None:
        """The recording holds nothing: remove its file and sidecar, release the lock."""
        try:
            live = self._live.get(recording_id)
            names = [f"{recording_id}.json"] + ([live.info.file] if live else [])
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    self._inside(name).unlink()
        finally:
            self._release(recording_id)

    def _release(self, recording_id: str) -> None:
        live = self._live.pop(recording_id, None)
        if live is not None:
            live.close()

    def live(self, recording_id: str) -> LiveRecording | None:
        """The recording of that id if this process is writing it now."""
        return self._live.get(recording_id)

    def used_bytes(self) -> int:
        """Bytes in the folder: counted at :meth:`load` (or now, once, without it), then kept."""
        if self._saved is None:
            self._saved = self.scan()
        return self._saved + sum(live.size() for live in self._live.values())

    def check_quota(self, quota: int) -> None:
        used = self.used_bytes()
        if used >= quota:
            log.warning("recordings folder %s is full (%d of %d bytes)", self.root, used, quota)
            raise CapacityExceeded("The recordings folder is full; delete recordings or try later.", retry_after=60)

    def save(self, info: RecordingInfo) -> None:
        text = self._write_sidecar(info)
        if self._saved is not None:
            self._saved += info.size + len(text)

    def _write_sidecar(self, info: RecordingInfo) -> str:
        # Atomically: a reader (or the next start) sees the old sidecar or the new one, never half.
        sidecar = self._inside(f"{info.id}.json")
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        text = json.dumps(info.to_json())
        tmp.write_text(text)
        os.replace(tmp, sidecar)
        return text

    def _read_sidecar(self, recording_id: str) -> RecordingInfo | None:
        if not _ID_RE.fullmatch(recording_id):
            return None
        try:
            info = RecordingInfo.from_json(json.loads(self._inside(f"{recording_id}.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError, RecordingNotFound):
            return None
        return info if info.id == recording_id else None

    def list(self) -> list[RecordingInfo]:
        out = []
        try:
            names = sorted(p.name for p in self.root.glob("*.json"))
        except FileNotFoundError:
            return []
        for name in names:
            info = self._load(name[:-5])
            if info is not None:
                out.append(info)
        return out

    def _load(self, recording_id: str) -> RecordingInfo | None:
        info = self._read_sidecar(recording_id)
        if info is None:
            return None
        try:
            size = self._inside(info.file).stat().st_size
        except (OSError, RecordingNotFound):
            return None
        live = self._live.get(recording_id)
        if live is not None and info.state == RecordingState.RECORDING:
            # Being written here: how far it got now (the sidecar says where it began).
            return dataclasses.replace(info, size=size, duration=live.duration())
        return info if size == info.size else dataclasses.replace(info, size=size)

    def get(self, recording_id: str) -> RecordingInfo:
        info = self._load(recording_id) if isinstance(recording_id, str) else None
        if info is None:
            raise RecordingNotFound(f"No recording {str(recording_id)[:64]!r}.")
        return info

    def path_of(self, info: RecordingInfo) -> Path:
        return self._inside(info.file)

    def delete(self, info: RecordingInfo) -> None:
        for name in (f"{info.id}.json", info.file):
            path = self._inside(name)
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                if self._saved is not None:
                    self._saved = max(0, self._saved - size)
        log.info("recording %s deleted", info.id)
