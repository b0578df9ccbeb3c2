"""Crash-safe recordings: a real server process killed with SIGKILL mid-recording leaves a file
that plays up to within a few seconds of the kill; the next start lists it as incomplete with the
duration it really holds (found once, at startup, off the event loop), and its owner or the admin
can download and delete it. A file another live process still writes is left alone."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import recordings as recordings_module
from fantasize_rtc.media.recordings import RecordingInfo, RecordingStore
from tests.helpers import free_port, wait_for
from tests.media_helpers import client_peer, http_offer
from tests.test_record_passthrough import decode_all, prefer_video_codec

SECRET = "a-shared-secret-long-enough-for-hs256"
ADMIN = {"Authorization": "Bearer admin-secret"}


def identity(room: str, sub: str) -> dict[str, str]:
    """A connect JWT for (room, sub): under --auth-secret it proves who owns what, across restarts."""
    token = jwt.encode({"room": room, "sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


class Server:
    """``fantasize-rtc serve`` as a real process on a free port, its log in a file."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder, self.log = folder, log
        self.port = free_port()  # the same port after a restart
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fantasize_rtc", "serve", "--port", str(self.port),
                "--recordings-dir", str(self.folder), "--admin-key", "admin-secret", "--auth-secret", SECRET,
                "--log-level", "info",
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                async with http.get("/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, 30, interval=0.1, message="the server to start")

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def recordings(http: aiohttp.ClientSession, headers: dict[str, str]) -> list[dict[str, Any]]:
    async with http.get("/rtc/recordings", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["recordings"])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def ffprobe_packets(path: Path) -> dict[str, int] | None:
    """Packets per stream type as FFmpeg's own ffprobe reads them (a second opinion), or None
    without ffprobe."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    out = subprocess.run(
        [ffprobe, "-v", "error", "-count_packets", "-show_entries", "stream=codec_type,nb_read_packets",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {s["codec_type"]: int(s["nb_read_packets"]) for s in json.loads(out.stdout)["streams"]}


def packets_of(path: Path) -> dict[str, int]:
    counts = {"audio": 0, "video": 0}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None:
                counts[packet.stream.type] += 1
    return counts


@pytest.mark.timeout(120)
async def test_sigkill_mid_recording_leaves_a_playable_file_listed_as_incomplete_after_a_restart(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "rec"
    server = Server(folder, tmp_path / "server.log")
    alice = identity("r", "alice")
    async with aiohttp.ClientSession(server.base) as http:
        try:
            await server.start(http)
            async with client_peer() as peer:
                peer.add_media()
                body = await http_offer(http, peer, "record", token=alice["Authorization"][7:])
                sid = body["sessionId"]

                async def grown_to(seconds: float) -> dict[str, Any] | None:
                    mine = [r for r in await recordings(http, alice) if r["sessionId"] == sid]
                    return mine[0] if mine and mine[0]["duration"] >= seconds else None

                # watched growing in the real process: listed as recording, size and duration rising
                early = await wait_for(lambda: grown_to(1.0), 30, interval=0.1, message="1 s recorded")
                assert early["state"] == "recording" and early["complete"] is False
                late = await wait_for(lambda: grown_to(4.0), 30, interval=0.1, message="4 s recorded")
                assert late["size"] > early["size"]
                assert server.proc is not None
                server.proc.kill()  # SIGKILL: no cleanup, no finalizing, nothing flushed on the way out
                await server.proc.wait()
        finally:
            if server.proc is not None and server.proc.returncode is None:
                server.proc.kill()
                await server.proc.wait()

        media = [name for name in names(folder) if name.endswith(".webm")]
        assert len(media) == 1, names(folder)
        path = folder / media[0]
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["state"] == "recording"  # nobody could say otherwise: the process died
        result = await asyncio.to_thread(decode_all, path)  # every packet decodes
        assert result["codecs"] == {"audio": "opus", "video": "vp8"}
        assert result["first_video_keyframe"] and result["monotonic"]
        assert result["duration"] is None  # no header duration: the muxer never got to write one
        seconds, _, packets = recordings_module.probe_media(path, scan=True)
        # playable up to within a few seconds of the kill (about one cluster, 1 s, is lost)
        assert late["duration"] - 2.5 <= seconds <= late["duration"] + 1.0, (seconds, late)
        assert result["frames"]["video"] >= 25 * (seconds - 1.0)
        assert packets == sum(packets_of(path).values())
        probed = await asyncio.to_thread(ffprobe_packets, path)
        assert probed is None or probed == packets_of(path), probed

        # the next start finds it, scans it once, and lists it as incomplete with that duration
        try:
            await server.start(http)
            listing = await recordings(http, ADMIN)
            assert len(listing) == 1
            entry = listing[0]
            assert entry["state"] == "incomplete" and entry["complete"] is False
            assert entry["sessionId"] == sid and entry["closeReason"] is None
            assert entry["duration"] == pytest.approx(seconds, abs=0.01)
            assert entry["size"] == path.stat().st_size
            # the owner (the same identity, a fresh token) still owns it; another does not
            again = identity("r", "alice")
            bob = identity("r", "bob")
            assert [r["id"] for r in await recordings(http, again)] == [entry["id"]]
            assert await recordings(http, bob) == []
            url = entry["url"]
            async with http.get(url, headers=bob) as resp:
                assert resp.status == 403
            async with http.get(url, headers=again) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "video/webm"
                assert await resp.read() == path.read_bytes()
            async with http.get(url, headers=ADMIN) as resp:
                assert resp.status == 200
            async with http.delete(url, headers=again) as resp:
                assert resp.status == 200
            assert names(folder) == []
            assert await recordings(http, ADMIN) == []
        finally:
            await server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "was interrupted" in log and "listed as incomplete" in log


@pytest.mark.parametrize("h264", [False, True], ids=["transcoded", "h264-passthrough"])
async def test_a_fragmented_mp4_plays_up_to_about_a_second_before_any_moment(
    client: TestClient,  # type: ignore[type-arg]
    tmp_path: Path,
    h264: bool,
) -> None:
    """What a kill would leave is what the file holds at that moment: downloaded mid-recording
    (the bytes written when the request came), it decodes and holds all but about the last
    fragment; the scan that a restart runs finds the same."""
    async with client_peer() as peer:
        peer.add_media()
        if h264:
            prefer_video_codec(peer, "video/H264")
        body = await http_offer(client, peer, "record", format="mp4")

        async def grown() -> dict[str, Any] | None:
            listing = (await (await client.get("/rtc/recordings", headers=ADMIN)).json())["recordings"]
            mine = [r for r in listing if r["sessionId"] == body["sessionId"]]
            return mine[0] if mine and mine[0]["duration"] >= 3.0 else None

        live = await wait_for(grown, 30, interval=0.1, message="3 s recorded")
        resp = await client.get(live["url"], headers=ADMIN)
        assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
        cut = tmp_path / "cut.mp4"
        cut.write_bytes(await resp.read())
        report = await (await client.get(f"/rtc/sessions/{body['sessionId']}")).json()
        assert report["recording"]["passthrough"] == {"audio": False, "video": h264}
    result = await asyncio.to_thread(decode_all, cut)
    assert result["codecs"] == {"audio": "aac", "video": "h264"}
    assert result["first_video_keyframe"] and result["monotonic"]
    seconds, _, packets = recordings_module.probe_media(cut, scan=True)
    assert live["duration"] - 2.0 <= seconds <= live["duration"] + 0.5, (seconds, live)
    assert result["frames"]["video"] >= 25 * (seconds - 1.0) and packets > 0


# -- recovery at startup, in process ---------------------------------------------------------------


def write_cut_off_webm(path: Path, seconds: float, cut_at: float) -> None:
    """A WebM written the way the recorder writes it, then copied as it stood at ``cut_at``
    seconds: what a process killed at that moment leaves."""
    work = path.with_name("writing.webm")
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 64, 48, "yuv420p"
    codec.time_base = Fraction(1, 30)
    options = dict(recordings_module.FORMATS["webm"].options)
    with av.open(str(work), "w", format="webm", options=options) as container:
        stream = container.add_mux_stream("vp8", width=64, height=48)
        stream.time_base = Fraction(1, 1000)
        for n in range(int(seconds * 30)):
            frame = av.VideoFrame(64, 48, "yuv420p")
            frame.pts = n
            for packet in codec.encode(frame):
                copy = av.Packet(bytes(packet))
                copy.pts = copy.dts = n * 1000 // 30
                copy.time_base, copy.stream, copy.is_keyframe = Fraction(1, 1000), stream, packet.is_keyframe
                container.mux(copy)
            if n == int(cut_at * 30):
                shutil.copy(work, path)
    work.unlink()


def interrupted_sidecar(folder: Path, recording_id: str, file: str) -> Path:
    info = RecordingInfo(
        id=recording_id,
        file=file,
        format="webm",
        session_id="s" * 24,
        room_id=None,
        peer_id=None,
        created=1_700_000_000_000,
        size=0,
        duration=0.0,
        codecs=("vp8",),
        state="recording",
    )
    sidecar = folder / f"{recording_id}.json"
    sidecar.write_text(json.dumps(info.to_json()))
    return sidecar


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "rec"
    path.mkdir()
    return path


RID = "20261201T000000Z-" + "s" * 24


@pytest.fixture
async def app_on(folder: Path) -> AsyncIterator[Any]:
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def start() -> TestClient:  # type: ignore[type-arg]
        client: TestClient = TestClient(  # type: ignore[type-arg]
            TestServer(create_app(config=RtcConfig(recordings_dir=str(folder), admin_key="admin-secret")))
        )
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_startup_scans_an_interrupted_recording_once_off_the_event_loop(
    folder: Path,
    app_on: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_cut_off_webm(folder / f"{RID}.webm", seconds=4.0, cut_at=2.5)
    interrupted_sidecar(folder, RID, f"{RID}.webm")
    scans: list[tuple[bool, str]] = []
    real = recordings_module.probe_media

    def counting(path: Path, scan: bool = False) -> Any:
        scans.append((scan, threading.current_thread().name))
        return real(path, scan)

    monkeypatch.setattr(recordings_module, "probe_media", counting)
    client = await app_on()
    assert len(scans) == 1 and scans[0][0] and scans[0][1] != threading.main_thread().name, scans
    for _ in range(3):
        listing = (await (await client.get("/rtc/recordings", headers=ADMIN)).json())["recordings"]
        assert [(r["id"], r["state"], r["complete"]) for r in listing] == [(RID, "incomplete", False)]
        # clusters close every second: cut at 2.5 s, the file holds 2 s (whole clusters only)
        assert 1.5 <= listing[0]["duration"] <= 2.5, listing[0]
    assert len(scans) == 1  # listing never scans
    saved = json.loads((folder / f"{RID}.json").read_text())
    assert saved["state"] == "incomplete" and saved["duration"] == pytest.approx(listing[0]["duration"], abs=0.01)
    # an incomplete recording is not scanned again at the next start
    await client.close()
    await app_on()
    assert len(scans) == 1


async def test_an_interrupted_recording_that_holds_no_media_is_removed(folder: Path, app_on: Any) -> None:
    (folder / f"{RID}.webm").write_bytes(b"")  # killed before the header was written
    interrupted_sidecar(folder, RID, f"{RID}.webm")
    other = "20261201T000001Z-" + "t" * 24
    interrupted_sidecar(folder, other, f"{other}.webm")  # and one whose file never came
    client = await app_on()
    assert (await (await client.get("/rtc/recordings", headers=ADMIN)).json())["recordings"] == []
    assert names(folder) == []


async def test_a_recording_another_live_process_writes_is_left_alone(folder: Path, app_on: Any) -> None:
    media = folder / f"{RID}.webm"
    write_cut_off_webm(media, seconds=2.0, cut_at=1.5)
    sidecar = interrupted_sidecar(folder, RID, media.name)
    before = sidecar.read_text()
    # another process's writer holds the lock (a second open file description conflicts as a
    # second process would)
    fd = os.open(media, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        client = await app_on()
        assert sidecar.read_text() == before
        listing = (await (await client.get("/rtc/recordings", headers=ADMIN)).json())["recordings"]
        assert [(r["state"], r["complete"]) for r in listing] == [("recording", False)]
        resp = await client.delete(f"/rtc/recordings/{RID}", headers=ADMIN)
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "conflict"
        assert media.exists()
    finally:
        os.close(fd)  # that process died
    store = RecordingStore(folder)
    assert [info.state for info in store.recover()] == ["incomplete"]
    assert store.get(RID).state == "incomplete"
