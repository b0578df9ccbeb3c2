from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from fantasize_rtc import RtcConfig, RtcServer, create_rtc_server, serving
from fantasize_rtc.app import create_app
from fantasize_rtc.web import LEAN_KEY, RTC_KEY
from tests.helpers import FakeClock

#: tests/wire.py's fixtures (``served``; ``close_raw_connections``, which the raw-socket modules
#: ask for with ``pytestmark``: it is async, and must not wrap the browser tests' sync Playwright).
pytest_plugins = ["tests.wire"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path) -> RtcConfig:
    """Test defaults: no ICE servers (no public STUN wait), recordings in a temp folder."""
    return RtcConfig(recordings_dir=str(tmp_path / "recordings"), admin_key="admin-secret")


@pytest.fixture
async def rtc(config: RtcConfig) -> AsyncIterator[RtcServer]:
    async with create_rtc_server(config) as server:
        yield server


@pytest.fixture
async def client(aiohttp_client: Any, config: RtcConfig) -> TestClient:  # type: ignore[type-arg]
    """A real aiohttp server on a free port with the full app, and a client for it."""
    test_client: TestClient = await aiohttp_client(create_app(config=config))  # type: ignore[type-arg]
    return test_client


class ServedTestServer(TestServer):
    """A test server that serves its app as ``fantasize-rtc serve`` does (``serving.start``: the
    guarded site, WebSocket upgrades through the lean path of ``web._lean``)."""

    def __init__(self, app: web.Application, config: RtcConfig) -> None:
        super().__init__(app, host="127.0.0.1")
        self._config = config

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner, site, _ = await serving.start(self.app, "127.0.0.1", 0, self._config)
        self.port = site._bound_port  # type: ignore[attr-defined]
        self.scheme = "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")


#: Makes a test client for an app, served one of the two ways a WebSocket comes in.
MakeClient = Callable[[web.Application], Awaitable[TestClient]]  # type: ignore[type-arg]


@pytest.fixture(params=["route", "lean"])
def ws_way(request: pytest.FixtureRequest) -> str:
    """How ``GET /rtc/ws`` is served: aiohttp's route (an app embedded or run by aiohttp) or the
    lean upgrade of ``fantasize-rtc serve``. Tests of WebSockets run both ways."""
    return str(request.param)


@pytest.fixture
def serve_client(aiohttp_client: Any, ws_way: str) -> Iterator[MakeClient]:
    """``await serve_client(app)``: a client for ``app``, served the ``ws_way`` way. Served the
    lean way, the test must have gone through it (its sockets were not aiohttp's)."""
    apps: list[web.Application] = []

    async def make(app: web.Application) -> TestClient:  # type: ignore[type-arg]
        if ws_way == "route":
            made: TestClient = await aiohttp_client(app)  # type: ignore[type-arg]
        else:
            # A browser opens each WebSocket on a connection of its own (the lean path takes a
            # connection's first request); aiohttp's client would reuse a kept-alive one.
            connector = aiohttp.TCPConnector(force_close=True)
            made = await aiohttp_client(ServedTestServer(app, app[RTC_KEY].config), connector=connector)
            apps.append(app)
        return made

    yield make
    for app in apps:
        assert app[LEAN_KEY].taken > 0, "no WebSocket went through the lean upgrade"


@pytest.fixture
async def ws_client(serve_client: MakeClient, config: RtcConfig) -> TestClient:  # type: ignore[type-arg]
    """:func:`client`, served each way a WebSocket comes in (``ws_way``)."""
    return await serve_client(create_app(config=config))


@pytest.fixture(params=["route", "lean"])
def http_way(request: pytest.FixtureRequest) -> str:
    """How the JSON POSTs are served: aiohttp's routes, or the lean keep-alive connections of
    ``fantasize-rtc serve`` (``web._lean_http``; other requests on those connections go to aiohttp)."""
    return str(request.param)


@pytest.fixture
def http_serve_client(aiohttp_client: Any, http_way: str) -> Iterator[MakeClient]:
    """``await http_serve_client(app)``: a client for ``app`` served the ``http_way`` way (kept-alive
    connections, as a browser's). Served the lean way, some request must have been answered there."""
    apps: list[web.Application] = []

    async def make(app: web.Application) -> TestClient:  # type: ignore[type-arg]
        if http_way == "route":
            made: TestClient = await aiohttp_client(app)  # type: ignore[type-arg]
        else:
            made = await aiohttp_client(ServedTestServer(app, app[RTC_KEY].config))
            apps.append(app)
        return made

    yield make
    for app in apps:
        posts = app[LEAN_KEY].posts
        assert posts is not None and posts.answered > 0, "no request went through the lean path"
