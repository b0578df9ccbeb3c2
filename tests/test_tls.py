"""HTTPS and WSS (issue "Reachable from the real internet", item 1): the self-signed certificate and
its state folder, the guarded server over TLS, the CLI's SIGHUP reload, and the Python client.

Real TLS on real ports; the certificates are made by ``fantasize_rtc.tls`` and trusted by the test
clients the way a user trusts one: by loading it as a CA."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fantasize_rtc import RtcConfig, serving, tls
from fantasize_rtc.app import create_app
from fantasize_rtc.client import RtcClient
from fantasize_rtc.web import LEAN_KEY
from tests.helpers import stop_process, wait_for, wait_for_sync

# -- the self-signed certificate and its folder ----------------------------------------------------------


def test_a_self_signed_certificate_covers_the_hosts_names_and_addresses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = tls.self_signed(state)
    assert made.made
    info = made.certificate
    assert "localhost" in info.names
    for name in tls.host_names():
        assert name in info.names
    addresses = {str(a) for a in info.ip_addresses}
    assert {"127.0.0.1", "::1"} <= addresses
    assert {str(a) for a in tls.host_addresses()} <= addresses
    # Valid about a year, from a little before now (phones' clocks run behind).
    now = dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=360) < info.not_after - now <= dt.timedelta(days=366)
    # The folder is private and the key is the owner's only.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.key_path.stat().st_mode) == 0o600
    assert made.cert_path.parent == made.key_path.parent == state.absolute()
    # The fingerprint is what browsers show: SHA-256 of the DER bytes, colon-separated hex.
    der = ssl.PEM_cert_to_DER_cert(made.cert_path.read_text())
    assert info.fingerprint == tls.fingerprint(made.cert_path.read_bytes())
    assert info.fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", info.fingerprint)


def test_the_self_signed_certificate_also_covers_the_public_addresses(tmp_path: Path) -> None:
    """Behind NAT, browsers open the address or name given with --public-ip."""
    config = RtcConfig(tls_self_signed=True, state_dir=str(tmp_path), public_ips=("198.51.100.7", "RTC.example.org"))
    assert tls.context_for(config) is not None
    info = tls.describe((tmp_path / tls.CERT_FILE).read_bytes())
    assert "198.51.100.7" in {str(a) for a in info.ip_addresses} and "rtc.example.org" in info.names
    assert "localhost" in info.names


def _non_loopback_interface_addresses() -> list[str]:
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if not text.startswith(("127.", "::1", "fe80")):
                found.append(text)
    return found


def test_the_host_addresses_are_the_interfaces_addresses() -> None:
    addresses = {str(a) for a in tls.host_addresses()}
    for text in _non_loopback_interface_addresses():
        assert text.partition("%")[0] in addresses


def test_the_certificate_is_reused_while_it_is_good(tmp_path: Path) -> None:
    first = tls.self_signed(tmp_path)
    cert_bytes = first.cert_path.read_bytes()
    again = tls.self_signed(tmp_path)
    assert not again.made
    assert again.certificate.fingerprint == first.certificate.fingerprint
    assert first.cert_path.read_bytes() == cert_bytes


def test_an_expired_certificate_is_made_anew(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fantasize_rtc.tls")
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    _put_in_folder(tmp_path, *tls.make_self_signed(tls.host_names(), tls.host_addresses(), now=long_ago))
    old = tls.fingerprint((tmp_path / tls.CERT_FILE).read_bytes())
    renewed = tls.self_signed(tmp_path)
    assert renewed.made and renewed.certificate.fingerprint != old
    assert renewed.certificate.not_after > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)
    assert "expires" in caplog.text
    # ... and so is one about to expire: it would expire under a running server.
    soon = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=360)
    _put_in_folder(tmp_path, *tls.make_self_signed(tls.host_names(), tls.host_addresses(), now=soon))
    assert tls.self_signed(tmp_path).made


def test_a_certificate_that_misses_an_address_is_made_anew(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fantasize_rtc.tls")
    addresses = tls.host_addresses()
    missing = addresses[-1]
    _put_in_folder(tmp_path, *tls.make_self_signed(tls.host_names(), addresses[:-1]))
    old = tls.fingerprint((tmp_path / tls.CERT_FILE).read_bytes())
    renewed = tls.self_signed(tmp_path)
    assert renewed.made and renewed.certificate.fingerprint != old
    assert missing in renewed.certificate.ip_addresses
    assert f"does not cover {missing}" in caplog.text
    # A name the host has now, missing, is the same.
    _put_in_folder(tmp_path, *tls.make_self_signed(["localhost"], addresses))
    assert tls.self_signed(tmp_path, names=["localhost", "camera.example"]).made


def test_a_key_that_is_not_the_certificates_is_made_anew(tmp_path: Path) -> None:
    cert, _key = tls.make_self_signed(tls.host_names(), tls.host_addresses())
    _other_cert, other_key = tls.make_self_signed(tls.host_names(), tls.host_addresses())
    _put_in_folder(tmp_path, cert, other_key)
    renewed = tls.self_signed(tmp_path)
    assert renewed.made
    tls.load_context(renewed.cert_path, renewed.key_path)  # a pair again


def _put_in_folder(folder: Path, cert: bytes, key: bytes) -> None:
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / tls.CERT_FILE).write_bytes(cert)
    (folder / tls.KEY_FILE).write_bytes(key)
    os.chmod(folder / tls.KEY_FILE, 0o600)


def test_files_that_do_not_load_are_one_sentence(tmp_path: Path) -> None:
    cert, _key = tls.make_self_signed(["localhost"], [])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    _, other_key = tls.make_self_signed(["localhost"], [])
    (tmp_path / "other-key.pem").write_bytes(other_key)
    cases = [
        (tmp_path / "cert.pem", tmp_path / "missing.pem", "No such file"),
        (tmp_path / "garbage.pem", tmp_path / "other-key.pem", "cannot use the TLS certificate"),
        (tmp_path / "cert.pem", tmp_path / "other-key.pem", "mismatch"),
    ]
    for cert_path, key_path, words in cases:
        with pytest.raises(tls.TlsError, match=words) as caught:
            tls.load_context(cert_path, key_path)
        assert "\n" not in str(caught.value)


# -- serving.start over TLS ------------------------------------------------------------------------


class Served:
    def __init__(self, port: int, cert_path: Path, app: web.Application) -> None:
        self.app = app
        self.port = port
        self.cert_path = cert_path
        self.url = f"https://127.0.0.1:{port}"

    def trusting(self) -> ssl.SSLContext:
        """A client context that trusts the server's self-signed certificate (and only that)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        context.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: the certificate passes it
        return context


@pytest.fixture
async def served_tls(config: RtcConfig, tmp_path: Path) -> AsyncIterator[Served]:
    config = config.replace(tls_self_signed=True, state_dir=str(tmp_path / "state"))
    context = tls.context_for(config)
    assert context is not None
    app = create_app(config=config, media=False)
    runner, site, _limiter = await serving.start(app, "127.0.0.1", 0, config, ssl_context=context)
    try:
        assert site.name.startswith("https://")
        yield Served(site.port, tmp_path / "state" / tls.CERT_FILE, app)
    finally:
        await runner.cleanup()


async def test_https_and_wss_on_the_guarded_server(served_tls: Served, caplog: pytest.LogCaptureFixture) -> None:
    connector = aiohttp.TCPConnector(ssl=served_tls.trusting())
    async with aiohttp.ClientSession(served_tls.url, connector=connector) as http:
        async with http.get("/healthz") as resp:
            assert resp.status == 200
        async with http.post("/rtc/connect", json={"roomId": "r", "peerId": "alice"}) as resp:
            assert resp.status == 200
            alice = await resp.json()
            cookie = resp.cookies["rtc!r"]
            assert cookie["secure"] is True and "Secure" in cookie.OutputString()  # request.secure over TLS
        async with http.post("/rtc/connect", json={"roomId": "r", "peerId": "bob"}) as resp:
            bob = await resp.json()
        async with http.ws_connect(f"wss://127.0.0.1:{served_tls.port}/rtc/ws", params={"token": alice["token"]}) as ws:
            signal_ = {"type": "offer", "to": "alice", "payload": {"sdp": "v=0\r\n"}}
            headers = {"Authorization": f"Bearer {bob['token']}"}
            async with http.post("/rtc/signal", json={"signal": signal_}, headers=headers) as resp:
                assert resp.status == 200
            while True:  # bob's arrival first, then his offer
                message = await ws.receive_json(timeout=5)
                if message["type"] == "signal":
                    break
            assert message["fromPeerId"] == "bob" and message["signal"]["payload"] == {"sdp": "v=0\r\n"}
            await ws.send_json({"type": "heartbeat", "id": 7})  # and the other way
            assert await ws.receive_json(timeout=5) == {"type": "ack", "id": 7}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_join_in_the_upgrade_over_wss_takes_the_lean_path(served_tls: Served) -> None:
    """A browser's WebSocket (a connection of its own) over TLS: the lean upgrade of ``serve``
    takes it behind the TLS layer, as on plain TCP."""
    connector = aiohttp.TCPConnector(ssl=served_tls.trusting(), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"wss://127.0.0.1:{served_tls.port}/rtc/ws"
        async with http.ws_connect(url, params={"roomId": "r", "peerId": "carol"}) as ws:
            first = await ws.receive_json(timeout=5)
            assert first["type"] == "connected" and first["peerId"] == "carol"
            await ws.send_json({"type": "heartbeat", "id": 1})
            assert await ws.receive_json(timeout=5) == {"type": "ack", "id": 1}
    assert served_tls.app[LEAN_KEY].taken == 1


async def test_posts_over_https_take_the_lean_path(served_tls: Served) -> None:
    """A connection whose first request is a JSON POST is served by ``serve``'s lean path behind
    the TLS layer too, and knows it is HTTPS (the connect cookie is Secure)."""
    connector = aiohttp.TCPConnector(ssl=served_tls.trusting())
    async with aiohttp.ClientSession(served_tls.url, connector=connector) as http:
        async with http.post("/rtc/connect", json={"roomId": "r", "peerId": "dave"}) as resp:
            assert resp.status == 200
            cookie = resp.cookies["rtc!r"]
            assert cookie["secure"] is True and "Secure" in cookie.OutputString()
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}  # (on the same kept-alive connection)
        async with http.post("/rtc/heartbeat", json={}, headers=headers) as resp:
            assert resp.status == 200
    posts = served_tls.app[LEAN_KEY].posts
    assert posts is not None and posts.answered == 2


async def test_the_certificate_verifies_for_every_name_and_address_of_the_host(served_tls: Served) -> None:
    context = served_tls.trusting()
    for name in [*tls.host_names(), *(str(a) for a in tls.host_addresses())]:
        # Connected over loopback, verified as if the phone had opened https://<name>/.
        _reader, writer = await asyncio.open_connection("127.0.0.1", served_tls.port, ssl=context, server_hostname=name)
        await _close(writer)
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", served_tls.port, ssl=context, server_hostname="elsewhere.example")


async def test_plain_http_to_the_tls_port_fails_quietly(served_tls: Served, caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{served_tls.port}/healthz") as resp:
                await resp.read()
    # and the server is still there, and said nothing alarming
    trusting = aiohttp.TCPConnector(ssl=served_tls.trusting())
    async with aiohttp.ClientSession(connector=trusting) as http, http.get(served_tls.url + "/healthz") as resp:
        assert resp.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def presented_fingerprint(port: int) -> str:
    """The fingerprint of the certificate a new TLS handshake with the server presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # whichever it presents: that is what is looked at
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        await _close(writer)
    return tls.fingerprint(ssl.DER_cert_to_PEM_cert(der))


# -- the Python client ------------------------------------------------------------------------------


async def test_the_python_client_uses_https_and_wss(served_tls: Served) -> None:
    alice = RtcClient(served_tls.url, ssl=served_tls.trusting(), auto_heartbeat=False, transport="ws")
    bob = RtcClient(served_tls.url, ssl=False, auto_heartbeat=False)  # no verification: for a test server
    try:
        assert alice.ws_url("/rtc/ws") == f"wss://127.0.0.1:{served_tls.port}/rtc/ws"
        await alice.connect("room", "alice")
        await wait_for(lambda: alice.channel == "ws", message="alice's WebSocket (wss: the port speaks only TLS)")
        await bob.connect("room", "bob", listen=False)
        await bob.signal({"type": "hello", "payload": {"n": 1}}, to="alice")
        while (message := await alice.next_message(timeout=5))["type"] != "signal":
            pass
        assert message["signal"]["payload"] == {"n": 1} and message["fromPeerId"] == "bob"
        assert alice.channel == "ws"
    finally:
        await alice.close()
        await bob.close()
    # aiohttp's default verification does not know the self-signed certificate: ssl is what decides.
    stranger = RtcClient(served_tls.url, auto_heartbeat=False)
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await stranger.health()
    finally:
        await stranger.close()


def test_the_python_client_follows_the_base_urls_scheme() -> None:
    assert RtcClient("http://h:8080/prefix").ws_url("/rtc/ws") == "ws://h:8080/prefix/rtc/ws"
    assert RtcClient("https://h/").ws_url("/rtc/ws") == "wss://h/rtc/ws"


# -- the CLI: serve --tls-self-signed, --tls-cert/--tls-key and SIGHUP ----------------------------


class Process:
    def __init__(self, proc: subprocess.Popen[str], log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url
        self.port = int(url.rstrip("/").rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def cli_server(tmp_path: Path, name: str, *flags: str) -> Iterator[Process]:
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANTASIZE_RTC_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fantasize_rtc", "serve", "--port", "0", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )

    def started() -> re.Match[str] | None:
        text = log.read_text()
        match = re.search(r"serving on (\S+://\S+)", text)
        assert match or proc.poll() is None, f"the server exited:\n{text}"
        return match

    try:
        match = wait_for_sync(started, timeout=30, message="the server to log its URL")
        yield Process(proc, log, match.group(1))
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()
    assert "stopped" in log.read_text()


async def test_serve_with_a_self_signed_certificate_and_sighup_reloads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with cli_server(tmp_path, "self-signed", "--tls-self-signed", "--state-dir", str(state)) as served:
        assert served.url.startswith("https://127.0.0.1:")
        text = served.output()
        printed = re.search(r"fingerprint is ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", text)
        assert printed, text
        assert printed.group(1) == tls.fingerprint((state / tls.CERT_FILE).read_bytes())
        assert printed.group(1) == await presented_fingerprint(served.port)
        assert str(state / tls.CERT_FILE) in text and "continue anyway" in text
        first = printed.group(1)

    # Certificates from elsewhere (certbot's, say): a copy of the pair, renewed in place later.
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    cert.write_bytes((state / tls.CERT_FILE).read_bytes())
    key.write_bytes((state / tls.KEY_FILE).read_bytes())
    with cli_server(tmp_path, "certbot", "--tls-cert", str(cert), "--tls-key", str(key)) as served:
        assert served.url.startswith("https://") and first in served.output()
        assert await presented_fingerprint(served.port) == first
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
            async with http.post(served.url + "rtc/connect", json={"roomId": "r", "peerId": "a"}) as resp:
                token = (await resp.json())["token"]
            wss = served.url.replace("https://", "wss://") + "rtc/ws"
            async with http.ws_connect(wss, params={"token": token}) as ws:
                # Renewed: a new pair on disk, then SIGHUP (certbot's deploy hook would send it).
                new_cert, new_key = tls.make_self_signed(["localhost"], tls.host_addresses())
                key.write_bytes(new_key)
                cert.write_bytes(new_cert)
                renewed = tls.fingerprint(new_cert)
                served.proc.send_signal(signal.SIGHUP)
                await wait_for(lambda: "reloaded" in served.output(), 10, message="the reload to be logged")
                assert renewed in served.output()
                assert await presented_fingerprint(served.port) == renewed
                # The connection made before the reload goes on.
                await ws.send_json({"type": "heartbeat", "id": 1})
                assert await ws.receive_json(timeout=5) == {"type": "ack", "id": 1}

                # Bad files: the old certificate stays, and the log says so once.
                cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                served.proc.send_signal(signal.SIGHUP)
                await wait_for(lambda: "kept the current certificate" in served.output(), 10, message="the refusal")
                assert await presented_fingerprint(served.port) == renewed
                # A key that is not the certificate's: worse, since OpenSSL would drop the old key.
                cert.write_bytes(new_cert)
                key.write_bytes(tls.make_self_signed(["localhost"], [])[1])
                served.proc.send_signal(signal.SIGHUP)
                await wait_for(lambda: served.output().count("kept the current certificate") == 2, 10)
                assert await presented_fingerprint(served.port) == renewed
                await ws.send_json({"type": "heartbeat", "id": 2})
                assert await ws.receive_json(timeout=5) == {"type": "ack", "id": 2}
        output = served.output()
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 2 and all("kept the current certificate" in line for line in errors), output
    assert "Traceback" not in output


async def test_sighup_without_tls_is_ignored_with_a_log_line(tmp_path: Path) -> None:
    with cli_server(tmp_path, "plain") as served:
        assert served.url.startswith("http://127.0.0.1:")
        served.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "SIGHUP: ignored, TLS is off" in served.output(), 10, message="the SIGHUP line")
        async with aiohttp.ClientSession() as http, http.get(served.url + "healthz") as resp:
            assert resp.status == 200  # still serving


def test_a_certificate_that_does_not_load_stops_the_start_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fantasize_rtc",
            "serve",
            "--port",
            "0",
            "--tls-cert",
            str(missing),
            "--tls-key",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("FANTASIZE_RTC_")},
    )
    assert out.returncode == 1
    assert "could not start: cannot read the TLS certificate" in out.stderr and "Traceback" not in out.stderr


def test_whip_cert_writes_a_p256_pair_once(tmp_path: Path) -> None:
    cert_path, key_path = tls.write_encoder_certificate(tmp_path / "enc", days=30)
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    with pytest.raises(FileExistsError):  # never overwrites an encoder's key
        tls.write_encoder_certificate(tmp_path / "enc")
