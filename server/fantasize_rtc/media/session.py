"""One server-side WebRTC session: an aiortc peer connection, its mode, and its strict lifecycle.

States: ``new -> connecting -> connected -> closing -> closed`` (``connecting`` may go straight
to ``closing``). Every state change goes through :meth:`MediaSession._set_state`, which logs
``old -> new``. :meth:`MediaSession.close` is idempotent: whatever ends a session (bye, DELETE,
ICE/DTLS failure, owner gone, max duration, shutdown) runs the same path, which finalizes the mode
(e.g. the recording), closes the peer connection and releases the session's slot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from .. import logs
from ..config import IceServer
from ..counters import MediaCounters
from ..errors import CapacityExceeded, InvalidRequest, RtcError
from ..protocol import SessionEnd, SessionState, Via
from ._aiortc_compat import gather_on, reoffer, skip_backlog, transport_stats, use_dtls
from .dtls import CIPHERS, DtlsTrace
from .events import MEDIA_CLOSED, MEDIA_CONNECTED, MediaClosed, MediaConnected
from .ice import PairInfo, _ice_transports, heard_from_peer, parse_candidate, rtc_configuration, selected_pair
from .udp import PortsExhausted
from .verdict import verdict

if TYPE_CHECKING:
    from ..config import RtcConfig
    from ..server import RtcServer
    from .recordings import RecordingStore
    from .udp import HostSockets
    from .workers import Workers

__all__ = ["MediaSession", "Mode", "Notify", "Owner", "SessionHost", "SessionOptions", "new_session_id", "skip_backlog"]

log = logging.getLogger(__name__)

#: How often a live session checks its deadlines and limits (and refreshes its stats).
TICK_SECONDS = 0.5
#: A session that has not connected this long after its answer is closed (``connect_timeout``).
CONNECT_TIMEOUT_SECONDS = 30.0
#: pc.close() normally takes milliseconds; never let one stuck transport hold up shutdown.
CLOSE_TIMEOUT_SECONDS = 10.0
#: A connected session that ends after its peer sent nothing for this long ended because the peer
#: vanished (``connection_lost``), not because it hung up (``peer_closed``).
SILENCE_SECONDS = 10.0
#: How long a signaled offer that carries no candidate waits for the first trickled one. aioice
#: starts its checks as soon as the answer is set and fails at once on an empty check list, so a
#: trickling client whose candidates are a little late (a loaded machine) would fail every time.
TRICKLE_GRACE_SECONDS = 3.0
#: How long the server waits for the answer to an offer it sent (renegotiation) before it ends the
#: session (``negotiation_failed``).
ANSWER_TIMEOUT_SECONDS = 10.0


def new_session_id() -> str:
    """An unguessable id: for anonymous sessions it is the capability to read and end them."""
    return secrets.token_urlsafe(18)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a session (and its recording) belongs to: sessions opened with a peer token, by
    signaling, or (under a JWT gate) with a connect JWT.

    ``key`` is what access is checked against (:meth:`fantasize_rtc.RtcServer.owner_key`): the
    hash of the token that made it, or under a JWT gate the authenticated identity. The next peer
    to take the same id has another token, so it never gets in. ``member`` is False for a JWT
    caller that is no room member: its sessions do not end when a peer of that id leaves."""

    room_id: str
    peer_id: str
    key: str = field(default="", repr=False)
    member: bool = True

    def may_access(self, owner: Owner) -> bool:
        """Whether this caller may read, end or delete what ``owner`` made."""
        return bool(owner.key) and self.key == owner.key


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the client asked for in its offer request (validated by the manager)."""

    audio: bool = True
    video: bool = True
    #: Recording container; None: chosen by the negotiated codecs (``record.choose_format``).
    format: str | None = None
    max_seconds: float = 3600.0
    probe_seconds: float = 3.0
    width: int = 640
    height: int = 480
    fps: int = 30
    #: Pass encoded frames through without transcoding. None: the mode's default (echo: no;
    #: record: yes, where the codecs allow).
    passthrough: bool | None = None
    #: Record what is sent (group calls, ``sfu``: each publisher's tracks, without transcoding).
    record: bool = False


class Mode:
    """What a session does with media. Subclasses override the hooks they need; register one with
    :data:`fantasize_rtc.media.modes` (docs/modes.md: the lifecycle, the threading rules).

    Every received track must be consumed: the default :meth:`on_track` drains it.
    """

    #: The name it is registered under (set on each instance by the registry).
    name: str = ""
    #: Whether a WHIP publisher (which only sends) can use it; the registry's default.
    whip: ClassVar[bool] = True
    #: Whether it writes into the recordings folder: admission checks the recordings quota first.
    writes_recordings: ClassVar[bool] = False
    #: Whether it adds or stops tracks after the first answer (:meth:`MediaSession.renegotiate`):
    #: then every track shares the offer's BUNDLE transport, and the offer must bundle them all.
    renegotiates: ClassVar[bool] = False

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        session.drain(track)

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        """Default: nothing to say on it (messages are dropped by the emitter)."""

    async def after_remote_description(self, session: MediaSession) -> None:
        """Called once the offer is applied and every received track was seen, before the answer."""

    async def on_connected(self, session: MediaSession) -> None:
        """Called once when media can flow."""

    async def tick(self, session: MediaSession) -> str | None:
        """Called every :data:`TICK_SECONDS` while connected; return a reason to end the session."""
        return None

    async def close(self, session: MediaSession, reason: str) -> None:
        """Finalize (stop recorders, ...). Called once, before the peer connection closes."""

    def report(self) -> dict[str, Any]:
        """Mode-specific fields for the session report."""
        return {}

    def signal_extras(self, session: MediaSession) -> dict[str, Any]:
        """Fields added to the payload of the answer and of every offer the session signals."""
        return {}


Notify = Callable[[dict[str, Any]], Awaitable[None]]


class SessionHost(Protocol):
    """What a session needs from whoever admitted it (the :class:`~.manager.MediaManager`): the
    facade (events), the config, the recordings folder, a place for its tasks, and to be told
    when it ends. A protocol, so that sessions never import the manager that imports them."""

    rtc: RtcServer
    config: RtcConfig
    store: RecordingStore
    counters: MediaCounters
    #: Thread and process pools for modes' CPU-heavy work (:mod:`.workers`).
    workers: Workers
    #: The forwarding groups (group calls, WHIP -> WHEP) of this process: a
    #: :class:`.sfu.Forwarding` (not named here: sfu imports this module).
    forwarding: Any

    @property
    def udp(self) -> HostSockets | None:
        """Where sessions open their UDP sockets: the mux or the port range; None for random ports."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    async def release(self, session: MediaSession) -> None: ...


class MediaSession:
    """A server-side peer connection in one mode. Created and owned by :class:`MediaManager`."""

    def __init__(
        self,
        manager: SessionHost,
        *,
        session_id: str,
        mode: Mode,
        options: SessionOptions,
        owner: Owner | None,
        via: str,
        server_peer_id: str,
        ice_servers: tuple[IceServer, ...],
        notify: Notify | None = None,
        address: str | None = None,
    ) -> None:
        self.manager = manager
        self.id = session_id
        self.mode = mode
        self.options = options
        self.owner = owner
        self.via = via  # a Via
        self.address = address  # the client's network address, when it came over HTTP
        self.server_peer_id = server_peer_id
        self.notify = notify
        self.state = SessionState.NEW
        self.close_reason: str | None = None
        self.created_at = _wall_ms()
        self.connected_at: int | None = None
        self.closed_at: int | None = None
        self.frames = {"audio": 0, "video": 0}
        self.frames_sent = {"audio": 0, "video": 0}
        self.data_messages = 0
        self.pair: PairInfo | None = None
        self.dtls = DtlsTrace()  # the handshake, for the report and a failure's log line
        self.listed = False  # the manager listed our server peer in the owner's room
        self.last_stats: dict[str, Any] = {}
        self._ice_servers = ice_servers
        self._pc: RTCPeerConnection | None = None
        self._t0 = time.monotonic()
        self._marks: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_candidates: list[Any] = []
        self._remote_candidate = asyncio.Event()
        self._remote_set = False
        self._closing = False
        self._closed = asyncio.Event()
        self._stats_lock = asyncio.Lock()
        self._received = 0  # packets the peer sent, as last seen by the watchdog
        self._heard_at = time.monotonic()  # when that count last grew
        self._negotiation_needed = False
        self._negotiating: asyncio.Task[Any] | None = None
        self._answer: asyncio.Future[str] | None = None
        self.negotiations = 0  # offers the server made and had answered

    # -- identity --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<MediaSession {self.id[:8]} {self.mode.name} {self.state}>"

    @property
    def label(self) -> str:
        """For log lines: session, mode, and the owner's room/peer when there is one."""
        who = f" room {self.owner.room_id} peer {self.owner.peer_id}" if self.owner else " anonymous"
        return f"session {self.id[:8]} ({self.mode.name},{who})"

    @property
    def pc(self) -> RTCPeerConnection | None:
        return self._pc

    @property
    def workers(self) -> Workers:
        """Where a mode runs CPU-heavy work off the event loop: ``await
        session.workers.run_in_thread(func, *args)`` (or ``run_in_process``), shared by the
        process's sessions (:mod:`.workers`)."""
        return self.manager.workers

    @property
    def connected(self) -> bool:
        return self.connected_at is not None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def elapsed_ms(self, mark: str | None = None) -> int | None:
        if mark is None:
            return int((time.monotonic() - self._t0) * 1000)
        at = self._marks.get(mark)
        return None if at is None else int((at - self._t0) * 1000)

    def _mark(self, name: str) -> None:
        self._marks.setdefault(name, time.monotonic())

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        log.info("%s: %s -> %s", self.label, self.state, state)
        self.state = state

    # -- tasks -----------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this session owns: cancelled and awaited by :meth:`close`."""
        task = asyncio.get_running_loop().create_task(coro, name=f"media-{self.id[:8]}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.label, task.get_name(), exc_info=task.exception())

    def transceiver_of(self, track: MediaStreamTrack) -> RTCRtpTransceiver | None:
        """The transceiver a received ``track`` came in on (None before the offer is applied)."""
        pc = self._pc
        return next((t for t in pc.getTransceivers() if t.receiver.track is track), None) if pc else None

    def drain(self, track: MediaStreamTrack) -> None:
        """Consume a received track nobody else reads, counting its frames."""
        self.spawn(self._drain(track), f"drain-{track.kind}")

    async def _drain(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames[kind] = self.frames.get(kind, 0) + 1

    # -- negotiation -----------------------------------------------------------------------------

    async def accept(self, offer_sdp: str) -> str:
        """Apply the client's offer and return the answer SDP (all server candidates included)."""
        # Log lines of this session, aiortc's tasks for it included, carry its context (logs.py).
        room_id, peer_id = self._owner_ids()
        with logs.bound(session=self.id, mode=self.mode.name, room=room_id, peer=peer_id, address=self.address):
            return await self._accept(offer_sdp)

    async def _accept(self, offer_sdp: str) -> str:
        self._set_state(SessionState.CONNECTING)
        self._mark("offer")
        pc = self._pc = RTCPeerConnection(rtc_configuration(self._ice_servers, max_bundle=self.mode.renegotiates))
        use_dtls(pc, CIPHERS, self.dtls.on_info)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("iceconnectionstatechange", self._on_ice_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except RtcError:
            raise
        except Exception as exc:  # aiortc raises many types for bad SDP; none is the server's fault
            raise InvalidRequest(f"The offer could not be applied: {_describe(exc)}") from exc
        self._remote_set = True
        if any(t.receiver.transport is None for t in pc.getTransceivers()) or (
            pc.sctp is not None and pc.sctp.transport is None
        ):  # check_offer_sdp refuses the offers known to do this; never go on without a transport
            raise InvalidRequest("The offer could not be applied: a media section has no transport.")
        udp = self.manager.udp
        if udp is not None and not gather_on(_ice_transports(pc), udp):
            raise CapacityExceeded(
                "This server's media ports (--udp-port, --udp-port-range) need the aiortc and aioice versions "
                "it was checked against; it cannot answer media offers.",
                retry_after=60,
            )
        await self.mode.after_remote_description(self)
        if self.via == Via.SIGNALING and "a=candidate:" not in offer_sdp and not self._pending_candidates:
            self._mark("awaiting-candidates")
            try:
                await asyncio.wait_for(self._remote_candidate.wait(), TRICKLE_GRACE_SECONDS)
            except asyncio.TimeoutError:
                log.info("%s: no candidate trickled in %.0f s; answering anyway", self.label, TRICKLE_GRACE_SECONDS)
        for candidate in self._pending_candidates:
            await self._add_candidate(candidate)
        self._pending_candidates.clear()
        try:
            answer = await pc.createAnswer()
            self._mark("gathering")
            await pc.setLocalDescription(answer)
        except PortsExhausted:
            raise
        except Exception as exc:
            if self._closing:
                raise
            raise InvalidRequest(f"No answer could be made for this offer: {_describe(exc)}") from exc
        self._mark("answer")
        self.spawn(self._watch(), "watchdog")
        log.info("%s: answered in %d ms", self.label, self.elapsed_ms("answer") or 0)
        return str(pc.localDescription.sdp)

    # -- renegotiation (offers from the server's side) --------------------------------------------

    def renegotiate(self) -> None:
        """Send the peer a new offer (the mode added or stopped tracks), once connected, through
        the session's signaling; calls while one is under way fold into one more after it. Only
        sessions opened by signaling can renegotiate (HTTP and WHIP have no channel back)."""
        if self.notify is None or self._closing:
            return
        self._negotiation_needed = True
        if self.connected and (self._negotiating is None or self._negotiating.done()):
            self._negotiating = self.spawn(self._negotiate(), "negotiate")

    async def _negotiate(self) -> None:
        pc = self._pc
        assert pc is not None and self.notify is not None
        while self._negotiation_needed and not self._closing:
            self._negotiation_needed = False
            try:
                await pc.setLocalDescription(await reoffer(pc))  # keeps what was agreed (browsers insist)
                self._answer = asyncio.get_running_loop().create_future()
                payload = {"sdp": pc.localDescription.sdp, "sessionId": self.id, **self.mode.signal_extras(self)}
                log.info("%s: sent an offer (renegotiation %d)", self.label, self.negotiations + 1)
                await self.notify({"type": "offer", "payload": payload})
                sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT_SECONDS)
                await pc.setRemoteDescription(RTCSessionDescription(sdp=_without_candidates(sdp), type="answer"))
            except asyncio.TimeoutError:
                log.warning("%s: no answer to the server's offer in %.0f s", self.label, ANSWER_TIMEOUT_SECONDS)
                self.manager.spawn(self.close(SessionEnd.NEGOTIATION_FAILED))
                return
            except Exception as exc:
                if self._closing:
                    return
                log.warning("%s: renegotiation failed: %s", self.label, _describe(exc))
                self.manager.spawn(self.close(SessionEnd.NEGOTIATION_FAILED))
                return
            finally:
                self._answer = None
            self.negotiations += 1

    def on_answer(self, payload: Any) -> None:
        """The peer's answer to the server's offer (``{sdp}``)."""
        sdp = payload.get("sdp") if isinstance(payload, dict) else None
        session_id = payload.get("sessionId") if isinstance(payload, dict) else None
        if session_id is not None and session_id != self.id:
            raise InvalidRequest(
                f"That answer is for an earlier session of yours (it has ended); this one is {self.id}."
            )
        if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
            raise InvalidRequest("An answer needs the SDP as 'sdp' (starting with 'v=0').")
        if len(sdp) > self.manager.config.max_signal_bytes:
            raise InvalidRequest(f"The SDP is larger than {self.manager.config.max_signal_bytes} bytes.")
        waiting = self._answer
        if waiting is None or waiting.done():
            raise InvalidRequest(f"{self.server_peer_id} sent no offer that waits for an answer.")
        waiting.set_result(sdp)

    async def add_candidate(self, payload: Any) -> None:
        """A trickled remote candidate (``None`` = end of candidates); queued until the offer is in."""
        candidate = parse_candidate(payload)
        self._remote_candidate.set()
        if not self._remote_set:
            self._pending_candidates.append(candidate)
            return
        await self._add_candidate(candidate)

    async def _add_candidate(self, candidate: Any) -> None:
        if self._pc is None or self._closing:
            return
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:  # an unusable candidate is the client's problem, never fatal
            log.info("%s: ignored a remote candidate: %s", self.label, _describe(exc))

    # -- aiortc events (sync handlers: the emitter would run coroutines as tasks nobody owns) ----

    def _on_track(self, track: MediaStreamTrack) -> None:
        log.info("%s: receiving %s track", self.label, track.kind)
        try:
            self.mode.on_track(self, track)
        except Exception:
            log.exception("%s: mode failed on a %s track; draining it", self.label, track.kind)
            self.drain(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        log.info("%s: data channel %r opened", self.label, channel.label)
        try:
            self.mode.on_datachannel(self, channel)
        except Exception:
            log.exception("%s: mode failed on data channel %r", self.label, channel.label)

    def _on_ice_state(self) -> None:
        if self._pc is None:
            return
        state = self._pc.iceConnectionState
        if state == "checking":
            self._mark("ice_checking")
        elif state == "completed":
            self._mark("ice_connected")

    def _on_connection_state(self) -> None:
        if self._pc is None or self._closing:
            return
        state = self._pc.connectionState
        if state == "connected" and not self.connected:
            self._mark("connected")
            self._heard_at = time.monotonic()
            self.connected_at = _wall_ms()
            self.pair = selected_pair(self._pc)
            self._set_state(SessionState.CONNECTED)
            connect_ms = self.elapsed_ms("connected") or 0
            self.manager.counters.setup.observe(self._marks["connected"] - self._t0)  # offer -> connected
            self.manager.rtc.emit(
                MEDIA_CONNECTED, MediaConnected(self.id, self.mode.name, *self._owner_ids(), connect_ms)
            )
            self.spawn(self.mode.on_connected(self), "on-connected")
            if self._negotiation_needed:
                self.renegotiate()
        elif state in ("failed", "closed"):
            ice_failed = self._pc.iceConnectionState == "failed"
            if self.connected and time.monotonic() - self._heard_at >= SILENCE_SECONDS:
                # It was connected, then went silent until ICE consent expired (RFC 7675, about
                # 30 s): the peer crashed, was killed or lost its network. Not a hangup.
                reason = SessionEnd.CONNECTION_LOST
            elif ice_failed:
                reason = SessionEnd.ICE_FAILED
            elif state == "failed":
                reason = SessionEnd.DTLS_FAILED
                log.warning("%s: DTLS handshake failed: %s", self.label, self.dtls.explain())
            else:
                reason = SessionEnd.PEER_CLOSED  # the peer closed DTLS (close_notify): it hung up
            self.manager.spawn(self.close(reason))

    def _owner_ids(self) -> tuple[str | None, str | None]:
        return (self.owner.room_id, self.owner.peer_id) if self.owner else (None, None)

    # -- deadlines -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        answered = time.monotonic()
        connect_deadline = answered + CONNECT_TIMEOUT_SECONDS
        ice_deadline = answered + self.manager.config.ice_start_timeout_seconds
        heard = False
        end_deadline = self._t0 + self.options.max_seconds
        while not self._closing:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            reason: str | None = None
            if not heard and not self.connected and self._pc is not None:
                heard = heard_from_peer(self._pc)
            if now >= end_deadline:
                reason = SessionEnd.MAX_DURATION
            elif not self.connected and not heard and now >= ice_deadline:
                # An offer whose peer never does ICE (it vanished, or it never meant to connect)
                # frees its slot in seconds, not after the full connect timeout.
                reason = SessionEnd.ICE_TIMEOUT
            elif not self.connected and now >= connect_deadline:
                reason = SessionEnd.CONNECT_TIMEOUT
            elif self.connected:
                received = _received_packets(self._pc) if self._pc is not None else 0
                if received != self._received:
                    self._received, self._heard_at = received, now
                reason = await self.mode.tick(self)
            if reason is not None:
                self.manager.spawn(self.close(reason))
                return

    # -- stats and report ------------------------------------------------------------------------

    async def refresh_stats(self) -> dict[str, Any]:
        """Read the peer connection's counters into :attr:`last_stats` (kept after close)."""
        pc = self._pc
        if pc is None or self.closed:
            return self.last_stats
        async with self._stats_lock:
            try:
                self.last_stats = await _collect_stats(pc)
            except Exception:  # stats are best effort: a transport may be closing under us
                log.debug("%s: stats failed", self.label, exc_info=True)
            if self.pair is None and self.connected:
                self.pair = selected_pair(pc)
        return self.last_stats

    def timings(self) -> dict[str, int | None]:
        def between(a: str, b: str) -> int | None:
            if a in self._marks and b in self._marks:
                return int((self._marks[b] - self._marks[a]) * 1000)
            return None

        return {
            "iceGatheringMs": between("gathering", "answer"),
            "iceConnectionMs": between("answer", "ice_connected"),
            "dtlsMs": between("ice_connected", "connected"),
            "connectMs": between("offer", "connected"),
        }

    def verdict(self) -> str:
        return verdict(
            state=self.state,
            close_reason=self.close_reason,
            pair=self.pair,
            connect_ms=self.timings()["connectMs"],
            connect_timeout_s=CONNECT_TIMEOUT_SECONDS,
        )

    def report(self) -> dict[str, Any]:
        """The session report served by ``GET /rtc/sessions/{id}`` (and sent by the probe)."""
        pc = self._pc
        room_id, peer_id = self._owner_ids()
        end = self.closed_at or _wall_ms()
        return {
            "sessionId": self.id,
            "mode": self.mode.name,
            "via": self.via,
            "state": self.state,
            "closeReason": self.close_reason,
            "roomId": room_id,
            "peerId": peer_id,
            "createdAt": self.created_at,
            "connectedAt": self.connected_at,
            "closedAt": self.closed_at,
            "durationMs": end - self.created_at,
            "connectionState": pc.connectionState if pc is not None else "new",
            "iceConnectionState": pc.iceConnectionState if pc is not None else "new",
            "timings": self.timings(),
            "candidatePair": self.pair.to_wire() if self.pair else None,
            "dtls": self.dtls.to_wire(),
            "stats": {
                **self.last_stats,
                "framesReceived": dict(self.frames),
                "framesSent": dict(self.frames_sent),
                "dataMessages": self.data_messages,
            },
            "verdict": self.verdict(),
            **self.mode.report(),
        }

    # -- ending ----------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """End the session for ``reason``; safe to call twice and from any task."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        self._set_state(SessionState.CLOSING)
        try:
            await self.refresh_stats_before_close()
            await self._cancel_tasks()
            try:
                await self.mode.close(self, reason)
            except Exception:
                log.exception("%s: finalizing the %s mode failed", self.label, self.mode.name)
            await self._close_pc()
        finally:
            self.closed_at = _wall_ms()
            self._set_state(SessionState.CLOSED)
            self._closed.set()
            self._log_summary(reason)
            await self.manager.release(self)
            self.manager.rtc.emit(
                MEDIA_CLOSED,
                MediaClosed(self.id, self.mode.name, *self._owner_ids(), reason, self.closed_at - self.created_at),
            )

    def _log_summary(self, reason: str) -> None:
        """The one line every session ends with: mode, duration, bytes, pair, why it ended (with
        the same as fields in JSON logs)."""
        stats = self.last_stats
        duration_ms = (self.closed_at or _wall_ms()) - self.created_at
        pair = self.pair
        pair_text = (
            f"{pair.remote.type} {pair.remote.address}:{pair.remote.port} <-> {pair.local.type} "
            f"{pair.local.address}:{pair.local.port} {pair.local.protocol}"
            if pair is not None
            else "none"
        )
        received, sent = stats.get("bytesReceived", 0), stats.get("bytesSent", 0)
        room_id, peer_id = self._owner_ids()
        log.info(
            "%s: ended (%s) after %.1f s: %s bytes in, %s bytes out, pair %s",
            self.label,
            reason,
            duration_ms / 1000,
            received,
            sent,
            pair_text,
            extra={
                "session": self.id,
                "mode": self.mode.name,
                "room": room_id,
                "peer": peer_id,
                "address": self.address,
                "fields": {
                    "event": "media_session_ended",
                    "reason": reason,
                    "durationMs": duration_ms,
                    "bytesReceived": received,
                    "bytesSent": sent,
                    "packetsReceived": stats.get("packetsReceived", 0),
                    "packetsSent": stats.get("packetsSent", 0),
                    "pair": pair.to_wire() if pair is not None else None,
                    "via": self.via,
                },
            },
        )

    async def refresh_stats_before_close(self) -> None:
        if self._pc is not None and self._remote_set:
            try:
                await asyncio.wait_for(self.refresh_stats(), 2.0)
            except (asyncio.TimeoutError, Exception):
                log.debug("%s: final stats unavailable", self.label)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_pc(self) -> None:
        pc = self._pc
        if pc is None:
            return
        try:
            await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_SECONDS)
        except Exception as exc:
            # aiortc's close() stops at the first transport that fails; stop every one it left
            log.warning(
                "%s: closing the peer connection failed (%s); stopping its transports", self.label, _describe(exc)
            )
            await _stop_transports(pc)
        # drain tasks end when their tracks end, which pc.close() causes; wait for the stragglers
        await self._cancel_tasks()


async def _stop_transports(pc: RTCPeerConnection) -> None:
    """Stop every DTLS and ICE transport of ``pc`` (their sockets), whatever state it is in."""
    dtls_list = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_list.append(pc.sctp.transport)
    for dtls in dtls_list:
        if dtls is None:
            continue
        for transport in (dtls, dtls.transport):
            try:
                await asyncio.wait_for(transport.stop(), CLOSE_TIMEOUT_SECONDS)
            except Exception:  # best effort: the next one must still be stopped
                log.debug("stopping %r failed", transport, exc_info=True)


def _without_candidates(sdp: str) -> str:
    """A renegotiation's answer without candidates: the bundle's ICE is up, and aioice would pair
    every candidate again."""
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return text or type(exc).__name__


def _dtls_transports(pc: RTCPeerConnection) -> list[Any]:
    out: list[Any] = []
    dtls_list = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_list.append(pc.sctp.transport)
    for dtls in dtls_list:
        if dtls is not None and all(dtls is not seen for seen in out):
            out.append(dtls)
    return out


def _received_packets(pc: RTCPeerConnection) -> int:
    """Packets received on the session's transports, for the silence watchdog (aiortc keeps the
    counters private: :func:`._aiortc_compat.transport_stats`).

    When they cannot be read (an aiortc the compat module was not checked against), a value that
    differs at every call: the watchdog then counts the peer as always heard, so a hangup is never
    called ``connection_lost`` on a guess; ICE and DTLS states still end the session."""
    total = 0
    for dtls in _dtls_transports(pc):
        stats = transport_stats(dtls)
        if stats is None:
            return time.monotonic_ns()
        for stat in stats:
            total += stat.packetsReceived
    return total


async def _collect_stats(pc: RTCPeerConnection) -> dict[str, Any]:
    report = await pc.getStats()
    inbound = {"packetsReceived": 0, "packetsLost": 0}
    outbound = {"packetsSent": 0, "bytesSent": 0}
    rtts: list[float] = []
    for stat in report.values():
        kind = getattr(stat, "type", "")
        if kind == "inbound-rtp":
            inbound["packetsReceived"] += stat.packetsReceived
            inbound["packetsLost"] += max(0, stat.packetsLost)
        elif kind == "outbound-rtp":
            outbound["packetsSent"] += stat.packetsSent
            outbound["bytesSent"] += stat.bytesSent
        elif kind == "remote-inbound-rtp" and stat.roundTripTime:
            rtts.append(stat.roundTripTime * 1000)
    transport: dict[str, int] = {"bytesReceived": 0, "bytesSent": 0, "transportPacketsReceived": 0}
    for dtls in _dtls_transports(pc):
        for stat in transport_stats(dtls) or ():  # aiortc keeps these private; zeros when unreadable
            transport["bytesReceived"] += stat.bytesReceived
            transport["bytesSent"] += stat.bytesSent
            transport["transportPacketsReceived"] += stat.packetsReceived
    total = inbound["packetsReceived"] + inbound["packetsLost"]
    return {
        **inbound,
        **outbound,
        **transport,
        "lossPercent": round(100.0 * inbound["packetsLost"] / total, 2) if total else 0.0,
        "rtcpRttMs": round(sum(rtts) / len(rtts), 1) if rtts else None,
    }
