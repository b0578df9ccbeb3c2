"""A mode of your own: your video comes back as its edges, computed with numpy in a worker thread.

    pip install numpy            # or: pip install 'fantasize-rtc-server[modes]'
    python examples/video_filter.py [--port 8080 ...]     # any `fantasize-rtc serve` flag

Then open http://127.0.0.1:8080/ and pick the mode "filter" in the Echo panel, or offer to it:
``POST /rtc/offer {"mode": "filter"}`` or a room's ``@filter`` (not WHIP: a publisher receives nothing back).

:func:`~fantasize_rtc.media.transform_video` does the plumbing: it reads the newest decoded frame
(stale ones are dropped when the filter is slower than real time), converts it to an array and
runs ``edges`` in a worker thread, and sends the result back on the m-line the video came in on,
with the frame's own timestamps. Audio is read and dropped.
"""

from __future__ import annotations

import sys

import numpy as np
from aiortc import MediaStreamTrack

from fantasize_rtc.media import MediaSession, Mode, ModeRegistry, modes, transform_video


def edges(gray: np.ndarray) -> np.ndarray:
    """Sobel-like edge strength of a gray image (H x W uint8 -> H x W uint8). Runs in a thread."""
    g = gray.astype(np.int16)
    gx = np.abs(g[1:-1, 2:] - g[1:-1, :-2])
    gy = np.abs(g[2:, 1:-1] - g[:-2, 1:-1])
    out = np.zeros_like(gray)
    out[1:-1, 1:-1] = np.minimum(gx + gy, 255)
    return out


class EdgeFilter(Mode):
    """sends your video back as its edges (a numpy filter in a worker thread)"""

    whip = False  # a WHIP publisher receives nothing back

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        if track.kind == "video" and session.options.video:
            transform_video(session, track, edges, format="gray")
        else:
            session.drain(track)


def register(registry: ModeRegistry = modes) -> None:
    registry.register("filter", EdgeFilter)


if __name__ == "__main__":
    from fantasize_rtc.cli import main

    register()
    sys.exit(main(["serve", *sys.argv[1:]]))
