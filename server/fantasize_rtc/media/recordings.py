"""The recordings folder: server-chosen file names, a JSON sidecar per recording, quota.

A recording ``<id>`` is the media file ``<id>.<ext>`` plus ``<id>.json`` (who made it, when, size,
duration, codecs). Ids are ``<UTC time>-<session id>``: made by the server only, and checked
against a strict pattern before any path is built from one, so no request can name a file
outside the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CapacityExceeded, RecordingNotFound

__all__ = ["FORMATS", "RecordingFormat", "RecordingInfo", "RecordingStore"]

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,100}")


@dataclass(frozen=True, slots=True)
class RecordingFormat:
    name: str
    container: str  # the FFmpeg muxer
    ext: str
    video_codec: str
    audio_codec: str
    content_type: str


#: ``format`` option -> how it is written. WebM and MKV hold VP8 + Opus; MP4 holds H.264 + AAC.
FORMATS: dict[str, RecordingFormat] = {
    "webm": RecordingFormat("webm", "webm", "webm", "libvpx", "libopus", "video/webm"),
    "mkv": RecordingFormat("mkv", "matroska", "mkv", "libvpx", "libopus", "video/x-matroska"),
    "mp4": RecordingFormat("mp4", "mp4", "mp4", "libx264", "aac", "video/mp4"),
}


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One finished recording, as listed by ``GET /rtc/recordings``."""

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

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordingInfo:
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
        )


class RecordingStore:
    """The recordings folder (created on first use).

    What it holds is counted once (:meth:`load`, at startup) and then kept up to date as
    recordings are saved and deleted, plus the recordings being written (:meth:`writing`): the
    quota is checked on every new session and every half second of every recording, and a scan
    of the folder each time would block the event loop as the folder grows. Files other
    processes put there meanwhile are seen at the next start."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._saved: int | None = None  # bytes of what is in the folder, apart from what is written now
        self._writing: dict[str, Callable[[], int]] = {}

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
        """Count what the folder holds. At startup, before the server takes requests: the walk
        blocks, once."""
        self._saved = self.scan() - sum(size() for size in self._writing.values())

    def writing(self, recording_id: str, size: Callable[[], int]) -> None:
        """A recording is being written; ``size()`` tells its bytes so far (it counts to the quota)."""
        self._writing[recording_id] = size

    def done_writing(self, recording_id: str) -> None:
        self._writing.pop(recording_id, None)

    def used_bytes(self) -> int:
        """Bytes in the folder: counted at :meth:`load` (or now, once, without it), then kept."""
        if self._saved is None:
            self._saved = self.scan()
        return self._saved + sum(size() for size in self._writing.values())

    def check_quota(self, quota: int) -> None:
        used = self.used_bytes()
        if used >= quota:
            log.warning("recordings folder %s is full (%d of %d bytes)", self.root, used, quota)
            raise CapacityExceeded("The recordings folder is full; delete recordings or try later.", retry_after=60)

    def save(self, info: RecordingInfo) -> None:
        sidecar = self._inside(f"{info.id}.json")
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        text = json.dumps(info.to_json())
        tmp.write_text(text)
        os.replace(tmp, sidecar)
        if self._saved is not None:
            self._saved += info.size + len(text)

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
        if not _ID_RE.fullmatch(recording_id):
            return None
        try:
            info = RecordingInfo.from_json(json.loads(self._inside(f"{recording_id}.json").read_text()))
            media = self._inside(info.file)
            size = media.stat().st_size
        except (OSError, ValueError, KeyError, TypeError, RecordingNotFound):
            return None
        if info.id != recording_id:
            return None
        return info if size == info.size else _with_size(info, size)

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


def _with_size(info: RecordingInfo, size: int) -> RecordingInfo:
    data = info.to_json()
    data["size"] = size
    return RecordingInfo.from_json(data)
