"""Relay-only through a real TURN server (coturn): the page's test connects and says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel
from tests.turn_fixtures import TURN_SECRET, run_coturn


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    with run_coturn(tmp_path, relay_ports=(41000, 41999)) as port:  # apart from the media tests' range
        yield port


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
