"""The page works when the app is mounted under a prefix inside someone else's aiohttp app."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, PageErrors
from tests.helpers import free_port, wait_for_sync

HOST_APP = """
import sys
from aiohttp import web
from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app

async def home(request):
    return web.Response(text="the host app")

app = web.Application()
app.router.add_get("/", home)
app.add_subapp("/realtime", create_app(config=RtcConfig(recordings_dir=sys.argv[2])))
app.add_subapp("/signaling-only", create_app(config=RtcConfig(recordings_dir=sys.argv[2]), media=False))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("mounted")
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "server-mounted.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOST_APP, str(port), str(tmp_path / "recordings")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_sync(lambda: proc.poll() is not None or _up(f"{base}/realtime/healthz"), timeout=30, interval=0.1)
            assert proc.poll() is None, "the host app exited; see test-artifacts/server-mounted.log"
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def test_page_under_a_prefix(new_page, mounted: str, page_errors: PageErrors) -> None:
    page = new_page("mounted", mounted)
    page.goto("/realtime/#echo")
    expect(page.locator("#server-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#foot-version")).to_contain_text("fantasize-rtc-server")
    page.select_option("#source", "generated")
    page.click("#echo-start")
    expect(page.locator("#echo-status")).to_have_attribute("data-state", "connected")
    page.click("#tab-call")
    page.fill("#call-room", "mounted-room")
    page.fill("#call-name", "guest")
    page.click("#call-join-button")
    expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")
    assert page_errors.errors == []


def test_signaling_only_server_says_media_is_unavailable(new_page, mounted: str, page_errors: PageErrors) -> None:
    page = new_page("plain", mounted)
    page.goto("/signaling-only/#echo")
    expect(page.locator("#server-status")).to_have_attribute("data-state", "connected")
    page.select_option("#source", "generated")
    page.click("#echo-start")
    status = page.locator("#echo-status")
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("does not run its own media peers")
    expect(page.locator("#echo-start")).to_be_enabled()
    assert page_errors.errors == []
