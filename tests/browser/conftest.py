"""Real headless Chromium (the Debian package) driven by Playwright, against the real server.

The server runs as ``python -m fantasize_rtc serve`` in a subprocess on a free port, exactly as a
user starts it; one browser is launched for the whole package and each test opens its own
contexts (separate cookies and storage, like separate machines). A test that must hand the app
Python objects (a mode registry) serves ``create_app`` in a thread instead (:class:`AppThread`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiohttp import web
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, expect, sync_playwright

from fantasize_rtc.config import RtcConfig
from tests.helpers import free_port, require_program, wait_for_sync

if TYPE_CHECKING:
    from fantasize_rtc.media import ModeRegistry

T = TypeVar("T")

ADMIN_KEY = "browser-admin-key"

# Expectations poll until they hold; the machine running the suite may be busy (other tests,
# benchmarks), so give them room. A passing expectation returns as soon as it holds.
expect.set_options(timeout=15_000)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Seen working on this machine (docs/architecture.md, "Testing in a browser"): fake camera and
# microphone, no permission prompts, loopback candidates allowed, real local IPs in candidates
# instead of mDNS names.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-gpu",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


class AdminApi:
    """Calls to a running server's HTTP API as the admin."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def get(self, path: str, token: str | None = ADMIN_KEY) -> tuple[int, Any]:
        """GET ``path``; returns (status, JSON body or None)."""
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
            err.close()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    def room_peers(self, room_id: str) -> set[str] | None:
        """The peer ids of a room's snapshot (as the admin), or None when the room does not exist."""
        status, body = self.get(f"/rtc/rooms/{room_id}")
        if status == 404:
            return None
        assert status == 200, (status, body)
        return {p["peerId"] for p in body["peers"]}


class ServerProcess(AdminApi):
    """``fantasize-rtc serve`` in a subprocess, with helpers to call its HTTP API as the admin."""

    def __init__(self, workdir: Path, name: str, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.extra_args = extra_args
        self.recordings = workdir / "recordings"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        ARTIFACTS.mkdir(exist_ok=True)
        self._log_file = (ARTIFACTS / f"server-{self.name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fantasize_rtc",
                "serve",
                "--port",
                str(self.port),
                "--recordings-dir",
                str(self.recordings),
                "--admin-key",
                ADMIN_KEY,
                "--log-level",
                "info",
                *self.extra_args,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        wait_for_sync(self._healthy, timeout=30, interval=0.1, message=f"server {self.name} on port {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"server {self.name} exited with {self.proc.returncode}; see test-artifacts")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server: SIGTERM (graceful) or SIGKILL (``crash``). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class AppThread(AdminApi):
    """``create_app(config=..., modes=...)`` served by :func:`fantasize_rtc.serving.start` on an
    event loop in a thread of the test process: for tests that hand the app Python objects the
    command line cannot (a mode registry with a mode defined in the test). ``call`` runs a
    coroutine on that loop (to read the app's state there)."""

    def __init__(self, workdir: Path, modes: ModeRegistry, **config: Any) -> None:
        self.port = free_port()
        self.modes = modes
        self.config = RtcConfig(
            admin_key=ADMIN_KEY, recordings_dir=str(workdir / "recordings"), drain_seconds=5.0, **config
        )
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="app-thread", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> AppThread:
        from fantasize_rtc import create_app, serving

        async def start() -> None:
            self.app = create_app(config=self.config, modes=self.modes)
            self._runner, _site, _limiter = await serving.start(self.app, "127.0.0.1", self.port, self.config)

        self._thread.start()
        self.call(start())
        return self

    def stop(self) -> None:
        """Drain and stop the app, then the loop and its thread. Safe to call twice."""
        from fantasize_rtc import serving

        runner, self._runner = self._runner, None
        if runner is not None:
            self.call(serving.stop(runner, self.config.drain_seconds))
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()


@pytest.fixture(scope="package")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the package's tests (each test uses its own rooms)."""
    srv = ServerProcess(tmp_path_factory.mktemp("server"), "main").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    require_program("chromium")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    chromium = require_program("chromium")
    browser = playwright_instance.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


# Refused requests the page handles (a 409 for a taken name) and a server that is down; a 5xx is
# never noise: the server must not fail on anything the page sends.
_NETWORK_NOISE = re.compile(
    r"^(Failed to load resource: (net::ERR_\w+|the server responded with a status of 4\d\d)|WebSocket connection to)"
)


class PageErrors:
    """Uncaught exceptions and console errors of the pages a test opened; none are expected."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page, name: str) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: uncaught {exc}"))

        def on_console(msg: ConsoleMessage) -> None:
            # The browser itself logs every refused request (a 409 the page handles, a server that
            # is down); those are network facts, not page bugs.
            if msg.type == "error" and not _NETWORK_NOISE.match(msg.text):
                self.errors.append(f"{name}: console error {msg.text}")

        page.on("console", on_console)
        return page


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def new_page(browser: Browser, page_errors: PageErrors) -> Iterator[Any]:
    """``new_page(name, base_url, init_script=None)``: a page in a fresh browser context."""
    contexts: list[BrowserContext] = []

    def make(name: str, base_url: str, init_script: str | None = None, **context_args: Any) -> Page:
        context_args.setdefault("viewport", {"width": 1180, "height": 900})
        context = browser.new_context(base_url=base_url, accept_downloads=True, **context_args)
        context.set_default_timeout(20_000)
        if init_script:
            context.add_init_script(init_script)
        contexts.append(context)
        return page_errors.watch(context.new_page(), name)

    yield make
    for context in contexts:
        context.close()


def open_panel(page: Page, panel: str) -> None:
    """Load the page on ``panel`` and wait for its own connection to the server."""
    page.goto(f"/#{panel}")
    expect(page.locator("#server-status")).to_have_attribute("data-state", "connected")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


STATS_JS = """async (path) => {
  const pc = path.split('.').reduce((o, k) => (o == null ? o : o[k]), window);
  if (!pc) return null;
  const out = {framesDecoded: 0, videoBytes: 0, audioPackets: 0, audioBytes: 0, state: pc.connectionState};
  (await pc.getStats()).forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    if (s.kind === 'video') { out.framesDecoded += s.framesDecoded || 0; out.videoBytes += s.bytesReceived || 0; }
    if (s.kind === 'audio') { out.audioPackets += s.packetsReceived || 0; out.audioBytes += s.bytesReceived || 0; }
  });
  return out;
}"""


def inbound_stats(page: Page, pc_path: str) -> dict[str, Any] | None:
    """Totals of the ``inbound-rtp`` stats of the peer connection at ``window.<pc_path>``."""
    result: dict[str, Any] | None = page.evaluate(STATS_JS, pc_path)
    return result


def wait_for_media(
    page: Page, pc_path: str, *, audio: bool = True, frames: int = 15, timeout: float = 20
) -> dict[str, Any]:
    """Wait until decoded video frames (and audio packets) arrive and keep arriving."""

    def started() -> dict[str, Any] | None:
        stats = inbound_stats(page, pc_path)
        return stats if stats and stats["framesDecoded"] > 0 else None

    first = wait_for_sync(started, timeout=timeout, interval=0.2, message=f"first decoded frame on {pc_path}")

    def growing() -> dict[str, Any] | None:
        stats = inbound_stats(page, pc_path)
        if stats is None or stats["framesDecoded"] < first["framesDecoded"] + frames:
            return None
        if stats["videoBytes"] <= first["videoBytes"]:
            return None
        if audio and stats["audioPackets"] <= first["audioPackets"]:
            return None
        return stats

    result: dict[str, Any] = wait_for_sync(
        growing, timeout=timeout, interval=0.2, message=f"media flowing on {pc_path}"
    )
    return result
