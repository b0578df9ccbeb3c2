"""``python -m tests.whip_publisher URL SECONDS [option=value ...]``: publish H.264 to a WHIP
endpoint with FFmpeg's own WHIP muxer, as it ships inside PyAV (GnuTLS DTLS, libx264 constrained
baseline), at 30 fps in real time. Options go to the muxer (``whip_flags=dtls_active``,
``cert_file=...``, ``key_file=...``). Exit status 0 when every frame was sent; the muxer's error
otherwise, on stderr. A process of its own: the muxer blocks."""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import av

WIDTH, HEIGHT, FPS = 320, 240, 30


def main(argv: list[str]) -> int:
    url, seconds, *pairs = argv
    options = dict(pair.split("=", 1) for pair in pairs)
    out = av.open(url, mode="w", format="whip", options=options)
    stream = out.add_stream(
        "libx264",
        rate=FPS,
        options={"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast", "bf": "0", "g": str(FPS)},
    )
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    started = time.monotonic()
    try:
        for n in range(int(float(seconds) * FPS)):
            frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
            frame.planes[0].update(bytes((n * 4 + x) % 256 for x in range(WIDTH)) * HEIGHT)
            frame.planes[1].update(bytes([128]) * (WIDTH * HEIGHT // 4))
            frame.planes[2].update(bytes([128]) * (WIDTH * HEIGHT // 4))
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
            time.sleep(max(0.0, started + (n + 1) / FPS - time.monotonic()))  # real time, as a camera
        for packet in stream.encode(None):
            out.mux(packet)
    finally:
        out.close()  # sends the WHIP DELETE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
