"""Issue 14: the server behind a NAT that forwards one TCP port and one UDP port, a client behind a
home-router NAT, no route between the private networks (tests/netlab.py). The server's own peers
are reached through both NATs only with the media on the forwarded port and the public address
announced; without them the same lab fails, which shows the lab is real."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fantasize_rtc import tls
from tests.helpers import require_program, wait_for_sync
from tests.netlab import SERVER_PRIVATE, SERVER_PUBLIC, NatLab, require_lab

ROOT = Path(__file__).resolve().parents[1]
TCP_PORT = 8443
UDP_PORT = 40000


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    require_lab()
    lab = NatLab(TCP_PORT, (UDP_PORT, UDP_PORT + 2))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


class LabServer:
    def __init__(self, lab: NatLab, tmp: Path, *flags: str) -> None:
        self.lab = lab
        self.log = tmp / "server.log"
        self._out = self.log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CI": ""}
        argv = [sys.executable, "-m", "fantasize_rtc", "serve", "--host", "0.0.0.0", "--port", str(TCP_PORT)]
        # Over HTTPS with the self-signed certificate, kept in a state folder, as on a VM or in a
        # container reached by its public address.
        self.state = tmp / "state"
        argv += ["--recordings-dir", str(tmp / "rec"), "--tls-self-signed", "--state-dir", str(self.state), *flags]
        self.proc = lab.popen("srv", argv, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"https://{SERVER_PUBLIC}:{TCP_PORT}"

    def wait_healthy(self) -> LabServer:
        health = self.client("health", timeout=40)
        assert health and health[0]["health"], (health, self.log.read_text()[-2000:])
        return self

    @property
    def certificate(self) -> Path:
        return self.state / tls.CERT_FILE

    def client(self, *modes: str, timeout: float = 90) -> list[dict[str, Any]]:
        # The client trusts the server's certificate and verifies it (for the public address).
        argv = [sys.executable, "-m", "tests.lab_client", "--ca", str(self.certificate), self.url, *modes]
        done = self.lab.run("cli", argv, timeout=timeout, cwd=ROOT)
        assert done.returncode == 0 or modes == ("health",), done.stderr[-3000:] + done.stdout[-1000:]
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines or done.returncode == 0, done.stderr[-3000:]  # the client itself failed
        return lines

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self._out.close()
        return self.log.read_text()


@pytest.fixture
def serve(lab: NatLab, tmp_path: Path) -> Iterator[Any]:
    servers: list[LabServer] = []

    def start(*flags: str) -> LabServer:
        server = LabServer(lab, tmp_path, *flags)
        servers.append(server)  # stopped after the test, also when it never became healthy
        return server.wait_healthy()

    yield start
    for server in servers:
        server.stop()


def test_the_servers_own_peers_are_reached_through_two_nats_on_one_udp_port(serve: Any) -> None:
    server = serve("--udp-port", str(UDP_PORT), "--public-ip", SERVER_PUBLIC)
    results = {r["mode"]: r for r in server.client("echo", "passthrough", "record", "probe", "@echo")}
    for mode, result in results.items():
        assert result.get("connected"), (mode, result)
        candidates = result["answerCandidates"]
        assert any(f"{SERVER_PUBLIC} {UDP_PORT} typ host" in c for c in candidates), candidates
        assert all(f" {UDP_PORT} typ" in c for c in candidates if "typ host" in c), candidates  # one port
    for mode in ("echo", "passthrough", "@echo"):
        assert results[mode]["framesBack"] >= 15, results[mode]
    assert results["@echo"]["channel"] == "ws" and results["@echo"]["report"]["via"] == "signaling"
    assert results["record"]["report"]["recording"]["saved"]["size"] > 0
    probe = results["probe"]["report"]
    pair = probe["candidatePair"]
    assert pair["local"]["address"] == SERVER_PRIVATE and pair["local"]["port"] == UDP_PORT
    assert pair["remote"]["address"] == "203.0.113.2"  # the client as its NAT shows it (prflx)
    assert probe["verdict"].startswith("connected over UDP through NAT"), probe["verdict"]
    log = server.stop()
    assert f"every server-side session on UDP port {UDP_PORT}" in log and f"announcing {SERVER_PUBLIC}" in log


def test_without_the_one_port_and_the_public_address_the_same_lab_fails(serve: Any) -> None:
    server = serve("--public-ip", SERVER_PUBLIC)  # random ports: the NAT forwards none of them
    (result,) = server.client("echo")
    assert result["connected"] is False, result
    server.stop()
    server = serve("--udp-port", str(UDP_PORT))  # the one port, but only the private address announced
    (result,) = server.client("echo")
    assert result["connected"] is False, result
    assert "only private addresses are announced" in server.stop()


def test_a_port_range_through_the_nat(serve: Any) -> None:
    server = serve("--udp-port-range", f"{UDP_PORT}-{UDP_PORT + 2}", "--public-ip", SERVER_PUBLIC)
    results = server.client("echo", "passthrough", "echo")
    assert all(r.get("connected") for r in results), results
    ports = {c.split()[5] for r in results for c in r["answerCandidates"] if "typ host" in c}
    assert ports == {str(UDP_PORT), str(UDP_PORT + 1), str(UDP_PORT + 2)}, ports


# -- headless Chromium behind the home router, over HTTPS ---------------------------------------------


def _spki_sha256(cert_pem: str) -> str:
    """What ``--ignore-certificate-errors-spki-list`` takes: base64 SHA-256 of the public key info."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(ssl.PEM_cert_to_DER_cert(cert_pem))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_chromium_over_https_through_two_nats(serve: Any, lab: NatLab, tmp_path: Path) -> None:
    """The deployment the issue asks for: a phone's browser (here headless Chromium, with its fake
    camera, in the client's namespace behind the home router) opens the page on the server's public
    address over HTTPS, echoes its camera through @echo while the connectivity test runs on the same
    UDP port, and records."""
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS, PageErrors, open_panel, wait_for_media

    chromium = require_program("chromium")
    server = serve("--udp-port", str(UDP_PORT), "--public-ip", SERVER_PUBLIC)
    # Trust the self-signed certificate by its key, as a user who checked its fingerprint does: the
    # page is then a secure context, so the camera is there.
    spki = _spki_sha256(server.certificate.read_text())
    wrapper = tmp_path / "chromium-in-lab"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(lab.command("cli", [chromium]))} "$@"\n')
    wrapper.chmod(0o755)
    errors = PageErrors()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(wrapper), args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"]
        )
        try:
            context = browser.new_context(base_url=server.url, viewport={"width": 1180, "height": 900})
            context.set_default_timeout(30_000)
            page = errors.watch(context.new_page(), "lab")
            open_panel(page, "echo")
            assert page.evaluate("window.isSecureContext") and page.evaluate("location.protocol") == "https:"
            page.click("#echo-start")
            expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
            expect(page.locator("#echo-status")).to_contain_text("your camera")
            wait_for_media(page, "demo.echo.pc", timeout=30)

            # The connectivity test on the same UDP port while the echo runs: it names the pair.
            probe = errors.watch(context.new_page(), "lab-probe")
            open_panel(probe, "probe")
            expect(probe.locator("#probe-announced")).to_contain_text(f"{SERVER_PUBLIC} on UDP port {UDP_PORT}")
            expect(probe.locator("#probe-advice li")).to_have_count(0)  # nothing misconfigured
            probe.click("#probe-start")
            expect(probe.locator("#probe-status")).to_have_attribute("data-state", "connected")
            expect(probe.locator("#probe-verdict")).to_contain_text("through NAT")
            expect(probe.locator("#probe-details")).to_contain_text("prflx (your browser) ↔ host (server), UDP")
            report = probe.evaluate("demo.probe.report")
            assert report["candidatePair"]["remote"]["address"] == "203.0.113.2", report["candidatePair"]
            assert report["candidatePair"]["local"]["port"] == UDP_PORT, report["candidatePair"]
            wait_for_media(page, "demo.echo.pc", timeout=30)  # still flowing
            page.click("#echo-stop")

            open_panel(page, "record")
            page.click("#record-start")
            expect(page.locator("#record-status")).to_have_attribute("data-state", "connected")
            wait_for_sync(
                lambda: page.evaluate("performance.now() - demo.record.startedAt") >= 2000,
                timeout=15,
                interval=0.1,
                message="2 s of recording",
            )
            page.click("#record-stop")
            expect(page.locator("#record-status")).to_contain_text("Saved")
            expect(page.locator("#record-list tr[data-recording-id]")).to_have_count(1)
        finally:
            browser.close()
    assert errors.errors == []
    log = server.stop()
    assert f"every server-side session on UDP port {UDP_PORT}" in log
