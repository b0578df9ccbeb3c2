"""Behind a reverse proxy (``--trusted-proxy``): X-Forwarded-For / X-Forwarded-Proto are believed
from a trusted peer only, and then every per-address limit, log line and the cookie's Secure flag
follow the client, not the proxy. Real servers on real ports; the test client connects from
127.0.0.1 (and from other loopback addresses where a test needs a second client), and a real nginx
sits in front in the last tests."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig, serving
from fantasize_rtc.app import create_app
from fantasize_rtc.cli import build_parser, config_from_args
from fantasize_rtc.media import MEDIA_KEY
from fantasize_rtc.web import LEAN_KEY
from fantasize_rtc.web import create_app as create_transport_app
from fantasize_rtc.web._proxy import TrustedProxies, parse_address
from tests.helpers import accepts_tcp, free_port, nginx_config, start_nginx, stop_process, wait_for
from tests.media_helpers import client_peer

LOOPBACK = "127.0.0.1/32"
CLIENT = "203.0.113.7"  # TEST-NET-3: a client on the internet, as the proxy saw it
OTHER = "203.0.113.8"
OFFER = {"type": "offer", "payload": {"sdp": "v=0\r\n"}}


def forwarded(address: str, proto: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    return headers


async def start(aiohttp_client: Any, config: RtcConfig, **kwargs: Any) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = await aiohttp_client(create_app(config=config, **kwargs))  # type: ignore[type-arg]
    return client


async def connect_status(client: Any, room: str, headers: dict[str, str] | None = None) -> int:
    resp = await client.post("/rtc/connect", json={"roomId": room}, headers=headers or {})
    await resp.read()
    return int(resp.status)


def connect_cookie(resp: aiohttp.ClientResponse, room: str) -> str:
    cookies = [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(f"rtc!{room}=")]
    assert len(cookies) == 1, resp.headers
    return cookies[0]


# -- reading the headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ([CLIENT], CLIENT),
        ([f"1.2.3.4, {CLIENT}"], CLIENT),  # the left part is whatever the client sent: ignored
        ([f"1.2.3.4, {CLIENT}, 10.0.0.2"], CLIENT),  # through two proxies of ours
        (["1.2.3.4", f"{CLIENT}, 10.0.0.2"], CLIENT),  # two header lines are one list
        ([f"{CLIENT}, 10.0.0.2, 10.0.0.3"], CLIENT),
        (["10.0.0.9, 10.0.0.2"], "10.0.0.9"),  # all ours: the left-most, inside our networks
        ([f"{CLIENT}, garbage, 10.0.0.2"], "10.0.0.2"),  # the walk stops at what is no address
        (["unknown"], None),  # nothing believable: the peer is the client
        ([""], None),
        ([], None),
        ([f"{CLIENT}:5000"], CLIENT),  # some proxies add the port
        (["[2001:db8::7]:5000"], "2001:db8::7"),
        (["2001:DB8:0::7"], "2001:db8::7"),  # one spelling per address: one count per client
        (["::ffff:203.0.113.7"], CLIENT),  # IPv4-mapped (a dual-stack proxy) is the IPv4 address
    ],
)
def test_the_client_is_the_right_most_untrusted_address(header: list[str], client: str | None) -> None:
    proxies = TrustedProxies(["10.0.0.0/8", LOOPBACK])
    assert proxies.client_address(header) == client


def test_the_scheme_is_the_last_forwarded_proto() -> None:
    assert TrustedProxies.scheme(["https"]) == "https"
    assert TrustedProxies.scheme(["HTTP"]) == "http"
    assert TrustedProxies.scheme(["http, https"]) == "https"
    assert TrustedProxies.scheme(["https", "http"]) == "http"
    assert TrustedProxies.scheme(["gopher"]) is None
    assert TrustedProxies.scheme([]) is None


def test_a_peer_is_trusted_by_network_in_either_spelling() -> None:
    proxies = TrustedProxies(["127.0.0.1/32", "fd00::/8"])
    assert proxies.trusts_peer("127.0.0.1") and proxies.trusts_peer("::ffff:127.0.0.1")
    assert proxies.trusts_peer("fd00::1") and not proxies.trusts_peer("::1")
    assert not proxies.trusts_peer("127.0.0.2") and not proxies.trusts_peer("") and not proxies.trusts_peer("x")
    assert parse_address("[::1]") == parse_address("::1")


# -- what the routes see -------------------------------------------------------------------------------


def seen_by_routes(app: web.Application) -> None:
    """A plugin route that answers what a route sees of the request."""

    async def seen(request: web.Request) -> web.Response:
        return web.json_response(
            {"remote": request.remote, "scheme": request.scheme, "secure": request.secure, "host": request.host}
        )

    app.router.add_get("/seen", seen)


async def test_routes_see_the_client_from_a_trusted_proxy_and_the_peer_otherwise(aiohttp_client: Any) -> None:
    trusted = await aiohttp_client(
        create_transport_app(config=RtcConfig(trusted_proxies=(LOOPBACK,)), plugins=[seen_by_routes])
    )
    untrusted = await aiohttp_client(
        create_transport_app(config=RtcConfig(trusted_proxies=("10.0.0.0/8",)), plugins=[seen_by_routes])
    )
    headers = {**forwarded(f"1.2.3.4, {CLIENT}", "https"), "Host": "rtc.example"}
    seen = await (await trusted.get("/seen", headers=headers)).json()
    assert seen == {"remote": CLIENT, "scheme": "https", "secure": True, "host": "rtc.example"}
    seen = await (await trusted.get("/seen", headers=forwarded("garbage"))).json()
    assert seen["remote"] == "127.0.0.1" and seen["scheme"] == "http"
    seen = await (await untrusted.get("/seen", headers=headers)).json()
    assert seen == {"remote": "127.0.0.1", "scheme": "http", "secure": False, "host": "rtc.example"}


# -- from a trusted proxy ------------------------------------------------------------------------------


async def test_rooms_per_address_count_the_forwarded_client(
    aiohttp_client: Any, config: RtcConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(aiohttp_client, config.replace(trusted_proxies=(LOOPBACK,), max_rooms_per_address=2))
    assert await connect_status(client, "a1", forwarded(CLIENT)) == 200
    assert await connect_status(client, "a2", forwarded(CLIENT)) == 200
    with caplog.at_level(logging.WARNING):
        assert await connect_status(client, "a3", forwarded(CLIENT)) == 429
    refusals = [r.getMessage() for r in caplog.records if "not created" in r.getMessage()]
    assert refusals == [f"room a3 not created for {CLIENT}: that address holds 2 rooms already"]
    # the client cannot get out of its limit by writing another address to the left
    assert await connect_status(client, "a3", forwarded(f"{OTHER}, {CLIENT}")) == 429
    # ... and cannot fill someone else's by claiming to be them: it is counted as itself
    assert await connect_status(client, "b1", forwarded(f"{CLIENT}, {OTHER}")) == 200
    # other clients behind the same proxy, and the proxy's own requests, are not held back
    assert await connect_status(client, "b2", forwarded(OTHER)) == 200
    assert await connect_status(client, "c1") == 200
    assert await connect_status(client, "c2") == 200
    assert await connect_status(client, "c3") == 429  # the proxy itself (no header) is an address too


async def test_anonymous_media_sessions_per_address_count_the_forwarded_client(
    aiohttp_client: Any, config: RtcConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(
        aiohttp_client, config.replace(trusted_proxies=(LOOPBACK,), max_anonymous_sessions_per_address=1)
    )
    manager = client.app[MEDIA_KEY]
    async with client_peer() as p1, client_peer() as p2, client_peer() as p3, client_peer() as p4:
        for peer in (p1, p2, p3, p4):
            peer.add_media(audio=False)
        resp = await client.post(
            "/rtc/offer", json={"sdp": await p1.offer(), "type": "offer"}, headers=forwarded(CLIENT)
        )
        assert resp.status == 200, await resp.text()
        with caplog.at_level(logging.WARNING):
            resp = await client.post(
                "/rtc/offer", json={"sdp": await p2.offer(), "type": "offer"}, headers=forwarded(CLIENT)
            )
        assert resp.status == 429, await resp.text()
        assert f"anonymous media session from {CLIENT} refused: it has 1 already" in caplog.messages
        resp = await client.post(
            "/rtc/offer", json={"sdp": await p3.offer(), "type": "offer"}, headers=forwarded(OTHER)
        )
        assert resp.status == 200, await resp.text()
        # WHIP takes the address the same way
        resp = await client.post(
            "/whip?mode=echo",
            data=await p4.offer(),
            headers={"Content-Type": "application/sdp", **forwarded("203.0.113.9")},
        )
        assert resp.status == 201, await resp.text()
        assert sorted(s.address or "" for s in manager.sessions()) == [CLIENT, OTHER, "203.0.113.9"]


async def test_forwarded_https_makes_the_cookie_secure(aiohttp_client: Any, config: RtcConfig) -> None:
    client = await start(aiohttp_client, config.replace(trusted_proxies=(LOOPBACK,)), media=False)
    resp = await client.post("/rtc/connect", json={"roomId": "r"}, headers=forwarded(CLIENT, "https"))
    assert "Secure" in connect_cookie(resp, "r")
    resp = await client.post("/rtc/connect", json={"roomId": "p"}, headers=forwarded(CLIENT, "http"))
    assert "Secure" not in connect_cookie(resp, "p")
    # the trusted proxy's value is the last one (a proxy that appends leaves the client's first)
    resp = await client.post("/rtc/connect", json={"roomId": "q"}, headers=forwarded(CLIENT, "http, https"))
    assert "Secure" in connect_cookie(resp, "q")


async def test_the_websocket_works_through_the_middleware(
    aiohttp_client: Any, config: RtcConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The WebSocket route gets the clone of the request: the handshake, frames both ways and the
    Origin check (which still judges the Host header, not anything forwarded)."""
    client = await start(
        aiohttp_client,
        config.replace(trusted_proxies=(LOOPBACK,), cors_origins=("https://app.example",)),
        media=False,
    )
    alice = await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"})).json()
    bob = await (await client.post("/rtc/connect", json={"roomId": "r", "peerId": "bob"})).json()
    host = f"{client.host}:{client.port}"
    proxy_headers = forwarded(CLIENT, "https")
    with caplog.at_level(logging.INFO):
        ws_a = await client.ws_connect(
            f"/rtc/ws?token={alice['token']}", headers={**proxy_headers, "Origin": f"https://{host}"}
        )
        ws_b = await client.ws_connect(
            f"/rtc/ws?token={bob['token']}", headers={**proxy_headers, "Origin": "https://app.example"}
        )
        await wait_for(lambda: "peer bob in room r opened a WebSocket" in caplog.messages, message="bob's socket")
    try:
        await ws_a.send_json({"type": "signal", "signal": {**OFFER, "to": "bob"}, "id": 1})
        ack = await ws_a.receive_json(timeout=5)
        while ack["type"] != "ack":  # bob's arrival may come first
            ack = await ws_a.receive_json(timeout=5)
        assert ack["delivered"] == ["bob"], ack
        got = await ws_b.receive_json(timeout=5)
        assert (got["type"], got["fromPeerId"], got["signal"]["type"]) == ("signal", "alice", "offer")
        await ws_b.send_json({"type": "signal", "signal": {"type": "answer", "payload": {"sdp": "a"}, "to": "alice"}})
        got = await ws_a.receive_json(timeout=5)
        assert (got["type"], got["fromPeerId"], got["signal"]["type"]) == ("signal", "bob", "answer")
    finally:
        await ws_a.close()
        await ws_b.close()
    # another origin is still refused, forwarded headers or not
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(
            f"/rtc/ws?token={alice['token']}",
            headers={**proxy_headers, "Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"},
        )
    assert refused.value.status == 403


# -- from an untrusted peer ------------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [(), ("10.0.0.0/8",)])
async def test_an_untrusted_peers_forwarding_headers_change_nothing(
    aiohttp_client: Any, config: RtcConfig, trusted: tuple[str, ...]
) -> None:
    client = await start(aiohttp_client, config.replace(trusted_proxies=trusted, max_rooms_per_address=2))
    assert await connect_status(client, "a1", forwarded(CLIENT)) == 200
    assert await connect_status(client, "a2", forwarded(OTHER)) == 200
    assert await connect_status(client, "a3", forwarded("10.0.0.5")) == 429  # all counted as 127.0.0.1
    # the scheme is not believed either: only "https" as the first value (which only ever makes
    # the cookie stricter) sets Secure, as without a proxy
    resp = await client.post("/rtc/connect", json={"roomId": "a1"}, headers=forwarded(CLIENT, "http, https"))
    assert resp.status == 200 and "Secure" not in connect_cookie(resp, "a1")
    resp = await client.post("/rtc/connect", json={"roomId": "a2"}, headers=forwarded(CLIENT, "https"))
    assert resp.status == 200 and "Secure" in connect_cookie(resp, "a2")


async def test_untrusted_media_offers_count_the_peer(aiohttp_client: Any, config: RtcConfig) -> None:
    client = await start(
        aiohttp_client, config.replace(trusted_proxies=("10.0.0.0/8",), max_anonymous_sessions_per_address=1)
    )
    async with client_peer() as p1, client_peer() as p2:
        for peer in (p1, p2):
            peer.add_media(audio=False)
        resp = await client.post(
            "/rtc/offer", json={"sdp": await p1.offer(), "type": "offer"}, headers=forwarded(CLIENT)
        )
        assert resp.status == 200, await resp.text()
        resp = await client.post(
            "/rtc/offer", json={"sdp": await p2.offer(), "type": "offer"}, headers=forwarded(OTHER)
        )
        assert resp.status == 429, await resp.text()
        assert [s.address for s in client.app[MEDIA_KEY].sessions()] == ["127.0.0.1"]


# -- behind a real nginx ----------------------------------------------------------------------------------

#: The lines docs/security.md gives for nginx (the test checks the page still says so).
NGINX_LINES = (
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
)


def nginx_site(listen: int, upstream: int) -> str:
    proxy_lines = "\n".join(f"        {line}" for line in NGINX_LINES)
    return f"""
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
    {proxy_lines}
            proxy_buffering off;
        }}
    }}
"""


@pytest.fixture
def nginx_front(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nginx on a free port in front of another free port: (nginx's port, the server's port)."""
    listen, upstream = free_port(), free_port()
    proc = start_nginx(nginx_config(tmp_path, nginx_site(listen, upstream)), tmp_path)
    try:
        yield listen, upstream
    finally:
        stop_process(proc)


@pytest.fixture
async def proxied_server(
    nginx_front: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, web.Application]]:
    """The server as ``fantasize-rtc serve --trusted-proxy 127.0.0.1/32 --max-rooms-per-address 1``
    (the guarded server of ``serve``) behind nginx; yields nginx's URL and the app."""
    for name in list(os.environ):
        if name.startswith("FANTASIZE_RTC_"):
            monkeypatch.delenv(name)
    listen, upstream = nginx_front
    args = build_parser().parse_args(
        ["serve", "--trusted-proxy", LOOPBACK, "--max-rooms-per-address", "1", "--recordings-dir", str(tmp_path / "r")]
    )
    config = config_from_args(args)
    assert config.trusted_proxies == (LOOPBACK,)
    app = create_app(config=config, media=False)
    runner, _site, _limiter = await serving.start(app, "127.0.0.1", upstream, config)
    try:
        await wait_for(lambda: accepts_tcp(listen), timeout=10, message="nginx listening")
        yield f"http://127.0.0.1:{listen}", app
    finally:
        await runner.cleanup()


def from_address(address: str, base_url: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any 127.x address is this machine)."""
    return aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_nginx_in_front_counts_the_client_it_forwards(proxied_server: tuple[str, web.Application]) -> None:
    url, app = proxied_server
    # nginx connects from 127.0.0.1 (trusted) and appends the address it got the request from
    async with from_address("127.0.0.5", url) as five, from_address("127.0.0.6", url) as six:
        assert await connect_status(five, "a") == 200
        assert await connect_status(five, "b") == 429  # 127.0.0.5 holds its one room
        # whatever the client writes itself stays to the left of what nginx appends
        assert await connect_status(five, "b", forwarded("198.51.100.1")) == 429
        assert await connect_status(six, "b") == 200  # another client through the same proxy
        resp = await five.post("/rtc/connect", json={"roomId": "a"})
        assert resp.status == 200 and "Secure" not in connect_cookie(resp, "a")  # nginx said http
    # nginx opens a connection per request: each was a POST first, answered by serve's lean path
    posts = app[LEAN_KEY].posts
    assert posts is not None and posts.answered == 5


async def test_a_websocket_relays_through_nginx(
    proxied_server: tuple[str, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    url, _app = proxied_server
    async with from_address("127.0.0.5", url) as http:
        alice = await (await http.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"})).json()
        bob = await (await http.post("/rtc/connect", json={"roomId": "r", "peerId": "bob"})).json()
        with caplog.at_level(logging.INFO):
            async with (
                http.ws_connect(f"/rtc/ws?token={alice['token']}") as ws_a,
                http.ws_connect(f"/rtc/ws?token={bob['token']}") as ws_b,
            ):
                await wait_for(
                    lambda: "peer bob in room r opened a WebSocket" in caplog.messages, message="bob's socket"
                )
                await ws_a.send_json({"type": "signal", "signal": {**OFFER, "to": "bob"}, "id": 1})
                got = await ws_b.receive_json(timeout=5)
                assert (got["type"], got["fromPeerId"], got["signal"]["type"]) == ("signal", "alice", "offer")
                await ws_b.send_json(
                    {"type": "signal", "signal": {"type": "answer", "payload": {"sdp": "a"}, "to": "alice"}}
                )
                got = await ws_a.receive_json(timeout=5)
                while got["type"] != "signal":  # bob's arrival and the ack come first
                    got = await ws_a.receive_json(timeout=5)
                assert (got["fromPeerId"], got["signal"]["type"]) == ("bob", "answer")


def test_docs_give_the_nginx_lines_the_test_uses() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    assert "--trusted-proxy" in doc
    for line in NGINX_LINES:
        assert line in doc, line
