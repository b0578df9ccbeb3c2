"""The Connectivity-test panel: a probe session through @probe, its verdict and details in words."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess, open_panel


def test_probe_shows_the_verdict_and_the_pair_type(
    new_page, server: ServerProcess, artifacts: Path, page_errors: PageErrors
) -> None:
    page = new_page("probe", server.url)
    open_panel(page, "probe")
    page.click("#probe-start")
    status = page.locator("#probe-status")
    expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
    expect(status).to_contain_text("Test finished in")
    verdict = page.locator("#probe-verdict")
    expect(verdict).to_contain_text("Connected directly over UDP")
    expect(verdict).to_have_attribute("data-outcome", "direct")
    details = page.locator("#probe-details")
    # On one machine both ends use their own addresses: the pair is host to host.
    expect(details).to_contain_text("host (your browser) ↔ host (server), UDP")
    expect(details).to_contain_text("Round trip")
    expect(details).to_contain_text("The server received")
    expect(page.locator("#probe-explain")).to_contain_text("directly on its own network address")
    report = page.evaluate("demo.probe.report")
    assert report["candidatePair"]["local"]["type"] == "host"
    assert report["probe"]["state"] == "done"
    page.screenshot(path=str(artifacts / "panel-probe.png"), full_page=True)

    # Relay-only without a TURN server: a clear explanation, not a hang.
    page.check("#probe-relay")
    page.click("#probe-start")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("Relay-only needs a TURN server")
    assert page_errors.errors == []
