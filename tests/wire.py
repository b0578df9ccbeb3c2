"""A server as ``fantasize-rtc serve`` runs it, and a client on a bare TCP connection: for tests of
what goes over the wire byte by byte (the lean paths of ``web._lean`` and ``web._lean_http``).

Its fixtures are every test's to ask for (``conftest.py`` loads this module as a plugin): ``served``
(header timeout 500 ms, 4 connections per address) and ``close_raw_connections``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from aiohttp import web

from fantasize_rtc import RtcConfig, serving
from fantasize_rtc.app import create_app
from fantasize_rtc.serving import ConnectionLimiter
from fantasize_rtc.web import LEAN_KEY


@dataclass
class Served:
    app: web.Application
    port: int
    limiter: ConnectionLimiter
    runner: web.AppRunner

    @property
    def taken(self) -> int:
        """WebSocket upgrades the lean path took."""
        return self.app[LEAN_KEY].taken

    @property
    def answered(self) -> int:
        """JSON POSTs the lean path answered."""
        posts = self.app[LEAN_KEY].posts
        assert posts is not None
        return posts.answered


@contextlib.asynccontextmanager
async def serve_guarded(config: RtcConfig) -> AsyncIterator[Served]:
    """The app (no media) served by ``serving.start`` on a free port, cleaned up after."""
    app = create_app(config=config, media=False)
    runner, site, limiter = await serving.start(app, "127.0.0.1", 0, config)
    try:
        yield Served(app, bound_port(site), limiter, runner)
    finally:
        await runner.cleanup()


def bound_port(site: web.TCPSite) -> int:
    port = site._bound_port
    assert port is not None
    return port


class Raw:
    """A WebSocket client on a bare TCP connection: what a test sends is exactly what goes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    opened: ClassVar[list[Raw]] = []  # closed after each test (abort_all, from an autouse fixture)

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        cls.opened.append(raw)
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def head(self) -> tuple[int, dict[str, str], bytes]:
        """The HTTP answer: status, headers (lower-case names), and its body when it has one."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), headers, body

    async def frame(self) -> tuple[int, bytes]:
        """The server's next frame: (opcode, payload); server frames are never masked."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert not second & 0x80, "a server frame must not be masked"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), 5)

    async def json(self) -> Any:
        opcode, payload = await self.frame()
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    async def closed_by_server(self) -> bool:
        """True once the server closed the connection (EOF, or a reset when it cut it off)."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def abort_all(cls) -> None:
        for raw in cls.opened:
            raw.writer.transport.abort()
        cls.opened.clear()


@pytest.fixture
async def served(config: RtcConfig) -> AsyncIterator[Served]:
    async with serve_guarded(config.replace(header_timeout_ms=500, max_connections_per_address=4)) as served:
        yield served


@pytest.fixture
async def close_raw_connections() -> AsyncIterator[None]:
    """The raw connections a test opened are cut after it (a module that opens them says
    ``pytestmark = pytest.mark.usefixtures("close_raw_connections")``; not autouse: an async
    fixture around every test would put the browser tests' sync Playwright inside an event loop)."""
    yield
    Raw.abort_all()
