"""Probe mode: a connectivity test.

Once connected the probe measures for ``probeSeconds`` (default 3): STUN round trips on the
selected candidate pair every half second, and the packets, bytes and frames the peer sends.
Then the report (the session report: timings, candidate pair, round-trip time, counters, loss,
verdict) is sent to the peer on every open data channel (a JSON text message
``{"type": "probe:report", "report": {...}}``) and, for sessions opened by signaling, as a
``probe:report`` signal from ``@probe``. The report stays readable at ``GET /rtc/sessions/{id}``;
the session stays open until the peer ends it (or it times out), so media keeps being counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from typing import Any

from aiortc import RTCDataChannel

from .ice import stun_rtt_ms
from .session import MediaSession, Mode

__all__ = ["ProbeMode"]

log = logging.getLogger(__name__)

RTT_INTERVAL = 0.5


class ProbeMode(Mode):
    """Options: ``probeSeconds`` (0.2 to 60, default 3)."""

    name = "probe"

    def __init__(self) -> None:
        self.state = "waiting"  # -> measuring -> done
        self.rtts: list[float] = []
        self.channels: list[RTCDataChannel] = []
        self.sent_to: list[str] = []

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        self.channels.append(channel)

        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1

    async def on_connected(self, session: MediaSession) -> None:
        self.state = "measuring"
        loop = asyncio.get_running_loop()
        end = loop.time() + session.options.probe_seconds
        while True:
            rtt = await stun_rtt_ms(session.pc) if session.pc is not None else None
            if rtt is not None:
                self.rtts.append(rtt)
            left = end - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(RTT_INTERVAL, left))
        await session.refresh_stats()
        self.state = "done"
        report = session.report()
        log.info("%s: probe done: %s", session.label, report["verdict"])
        await self._deliver(session, report)

    async def close(self, session: MediaSession, reason: str) -> None:
        if self.state == "done" or session.notify is None:
            return
        # A probe that never finished still owes a signaling peer its verdict (e.g. ICE failed).
        self.state = "done"
        await self._deliver(session, session.report())

    async def _deliver(self, session: MediaSession, report: dict[str, Any]) -> None:
        text = json.dumps({"type": "probe:report", "report": report})
        for channel in self.channels:
            if channel.readyState == "open":
                channel.send(text)
                self.sent_to.append(f"datachannel:{channel.label}")
        if session.notify is not None:
            try:
                await session.notify({"type": "probe:report", "payload": report})
                self.sent_to.append("signaling")
            except Exception:  # the peer may be gone; the report stays readable over HTTP
                log.info("%s: could not signal the probe report", session.label, exc_info=True)

    def report(self) -> dict[str, Any]:
        rtt: dict[str, Any] | None = None
        if self.rtts:
            rtt = {
                "samples": len(self.rtts),
                "minMs": round(min(self.rtts), 2),
                "medianMs": round(statistics.median(self.rtts), 2),
                "maxMs": round(max(self.rtts), 2),
            }
        return {
            "probe": {"state": self.state, "rtt": rtt, "sentTo": list(self.sent_to)},
            "rttMs": rtt["medianMs"] if rtt else None,
        }
