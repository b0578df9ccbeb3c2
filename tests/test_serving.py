"""The guarded server (``serving.start``, what ``fantasize-rtc serve`` runs), issue 12 defect 7 and
the malformed-request half of 10 and 12: slow headers and bodies time out, one address cannot hold
every connection, malformed requests get a JSON answer that never quotes them and one warning line.
Every limit test also shows a normal client (another address, 127.0.0.2) is served meanwhile, with
its connect + relay latency within 2x of the same measurement with no attack going on."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fantasize_rtc import RtcConfig, serving
from fantasize_rtc._aiohttp_compat import GUARDED_SERVER
from fantasize_rtc.app import create_app
from fantasize_rtc.web import RTC_KEY
from tests.helpers import IN_CI, wait_for

OTHER_ADDRESS = "127.0.0.2"  # any 127/8 address reaches a server on 127.0.0.1 (Linux)


class Served:
    def __init__(self, app: Any, runner: Any, port: int, limiter: serving.ConnectionLimiter) -> None:
        self.app = app
        self.runner = runner
        self.port = port
        self.limiter = limiter
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def served(config: RtcConfig, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    config = config.replace(**{"header_timeout_ms": 1000, "body_timeout_ms": 1000, **overrides})
    if not GUARDED_SERVER:
        if IN_CI:
            pytest.fail("the guarded server needs the aiohttp version _aiohttp_compat was checked against")
        pytest.skip("this aiohttp is newer than _aiohttp_compat knows")
    app = create_app(config=config)
    runner, site, limiter = await serving.start(app, "127.0.0.1", 0, config)
    try:
        yield Served(app, runner, site.port, limiter)
    finally:
        await runner.cleanup()


def session_from(address: str, base_url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def connect_and_relay_ms(session: aiohttp.ClientSession, round_: int) -> float:
    """One normal user: join a room, relay a signal to the other member, leave. Milliseconds."""
    start = time.perf_counter()
    room = f"normal{round_}"
    tokens = []
    for peer in ("a", "b"):
        async with session.post("/rtc/connect", json={"roomId": room, "peerId": peer}) as resp:
            assert resp.status == 200, await resp.text()
            tokens.append((await resp.json())["token"])
    signal = {"signal": {"type": "offer", "to": "b", "payload": {"sdp": "v=0\r\n"}}}
    async with session.post("/rtc/signal", json=signal, headers={"Authorization": f"Bearer {tokens[0]}"}) as resp:
        assert resp.status == 200 and (await resp.json())["queued"] == ["b"]
    elapsed = (time.perf_counter() - start) * 1000
    for token in tokens:
        async with session.post("/rtc/disconnect", json={}, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    return elapsed


async def median_latency(served: Served, rounds: int = 15, offset: int = 0) -> float:
    async with session_from(OTHER_ADDRESS, served.url) as session:
        await connect_and_relay_ms(session, offset - 1)  # warm the connection pool
        return statistics.median([await connect_and_relay_ms(session, offset + i) for i in range(rounds)])


def assert_served_as_when_idle(idle_ms: float, attacked_ms: float) -> None:
    print(f"normal connect + relay, median: {idle_ms:.2f} ms idle, {attacked_ms:.2f} ms under attack")
    # 2x the idle median, with 2 ms of slack: at ~1 ms a single scheduler hiccup on a 2-core
    # machine is already 2x. A server that stalls (the defect) is seconds, not milliseconds.
    assert attacked_ms <= 2 * idle_ms + 2, f"normal connect+relay took {attacked_ms:.2f} ms, {idle_ms:.2f} ms idle"


# -- 7. slow headers (slowloris) ----------------------------------------------------------------------


async def test_7_connections_trickling_headers_are_closed_and_others_are_served(served: Served, caplog: Any) -> None:
    """Before: 1,500 sockets trickling headers were never closed (keep-alive timeout 3630 s)."""
    caplog.set_level(logging.WARNING, logger="fantasize_rtc.serving")
    idle = await median_latency(served)
    writers = []
    for _ in range(200):
        _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        writers.append(writer)
    started = time.monotonic()
    trickling = asyncio.ensure_future(_trickle(writers))
    try:
        await wait_for(lambda: len(served.limiter) >= 200, 5, message="the slow connections to open")
        attacked = await median_latency(served, offset=100)
        await wait_for(lambda: len(served.limiter) == 0, 10, message="every slow connection to be closed")
    finally:
        trickling.cancel()
        for writer in writers:
            writer.transport.abort()
    assert time.monotonic() - started < 5  # header timeout 1 s (+ aiohttp's 1 s timer granularity)
    assert_served_as_when_idle(idle, attacked)
    assert served.limiter.header_timeouts == 200
    warnings = [r.getMessage() for r in caplog.records if "sent no complete request head" in r.getMessage()]
    assert len(warnings) == 1 and "from 127.0.0.1" in warnings[0]  # said once, not 200 times


async def _trickle(writers: list[asyncio.StreamWriter]) -> None:
    while True:
        for writer in writers:
            if not writer.transport.is_closing():
                writer.write(b"X-Slow: 1\r\n")
        await asyncio.sleep(0.2)


async def test_7_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished
    started = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 10)  # the body of the first answer, then EOF
    assert b'"status"' in rest and time.monotonic() - started < 5
    writer.close()


# -- 7. slow bodies ----------------------------------------------------------------------------------


async def test_7_a_body_that_trickles_in_gets_408_and_the_connection_closes(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        b"POST /rtc/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
    )
    started = time.monotonic()

    async def trickle() -> None:
        while True:
            await asyncio.sleep(0.1)
            writer.write(b" ")

    task = asyncio.ensure_future(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        task.cancel()
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert time.monotonic() - started < 4


# -- 7. connections per address ------------------------------------------------------------------------


@pytest.mark.parametrize("served", [{"max_connections_per_address": 50}], indirect=True)
async def test_7_one_address_cannot_hold_every_connection(served: Served, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="fantasize_rtc.serving")
    idle = await median_latency(served)
    held = []
    for _ in range(50):
        held.append(await asyncio.open_connection("127.0.0.1", served.port))
    await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 50, 5, message="50 connections")
    refused = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        refused.append(await asyncio.wait_for(reader.read(), 5))  # closed at once: EOF
        writer.close()
    assert refused == [b""] * 20 and served.limiter.refused == 20
    warnings = [r for r in caplog.records if "refused a connection from 127.0.0.1" in r.getMessage()]
    assert len(warnings) == 1  # one line, not one per refusal
    attacked = await median_latency(served, offset=100)
    assert_served_as_when_idle(idle, attacked)
    for _reader, writer in held:
        writer.close()
    await wait_for(lambda: served.limiter.open_from("127.0.0.1") == 0, 5, message="the count to go down")
    async with aiohttp.ClientSession(base_url=served.url) as session, session.get("/healthz") as resp:
        assert resp.status == 200


# -- 10/12. malformed requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: rtc!r=alice:SECRETTOKEN\x01\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRETTOKEN\x7f\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: "
        + b"; ".join(b"rtc!room%d=peer:SECRETTOKEN%s" % (i, b"s" * 40) for i in range(200))
        + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-SECRETTOKEN" + b"a" * 9000 + b": 1\r\n\r\n",
        b"GET /SECRETTOKEN\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /rtc/connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nSECRETTOKEN\r\n",
    ],
    ids=["bad-cookie-char", "bad-auth-char", "cookie-too-large", "header-name-too-long", "nul-in-path", "bad-chunk"],
)
async def test_malformed_requests_get_json_that_never_quotes_them(
    served: Served, request_bytes: bytes, caplog: Any
) -> None:
    """Before: aiohttp's text answer quoted the offending header line (tokens, cookies) and the log
    had an ERROR traceback with it, for every such request."""
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(request_bytes)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], answer[:200]
        assert b"SECRETTOKEN" not in answer and b"application/json" in head
        assert body.startswith(b'{"error":{"code":"invalid_request","message":')
    logged = [r for r in caplog.records if "SECRETTOKEN" in r.getMessage() or (r.exc_text or "").find("SECRET") >= 0]
    assert logged == [] and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.name == "fantasize_rtc.serving" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None  # 3 bad requests, one line


# -- the open-file limit -----------------------------------------------------------------------------------


def test_7_serve_raises_the_open_file_limit_and_says_so(tmp_path: Path) -> None:
    """With the usual 1,024 open files, ~1,000 slow sockets locked every client out."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        if IN_CI:
            pytest.fail(f"the hard open-file limit is {hard}: CI must allow more than 1,024 to test this")
        pytest.skip(f"the hard limit is {hard}: nothing to raise to")
    low = 'ulimit -Sn 1024 && exec "$@"'  # the soft limit many systems start processes with
    script = (
        "import resource\n"
        "from fantasize_rtc.serving import raise_fd_limit\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        ["sh", "-c", low, "sh", sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split(" ", 2)
    assert out[0] == "(1024," and int(out[2]) > 1024
    command = [sys.executable, "-m", "fantasize_rtc", "serve", "--port", "0", "--recordings-dir", str(tmp_path)]
    with subprocess.Popen(
        ["sh", "-c", low, "sh", *command],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if "serving on" in line:
                    break
            assert any("raised the open-file limit from 1024" in line for line in lines), lines
        finally:
            proc.terminate()
            proc.communicate(timeout=15)


def test_connection_limiter_counts_per_address_and_logs_quietly(caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    now = [0.0]
    limiter = serving.ConnectionLimiter(2, clock=lambda: now[0])
    assert limiter.admit("a") and limiter.admit("a") and limiter.admit("b")
    assert not limiter.admit("a") and not limiter.admit("a")
    assert len(caplog.records) == 1
    now[0] += serving.LOG_EVERY_S
    assert not limiter.admit("a") and len(caplog.records) == 2
    limiter.release("a")
    assert limiter.admit("a") and len(limiter) == 3 and limiter.refused == 3
    assert serving.ConnectionLimiter(0).admit("a")  # 0: no limit


# -- resource tests: each limit holds, and a normal client is served meanwhile -------------------------


async def _attack_while_measuring(served: Served, attack: Any, under_way: Any) -> tuple[float, float]:
    """(idle median, median while ``attack`` runs) of a normal client's connect + relay; the
    measuring starts once ``under_way()`` says the attack has reached its limit."""
    idle = await median_latency(served)
    task = asyncio.ensure_future(attack())
    try:
        await wait_for(lambda: under_way() or task.done(), 20, message="the attack to reach the limit")
        assert not task.done(), task.exception()
        attacked = await median_latency(served, offset=100)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return idle, attacked


@pytest.mark.parametrize(
    "served",
    [
        {
            "outbox_max_bytes": 256 * 1024,
            "outbox_total_max_bytes": 2 * 1024 * 1024,
            "rate_limit_per_sec": 0,
            "max_peers_per_room": 16,
        }
    ],
    indirect=True,
)
async def test_6_bytes_queued_for_offline_peers_stay_under_their_caps(served: Served) -> None:
    rtc = served.app[RTC_KEY]
    async with aiohttp.ClientSession(base_url=served.url) as attacker:
        tokens = []
        for i in range(16):
            async with attacker.post("/rtc/connect", json={"roomId": "flood", "peerId": f"p{i}"}) as resp:
                tokens.append((await resp.json())["token"])
        sender = {"Authorization": f"Bearer {tokens[0]}"}
        big = {"type": "x", "payload": "y" * (47 * 1024)}
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                for i in range(1, 16):
                    body = {"signal": {**big, "to": f"p{i}"}}
                    async with attacker.post("/rtc/signal", json=body, headers=sender) as resp:
                        assert resp.status == 200
                    sent += 1
                    # ~200 x 47 KiB a second: the attacker shares this process's loop and CPU with
                    # the server and the measured client, so it must not starve them itself.
                    await asyncio.sleep(0.005)

        idle, attacked = await _attack_while_measuring(served, flood, lambda: rtc.dropped_messages > 0)
    assert sent > 40 and await rtc.backend.queued_bytes() <= 2 * 1024 * 1024
    assert rtc.dropped_messages > 0
    assert_served_as_when_idle(idle, attacked)


@pytest.mark.parametrize("served", [{"max_rooms_per_address": 20}], indirect=True)
async def test_9_rooms_per_address_hold_while_others_create_rooms(served: Served) -> None:
    refused = 0
    async with aiohttp.ClientSession(base_url=served.url) as attacker:

        async def fill() -> None:
            nonlocal refused
            n = 0
            while True:
                n += 1
                async with attacker.post("/rtc/connect", json={"roomId": f"grab{n}"}) as resp:
                    refused += resp.status == 429

        idle, attacked = await _attack_while_measuring(served, fill, lambda: refused > 0)
    rooms, _ = await served.app[RTC_KEY].backend.counts()
    assert refused > 0 and rooms <= 20 + 2  # the attacker's 20, and the normal client's open room
    assert_served_as_when_idle(idle, attacked)


@pytest.mark.parametrize(
    "served", [{"ice_start_timeout_seconds": 1.0, "max_anonymous_sessions_per_address": 4}], indirect=True
)
async def test_9_offers_that_never_connect_do_not_hold_media_slots(served: Served) -> None:
    from fantasize_rtc.media import MEDIA_KEY
    from tests.media_helpers import client_peer

    manager = served.app[MEDIA_KEY]
    async with client_peer() as peer:
        peer.add_media(audio=False)
        sdp = (await peer.offer()).replace("127.0.0.1", "192.0.2.1")
    statuses: list[int] = []
    async with aiohttp.ClientSession(base_url=served.url) as attacker:

        async def offers() -> None:
            while True:
                async with attacker.post("/rtc/offer", json={"sdp": sdp, "type": "offer"}) as resp:
                    statuses.append(resp.status)
                await asyncio.sleep(0.05)  # (pacing the attacker, not waiting for anything)

        idle, attacked = await _attack_while_measuring(served, offers, lambda: 429 in statuses)
        assert len(manager) <= 4  # the address's slots are full, but not for long:
        await wait_for(lambda: len(manager) < 4, 10, message="a slot to come free")
    ended = {report["closeReason"] for _, report in manager.ended_reports()}
    assert ended == {"ice_timeout"}, ended
    assert_served_as_when_idle(idle, attacked)


def test_a_trusted_proxy_is_never_limited_per_address() -> None:
    limiter = serving.ConnectionLimiter(1, exempt=("127.0.0.0/8",))
    assert all(limiter.admit("127.0.0.1") for _ in range(5))  # a proxy carries every client
    assert limiter.admit("192.0.2.1") and not limiter.admit("192.0.2.1")


async def test_a_tls_handshake_that_never_comes_is_closed_after_the_header_timeout(
    config: RtcConfig, tmp_path: Path
) -> None:
    """asyncio would hold a connection that never starts its TLS handshake 60 s; it gets the
    header timeout (1 s here) like any slow request head."""
    import ipaddress

    from fantasize_rtc import tls

    cert, key = tls.make_self_signed(["localhost"], [ipaddress.ip_address("127.0.0.1")])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = tls.load_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    config = config.replace(header_timeout_ms=1000)
    runner, site, _ = await serving.start(create_app(config=config), "127.0.0.1", 0, config, ssl_context=context)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, having said nothing
        assert time.monotonic() - started < 5
        writer.close()
    finally:
        await runner.cleanup()
