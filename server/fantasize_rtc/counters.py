"""What the server counts as it works, for ``/metrics`` (``metrics.py``) and anyone embedding it.

Every layer keeps its own counts in plain integers on an object it owns (the facade's
:class:`RelayCounters`, the transport's and the media manager's counters): a hot path pays an
integer increment, nothing else, and nothing here knows about Prometheus. ``metrics.py`` reads
them when it is scraped. :class:`Histogram` is a histogram with fixed buckets in the same spirit:
``observe`` is a bisection and two additions.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = [
    "LATENCY_BUCKETS",
    "MEDIA_TOTALS",
    "SETUP_BUCKETS",
    "SIGNAL_TYPES",
    "Histogram",
    "MediaCounters",
    "RelayCounters",
    "TransportCounters",
    "signal_type_label",
]

#: Seconds: relay latency, event-loop lag, Redis round trips (100 us to 2.5 s).
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Seconds: media session setup, offer to connected (10 ms to 30 s).
SETUP_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Signal types counted under their own name; any other type counts as ``other`` (the type is
#: the client's to choose, and a label per value would let clients grow the metrics without end).
SIGNAL_TYPES: Final = frozenset({"offer", "answer", "candidate", "bye", "renegotiate", "hello"})


def signal_type_label(kind: str) -> str:
    return kind if kind in SIGNAL_TYPES else "other"


class Histogram:
    """Observations counted into fixed buckets (upper bounds, ``le``) with their sum.

    ``counts[i]`` counts observations in ``(bounds[i-1], bounds[i]]``; the last one is above every
    bound (``+Inf``). Cumulative counts, as Prometheus shows them, come from :meth:`cumulative`."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Count ``n`` observations of ``value`` (``n`` > 1: that many messages shared one value)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` for every bucket, ``+Inf`` last."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class RelayCounters:
    """The facade's counts (:attr:`fantasize_rtc.RtcServer.counters`).

    ``signals`` maps a signal type label to ``[delivered, queued, dropped]`` recipient counts;
    ``refused`` an error code to relays refused with it (rate limits, validation, membership).
    ``connects`` counts joins by result (``ok`` or the refusing error's code), ``disconnects``
    departures by reason (``protocol.LeaveReason``)."""

    __slots__ = ("connects", "disconnects", "refused", "signals")

    def __init__(self) -> None:
        self.signals: dict[str, list[int]] = {}
        self.refused: dict[str, int] = {}
        self.connects: dict[str, int] = {}
        self.disconnects: dict[str, int] = {}

    def relayed(self, kind: str, delivered: int, queued: int, dropped: int) -> None:
        counts = self.signals.get(kind) or self.slot(kind)
        counts[0] += delivered
        counts[1] += queued
        counts[2] += dropped

    def slot(self, kind: str) -> list[int]:
        """The ``[delivered, queued, dropped]`` of ``kind``: its own (a known type, then found with
        one lookup) or ``other``'s (never a key of its own: clients choose the types)."""
        label = signal_type_label(kind)
        counts = self.signals.get(label)
        if counts is None:
            counts = self.signals[label] = [0, 0, 0]
        return counts

    @staticmethod
    def add(table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


class TransportCounters:
    """The aiohttp transport's counts (``app[fantasize_rtc.web.COUNTERS_KEY]``).

    ``requests`` maps ``(route, method, status)`` to answered HTTP requests (the route as
    registered, e.g. ``/rtc/rooms/{room_id}``; ``unmatched`` for none); ``errors`` maps
    ``(code, transport)`` to error answers (``http`` or ``ws`` frames); ``frames_in`` and
    ``frames_out`` count WebSocket text frames; ``relay_latency`` is seconds from reading a frame to
    writing what it caused (the relayed message, the ack) to the WebSocket(s), once per message."""

    __slots__ = ("errors", "frames_in", "frames_out", "relay_latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.frames_in = 0
        self.frames_out = 0
        self.relay_latency = Histogram(LATENCY_BUCKETS)

    def answered(self, route: str, method: str, status: int, error_code: str | None) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if error_code is not None:
            self.error(error_code, "http")

    def error(self, code: str, transport: str) -> None:
        key = (code, transport)
        self.errors[key] = self.errors.get(key, 0) + 1


#: The per-session stats (``MediaSession.last_stats``) the media totals add up.
MEDIA_TOTALS: Final = ("packetsReceived", "packetsSent", "bytesReceived", "bytesSent")


class MediaCounters:
    """The media manager's counts (``MediaManager.counters``).

    ``opened`` maps a mode to sessions admitted, ``refused`` an error code to offers refused before
    any session existed (``capacity_exceeded``, ``rate_limited``, ``invalid_request`` ...),
    ``closed`` ``(mode, reason)`` to sessions ended (``protocol.SessionEnd``: ``ice_failed``,
    ``dtls_failed``, ``ice_timeout``, ``bye`` ...); ``setup`` is seconds from offer to connected;
    ``totals`` sums :data:`MEDIA_TOTALS` over the sessions that ended (the live ones are added
    when they are read); ``recorded_bytes`` the sizes of the recordings saved."""

    __slots__ = ("closed", "opened", "recorded_bytes", "refused", "setup", "totals")

    def __init__(self) -> None:
        self.opened: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.closed: dict[tuple[str, str], int] = {}
        self.setup = Histogram(SETUP_BUCKETS)
        self.totals = dict.fromkeys(MEDIA_TOTALS, 0)
        self.recorded_bytes = 0

    def ended(self, mode: str, reason: str, stats: dict[str, object]) -> None:
        key = (mode, reason)
        self.closed[key] = self.closed.get(key, 0) + 1
        for name in MEDIA_TOTALS:
            value = stats.get(name)
            if isinstance(value, int):
                self.totals[name] += value
