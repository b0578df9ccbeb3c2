"""``fantasize-rtc selftest URL``: check a running server end to end, as a client would.

It connects peers to signaling, relays messages between two of its own peers (over the
WebSocket and over long-poll), then opens real WebRTC sessions with aiortc against the server's
own peers: ``echo`` (reached by signaling, with trickled candidates), ``record`` (and downloads
the file), ``probe`` and ``play`` (both through ``POST /rtc/offer``). It prints a pass/fail table
with timings, or JSON with ``--json``; the exit status is 0 only if every check passed.

Everything it opens (peers, peer connections, sessions, the recording it made) is closed or
deleted before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .client import RtcClient, split_candidates
from .errors import NotFound, RtcError

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCPeerConnection

__all__ = ["CHECKS", "CheckResult", "SelfTest", "add_parser", "main", "run_selftest"]

log = logging.getLogger(__name__)

#: Every check, in the order they run.
CHECKS: tuple[str, ...] = ("health", "signaling", "relay", "echo", "record", "probe", "play")
#: Video frames a media check waits for before it calls the media flowing.
FRAMES_WANTED = 15


class CheckFailed(Exception):
    """A check saw something wrong; the message is the table's detail."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    ms: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "ms": self.ms, "detail": self.detail}


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class _Received:
    """Counts frames of received tracks (reading every one: an unread track grows without bound)."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.enough = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wanted = FRAMES_WANTED

    def consume(self, track: MediaStreamTrack) -> None:
        task = asyncio.ensure_future(self._read(track))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _read(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames[track.kind] = self.frames.get(track.kind, 0) + 1
                if self.frames.get("video", 0) >= self.wanted:
                    self.enough.set()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _video_track() -> MediaStreamTrack:
    """A small generated video (320x240, brightness changing every frame)."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class MovingGray(VideoStreamTrack):
        async def recv(self) -> VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame(width=320, height=240)
            level = pts // 3000 % 200 + 16
            for plane in frame.planes:
                plane.update(bytes([level]) * plane.buffer_size)
            frame.pts, frame.time_base = pts, time_base
            return frame

    return MovingGray()


def _audio_track() -> MediaStreamTrack:
    from aiortc import AudioStreamTrack

    return AudioStreamTrack()  # silence, 20 ms frames


class SelfTest:
    """Runs the checks against ``url``; see :func:`run_selftest`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 20.0,
        room: str | None = None,
        auth_secret: str | None = None,
        keep_recording: bool = False,
        download_dir: str | Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.room = room or f"selftest-{secrets.token_hex(4)}"
        self.auth_secret = auth_secret
        self.keep_recording = keep_recording
        self.download_dir = Path(download_dir) if download_dir else None
        self.stage = "starting"
        self._stack: contextlib.AsyncExitStack | None = None

    # -- running ---------------------------------------------------------------------------------

    async def run(
        self, names: Sequence[str] = CHECKS, progress: Callable[[int, int, str], None] | None = None
    ) -> list[CheckResult]:
        results = []
        for index, name in enumerate(names):
            if progress is not None:
                progress(index, len(names), name)
            results.append(await self.run_one(name))
        return results

    async def run_one(self, name: str) -> CheckResult:
        check: Callable[[], Awaitable[str]] = getattr(self, f"check_{name}")
        self.stage = "starting"
        start = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            try:
                detail = await asyncio.wait_for(check(), self.timeout)
            except asyncio.TimeoutError:
                return CheckResult(name, False, _ms(start), f"timed out after {self.timeout:g} s {self.stage}")
            except CheckFailed as exc:
                return CheckResult(name, False, _ms(start), str(exc))
            except RtcError as err:
                return CheckResult(name, False, _ms(start), f"{err.code}: {err.message} ({self.stage})")
            except Exception as exc:  # report, never crash: the table must come out
                log.debug("check %s failed", name, exc_info=True)
                return CheckResult(name, False, _ms(start), f"{type(exc).__name__}: {exc} ({self.stage})")
            finally:
                self._stack = None
        return CheckResult(name, True, _ms(start), detail)

    # -- helpers ---------------------------------------------------------------------------------

    def _at(self, stage: str) -> None:
        self.stage = stage

    async def _client(self, label: str, **kwargs: Any) -> RtcClient:
        """A connected peer of this run, disconnected when the check ends."""
        assert self._stack is not None
        client = RtcClient(self.url, **kwargs)
        self._stack.push_async_callback(client.close)
        self._at(f"connecting peer {label}")
        peer_id = f"{label}-{secrets.token_hex(3)}"
        await client.connect(self.room, peer_id, auth_token=self._connect_jwt(peer_id))

        async def leave() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)

        self._stack.push_async_callback(leave)
        return client

    def _connect_jwt(self, peer_id: str) -> str | None:
        """A short-lived connect JWT for one of our peers, when the server requires one."""
        if not self.auth_secret:
            return None
        import jwt

        claims = {"room": self.room, "sub": peer_id, "exp": int(time.time()) + 300}
        return jwt.encode(claims, self.auth_secret, algorithm="HS256")

    def _pc(self, client: RtcClient) -> RTCPeerConnection:
        """A peer connection with the ICE servers the server handed out, closed when the check ends."""
        from aiortc import RTCConfiguration, RTCPeerConnection

        from .call import ice_servers

        assert self._stack is not None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(client)))  # explicit list: no public STUN wait
        self._stack.push_async_callback(pc.close)
        return pc

    def _received(self, pc: RTCPeerConnection) -> _Received:
        assert self._stack is not None
        received = _Received()
        pc.on("track", received.consume)
        self._stack.push_async_callback(received.close)
        return received

    async def _offer_http(self, client: RtcClient, pc: RTCPeerConnection, mode: str, **options: Any) -> str:
        """``POST /rtc/offer`` with a complete offer; applies the answer; returns the session id."""
        from aiortc import RTCSessionDescription

        assert self._stack is not None
        self._at("gathering candidates")
        await pc.setLocalDescription(await pc.createOffer())
        self._at(f"waiting for the {mode} answer")
        try:
            answer = await client.offer(pc.localDescription.sdp, mode, **options)
        except NotFound as err:
            if err.code == "not_found":
                raise CheckFailed("the server has no media routes (404 on POST /rtc/offer)") from err
            raise
        session_id: str = answer["sessionId"]

        async def end() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close_media_session(session_id), 5)

        self._stack.push_async_callback(end)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return session_id

    async def _connected(self, pc: RTCPeerConnection, what: str) -> int:
        """Wait until the peer connection is connected; returns the ms it took from now."""
        start = time.monotonic()
        self._at(f"waiting for the {what} connection (ICE + DTLS)")
        done = asyncio.Event()

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState in ("connected", "failed", "closed"):
                done.set()

        if pc.connectionState not in ("connected", "failed", "closed"):
            await done.wait()
        if pc.connectionState != "connected":
            raise CheckFailed(f"{what} connection {pc.connectionState}")
        return _ms(start)

    async def _report_until(
        self, client: RtcClient, session_id: str, ready: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll the session report (there is no push for it over HTTP) until ``ready``."""
        self._at(f"waiting for the session report to show {what}")
        while True:
            report = await client.media_session(session_id)
            if ready(report):
                return report
            if report.get("state") == "closed":
                raise CheckFailed(f"the session closed ({report.get('closeReason')}) before {what}")
            await asyncio.sleep(0.2)

    # -- the checks ------------------------------------------------------------------------------

    async def check_health(self) -> str:
        self._at("on GET /healthz")
        async with RtcClient(self.url) as client:
            try:
                health = await client.health()
            except RtcError as err:
                raise CheckFailed(f"GET /healthz answered {err.status} {err.code}") from err
        if not isinstance(health, dict) or health.get("status") != "ok":
            raise CheckFailed(f"status is {health.get('status') if isinstance(health, dict) else health!r}")
        return f"ok, version {health.get('version', '?')}, backend {health.get('backend', {}).get('backend', '?')}"

    async def check_signaling(self) -> str:
        start = time.monotonic()
        first = await self._client("sig-a")
        connect_ms = _ms(start)
        second = await self._client("sig-b")
        self._at("waiting for peer:connected")
        while True:
            message = await first.next_message()
            if message["type"] == "peer:connected" and message["peer"]["peerId"] == second.peer_id:
                break
        channel = first.channel  # the peer:connected came over it
        snapshot = await second.snapshot()
        members = {p["peerId"] for p in snapshot["peers"]}
        if not {first.peer_id, second.peer_id} <= members:
            raise CheckFailed(f"the room snapshot lists {sorted(members)}")
        await second.heartbeat()
        return f"connect {connect_ms} ms, messages over {channel}, peer:connected seen"

    async def check_relay(self) -> str:
        """Sent over HTTP, received on a WebSocket; then sent over that WebSocket (acknowledged)
        and received by long-poll."""
        sender = await self._client("relay-http")
        ws_peer = await self._client("relay-ws", transport="ws", send_over="ws")
        poll_peer = await self._client("relay-poll", transport="poll", poll_wait_ms=10_000)
        times = {}
        legs = ((sender, ws_peer, "HTTP -> WebSocket"), (ws_peer, poll_peer, "WebSocket -> long-poll"))
        for source, receiver, how in legs:
            nonce = secrets.token_hex(8)
            start = time.monotonic()
            self._at(f"relaying a message {how}")
            result = await source.signal({"type": "selftest", "payload": {"nonce": nonce}}, to=receiver.peer_id)
            if result.get("listenersNotified") != 1:
                raise CheckFailed(f"relay {how} reached {result.get('listenersNotified')} listeners, not 1")
            while True:
                message = await receiver.next_message()
                if message["type"] == "signal" and message["signal"].get("payload") == {"nonce": nonce}:
                    break
            if message["fromPeerId"] != source.peer_id:
                raise CheckFailed(f"the message came from {message['fromPeerId']!r}")
            times[how] = _ms(start)
        return ", ".join(f"{how} {ms} ms" for how, ms in times.items())

    async def check_echo(self) -> str:
        """Through signaling, like a browser: offer to ``@echo``, trickle candidates, read the answer."""
        from aiortc import RTCSessionDescription

        client = await self._client("echo")
        pc = self._pc(client)
        received = self._received(pc)
        pc.addTrack(_video_track())
        channel = pc.createDataChannel("selftest")
        echoed = asyncio.Event()
        nonce = secrets.token_hex(8)
        channel.on("open", lambda: channel.send(nonce))
        channel.on("message", lambda m: echoed.set() if m == nonce else None)
        self._at("gathering candidates")
        await pc.setLocalDescription(await pc.createOffer())
        sdp, candidates = split_candidates(pc.localDescription.sdp)
        self._at("sending the offer to @echo")
        await client.signal({"type": "offer", "payload": {"sdp": sdp}}, to="@echo")
        for candidate in [*candidates, None]:
            await client.signal({"type": "candidate", "payload": candidate}, to="@echo")
        assert self._stack is not None
        self._stack.push_async_callback(self._bye, client, "@echo")
        self._at("waiting for the answer from @echo")
        while True:
            message = await client.next_message()
            if message.get("type") == "error" and message["error"].get("fromPeerId") == "@echo":
                raise CheckFailed(f"@echo refused: {message['error'].get('code')}: {message['error'].get('message')}")
            if message.get("type") == "signal" and message.get("fromPeerId") == "@echo":
                signal = message["signal"]
                if signal["type"] == "answer":
                    await pc.setRemoteDescription(RTCSessionDescription(signal["payload"]["sdp"], "answer"))
                    break
        connect_ms = await self._connected(pc, "echo")
        self._at(f"waiting for {FRAMES_WANTED} echoed video frames")
        await received.enough.wait()
        self._at("waiting for the data channel echo")
        await echoed.wait()
        return f"connected in {connect_ms} ms, {received.frames['video']} video frames back, data channel echoed"

    async def _bye(self, client: RtcClient, to: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.signal({"type": "bye", "payload": None}, to=to), 5)

    async def check_record(self) -> str:
        client = await self._client("record")
        pc = self._pc(client)
        pc.addTrack(_video_track())
        pc.addTrack(_audio_track())
        session_id = await self._offer_http(client, pc, "record")
        connect_ms = await self._connected(pc, "record")
        await self._report_until(
            client,
            session_id,
            lambda r: r.get("stats", {}).get("framesReceived", {}).get("video", 0) >= 30,
            "30 recorded video frames",
        )
        self._at("ending the record session")
        await client.close_media_session(session_id)
        await pc.close()
        self._at("waiting for the recording to be listed")
        while True:
            listing = await client.recordings()
            found = [r for r in listing.get("recordings", []) if r.get("sessionId") == session_id]
            if found:
                recording = found[0]
                break
            await asyncio.sleep(0.2)
        if not self.keep_recording:
            assert self._stack is not None
            self._stack.push_async_callback(self._delete_recording, client, recording["id"])
        self._at("downloading the recording")
        with contextlib.ExitStack() as files:
            folder = self.download_dir or Path(files.enter_context(tempfile.TemporaryDirectory()))
            path = await client.download_recording(recording["id"], folder)
            size = path.stat().st_size
            frames = await asyncio.to_thread(_count_video_frames, path)
        if size <= 0 or frames <= 0:
            raise CheckFailed(f"the downloaded recording has {size} bytes and {frames} video frames")
        kept = f", kept as {path}" if self.download_dir else ""
        return (
            f"connected in {connect_ms} ms; {recording.get('format', '?')} "
            f"{recording.get('duration', 0):.1f} s, {size // 1024} KiB, {frames} video frames decoded{kept}"
        )

    async def _delete_recording(self, client: RtcClient, recording_id: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.delete_recording(recording_id), 5)

    async def check_probe(self) -> str:
        """The probe measures for a second, then pushes its report on our data channel."""
        client = await self._client("probe")
        pc = self._pc(client)
        self._received(pc)
        pc.addTrack(_video_track())
        channel = pc.createDataChannel("probe")
        pushed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = json.loads(message)
                if data.get("type") == "probe:report" and not pushed.done():
                    pushed.set_result(data["report"])

        session_id = await self._offer_http(client, pc, "probe", probeSeconds=1)
        connect_ms = await self._connected(pc, "probe")
        self._at("waiting for the probe report on the data channel")
        report = await pushed
        if report.get("connectedAt") is None:
            raise CheckFailed(f"the probe reports no connection: {report.get('verdict')}")
        stored = await client.media_session(session_id)
        if stored.get("sessionId") != session_id:
            raise CheckFailed("GET /rtc/sessions/{id} does not return the probe's report")
        pair = report.get("candidatePair") or {}
        local, remote = pair.get("local") or {}, pair.get("remote") or {}
        route = f" ({local.get('type', '?')} -> {remote.get('type', '?')})" if pair else ""
        rtt = report.get("rttMs")
        rtt_text = f"; RTT {rtt} ms" if rtt is not None else ""
        return f"{report.get('verdict', 'connected')}{route}{rtt_text}; client side {connect_ms} ms"

    async def check_play(self) -> str:
        client = await self._client("play")
        pc = self._pc(client)
        received = self._received(pc)
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await self._offer_http(client, pc, "play")
        connect_ms = await self._connected(pc, "play")
        self._at(f"waiting for {FRAMES_WANTED} played video frames")
        await received.enough.wait()
        return (
            f"connected in {connect_ms} ms, received {received.frames['video']} video and "
            f"{received.frames['audio']} audio frames"
        )


def _count_video_frames(path: Path) -> int:
    """Decode the file: a recording that does not decode is not a recording."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return 0
        return sum(1 for _ in container.decode(video=0))


async def run_selftest(
    url: str, checks: Sequence[str] = CHECKS, *, progress: Callable[[int, int, str], None] | None = None, **options: Any
) -> list[CheckResult]:
    """Run ``checks`` against the server at ``url``; options are :class:`SelfTest`'s."""
    return await SelfTest(url, **options).run(checks, progress)


# -- the command ---------------------------------------------------------------------------------


def _progress_printer(stream: TextIO) -> Callable[[int, int, str], None]:
    tty = stream.isatty()

    def show(index: int, total: int, name: str) -> None:
        line = f"[{index + 1}/{total}] {name} ..."
        if tty:
            stream.write("\r\033[K" + line)
        else:
            stream.write(line + "\n")
        stream.flush()

    return show


def format_table(url: str, results: Sequence[CheckResult]) -> str:
    width = max([len("check"), *(len(r.name) for r in results)])
    lines = [f"{'check':<{width}}  result  {'time':>8}  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {'pass' if r.ok else 'FAIL':<6}  {r.ms:>5} ms  {r.detail}")
    passed = sum(r.ok for r in results)
    lines.append(f"{passed}/{len(results)} checks passed against {url}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """The ``selftest`` command; 0 only if every check passed."""
    names = list(args.only or CHECKS)
    unknown = [n for n in [*names, *(args.skip or [])] if n not in CHECKS]
    if unknown:
        print(f"unknown check(s): {', '.join(unknown)}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    names = [n for n in names if n not in (args.skip or [])]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    progress = _progress_printer(sys.stderr)
    results = asyncio.run(
        run_selftest(
            args.url,
            names,
            progress=progress,
            timeout=args.timeout,
            room=args.room,
            auth_secret=args.auth_secret,
            keep_recording=args.keep_recording,
            download_dir=args.download_dir,
        )
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"url": args.url, "ok": ok, "checks": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_table(args.url, results))
    return 0 if ok else 1


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``selftest`` to the ``fantasize-rtc`` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "selftest",
        help="check a running server end to end (signaling, echo, record, probe, play)",
        description="Act as a client against a running server: connect peers, relay messages between them, "
        "and open real WebRTC sessions (aiortc) in echo, record, probe and play modes. Prints a "
        "pass/fail table with timings; exits 0 only if every check passed.",
    )
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--only", action="append", metavar="CHECK", help=f"run only this check (repeatable): {', '.join(CHECKS)}"
    )
    parser.add_argument("--skip", action="append", metavar="CHECK", help="skip this check (repeatable)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds each check may take (default: 20)")
    parser.add_argument("--room", help="room to use (default: a fresh selftest-<random> room)")
    parser.add_argument(
        "--auth-secret",
        default=os.environ.get("FANTASIZE_RTC_AUTH_SECRET"),
        help="the server's --auth-secret, when connect needs a JWT: selftest signs its own "
        "[env FANTASIZE_RTC_AUTH_SECRET]",
    )
    parser.add_argument(
        "--keep-recording", action="store_true", help="leave the recording on the server (deleted by default)"
    )
    parser.add_argument("--download-dir", help="keep the downloaded recording in this folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=main)
    return parser
