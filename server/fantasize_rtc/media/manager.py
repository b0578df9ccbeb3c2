"""The media manager: admits, indexes and ends every server-side media session of this process.

It also is the handler of the server peers ``@echo @record @probe @play``: offers, trickled
candidates and ``bye`` signalled to them arrive here, and so does every ``peer:disconnected`` so
the sessions a departed peer owned end with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiortc.sdp import SessionDescription

from ..counters import MediaCounters
from ..errors import (
    CapacityExceeded,
    Draining,
    InvalidRequest,
    RateLimited,
    RtcError,
    SessionNotFound,
    Unauthorized,
)
from ..protocol import LeaveReason, SessionEnd, Via, error_message
from ._aiortc_compat import host_addresses
from .events import RECORDING_SAVED, RecordingSaved
from .modes import ModeRegistry
from .modes import modes as default_modes
from .recordings import FORMATS, RecordingStore
from .session import MediaSession, Mode, Notify, Owner, SessionOptions, new_session_id
from .sfu import Forwarding
from .udp import PortRange, UdpMux, open_host_sockets
from .workers import Workers

if TYPE_CHECKING:
    from ..server import RtcServer

__all__ = ["MediaManager", "parse_options"]

log = logging.getLogger(__name__)


#: Reports of ended sessions stay readable this long (the newest 256 of them).
ENDED_KEEP = 256
#: Messages from one peer to one server peer that may wait to be handled (its rate limit, 50/s,
#: keeps it far below this).
INBOX_MAX = 256


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false.")
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{key} must be a number.")
    if not low <= value <= high:
        raise InvalidRequest(f"{key} must be from {low:g} to {high:g}.")
    return float(value)


def parse_options(body: dict[str, Any], max_session_seconds: float) -> SessionOptions:
    """Options of an offer request (JSON body, signaled offer payload, or WHIP query string)."""
    fmt = body.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}.")
    audio, video = _bool(body, "audio", True), _bool(body, "video", True)
    width = int(_number(body, "width", 640, 16, 1920))
    height = int(_number(body, "height", 480, 16, 1080))
    return SessionOptions(
        audio=audio,
        video=video,
        format=fmt,
        max_seconds=_number(body, "maxSeconds", max_session_seconds, 0.1, max_session_seconds),
        probe_seconds=_number(body, "probeSeconds", 3.0, 0.2, 60.0),
        width=width - width % 2,
        height=height - height % 2,
        fps=int(_number(body, "fps", 30, 1, 30)),
        passthrough=None if body.get("passthrough") is None else _bool(body, "passthrough", False),
        record=_bool(body, "record", False),
    )


def check_offer_sdp(sdp: Any, limit: int, *, bundled: bool = False) -> str:
    """Checks before any socket is opened: a string, not too large, SDP that could connect, and
    (``bundled``: a mode that renegotiates) every section in one BUNDLE group.

    aiortc applies offers that can never connect (no DTLS fingerprint) and some it cannot handle
    (a BUNDLE group naming a media section that is not there: its connect task then fails, and
    ``close()`` leaves the other transports' sockets open). Those are refused here instead."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidRequest("sdp must be a non-empty string (the offer's SDP).")
    if len(sdp) > limit and len(sdp.encode()) > limit:
        raise InvalidRequest(f"The SDP is larger than {limit} bytes.")
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidRequest("The SDP must start with 'v=0'.")
    if "\nm=" not in sdp:
        raise InvalidRequest("The SDP offers no media or data section ('m=' line).")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises many types on bad SDP; none is the server's fault
        raise InvalidRequest(f"The SDP could not be parsed: {str(exc)[:120] or type(exc).__name__}") from exc
    mids: list[str] = []
    for media in description.media:
        if media.kind not in ("audio", "video", "application"):
            raise InvalidRequest(f"The offer has a media section of unknown kind {media.kind[:16]!r}.")
        if media.dtls is None or not media.dtls.fingerprints:
            raise InvalidRequest("The offer has no DTLS fingerprint (a=fingerprint): it could never connect.")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidRequest("The offer has no ICE credentials (a=ice-ufrag, a=ice-pwd): it could never connect.")
        mid = media.rtp.muxId
        if mid:
            if mid in mids:
                raise InvalidRequest(f"The offer has two media sections with mid {mid[:32]!r}.")
            mids.append(mid)
    bundles = [{str(item) for item in group.items} for group in description.group if group.semantic == "BUNDLE"]
    if any(not bundle <= set(mids) for bundle in bundles):
        raise InvalidRequest("The offer's BUNDLE group names a media section (mid) that is not in the offer.")
    if bundled and not any(set(mids) <= bundle for bundle in bundles):
        raise InvalidRequest(
            "This mode needs every media section in one BUNDLE group (a=group:BUNDLE), as browsers send."
        )
    return sdp


class MediaManager:
    """Sessions of this process, their limits, and the server peers' signaling."""

    def __init__(self, rtc: RtcServer, modes: ModeRegistry | None = None) -> None:
        self.rtc = rtc
        #: The modes sessions can be opened in (``fantasize_rtc.media.modes`` unless given).
        self.modes = modes if modes is not None else default_modes
        self.config = rtc.config
        self.store = RecordingStore(Path(self.config.recordings_dir))
        #: The media UDP port (a mux) or port range; None: sessions take random ports (aiortc's way).
        self.udp: UdpMux | PortRange | None = None
        self._sessions: dict[str, MediaSession] = {}
        self._ended: OrderedDict[str, tuple[Owner | None, dict[str, Any]]] = OrderedDict()
        self._signaling: dict[tuple[str, str, str], MediaSession] = {}
        self._listed: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inboxes: dict[tuple[str, str, str], deque[tuple[str, str, dict[str, Any]]]] = {}
        self._closing = False
        #: Sessions opened, refused and ended, setup times, media totals (``/metrics``).
        self.counters = MediaCounters()
        #: Thread and process pools for modes' CPU-heavy work (started on first use).
        self.workers = Workers()
        #: Group calls and WHEP: what sessions forward to each other (:mod:`.sfu`).
        self.forwarding = Forwarding(rtc)
        rtc.on(RECORDING_SAVED, self._count_recording)

    def _count_recording(self, saved: RecordingSaved) -> None:
        self.counters.recorded_bytes += saved.size

    async def begin(self) -> None:
        """Before serving: count what the recordings folder holds, and open the media UDP port (or
        ready the range) when the config names one, saying what is announced and must be open."""
        await self.store.load_async()  # off the loop: it scans files a dead process left unfinished
        ports = self.config.udp_ports
        if ports is None:
            return
        addresses = host_addresses()
        self.udp, lines = await open_host_sockets(ports, self.config.public_ips, self.config.ice_servers, addresses)
        for line in lines:
            (log.warning if "WARNING" in line else log.info)("%s", line.replace("WARNING ", ""))

    def end(self) -> None:
        """After the sessions closed: close the media UDP port."""
        if isinstance(self.udp, UdpMux):
            self.udp.close()

    # -- bookkeeping -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[MediaSession]:
        return list(self._sessions.values())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the manager owns (awaited by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media task failed", exc_info=task.exception())

    def get(self, session_id: str) -> tuple[Owner | None, MediaSession | None, dict[str, Any]]:
        """(owner, live session or None, report) of a live or recently ended session."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session.owner, session, session.report()
        ended = self._ended.get(session_id)
        if ended is None:
            raise SessionNotFound(f"No media session {session_id[:64]!r} (or it ended long ago).")
        return ended[0], None, ended[1]

    def describe(self) -> dict[str, Any]:
        """What ``GET /rtc/media`` says: how a client reaches the server's own peers (the UDP ports,
        the addresses announced) and how busy they are. Nothing secret: every answer's SDP says
        the same addresses."""
        udp = self.udp
        ports = self.config.udp_ports
        mode = "mux" if isinstance(udp, UdpMux) else "range" if isinstance(udp, PortRange) else "random"
        addresses = list(udp.endpoints) if isinstance(udp, UdpMux) else host_addresses()
        return {
            "udp": {
                "mode": mode,
                "ports": list(ports) if ports else None,
                "addresses": addresses,
                "announced": [{"address": a.address, "type": a.type} for a in (udp.announced if udp else ())],
                "dropped": udp.dropped if isinstance(udp, UdpMux) else 0,
            },
            "sessions": len(self._sessions),
            "maxSessions": self.config.max_media_sessions,
        }

    def ended_reports(self) -> list[tuple[Owner | None, dict[str, Any]]]:
        """(owner, report) of the recently ended sessions, oldest first."""
        return list(self._ended.values())

    def owned_by(self, owner: Owner) -> list[MediaSession]:
        return [s for s in self._sessions.values() if s.owner == owner]

    def of_member(self, room_id: str, peer_id: str) -> list[MediaSession]:
        """Live sessions of the room member ``peer_id`` (they end when it leaves)."""
        return [
            s
            for s in self._sessions.values()
            if s.owner is not None and s.owner.member and s.owner.room_id == room_id and s.owner.peer_id == peer_id
        ]

    def anonymous_from(self, address: str) -> int:
        return sum(1 for s in self._sessions.values() if s.owner is None and s.address == address)

    # -- opening ---------------------------------------------------------------------------------

    def create(
        self,
        *,
        mode: str | Mode,
        sdp: Any,
        options: SessionOptions,
        owner: Owner | None,
        via: str,
        notify: Notify | None = None,
        address: str | None = None,
    ) -> MediaSession:
        """Validate and admit a session. Synchronous on purpose: every check happens before any
        peer connection (and so any socket) exists, and the slot is taken before the next await.

        ``address`` is the client's network address (anonymous sessions are limited per address)."""
        try:
            session = self._admit(
                mode=mode, sdp=sdp, options=options, owner=owner, via=via, notify=notify, address=address
            )
        except RtcError as err:
            refused = self.counters.refused
            refused[err.code] = refused.get(err.code, 0) + 1
            raise
        opened = self.counters.opened
        opened[session.mode.name] = opened.get(session.mode.name, 0) + 1
        return session

    def _admit(
        self,
        *,
        mode: str | Mode,
        sdp: Any,
        options: SessionOptions,
        owner: Owner | None,
        via: str,
        notify: Notify | None,
        address: str | None,
    ) -> MediaSession:
        config = self.config
        if owner is None and config.auth_secret and not config.allow_anonymous_media:
            raise Unauthorized(
                "This server requires a peer token, a connect JWT or the admin key for media sessions: "
                "send Authorization: Bearer <token>."
            )
        made = mode if isinstance(mode, Mode) else self.modes.create(mode)  # InvalidRequest: not registered
        check_offer_sdp(sdp, config.max_signal_bytes, bundled=made.renegotiates)
        if self._closing or self.rtc.draining:
            raise Draining("The server is restarting; send the offer again (another server takes it).")
        limit = config.max_media_sessions
        if len(self._sessions) >= limit:
            log.warning("media session refused: all %d sessions in use", limit)
            raise CapacityExceeded(f"All {limit} media sessions are in use; try again later.", retry_after=5)
        per_address = config.max_anonymous_sessions_per_address
        if owner is None and address and per_address and self.anonymous_from(address) >= per_address:
            log.warning("anonymous media session from %s refused: it has %d already", address, per_address)
            raise RateLimited(
                f"This address already has {per_address} anonymous media sessions; end one first "
                "(or connect to a room and send its token)."
            )
        if owner is not None and len(self.owned_by(owner)) >= self.config.max_sessions_per_peer:
            raise RateLimited(
                f"Peer {owner.peer_id!r} already has {self.config.max_sessions_per_peer} media sessions; end one first."
            )
        if made.writes_recordings:
            self.store.check_quota(self.config.recordings_quota_bytes)
        session = MediaSession(
            self,
            session_id=new_session_id(),
            mode=made,
            options=options,
            owner=owner,
            via=via,
            server_peer_id="@" + made.name,
            ice_servers=self.rtc.ice_servers_for(owner.peer_id if owner else "@" + made.name),
            notify=notify,
            address=address,
        )
        self._sessions[session.id] = session
        return session

    async def start(self, session: MediaSession, sdp: str) -> str:
        """Answer the session's offer; on any failure the session is closed and the error raised."""
        try:
            answer = await session.accept(sdp)
        except RtcError:
            await session.close(SessionEnd.REJECTED)
            raise
        except BaseException as exc:
            ended_meanwhile = session.closed or session.close_reason is not None
            await session.close(SessionEnd.REJECTED)
            if ended_meanwhile and isinstance(exc, Exception):
                # closed under us (shutdown, DELETE by the admin): aiortc raises its own errors then
                raise CapacityExceeded(
                    "The session was closed while its offer was being answered.", retry_after=5
                ) from exc
            raise
        if session.owner is not None and session.owner.member and not session.closed:
            await self._list(session)
        return answer

    async def open(
        self,
        *,
        mode: str | Mode,
        sdp: Any,
        options: SessionOptions,
        owner: Owner | None,
        via: str,
        address: str | None = None,
    ) -> tuple[MediaSession, str]:
        """``create`` + ``start``: the one-round-trip path of ``POST /rtc/offer`` and WHIP."""
        session = self.create(mode=mode, sdp=sdp, options=options, owner=owner, via=via, address=address)
        return session, await self.start(session, sdp)

    async def _list(self, session: MediaSession) -> None:
        # While a member's session lives, its server peer shows up in the room snapshot.
        assert session.owner is not None
        key = (session.owner.room_id, session.server_peer_id)
        self._listed[key] = self._listed.get(key, 0) + 1
        session.listed = True
        if self._listed[key] == 1:
            await self.rtc.add_server_peer(*key)

    async def release(self, session: MediaSession) -> None:
        """Called once by a closing session: free its slot and indexes, keep its report."""
        self._sessions.pop(session.id, None)
        self.counters.ended(session.mode.name, session.close_reason or "closed", session.last_stats)
        if session.owner is not None:
            key3 = (session.owner.room_id, session.owner.peer_id, session.server_peer_id)
            if self._signaling.get(key3) is session:
                del self._signaling[key3]
        self._ended[session.id] = (session.owner, session.report())
        while len(self._ended) > ENDED_KEEP:
            self._ended.popitem(last=False)
        if session.listed and session.owner is not None:
            key = (session.owner.room_id, session.server_peer_id)
            self._listed[key] -= 1
            if self._listed[key] <= 0:
                del self._listed[key]
                try:
                    await self.rtc.remove_server_peer(*key)
                except Exception:  # the room may be gone already; the listing went with it
                    log.debug("unlisting %s from room %s failed", key[1], key[0], exc_info=True)

    # -- the server peers ------------------------------------------------------------------------

    async def on_server_peer_message(self, room_id: str, server_peer_id: str, message: dict[str, Any]) -> None:
        """Hub handler for ``@echo @record @probe @play`` (see :meth:`RtcServer.register_server_peer`).

        It returns at once: the message is handled by a task of the manager, after the earlier
        ones from the same peer to the same server peer (an offer, then its candidates, in
        order). The sender's relay never waits for an answer to be made or an old session to
        close (which can take seconds)."""
        peer_id = message.get("fromPeerId") if message.get("type") == "signal" else message.get("peerId")
        key = (room_id, str(peer_id), server_peer_id)
        inbox = self._inboxes.get(key)
        if inbox is None and not self._sessions and message.get("type") == "peer:disconnected":
            return  # every departure is told to every server peer: with no session, nothing to end
        if inbox is None:
            inbox = self._inboxes[key] = deque()
            self.spawn(self._work_inbox(key, inbox))
        if len(inbox) >= INBOX_MAX:
            log.warning(
                "%s: dropped a message from %s in room %s (its last %d wait)",
                server_peer_id,
                peer_id,
                room_id,
                INBOX_MAX,
            )
            return
        inbox.append((room_id, server_peer_id, message))

    async def _work_inbox(self, key: tuple[str, str, str], inbox: deque[tuple[str, str, dict[str, Any]]]) -> None:
        try:
            while inbox:
                room_id, server_peer_id, message = inbox.popleft()
                try:
                    await self._handle(room_id, server_peer_id, message)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug on one message must not stop the ones behind it
                    log.exception("%s failed on a message in room %s", server_peer_id, room_id)
        finally:
            if self._inboxes.get(key) is inbox:
                del self._inboxes[key]

    async def _handle(self, room_id: str, server_peer_id: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "peer:disconnected":
            reason = SessionEnd.owner_gone(str(message.get("reason", LeaveReason.LEFT)))
            for owned in self.of_member(room_id, str(message.get("peerId"))):
                if owned.server_peer_id == server_peer_id:
                    log.info("%s: owner gone (%s)", owned.label, reason)
                    self.spawn(owned.close(reason))
            return
        if kind != "signal":
            return
        signal = message.get("signal") or {}
        owner = Owner(room_id, str(message.get("fromPeerId")))
        key = (room_id, owner.peer_id, server_peer_id)
        stype, payload = signal.get("type"), signal.get("payload")
        session: MediaSession | None
        if stype == "offer":
            owner_key = await self.rtc.member_owner_key(room_id, owner.peer_id)
            if owner_key is None:
                return  # the sender left before its offer got here
            owner = Owner(room_id, owner.peer_id, owner_key)
            old = self._signaling.pop(key, None)
            if old is not None:
                await old.close(SessionEnd.RENEGOTIATED)
            try:
                body = payload if isinstance(payload, dict) else {}
                session = self.create(
                    mode=server_peer_id[1:],
                    sdp=body.get("sdp"),
                    options=parse_options(body, self.config.max_session_seconds),
                    owner=owner,
                    via=Via.SIGNALING,
                    notify=self._notifier(owner, server_peer_id),
                )
            except RtcError as err:
                await self._tell_error(owner, server_peer_id, err)
                return
            self._signaling[key] = session
            self.spawn(self._answer(session, body["sdp"]))
        elif stype == "candidate":
            session = self._signaling.get(key)
            if session is None:
                return  # late candidates of an ended session are harmless
            try:
                await session.add_candidate(payload)
            except RtcError as err:
                await self._tell_error(owner, server_peer_id, err)
        elif stype == "answer":
            session = self._signaling.get(key)
            try:
                if session is None:  # none yet, or it ended while the peer answered
                    raise InvalidRequest(f"{server_peer_id} sent no offer that waits for an answer.")
                session.on_answer(payload)
            except RtcError as err:
                await self._tell_error(owner, server_peer_id, err)
        elif stype == "bye":
            session = self._signaling.get(key)
            if session is not None:
                self.spawn(session.close(SessionEnd.BYE))
        else:
            log.debug("%s in room %s: ignored %r signal from %s", server_peer_id, room_id, stype, owner.peer_id)

    async def _answer(self, session: MediaSession, sdp: str) -> None:
        assert session.owner is not None
        try:
            answer = await self.start(session, sdp)
        except RtcError as err:
            await self._tell_error(session.owner, session.server_peer_id, err)
            return
        await self.rtc.signal_from_server_peer(
            session.owner.room_id,
            session.server_peer_id,
            session.owner.peer_id,
            {
                "type": "answer",
                "payload": {"sdp": answer, "sessionId": session.id, **session.mode.signal_extras(session)},
            },
        )

    def _notifier(self, owner: Owner, server_peer_id: str) -> Notify:
        async def notify(signal: dict[str, Any]) -> None:
            await self.rtc.signal_from_server_peer(owner.room_id, server_peer_id, owner.peer_id, signal)

        return notify

    async def _tell_error(self, owner: Owner, server_peer_id: str, err: RtcError) -> None:
        log.info(
            "%s refused an offer from peer %s in room %s: %s", server_peer_id, owner.peer_id, owner.room_id, err.message
        )
        await self.rtc.send_to_peer(
            owner.room_id, owner.peer_id, error_message(err.code, err.message, fromPeerId=server_peer_id)
        )

    # -- shutdown --------------------------------------------------------------------------------

    async def say_bye(self, deadline: float) -> dict[str, int]:
        """The drain's first step (``web._drain``, ``notify``): take no new sessions, and tell the
        owner of each session made through signaling, while its socket is still open: its server
        peer sends ``bye`` (payload ``{reason: "shutdown", sessionId}``). Sessions of ``POST
        /rtc/offer`` and WHIP have no signaling channel: their peer connection closing, next, is
        what their clients see."""
        self._closing = True
        sessions = [s for s in self._sessions.values() if s.via == Via.SIGNALING and s.owner and not s.closed]
        if not sessions:
            return {}
        sent = await asyncio.gather(*(self._bye(s) for s in sessions))
        return {"byes sent": sum(sent)}

    async def _bye(self, session: MediaSession) -> bool:
        owner = session.owner
        assert owner is not None
        bye = {"type": "bye", "payload": {"reason": SessionEnd.SHUTDOWN, "sessionId": session.id}}
        try:
            return await self.rtc.signal_from_server_peer(owner.room_id, session.server_peer_id, owner.peer_id, bye)
        except Exception as exc:  # the backend may be down: the session still closes
            log.info("%s: no bye sent for shutdown (%s)", session.label, exc)
            return False

    async def finish(self, deadline: float) -> dict[str, int]:
        """The drain's second step (``finish``): close every session for ``shutdown``, finishing
        recordings into playable files, and wait for that until ``deadline`` (``time.monotonic()``).
        The closes run as the manager's tasks: past the deadline they go on, and :meth:`close`
        (at cleanup) waits for them."""
        self._closing = True
        sessions = list(self._sessions.values())
        if not sessions:
            return {}
        log.info("closing %d media sessions for shutdown", len(sessions))
        tasks = [self.spawn(s.close(SessionEnd.SHUTDOWN)) for s in sessions]
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        closed = [s for s in sessions if s.closed]
        recordings = [s for s in closed if s.report().get("recording", {}).get("saved")]
        return {"media sessions closed": len(closed), "recordings finished": len(recordings)}

    async def close(self) -> None:
        """Close every session (finalizing recordings), then wait for the manager's tasks."""
        self._closing = True
        sessions = list(self._sessions.values())
        if sessions:
            log.info("closing %d media sessions for shutdown", len(sessions))
        await asyncio.gather(*(s.close(SessionEnd.SHUTDOWN) for s in sessions), return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.workers.close()  # after the sessions: nothing calls into the pools any more
