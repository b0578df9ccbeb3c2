"""``/metrics`` (issue 15): a scraper reads a real ``fantasize-rtc serve`` process while traffic
flows and sees each counter move by exactly what was done; the keys and the keyless listener;
JSON logs with their context and the media session's summary line; Redis round trips."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.client import RtcClient
from tests.helpers import free_port, wait_for
from tests.media_helpers import client_peer
from tests.redis_fixtures import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture

ADMIN = "metrics-admin"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class Served:
    url: str
    metrics_url: str
    log: Path
    proc: asyncio.subprocess.Process

    async def scrape(self, http: aiohttp.ClientSession) -> Samples:
        async with http.get(self.metrics_url) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            return parse(await resp.text())


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, *flags: str) -> AsyncIterator[Served]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fantasize_rtc",
            "serve",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--admin-key",
            ADMIN,
            "--recordings-dir",
            str(tmp_path / "rec"),
            *flags,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FANTASIZE_RTC_")},
        )
    served = Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log, proc)
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(served.metrics_url) as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, 30, interval=0.1, message="the server and its metrics listener")
        yield served
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def test_a_scraper_sees_each_counter_move_by_what_was_done(tmp_path: Path) -> None:
    async with serve(tmp_path) as server, aiohttp.ClientSession() as http:
        before = await server.scrape(http)
        seen: list[Samples] = []
        stop = asyncio.Event()

        async def scraper() -> None:  # a Prometheus scraping every 50 ms while the traffic flows
            while not stop.is_set():
                seen.append(await server.scrape(http))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

        scraping = asyncio.create_task(scraper())
        alice = RtcClient(server.url, transport="ws", auto_heartbeat=False, send_over="ws")
        bob = RtcClient(server.url, transport="ws", auto_heartbeat=False)
        try:
            await alice.connect("metrics", "alice")
            await bob.connect("metrics", "bob")
            await wait_for(lambda: alice.channel == bob.channel == "ws", 10, message="both WebSockets")
            for i in range(10):
                await alice.signal({"type": "offer", "payload": {"sdp": f"v=0 {i}"}}, to="bob")
            for i in range(3):
                await alice.signal({"type": "made-up", "payload": i}, to="bob")
            got = 0
            while got < 13:
                if (await bob.next_message(timeout=10))["type"] == "signal":
                    got += 1
            async with http.post(f"{server.url}/rtc/connect", json={"roomId": "no spaces allowed"}) as resp:
                assert resp.status == 400  # refused by the route: an error, not a join attempt
            async with http.post(f"{server.url}/rtc/connect", json={"roomId": "metrics", "peerId": "alice"}) as resp:
                assert resp.status == 409  # refused by the facade: a join that failed
            # The server's own peer: an echo session, connected, then ended by its owner.
            async with client_peer() as peer:
                peer.add_media(audio=False)
                answer = await alice.offer(await peer.offer(), "echo")
                await peer.accept(answer["sdp"])
                await peer.wait_frames("video", 10)
                live = await server.scrape(http)
                assert value(live, "fantasize_rtc_media_sessions", mode="echo", state="connected") == 1
                await alice.close_media_session(answer["sessionId"])
            await bob.disconnect()
            with pytest.raises(Exception, match="bob"):
                await alice.signal({"type": "offer", "payload": {"sdp": "v=0"}}, to="bob")  # bob left: refused
        finally:
            await alice.close()
            await bob.close()
        await wait_for(lambda: seen and len(seen) >= 5, 10, message="a few scrapes during the traffic")
        stop.set()
        await scraping

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        after = await server.scrape(http)  # a session's end is counted before its DELETE answers
        assert grew("fantasize_rtc_connects_total", result="ok") == 2
        assert grew("fantasize_rtc_connects_total", result="peer_id_taken") == 1
        assert grew("fantasize_rtc_errors_total", code="peer_id_taken", transport="http") == 1
        assert grew("fantasize_rtc_signals_total", type="offer", outcome="delivered") == 10
        assert grew("fantasize_rtc_signals_total", type="other", outcome="delivered") == 3
        assert grew("fantasize_rtc_signals_refused_total", code="peer_not_found") == 1
        assert grew("fantasize_rtc_disconnects_total", reason="left") >= 1
        assert grew("fantasize_rtc_errors_total", code="invalid_request", transport="http") == 1
        # both clients joined in the WebSocket upgrade (one round trip), not with POST /rtc/connect
        assert grew("fantasize_rtc_http_requests_total", route="/rtc/ws", method="GET", status="101") == 2
        assert grew("fantasize_rtc_http_requests_total", route="/rtc/connect", method="POST", status="200") == 0
        assert grew("fantasize_rtc_http_requests_total", route="/rtc/connect", method="POST", status="400") == 1
        assert grew("fantasize_rtc_http_requests_total", route="/rtc/connect", method="POST", status="409") == 1
        assert grew("fantasize_rtc_websocket_frames_total", direction="in") >= 14  # 13 signals and the refused one
        assert grew("fantasize_rtc_websocket_frames_total", direction="out") >= 13
        assert grew("fantasize_rtc_relay_latency_seconds_count") >= 13
        assert grew("fantasize_rtc_media_sessions_opened_total", mode="echo") == 1
        assert grew("fantasize_rtc_media_session_setup_seconds_count") == 1
        assert 0 < grew("fantasize_rtc_media_session_setup_seconds_sum") < 10
        assert (
            total(after, "fantasize_rtc_media_sessions_ended_total", mode="echo")
            - total(before, "fantasize_rtc_media_sessions_ended_total", mode="echo")
            == 1
        )
        assert grew("fantasize_rtc_media_packets_total", direction="in") > 0
        assert grew("fantasize_rtc_media_bytes_total", direction="out") > 0
        assert total(after, "fantasize_rtc_media_sessions") == 0

        # The loop-lag probe observes every 0.5 s: the traffic above may have taken less.
        async def lag_observed() -> bool:
            return value(await server.scrape(http), "fantasize_rtc_event_loop_lag_seconds_count") > 0

        await wait_for(lag_observed, 5, interval=0.1, message="an event-loop lag observation")
        assert total(after, "process_resident_memory_bytes") > 0
        # Counters never go down between two scrapes.
        for earlier, later in zip([before, *seen], [*seen, after], strict=True):
            for key, v in earlier.items():
                if key[0].endswith(("_total", "_count", "_bucket")):
                    assert later.get(key, v) >= v, key


async def test_metrics_need_the_admin_key_on_the_main_port(aiohttp_client: Any, tmp_path: Path) -> None:
    keyed = await aiohttp_client(create_app(config=RtcConfig(admin_key="k", recordings_dir=str(tmp_path)), media=False))
    assert (await keyed.get("/metrics")).status == 401
    assert (await keyed.get("/metrics", headers={"Authorization": "Bearer nope"})).status == 401
    resp = await keyed.get("/metrics?token=k")
    assert resp.status == 401 and "Authorization header" in (await resp.json())["error"]["message"]
    resp = await keyed.get("/metrics", headers={"Authorization": "Bearer k"})
    assert resp.status == 200 and "fantasize_rtc_rooms" in await resp.text()
    assert "fantasize_rtc_media_sessions" not in await resp.text()  # no media layer in this app
    openmetrics = "application/openmetrics-text; version=1.0.0"
    resp = await keyed.get("/metrics", headers={"Authorization": "Bearer k", "Accept": openmetrics})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")
    keyless = await aiohttp_client(create_app(config=RtcConfig(recordings_dir=str(tmp_path)), media=False))
    resp = await keyless.get("/metrics")
    assert resp.status == 403 and "--metrics-port" in (await resp.json())["error"]["message"]


async def test_the_metrics_port_listens_on_the_metrics_host_only(tmp_path: Path) -> None:
    async with serve(tmp_path) as server:
        port = int(server.metrics_url.split(":")[2].split("/")[0])
        for line in (await asyncio.to_thread(Path("/proc/net/tcp").read_text)).splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:  # LISTEN
                assert local.split(":")[0] == "0100007F", local  # 127.0.0.1, not 0.0.0.0
                break
        else:
            raise AssertionError(f"nothing listens on {port}")


async def test_json_logs_carry_the_context_and_each_session_ends_with_a_summary(tmp_path: Path) -> None:
    async with serve(tmp_path, "--log-format", "json") as server:
        alice = RtcClient(server.url, transport="ws", auto_heartbeat=False)
        try:
            await alice.connect("logs", "alice")
            await wait_for(lambda: alice.channel == "ws", 10, message="the WebSocket")
            async with client_peer() as peer:
                peer.add_media(audio=False)
                answer = await alice.offer(await peer.offer(), "echo")
                await peer.accept(answer["sdp"])
                await peer.wait_frames("video", 5)
                await alice.close_media_session(answer["sessionId"])
        finally:
            await alice.close()
        session_id = answer["sessionId"]

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]

        await wait_for(
            lambda: any(r.get("event") == "media_session_ended" for r in lines()), 10, message="the summary line"
        )
    records = lines()  # every line is one JSON object (json.loads raised otherwise)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    opened = next(r for r in records if "opened a WebSocket" in r["message"])
    assert (opened["room"], opened["peer"], opened["address"]) == ("logs", "alice", "127.0.0.1")
    answered = next(r for r in records if "answered in" in r["message"])
    assert (answered["session"], answered["mode"], answered["room"], answered["peer"]) == (
        session_id,
        "echo",
        "logs",
        "alice",
    )
    (summary,) = [r for r in records if r.get("event") == "media_session_ended"]
    assert summary["session"] == session_id and summary["mode"] == "echo" and summary["reason"] == "deleted"
    assert summary["bytesReceived"] > 0 and summary["bytesSent"] > 0 and summary["durationMs"] > 0
    assert summary["pair"]["local"]["protocol"] == "udp"
    assert "bytes in" in summary["message"] and "pair host" in summary["message"]


async def test_redis_round_trips_and_errors_are_measured(
    redis_server: RedisServer, aiohttp_client: Any, tmp_path: Path
) -> None:
    config = RtcConfig(admin_key="k", redis_url=redis_server.url, recordings_dir=str(tmp_path))
    client = await aiohttp_client(create_app(config=config, media=False))

    async def scrape() -> Samples:
        resp = await client.get("/metrics", headers={"Authorization": "Bearer k"})
        return parse(await resp.text())

    await wait_for(
        lambda: _count(scrape, "fantasize_rtc_redis_roundtrip_seconds_count"), 10, message="a Redis PING measured"
    )
    samples = await scrape()
    assert value(samples, "fantasize_rtc_info", version=_version(), backend="redis") == 1
    assert value(samples, "fantasize_rtc_redis_errors_total") == 0
    assert "http" not in {dict(ls).get("transport") for n, ls in samples if n == "fantasize_rtc_peer_connections"}
    redis_server.stop()
    resp = await client.post("/rtc/connect", json={"roomId": "r"})
    assert resp.status == 503
    assert value(await scrape(), "fantasize_rtc_redis_errors_total") >= 1


async def _count(scrape: Any, name: str) -> bool:
    return value(await scrape(), name) > 0


def _version() -> str:
    from fantasize_rtc import __version__

    return __version__


async def test_the_overview_lists_rooms_peers_sessions_and_totals(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(config=RtcConfig(admin_key="k", recordings_dir=str(tmp_path))))
    assert (await client.get("/rtc/overview")).status == 401
    alice = await (await client.post("/rtc/connect", json={"roomId": "ops", "peerId": "alice"})).json()
    await client.post("/rtc/connect", json={"roomId": "ops", "peerId": "bob"})
    ws = await client.ws_connect(f"/rtc/ws?token={alice['token']}")
    await ws.send_json({"type": "signal", "signal": {"type": "hello", "payload": 1, "to": "bob"}, "id": 1})
    while (await ws.receive_json(timeout=5)).get("type") != "ack":
        pass
    async with client_peer() as peer:
        peer.add_media(audio=False)
        resp = await client.post(
            "/rtc/offer",
            json={"sdp": await peer.offer(), "type": "offer", "mode": "echo"},
            headers={"Authorization": f"Bearer {alice['token']}"},
        )
        answer = await resp.json()
        await peer.accept(answer["sdp"])
        await peer.wait_frames("video", 5)
        resp = await client.get("/rtc/overview", headers={"Authorization": "Bearer k"})
        overview = await resp.json()
    await ws.close()
    assert overview["server"]["backend"] == "memory" and overview["server"]["draining"] is False
    assert overview["rooms"]["total"] == 1 and overview["rooms"]["peers"] == 2
    (room,) = overview["rooms"]["shown"]
    transports = {p["peerId"]: p["transport"] for p in room["peers"]}
    assert transports == {"alice": "ws", "bob": None, "@echo": None}, transports
    (session,) = overview["sessions"]["shown"]
    assert (session["sessionId"], session["mode"], session["state"]) == (answer["sessionId"], "echo", "connected")
    assert session["verdict"].startswith("connected") and session["connectMs"] > 0 and session["bytesReceived"] > 0
    counters = overview["counters"]
    assert counters["signals"]["queued"] == 1 and counters["connects"] == {"ok": 2}  # bob has no channel
    assert counters["mediaSessions"]["opened"] == 1 and counters["setup"]["count"] == 1
    assert counters["websocketFrames"]["in"] == 1 and counters["relayLatency"]["count"] >= 1
    assert overview["recordings"]["inProgress"] == []
    async with client_peer() as peer:  # a recording is listed while it is written
        peer.add_media(audio=False)
        resp = await client.post(
            "/rtc/offer",
            json={"sdp": await peer.offer(), "type": "offer", "mode": "record"},
            headers={"Authorization": f"Bearer {alice['token']}"},
        )
        answer = await resp.json()
        await peer.accept(answer["sdp"])

        async def recording() -> list[dict[str, Any]]:
            resp = await client.get("/rtc/overview", headers={"Authorization": "Bearer k"})
            shown: list[dict[str, Any]] = (await resp.json())["recordings"]["inProgress"]
            return [r for r in shown if r["sessionId"] == answer["sessionId"] and r["size"] > 0]

        (entry,) = await wait_for(recording, 15, interval=0.2, message="the recording in progress, growing")
        assert entry["state"] == "recording" and entry["complete"] is False
