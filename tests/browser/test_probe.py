"""The Connectivity-test panel: a probe session through @probe, its verdict and details in words."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

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


SETUP_CASES = """async () => {
  const { explainSetup } = await import('/static/probe.js');
  const natted = { udp: { mode: 'mux', ports: [40000, 40000], addresses: ['10.20.0.2'], announced: [] } };
  const published = { udp: { ...natted.udp, announced: [{ address: '198.51.100.2', type: 'host' }] } };
  return {
    phoneOverHttp: explainSetup(natted, { host: '192.168.1.20:8080', hostname: '192.168.1.20' }, false),
    publicNameNoPublicIp: explainSetup(natted, { host: 'rtc.example.org', hostname: 'rtc.example.org' }, true),
    publicNameRandomPorts: explainSetup({ udp: { mode: 'random', ports: null, addresses: ['198.51.100.2'], announced: [] } },
      { host: 'rtc.example.org', hostname: 'rtc.example.org' }, true),
    published: explainSetup(published, { host: 'rtc.example.org', hostname: 'rtc.example.org' }, true),
    local: explainSetup(natted, { host: '127.0.0.1:8080', hostname: '127.0.0.1' }, true),
  };
}"""


def test_the_panel_says_what_the_server_announces_and_what_will_not_work(
    new_page, server: ServerProcess, page_errors: PageErrors
) -> None:
    """Issue 14: the page tells the truth about reaching the server's own peers from here."""
    page: Page = new_page("setup", server.url)
    page.goto("/#probe")
    expect(page.locator("#probe-announced")).to_contain_text("The server's own peers announce")
    expect(page.locator("#probe-announced")).to_contain_text("random UDP ports")
    expect(page.locator("#probe-advice li")).to_have_count(0)  # localhost over http is a secure context
    cases = page.evaluate(SETUP_CASES)
    (insecure,) = cases["phoneOverHttp"]["advice"]
    assert (
        "not a secure context" in insecure
        and "--tls-self-signed" in insecure
        and "https://192.168.1.20:8080/" in insecure
    )
    (private,) = cases["publicNameNoPublicIp"]["advice"]
    assert "only private addresses (10.20.0.2)" in private and "--public-ip" in private and "--udp-port" in private
    (random_ports,) = cases["publicNameRandomPorts"]["advice"]
    assert "random UDP ports" in random_ports
    assert cases["published"]["advice"] == [] and cases["local"]["advice"] == []
    assert cases["published"]["announced"] == (
        "The server's own peers announce 10.20.0.2, 198.51.100.2 on UDP port 40000."
    )
    assert page_errors.errors == []
