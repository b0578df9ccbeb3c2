"""``GET /metrics``: what the server does, in Prometheus's text format (docs/operations.md).

A transport plugin (``create_app`` installs it; ``fantasize_rtc.web.create_app(plugins=[...,
setup_metrics])`` for a transport of your own). It reads the counts the layers keep themselves
(``counters.py``: the facade's :attr:`~fantasize_rtc.RtcServer.counters`, the transport's
``COUNTERS_KEY``, the media manager's ``counters``) when it is scraped, so the work it measures
pays integer increments and nothing else. It adds two probes of its own: the event loop's lag
(a timer that should fire every half second, and how late it fires) and, with Redis, a PING every
five seconds.

The exposition is ``prometheus_client``'s, in a registry of this app's own (with the library's
process, platform and garbage-collector collectors), never the library's global one: two apps in
one process (tests, several servers) each count their own.

On the main port ``/metrics`` needs the admin key (``Authorization: Bearer <key>``);
:func:`start_metrics_server` serves it without one on a port of its own (``--metrics-port``,
bound to ``--metrics-host``, 127.0.0.1 by default) for a scraper on the same machine or network.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ._version import __version__
from .counters import LATENCY_BUCKETS, MEDIA_TOTALS, Histogram, MediaCounters, TransportCounters
from .errors import Forbidden, RtcError, Unauthorized
from .server import RtcServer
from .web import COUNTERS_KEY, RTC_KEY, STARTED_KEY, is_admin, json_response, refuse_admin_key_in_url

__all__ = ["METRICS_KEY", "Metrics", "setup_metrics", "start_metrics_server"]

log = logging.getLogger("fantasize_rtc.metrics")

#: Seconds between two event-loop lag probes, and between two Redis PINGs.
LAG_INTERVAL_S = 0.5
REDIS_PING_S = 5.0

_MEDIA_DIRECTIONS = {"packetsReceived": ("packets", "in"), "packetsSent": ("packets", "out")}
_MEDIA_DIRECTIONS |= {"bytesReceived": ("bytes", "in"), "bytesSent": ("bytes", "out")}


class Metrics:
    """One app's metrics: its registry, its probes, and a scrape (:meth:`render`)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop_lag = Histogram(LATENCY_BUCKETS)
        self.redis_roundtrip = Histogram(LATENCY_BUCKETS)
        self.redis_ping_failures = 0
        self.registry = CollectorRegistry(auto_describe=False)
        for library_collector in (ProcessCollector, PlatformCollector, GCCollector):
            library_collector(registry=self.registry)
        self._snapshot: dict[str, Any] = {}
        self.registry.register(_Collector(self))

    @property
    def rtc(self) -> RtcServer:
        return self.app[RTC_KEY]

    def media(self) -> Any:
        """The media manager when the media layer is plugged in (never imported from here)."""
        module = sys.modules.get("fantasize_rtc.media")
        key = getattr(module, "MEDIA_KEY", None)
        return self.app.get(key) if key is not None else None

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper accepts (Prometheus text, or OpenMetrics when
        asked for) and its content type. What needs an await (the backend's counts) is read first."""
        rtc = self.rtc
        rooms, peers = await rtc.backend.counts()
        self._snapshot = {"rooms": rooms, "peers": peers, "queued_bytes": await rtc.backend.queued_bytes()}
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- probes ------------------------------------------------------------------------------------

    async def probe_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - started - LAG_INTERVAL_S))

    async def probe_redis(self) -> None:
        backend = self.rtc.backend
        while True:
            try:
                seconds = await backend.ping()
            except asyncio.CancelledError:
                raise
            except Exception:  # unreachable: the backend counts it and says so in its log
                self.redis_ping_failures += 1
            else:
                if seconds is None:
                    return  # no shared store (memory): nothing to probe
                self.redis_roundtrip.observe(seconds)
            await asyncio.sleep(REDIS_PING_S)

    async def overview(self) -> dict[str, Any]:
        """Rooms with their peers, live media sessions, recordings in progress and running totals
        (``GET /rtc/overview``): what an operator's page draws, refreshed every few seconds."""
        return await _overview(self)

    # -- what a scrape shows ---------------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        rtc = self.rtc
        snapshot = self._snapshot
        yield _gauge("info", "This server: version and backend.", 1, version=__version__, backend=rtc.backend.name)
        yield _gauge("rooms", "Rooms (all processes' on Redis).", snapshot.get("rooms", 0))
        yield _gauge("peers", "Peers in rooms (all processes' on Redis).", snapshot.get("peers", 0))
        yield self._connections(snapshot.get("peers", 0))
        yield _gauge("outbox_queued_bytes", "Bytes waiting in peers' outboxes.", snapshot.get("queued_bytes", 0))
        counters = rtc.counters
        yield _counter("connects", "Joins by result: ok or the refusing error's code.", counters.connects, "result")
        yield _counter("disconnects", "Departures by reason.", counters.disconnects, "reason")
        signals = CounterMetricFamily(
            "fantasize_rtc_signals",
            "Signals relayed, per recipient, by type and outcome (delivered, queued, dropped: outbox full).",
            labels=["type", "outcome"],
        )
        for kind, (delivered, queued, dropped) in sorted(counters.signals.items()):
            for outcome, n in (("delivered", delivered), ("queued", queued), ("dropped", dropped)):
                signals.add_metric([kind, outcome], n)
        yield signals
        yield _counter("signals_refused", "Relays refused, by error code.", counters.refused, "code")
        transport = self.app.get(COUNTERS_KEY)
        if transport is not None:
            yield from _transport_families(transport)
        yield _histogram("event_loop_lag_seconds", "How late a timer due every 0.5 s fires.", self.loop_lag)
        if rtc.backend.name == "redis":
            yield _histogram("redis_roundtrip_seconds", "Round trip of a PING to Redis.", self.redis_roundtrip)
            yield _counter("redis_errors", "Calls to Redis that failed (unreachable or refused).", rtc.backend.errors)
        manager = self.media()
        if manager is not None:
            yield from _media_families(manager)

    def _connections(self, peers: int) -> Metric:
        family = GaugeMetricFamily(
            "fantasize_rtc_peer_connections",
            "Peers by how their messages reach them from this process: a WebSocket, a waiting long-poll, "
            "or (in memory only) neither: plain HTTP.",
            labels=["transport"],
        )
        hub = self.rtc.hub
        kinds = {"ws": 0, "poll": 0}
        for kind in hub.channel_kinds():
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in sorted(kinds.items()):
            family.add_metric([kind], n)
        if self.rtc.backend.name == "memory":
            family.add_metric(["http"], max(0, peers - sum(kinds.values())))
        return family


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


def _name(name: str) -> str:
    return f"fantasize_rtc_{name}"


def _gauge(name: str, documentation: str, value: float, **labels: str) -> Metric:
    family = GaugeMetricFamily(_name(name), documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, documentation: str, values: dict[Any, int] | int, *labels: str) -> Metric:
    """A counter family: one value, or one per key of ``values`` (a label value, or a tuple of them)."""
    family = CounterMetricFamily(_name(name), documentation, labels=list(labels))
    if isinstance(values, int):
        family.add_metric([], values)
        return family
    for key, n in sorted(values.items()):
        family.add_metric([str(k) for k in key] if isinstance(key, tuple) else [str(key)], n)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    family = HistogramMetricFamily(_name(name), documentation)
    buckets = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in histogram.cumulative()]
    family.add_metric([], buckets, histogram.sum)
    return family


def _transport_families(counters: TransportCounters) -> Iterator[Metric]:
    yield _counter(
        "http_requests",
        "HTTP requests answered, by route, method and status.",
        counters.requests,
        "route",
        "method",
        "status",
    )
    yield _counter("errors", "Error answers by code, over HTTP or WebSocket.", counters.errors, "code", "transport")
    frames = CounterMetricFamily(_name("websocket_frames"), "WebSocket text frames, in and out.", labels=["direction"])
    frames.add_metric(["in"], counters.frames_in)
    frames.add_metric(["out"], counters.frames_out)
    yield frames
    yield _histogram(
        "relay_latency_seconds",
        "From reading a frame to writing what it caused (the relayed signal, the ack) to WebSockets, "
        "per frame written.",
        counters.relay_latency,
    )


def _media_families(manager: Any) -> Iterator[Metric]:
    counters: MediaCounters = manager.counters
    sessions = GaugeMetricFamily(
        _name("media_sessions"), "Server-side media sessions by mode and state.", labels=["mode", "state"]
    )
    live: dict[tuple[str, str], int] = {}
    totals = dict(counters.totals)
    for session in manager.sessions():
        key = (session.mode.name, session.state)
        live[key] = live.get(key, 0) + 1
        for name in MEDIA_TOTALS:
            value = session.last_stats.get(name)
            if isinstance(value, int):
                totals[name] += value
    for (mode, state), n in sorted(live.items()):
        sessions.add_metric([mode, state], n)
    yield sessions
    yield _counter("media_sessions_opened", "Media sessions admitted, by mode.", counters.opened, "mode")
    yield _counter(
        "media_sessions_refused",
        "Media offers refused before a session existed, by error code (capacity_exceeded, rate_limited ...).",
        counters.refused,
        "reason",
    )
    yield _counter(
        "media_sessions_ended",
        "Media sessions ended, by mode and reason (bye, ice_failed, dtls_failed, ice_timeout ...).",
        counters.closed,
        "mode",
        "reason",
    )
    yield _histogram("media_session_setup_seconds", "From the offer to connected (ICE and DTLS done).", counters.setup)
    packets = CounterMetricFamily(
        _name("media_packets"), "RTP packets the server's peers received and sent.", labels=["direction"]
    )
    data = CounterMetricFamily(
        _name("media_bytes"), "Bytes the server's peers received and sent (ICE transport).", labels=["direction"]
    )
    for name, (what, direction) in _MEDIA_DIRECTIONS.items():
        (packets if what == "packets" else data).add_metric([direction], totals[name])
    yield packets
    yield data
    udp = manager.udp
    yield _counter(
        "media_udp_dropped_datagrams",
        "Datagrams on the media UDP port (--udp-port) that no session claimed.",
        int(getattr(udp, "dropped", 0) or 0) if udp is not None else 0,
    )
    yield _counter("recording_bytes", "Bytes of recordings saved.", counters.recorded_bytes)
    yield from _forwarding_families(manager)


def _forwarding_families(manager: Any) -> Iterator[Metric]:
    """Group calls and WHIP -> WHEP (``media.sfu``): read from the live groups at scrape time,
    nothing counted per forwarded frame."""
    publications = GaugeMetricFamily(
        _name("forwarding_publications"), "Tracks forwarded without transcoding (group calls, WHEP).", labels=["kind"]
    )
    subscribers = GaugeMetricFamily(
        _name("forwarding_subscribers"), "Forwarded tracks' subscribers (one per receiving peer).", labels=["kind"]
    )
    counts = {"audio": [0, 0], "video": [0, 0]}
    for group in manager.forwarding.groups.values():
        for publication in group.publications:
            count = counts.setdefault(publication.kind, [0, 0])
            count[0] += 1
            count[1] += len(publication.subscribers)
    for kind, (published, subscribed) in sorted(counts.items()):
        publications.add_metric([kind], published)
        subscribers.add_metric([kind], subscribed)
    yield publications
    yield subscribers


# -- the operator's overview -------------------------------------------------------------------------

#: Rooms, sessions and recordings an overview lists at most (the totals count them all).
OVERVIEW_LIMIT = 100


async def _overview_route(request: web.Request) -> web.Response:
    """``GET /rtc/overview`` (the admin key): what the demo page's Server panel shows."""
    if not is_admin(request):
        refuse_admin_key_in_url(request)
        raise Unauthorized("The overview needs the admin key: send Authorization: Bearer <key>.")
    return json_response(await request.app[METRICS_KEY].overview())


def _histogram_wire(histogram: Histogram) -> dict[str, float]:
    return {"count": histogram.count, "sum": histogram.sum}


async def _overview(metrics: Metrics) -> dict[str, Any]:
    rtc = metrics.rtc
    rooms_total, peers_total = await rtc.backend.counts()
    channels = {key: channel.kind for key, channel in rtc.hub.channels()}
    rooms: list[dict[str, Any]] = []
    for room_id in await rtc.backend.room_ids(OVERVIEW_LIMIT):
        try:
            snapshot = await rtc.backend.snapshot(room_id)
        except RtcError:  # closed meanwhile
            continue
        room = snapshot.to_wire()
        for peer in room["peers"]:
            peer["transport"] = channels.get((room_id, peer["peerId"]))
        rooms.append(room)
    counters = rtc.counters
    delivered = queued = dropped = 0
    for d, q, x in counters.signals.values():
        delivered, queued, dropped = delivered + d, queued + q, dropped + x
    out: dict[str, Any] = {
        "at": int(time.time() * 1000),
        "server": {
            "version": __version__,
            "backend": rtc.backend.name,
            "uptimeMs": int((time.monotonic() - metrics.app[STARTED_KEY]) * 1000),
            "draining": rtc.draining,
        },
        "rooms": {"total": rooms_total, "peers": peers_total, "shown": rooms},
        "counters": {
            "signals": {
                "delivered": delivered,
                "queued": queued,
                "dropped": dropped,
                "refused": sum(counters.refused.values()),
            },
            "connects": dict(counters.connects),
            "loopLag": _histogram_wire(metrics.loop_lag),
        },
        "sessions": {"total": 0, "shown": []},
        "recordings": {"inProgress": []},
    }
    transport = metrics.app.get(COUNTERS_KEY)
    if transport is not None:
        out["counters"]["websocketFrames"] = {"in": transport.frames_in, "out": transport.frames_out}
        out["counters"]["relayLatency"] = _histogram_wire(transport.relay_latency)
    manager = metrics.media()
    if manager is not None:
        sessions = manager.sessions()
        await asyncio.gather(*(session.refresh_stats() for session in sessions[:OVERVIEW_LIMIT]))  # bytes now
        out["sessions"] = {
            "total": len(sessions),
            "shown": [_session_summary(session.report()) for session in sessions[:OVERVIEW_LIMIT]],
        }
        media: MediaCounters = manager.counters
        out["counters"]["mediaSessions"] = {
            "opened": sum(media.opened.values()),
            "ended": sum(media.closed.values()),
            "refused": sum(media.refused.values()),
        }
        out["counters"]["setup"] = _histogram_wire(media.setup)
        listing = await asyncio.to_thread(manager.store.list)
        out["recordings"]["inProgress"] = [
            wire for wire in (info.to_wire() for info in listing) if wire.get("state") == "recording"
        ][:OVERVIEW_LIMIT]
    return out


def _session_summary(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("sessionId", "mode", "via", "state", "roomId", "peerId", "durationMs", "verdict", "candidatePair")
    summary = {key: report.get(key) for key in keep}
    summary["connectMs"] = (report.get("timings") or {}).get("connectMs")
    stats = report.get("stats") or {}
    summary["bytesReceived"] = stats.get("bytesReceived", 0)
    summary["bytesSent"] = stats.get("bytesSent", 0)
    return summary


# -- the plugin and the metrics listener ------------------------------------------------------------

METRICS_KEY = web.AppKey("metrics", Metrics)


async def _metrics_route(request: web.Request) -> web.Response:
    """``GET /metrics`` on the main port: the admin key only."""
    if not is_admin(request):
        refuse_admin_key_in_url(request)
        if request.app[RTC_KEY].config.admin_key:
            raise Unauthorized("/metrics needs the admin key: send Authorization: Bearer <key>.")
        raise Forbidden(
            "/metrics is off on this port: start the server with --admin-key, or --metrics-port for a scraper."
        )
    return await _exposition(request.app[METRICS_KEY], request)


async def _exposition(metrics: Metrics, request: web.Request) -> web.Response:
    body, content_type = await metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup_metrics(app: web.Application) -> Metrics:
    """Plug ``/metrics`` and its probes into ``app`` (before it starts)."""
    metrics = Metrics(app)
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _metrics_route)
    app.router.add_get("/rtc/overview", _overview_route)

    async def probes(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(metrics.probe_loop_lag(), name="fantasize-rtc-loop-lag"),
            asyncio.create_task(metrics.probe_redis(), name="fantasize-rtc-redis-ping"),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(probes)
    return metrics


async def start_metrics_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``'s ``/metrics`` without a key on ``host:port`` (``--metrics-port``); the caller
    cleans the returned runner up. Only ``/metrics`` is there."""
    metrics = app[METRICS_KEY]
    listener = web.Application()

    async def scrape(request: web.Request) -> web.Response:
        return await _exposition(metrics, request)

    listener.router.add_get("/metrics", scrape)
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("metrics: Prometheus /metrics on http://%s:%d/metrics (no key: keep it private)", host, port)
    return runner
