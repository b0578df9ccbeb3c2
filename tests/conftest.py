from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig, RtcServer, create_rtc_server
from fantasize_rtc.app import create_app
from tests.helpers import FakeClock

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
