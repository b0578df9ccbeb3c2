"""docs/deploy.md as written: its systemd unit, its nginx config, its coturn config and the
repository's Dockerfile are taken from the files themselves and run for real (test ports, test
certificates and temporary folders swapped in), so the page cannot drift from what works.

The NAT the VM and the container sit behind is tests/test_nat.py's lab."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

import fantasize_rtc.media.session as session_module
from fantasize_rtc import RtcConfig, tls
from fantasize_rtc.app import create_app
from fantasize_rtc.cli import build_parser, config_from_args
from fantasize_rtc.client import RtcClient
from fantasize_rtc.config import IceServer
from fantasize_rtc.media.ice import rtc_configuration
from tests.helpers import (
    accepts_tcp,
    free_port,
    free_udp_port,
    nginx_config,
    require_program,
    start_nginx,
    stop_process,
    wait_for,
    wait_for_sync,
)
from tests.media_helpers import client_peer, http_offer
from tests.turn_fixtures import _free_udp_and_tcp_port, self_signed_certificate, stun_answers

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy.md"


def blocks(info: str) -> list[str]:
    """The fenced code blocks of docs/deploy.md with this info string ("" for none)."""
    found: list[str] = []
    current: list[str] | None = None
    current_info = ""
    for line in DEPLOY.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, current_info = [], line[3:].strip()
            else:
                if current_info == info:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "docs/deploy.md has an unclosed code block"
    return found


def the_block(info: str, containing: str) -> str:
    (block,) = [b for b in blocks(info) if containing in b]
    return block


def joined(text: str) -> str:
    """Shell and systemd continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", text)


def certificate(folder: Path, name: str = "cert") -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1 and localhost: (cert file, key file, SHA-256 fingerprint)."""
    cert_pem, key_pem = tls.make_self_signed(["localhost"], [ipaddress.ip_address("127.0.0.1")])
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key, tls.fingerprint(cert_pem)


def serve_argv(command: list[str]) -> list[str]:
    """A documented ``fantasize-rtc serve ...`` command as this checkout runs it."""
    assert Path(command[0]).name == "fantasize-rtc" and command[1] == "serve", command
    return [sys.executable, "-m", "fantasize_rtc", *command[1:]]


def swap(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (the flag must be there)."""
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


class Served:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FANTASIZE_RTC_")}
        self.proc = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=log.parent
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, line: str, timeout: float = 30) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, f"the server exited {self.proc.returncode}:\n{self.text()[-3000:]}"
            return line in self.text()

        wait_for_sync(seen, timeout=timeout, interval=0.05, message=repr(line))

    def stop(self) -> int:
        code = stop_process(self.proc, 20)
        self._out.close()
        return code


def presented_fingerprint(port: int) -> str:
    """The SHA-256 fingerprint of the certificate a new TLS connection to ``port`` gets."""
    der = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return tls.fingerprint(der.encode())


# -- the systemd unit ---------------------------------------------------------------------------------


def unit_values(unit: str, key: str) -> list[str]:
    return [line.partition("=")[2] for line in joined(unit).splitlines() if line.startswith(f"{key}=")]


def test_the_systemd_unit_runs_as_written_and_reloads_the_certificate(tmp_path: Path) -> None:
    unit = the_block("ini", "[Service]")
    (exec_start,), (exec_reload,) = unit_values(unit, "ExecStart"), unit_values(unit, "ExecReload")
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # systemd's own check of the unit (where systemd is installed)
        checked = tmp_path / "fantasize-rtc.service"
        checked.write_text(unit.replace("/opt/fantasize-rtc/bin/fantasize-rtc", shutil.which("true") or "/bin/true"))
        done = subprocess.run([analyze, "verify", str(checked)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    # Its command line, with this test's port, files and folders.
    cert, key, first = certificate(tmp_path)
    port, udp = free_port(), free_udp_port()
    argv = serve_argv(shlex.split(exec_start))
    argv = swap(swap(argv, "--port", str(port)), "--udp-port", str(udp))
    argv = swap(swap(argv, "--tls-cert", str(cert)), "--tls-key", str(key))
    argv = swap(swap(argv, "--state-dir", str(tmp_path / "state")), "--recordings-dir", str(tmp_path / "rec"))
    server = Served(argv, tmp_path / "server.log")
    try:
        server.wait_log(" serving on ")
        trust = ssl.create_default_context(cafile=str(cert))
        media = asyncio.run(_get_json(f"https://127.0.0.1:{port}/rtc/media", trust))
        assert media["udp"]["mode"] == "mux" and media["udp"]["ports"] == [udp, udp], media
        public = argv[argv.index("--public-ip") + 1]
        assert {"address": public, "type": "host"} in media["udp"]["announced"], media
        assert f"every server-side session on UDP port {udp}" in server.text()
        # certbot renewed: new files in place, then what ExecReload does.
        _, _, second = certificate(tmp_path)
        assert second != first and presented_fingerprint(port) == first
        reload = shlex.split(exec_reload.replace("$MAINPID", str(server.proc.pid)))
        assert reload[-2:] == ["-HUP", str(server.proc.pid)], reload
        subprocess.run(reload, check=True, timeout=10)
        server.wait_log("TLS: reloaded")
        assert presented_fingerprint(port) == second
    finally:
        code = server.stop()
    assert code == 0, server.text()[-3000:]  # systemctl stop: SIGTERM, a clean exit


async def _get_json(url: str, trust: ssl.SSLContext) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url, ssl=trust) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# -- the container ---------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the repository's Dockerfile, continuation lines joined."""
    lines = joined((ROOT / "Dockerfile").read_text()).splitlines()
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1]) for ln in lines if ln.strip() and not ln.startswith("#")]


def test_the_dockerfile_builds_the_wheel_and_starts_the_server_the_docs_describe(tmp_path: Path) -> None:
    steps = dockerfile()
    # What it copies is enough to build the wheel, the page included.
    context = tmp_path / "context"
    context.mkdir()
    for instruction, args in steps:
        if instruction == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, target)
    assert any(i == "RUN" and "pip install" in a and "'.[fast]'" in a for i, a in steps)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ".", "-w", str(tmp_path / "wheel")],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fantasize_rtc/static/index.html" in names and "fantasize_rtc/cli.py" in names
    # ENTRYPOINT + CMD, and ENTRYPOINT + the docs' `docker run` arguments, are command lines the
    # server accepts, on the ports the Dockerfile exposes and the docs publish.
    (entrypoint,) = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for i, a in steps if i == "CMD"]
    (exposed,) = [a.split() for i, a in steps if i == "EXPOSE"]
    run = shlex.split(joined(the_block("sh", "docker run")).split("docker run", 1)[1])
    image_at = run.index("fantasize-rtc")
    published = {run[i + 1] for i, a in enumerate(run[:image_at]) if a == "-p"}
    for extra in (cmd, run[image_at + 1 :]):
        assert entrypoint[:2] == ["fantasize-rtc", "serve"]
        config = config_from_args(build_parser().parse_args([*entrypoint[1:], *extra]))
        assert config.tls_self_signed and config.state_dir == "/data/state" and config.udp_port == 40000
        port = entrypoint[entrypoint.index("--port") + 1]
        assert set(exposed) == {f"{port}/tcp", f"{config.udp_port}/udp"}
        assert f"443:{port}/tcp" in published and f"{config.udp_port}:{config.udp_port}/udp" in published
    assert config.public_ips == ("203.0.113.10",)
    # docker stop waits --stop-timeout before SIGKILL: longer than the drain's budget
    assert float(run[run.index("--stop-timeout") + 1]) > config.drain_seconds


# -- behind nginx ----------------------------------------------------------------------------------------


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[int, int, Served, ssl.SSLContext]]:
    """docs/deploy.md's nginx config and server command, run: (nginx's http port, its https port,
    the server, a context trusting nginx's certificate)."""
    cert, key, _ = certificate(tmp_path)
    http_port, https_port, upstream, udp = free_port(), free_port(), free_port(), free_udp_port()
    site = the_block("nginx", "proxy_pass")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = site.replace("/etc/letsencrypt/live/rtc.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/rtc.example.org/privkey.pem", str(key))
    assert "proxy_pass http://127.0.0.1:8080;" in site
    site = site.replace("proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://127.0.0.1:{upstream};")
    conf = nginx_config(tmp_path, site)
    command = joined(the_block("sh", "--trusted-proxy")).strip()
    argv = serve_argv(shlex.split(command))
    argv = swap(swap(argv, "--port", str(upstream)), "--udp-port", str(udp))
    # One more flag than the docs, to see whom the per-address limits count.
    argv += ["--recordings-dir", str(tmp_path / "rec"), "--max-rooms-per-address", "1"]
    server = Served(argv, tmp_path / "server.log")
    proc = start_nginx(conf, tmp_path)
    try:
        server.wait_log(" serving on ")
        wait_for_sync(lambda: accepts_tcp(https_port), timeout=10, message="nginx listening")
        yield http_port, https_port, server, ssl.create_default_context(cafile=str(cert))
    finally:
        stop_process(proc)
        server.stop()


async def test_the_nginx_config_in_front_of_the_server(
    nginx_in_front: tuple[int, int, Served, ssl.SSLContext],
) -> None:
    http_port, https_port, server, trust = nginx_in_front
    url = f"https://127.0.0.1:{https_port}"
    async with aiohttp.ClientSession() as plain:
        async with plain.get(f"http://127.0.0.1:{http_port}/#echo", allow_redirects=False) as resp:
            assert resp.status == 301 and resp.headers["Location"].startswith("https://")
        async with plain.get(f"{url}/", ssl=trust) as resp:
            assert resp.status == 200 and "<html" in (await resp.text()).lower()
    # Whom the limits count: the client nginx names, not nginx (every connection comes from it).
    for address, room, status in (("127.0.0.5", "a", 200), ("127.0.0.5", "b", 429), ("127.0.0.6", "b", 200)):
        connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=trust)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(f"{url}/rtc/connect", json={"roomId": room}) as resp,
        ):
            assert resp.status == status, (address, room, await resp.text())
            if status == 200:  # nginx said https: the cookie is Secure
                assert "Secure" in resp.headers["Set-Cookie"], resp.headers["Set-Cookie"]
    # Two peers relaying over wss:// through nginx.
    alice = RtcClient(url, ssl=trust, auto_heartbeat=False, transport="ws")
    bob = RtcClient(url, ssl=trust, auto_heartbeat=False, transport="ws")
    try:
        await alice.connect("a", "alice")
        await bob.connect("a", "bob")
        await wait_for(lambda: alice.channel == bob.channel == "ws", timeout=10, message="both WebSockets")
        result = await alice.signal({"type": "offer", "payload": {"sdp": "v=0"}}, to="bob")
        assert result["delivered"] == ["bob"], result
        while (message := await bob.next_message(timeout=10))["type"] != "signal":
            pass
        assert message["fromPeerId"] == "alice" and message["signal"]["type"] == "offer"
        # The server's echo: signaling through nginx, the media straight to the UDP port.
        udp = int(server.text().split("every server-side session on UDP port ")[1].split()[0])
        async with client_peer() as peer:
            peer.add_media(audio=False)
            answer = await alice.offer(await peer.offer(), "echo")
            assert f" {udp} typ host" in answer["sdp"]
            await peer.accept(answer["sdp"])
            await peer.wait_frames("video", 10)
            report = await alice.media_session(answer["sessionId"])
            assert report["candidatePair"]["local"]["port"] == udp, report["candidatePair"]
    finally:
        await alice.close()
        await bob.close()


# -- TURN with coturn --------------------------------------------------------------------------------------


@pytest.fixture
def documented_coturn(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """coturn started with docs/deploy.md's turnserver.conf: (its port, the shared secret)."""
    binary = require_program("turnserver")
    conf = the_block("", "use-auth-secret")
    secret = re.search(r"^static-auth-secret=(.+)$", conf, re.M)
    assert secret is not None
    cert, key = self_signed_certificate(tmp_path)
    port, tls_port = _free_udp_and_tcp_port(), free_port()
    conf = re.sub(r"^listening-port=.*$", f"listening-port={port}", conf, flags=re.M)
    conf = re.sub(r"^tls-listening-port=.*$", f"tls-listening-port={tls_port}", conf, flags=re.M)
    conf = re.sub(r"^cert=.*$", f"cert={cert}", conf, flags=re.M)
    conf = re.sub(r"^pkey=.*$", f"pkey={key}", conf, flags=re.M)
    # The test's own: loopback only (the documented denied ranges stay), its files in tmp_path.
    conf += (
        "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nallow-loopback-peers\n"
        f"pidfile={tmp_path / 'turn.pid'}\nlog-file={tmp_path / 'turn.log'}\nsimple-log\n"
        f"userdb={tmp_path / 'turndb'}\n"
    )
    (tmp_path / "turnserver.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "turnserver.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_sync(
            lambda: proc.poll() is not None or (stun_answers(port) and accepts_tcp(tls_port)),
            30,
            message="coturn to listen",
        )
        assert proc.poll() is None, "coturn exited with the documented config"
        yield port, secret.group(1)
    finally:
        stop_process(proc, 2)


async def test_the_coturn_config_relays_with_credentials_the_server_minted(
    documented_coturn: tuple[int, str], aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, secret = documented_coturn
    command = joined(the_block("sh", "FANTASIZE_RTC_TURN_SECRET"))
    assert f"FANTASIZE_RTC_TURN_SECRET={secret} " in command  # the same secret on both sides
    urls = [u.replace("turn.example.org:3478", f"127.0.0.1:{port}") for u in re.findall(r"--ice-server (\S+)", command)]
    config = RtcConfig(
        recordings_dir=str(tmp_path / "rec"),
        ice_servers=tuple(IceServer.parse(u) for u in urls if "5349" not in u),
        turn_secret=secret,
    )

    def relay_only(servers: tuple[IceServer, ...], **options: Any) -> RTCConfiguration:
        # Both ends relay: the documented config refuses to relay into private networks, so here,
        # on loopback, a relay-to-relay pair through coturn is the one that can connect.
        configuration = rtc_configuration(servers, **options)
        configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        return configuration

    monkeypatch.setattr(session_module, "rtc_configuration", relay_only)
    client = await aiohttp_client(create_app(config=config))
    connect = await (await client.post("/rtc/connect", json={"roomId": "turn", "peerId": "walled"})).json()
    turn = [s for s in connect["iceServers"] if s["urls"][0].startswith("turn:")]
    assert turn and turn[0]["username"].endswith(":walled") and turn[0]["credential"]
    ice = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in turn]
    async with client_peer(ice_servers=ice, iceTransportPolicy=RTCIceTransportPolicy.RELAY) as peer:
        peer.add_media(audio=False)
        body = await http_offer(client, peer, "echo", token=connect["token"])
        assert "typ relay" in body["sdp"]
        await peer.wait_frames("video", 10, timeout=30)
        report = await (
            await client.get(
                f"/rtc/sessions/{body['sessionId']}", headers={"Authorization": f"Bearer {connect['token']}"}
            )
        ).json()
        assert report["candidatePair"]["local"]["type"] == "relay", report["candidatePair"]
        assert report["candidatePair"]["remote"]["type"] == "relay", report["candidatePair"]
        await client.delete(
            f"/rtc/sessions/{body['sessionId']}", headers={"Authorization": f"Bearer {connect['token']}"}
        )
