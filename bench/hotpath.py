"""CPU time of our relay hot path without sockets: ``python -m bench.hotpath``.

A WebSocket frame as the server gets it goes through the socket's frame handler, run as the
socket's read callback runs it (``PeerFrames.handle`` through ``handle_frame``: parse, check,
relay, encode, hand to the channel), into a channel that only counts. CPU time per message
(``time.process_time``) hardly moves when other work shares the machine, unlike throughput, so
this is the number to compare before and after a change of the hot path. The socket I/O and
aiohttp's frame handling, the same for us and for the bare aiohttp forwarder, are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.loadgen import CANDIDATE, SDP
from fantasize_rtc import create_rtc_server
from fantasize_rtc._aiohttp_compat import handle_frame
from fantasize_rtc.web._channel import WriteBatch
from fantasize_rtc.web._socket import PeerFrames


class OpenSocket:
    closed = False


class CountingChannel:
    kind = "ws"
    closing = None

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.batch = WriteBatch()  # the socket's frames are counted and timed on it

    def send(self, text: str) -> bool:
        self.count += 1
        self.bytes += len(text)
        return True

    async def close(self, code: int, reason: str) -> None:
        pass

    def begin_close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")


async def measure(n: int, stamped: bool = False) -> dict[str, float]:
    async with create_rtc_server(rate_limit_per_sec=0) as rtc:
        await rtc.connect_peer("room", "alice")
        await rtc.connect_peer("room", "bob")
        channel = CountingChannel()
        await rtc.attach_channel("room", "bob", channel)
        # --stamped: each payload with the signaling benchmark's send time in it (an extra field,
        # as an app's own would be), which the browsers' payloads do not have
        stamp = {"bt": 1234.567891} if stamped else {}
        frames = [
            json.dumps({"type": "signal", "signal": {"type": t, "to": "bob", "payload": p}}, separators=(",", ":"))
            for t, p in [
                ("offer", {"type": "offer", "sdp": SDP, **stamp}),
                ("answer", {"type": "answer", "sdp": SDP, **stamp}),
            ]
            + [("candidate", {**CANDIDATE, **stamp})] * 4
        ]
        handler = PeerFrames(rtc, OpenSocket(), channel, "room", "alice", joined=True).handle  # type: ignore[arg-type]
        out: dict[str, float] = {}
        for label, todo in (("ours", True), ("json.loads only (bare)", False)):
            t0 = time.process_time()
            for i in range(n):
                data = frames[i % len(frames)]
                if todo:  # what the socket's read callback does with a text frame
                    if handle_frame(handler, data) is not True:
                        raise AssertionError("the memory backend's relay suspended or failed")
                else:
                    json.loads(data).get("to")
            out[label] = (time.process_time() - t0) / n * 1e6
        assert channel.count == n
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stamped", action="store_true", help="payloads with an extra field (the benchmark's stamp)")
    args = parser.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, v in asyncio.run(measure(args.n, args.stamped)).items():
            best[k] = min(v, best.get(k, v))
    for k, v in best.items():
        print(f"{k:>24}: {v:6.2f} us/message (best of {args.repeat})")


if __name__ == "__main__":
    main()
