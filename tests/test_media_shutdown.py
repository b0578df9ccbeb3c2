"""Graceful shutdown of the real CLI process: SIGTERM mid-recording leaves a finalized file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import av

from tests.helpers import free_port, wait_for
from tests.media_helpers import client_peer, http_offer


def sidecars(folder: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def streams(path: Path) -> tuple[set[str], float]:
    with av.open(str(path)) as container:
        return {s.type for s in container.streams}, (container.duration or 0) / 1_000_000


async def test_sigterm_finalizes_recordings_before_exit(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fantasize_rtc",
        "serve",
        "--port",
        str(port),
        "--recordings-dir",
        str(folder),
        "--admin-key",
        "admin-secret",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(base) as http:

            async def up() -> bool:
                try:
                    async with http.get("/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, 30, interval=0.1, message="the server to start")
            async with client_peer() as peer:
                peer.add_media()
                body = await http_offer(http, peer, "record")

                async def recorded() -> bool:
                    async with http.get(f"/rtc/sessions/{body['sessionId']}") as resp:
                        return int((await resp.json())["stats"]["framesReceived"]["video"]) >= 20

                await wait_for(recorded, 30, interval=0.2, message="recorded frames")
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    saved = sidecars(folder)
    assert len(saved) == 1 and saved[0]["closeReason"] == "shutdown", saved
    kinds, duration = streams(folder / str(saved[0]["file"]))
    assert kinds == {"audio", "video"} and duration > 0.3
