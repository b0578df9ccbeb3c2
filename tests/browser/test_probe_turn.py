"""Relay-only through a real TURN server (coturn): the page's test connects and says so."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel
from tests.helpers import free_udp_port, require_program, wait_for_sync

TURN_SECRET = "browser-turn-secret"


def stun_answers(port: int) -> bool:
    """coturn answers a STUN binding request once it listens."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        return data[8:20] == request[8:20]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    """coturn on a free loopback port, TURN REST credentials from a shared secret."""
    binary = require_program("turnserver")
    port = free_udp_port()
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         "--allow-loopback-peers", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=test",
         "--no-tls", "--no-dtls", "--no-cli", f"--pidfile={tmp_path / 'turn.pid'}",
         f"--log-file={tmp_path / 'turn.log'}", "--simple-log", f"--userdb={tmp_path / 'turndb'}",
         "--min-port=41000", "--max-port=41999"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_sync(lambda: proc.poll() is not None or stun_answers(port), timeout=10, message="coturn")
        assert proc.poll() is None, "coturn exited"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_relay_only_probe_through_coturn(
    new_page, coturn: int, tmp_path: Path, artifacts: Path, page_errors: PageErrors
) -> None:
    server = ServerProcess(
        tmp_path, "turn", extra_args=("--ice-server", f"turn:127.0.0.1:{coturn}?transport=udp",
                                      "--turn-secret", TURN_SECRET),
    ).start()  # fmt: skip
    try:
        page = new_page("turn", server.url)
        open_panel(page, "probe")
        # The browser got minted, time-limited TURN credentials with its connect answer.
        ice = page.evaluate("demo.lab.iceServers")
        assert ice[0]["urls"] == [f"turn:127.0.0.1:{coturn}?transport=udp"]
        assert ice[0]["username"].endswith(":me") and ice[0]["credential"]

        page.check("#probe-relay")
        page.click("#probe-start")
        status = page.locator("#probe-status")
        expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
        verdict = page.locator("#probe-verdict")
        expect(verdict).to_contain_text("only through a TURN relay")
        expect(verdict).to_have_attribute("data-outcome", "relay")
        expect(page.locator("#probe-details")).to_contain_text("relay (your browser)")
        expect(page.locator("#probe-details")).to_contain_text("relay only (TURN)")
        expect(page.locator("#probe-explain")).to_contain_text("only through a TURN relay")
        page.screenshot(path=str(artifacts / "panel-probe-relay.png"), full_page=True)
        assert page_errors.errors == []
    finally:
        server.stop()
