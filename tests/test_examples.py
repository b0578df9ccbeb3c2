"""Every example in examples/ runs as ``python examples/<file>.py`` against a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.client import RtcClient
from fantasize_rtc.web import RTC_KEY
from tests.helpers import free_port, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@asynccontextmanager
async def running(script: str, *args: str, ready_path: str = "/rtc/heartbeat") -> AsyncIterator[str]:
    """Start ``examples/<script> --port N`` and yield its base URL once it answers; stop it after."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    output = b""
    try:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"{script} exited with {proc.returncode}")
                try:
                    async with session.post(url + ready_path, json={}) as response:
                        return response.status < 500
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(answers, timeout=30, interval=0.1, message=f"{script} to listen")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        output, _ = await asyncio.wait_for(proc.communicate(), 15)
        text = output.decode(errors="replace")
        assert "Traceback" not in text, text
        assert proc.returncode in (0, -15), text  # clean shutdown on SIGTERM


def _jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # keep cookies from 127.0.0.1, like a browser would


@pytest.mark.parametrize("script", ["fastapi_app.py", "starlette_app.py", "litestar_app.py"])
async def test_framework_example_serves_the_seed_routes(script: str) -> None:
    async with (
        running(script) as url,
        aiohttp.ClientSession(cookie_jar=_jar()) as alice,
        aiohttp.ClientSession(cookie_jar=_jar()) as bob,
        aiohttp.ClientSession() as stranger,
    ):

        async def post(session: aiohttp.ClientSession, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
            async with session.post(url + path, json=body, **kw) as response:
                return response.status, await response.json(content_type=None)

        # The seed's bodies, exactly; alice sends no token at all: the connect cookie carries it.
        status, info = await post(alice, "/rtc/connect", {"roomId": "demo-room", "peerId": "alice"})
        assert status == 200, info
        assert info["peerId"] == "alice" and info["token"] and info["peers"] == []
        status, bob_info = await post(bob, "/rtc/connect", {"roomId": "demo-room", "peerId": "bob"})
        assert status == 200 and [p["peerId"] for p in bob_info["peers"]] == ["alice"]

        status, beat = await post(alice, "/rtc/heartbeat", {"roomId": "demo-room", "peerId": "alice"})
        assert status == 200 and beat["lastSeen"] > 0

        offer = {"type": "offer", "payload": {"sdp": "v=0"}, "to": "bob"}
        status, relayed = await post(
            alice, "/rtc/signal", {"roomId": "demo-room", "fromPeerId": "alice", "signal": offer}
        )
        assert status == 200, relayed
        assert relayed == {"listenersNotified": 1, "delivered": [], "queued": ["bob"]}

        # bob uses the bearer token instead of the cookie
        bearer = {"Authorization": f"Bearer {bob_info['token']}"}
        status, relayed = await post(
            stranger,
            "/rtc/signal",
            {"roomId": "demo-room", "fromPeerId": "bob", "signal": {"type": "bye", "payload": None}},
            headers=bearer,
        )
        assert status == 200 and relayed["listenersNotified"] == 1

        # refusals keep the server's error shape
        status, err = await post(stranger, "/rtc/heartbeat", {"roomId": "demo-room", "peerId": "alice"})
        assert status == 401 and err["error"]["code"] == "unauthorized"
        status, err = await post(
            stranger, "/rtc/signal", {"roomId": "demo-room", "fromPeerId": "alice", "signal": offer}, headers=bearer
        )
        assert status == 403 and err["error"]["code"] == "forbidden"  # bob cannot send as alice
        status, err = await post(stranger, "/rtc/connect", {"roomId": "demo-room", "peerId": "bob"})
        assert status == 409 and err["error"]["code"] == "peer_id_taken"
        status, err = await post(stranger, "/rtc/connect", {"roomId": "bad room"})
        assert status == 400 and err["error"]["code"] == "invalid_request"
        status, err = await post(stranger, "/rtc/connect", ["not", "an", "object"])
        assert status == 400 and err["error"]["code"] == "invalid_request"
        status, err = await post(
            alice,
            "/rtc/signal",
            {"roomId": "demo-room", "fromPeerId": "alice", "signal": {"type": "offer", "payload": {}}},
        )
        assert status == 400 and err["error"]["code"] == "invalid_request"

        # the seed-style RtcClient works against the framework app too
        async with RtcClient(url, transport="poll") as client:
            await client.connect("demo-room", "carol", listen=False)
            assert (await client.signal({"type": "hi", "payload": 1}, to="alice"))["queued"] == ["alice"]
            assert await client.heartbeat("demo-room", "carol") > 0


async def test_aiohttp_embed_mounts_the_routes_next_to_its_own() -> None:
    async with running("aiohttp_embed.py", ready_path="/realtime/rtc/heartbeat") as url:
        async with aiohttp.ClientSession() as session, session.get(url + "/") as response:
            assert response.status == 200 and "fantasize-rtc" in await response.text()
        async with RtcClient(url + "/realtime") as alice, RtcClient(url + "/realtime") as bob:
            await alice.connect("embedded", "alice")
            await wait_for(lambda: alice.channel == "ws", message="websocket through the sub-app")
            await bob.connect("embedded", "bob")
            await bob.signal({"type": "hello", "payload": "hi"}, to="alice")
            kinds = [(await alice.next_message(timeout=10))["type"] for _ in range(2)]
            assert kinds == ["peer:connected", "signal"]
        async with aiohttp.ClientSession() as session, session.get(url + "/stats") as response:
            stats = await response.json()
            assert response.status == 200 and stats["rooms"] >= 0


def _run(script: str, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    return proc.stdout


def test_events_quick_start() -> None:
    out = _run("events.py")
    assert "peer:connected alice" in out and "peer:connected bob" in out
    assert "signal alice -> bob offer" in out
    assert "relayed to 1 listener(s)" in out
    assert "peer:disconnected bob (left)" in out


async def _run_against(url: str, script: str, *args: str, timeout: float = 90) -> str:
    """Run an example as a subprocess while this loop keeps serving the in-process server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(),
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
    return text


async def test_two_peers_negotiate_p2p_through_the_server(aiohttp_server: Any, config: RtcConfig) -> None:
    app = create_app(config=config, media=False, static=False)
    signals: list[Any] = []
    app[RTC_KEY].on("signal", signals.append)
    server = await aiohttp_server(app)
    out = await _run_against(str(server.make_url("")).rstrip("/"), "two_peers.py", "--frames", "20")
    assert "alice: connection connected, got 'hello from bob' and" in out
    assert "bob: connection connected, got 'hello from alice' and" in out
    kinds = [(s.from_peer_id, s.signal.type) for s in signals]
    assert ("alice", "offer") in kinds and ("bob", "answer") in kinds
    # both sides trickled: candidates with a payload, then the end-of-candidates null
    for peer in ("alice", "bob"):
        candidates = [s.signal.payload for s in signals if s.from_peer_id == peer and s.signal.type == "candidate"]
        assert len(candidates) >= 2 and candidates[-1] is None and candidates[0]["candidate"].startswith("candidate:")
    offer = next(s for s in signals if s.signal.type == "offer")
    assert "a=candidate" not in offer.signal.payload["sdp"]


def _files(folder: Path, suffix: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(suffix)]


def _decoded_video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _write_test_clip(path: Path, frames: int = 30) -> None:
    """A 1 s VP8 clip made with PyAV: a real file for the example to send."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(width=160, height=120, format="yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(i * 7) % 256]) * plane.buffer_size)
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("source", ["generated", "file"])
async def test_record_file_records_and_downloads(
    aiohttp_server: Any, config: RtcConfig, tmp_path: Path, source: str
) -> None:
    server = await aiohttp_server(create_app(config=config, static=False))
    url = str(server.make_url("")).rstrip("/")
    out = tmp_path / "downloads"
    args = ["--out", str(out)]
    if source == "file":
        clip = tmp_path / "clip.webm"
        _write_test_clip(clip)
        args += ["--file", str(clip), "--seconds", "20"]  # ends when the file does, long before 20 s
    else:
        args += ["--seconds", "1.5"]
    text = await _run_against(url, "record_file.py", *args)
    assert "connected; recording session" in text and "saved " in text
    [path] = _files(out, "")
    assert path.suffix == ".webm" and path.stat().st_size > 0
    assert await asyncio.to_thread(_decoded_video_frames, path) > 0
    # the downloaded file is the server's recording, byte for byte
    [kept] = _files(Path(config.recordings_dir), ".webm")
    assert kept.read_bytes() == path.read_bytes()
