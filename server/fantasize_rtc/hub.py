"""The delivery hub: this process's live channels (WebSockets, waiting polls) and server peers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .backends import Envelope

__all__ = ["Channel", "Hub", "PollChannel", "ServerPeerHandler"]

log = logging.getLogger(__name__)

#: Receives every message addressed to a server peer: (room_id, to_server_peer_id, message).
ServerPeerHandler = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class Channel(Protocol):
    """A live way to reach one peer now."""

    kind: str

    def send(self, text: str) -> bool:
        """Take one message for the peer, without waiting (a socket queues it and writes what a
        loop pass queued at once); False if the channel is gone: the message was not taken."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class PollChannel:
    """A long-poll request waiting for its first message; it takes exactly one batch.

    ``alive`` says whether the request can still be answered: a poll whose client went away (it
    aborted, its network dropped) takes nothing, so the message waits in the outbox for the next
    poll instead of being reported delivered and written to a dead connection."""

    kind = "poll"

    def __init__(self, alive: Callable[[], bool] | None = None) -> None:
        self._future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._alive = alive

    def alive(self) -> bool:
        return not self._future.done() and (self._alive is None or self._alive())

    def send(self, text: str) -> bool:
        if not self.alive():
            return False
        self._future.set_result([text])
        return True

    async def close(self, code: int, reason: str) -> None:
        if not self._future.done():
            self._future.set_result([])

    async def wait(self, timeout: float) -> list[str]:
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except asyncio.TimeoutError:
            if self._future.done():  # a message raced the timeout: keep it
                return self._future.result()
            self._future.cancel()
            return []


class Hub:
    """Maps (room, peer) to the channel that reaches it in this process."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, str], Channel] = {}
        self._server_peers: dict[str, ServerPeerHandler] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def attach(self, room_id: str, peer_id: str, channel: Channel) -> Channel | None:
        """Make ``channel`` the live one for the peer; returns the one it replaces."""
        key = (room_id, peer_id)
        old = self._channels.get(key)
        self._channels[key] = channel
        return old if old is not channel else None

    def detach(self, room_id: str, peer_id: str, channel: Channel | None = None) -> Channel | None:
        key = (room_id, peer_id)
        current = self._channels.get(key)
        if current is None or (channel is not None and current is not channel):
            return None
        del self._channels[key]
        return current

    def channels(self) -> list[tuple[tuple[str, str], Channel]]:
        """Every live channel of this process with its (room, peer)."""
        return list(self._channels.items())

    def channel_kinds(self) -> list[str]:
        """The kind (``ws``, ``poll``) of every live channel of this process."""
        return [channel.kind for channel in self._channels.values()]

    def channel(self, room_id: str, peer_id: str) -> Channel | None:
        return self._channels.get((room_id, peer_id))

    def has_local(self, room_id: str, peer_id: str) -> bool:
        return (room_id, peer_id) in self._channels or peer_id in self._server_peers

    def push_channel(self, room_id: str, peer_id: str, text: str) -> bool:
        """Hand ``text`` to the peer's live channel here; False when it has none (or it is gone)."""
        channel = self._channels.get((room_id, peer_id))
        if channel is None:
            return False
        if channel.send(text):
            if channel.kind == "poll":
                self.detach(room_id, peer_id, channel)
            return True
        self.detach(room_id, peer_id, channel)
        return False

    async def push_local(self, room_id: str, peer_id: str, envelope: Envelope) -> bool:
        """Hand a message to the peer's live channel or, for ``@...`` ids, the server peer."""
        if self.push_channel(room_id, peer_id, envelope.text):
            return True
        handler = self._server_peers.get(peer_id)
        if handler is not None:
            try:
                await handler(room_id, peer_id, envelope.message)
            except Exception:  # a server peer's bug must not break the sender's relay
                log.exception("server peer %s failed on a message in room %s", peer_id, room_id)
            return True
        return False

    # -- server peers ---------------------------------------------------------------------------

    def register_server_peer(self, peer_id: str, handler: ServerPeerHandler) -> None:
        self._server_peers[peer_id] = handler

    def unregister_server_peer(self, peer_id: str) -> None:
        self._server_peers.pop(peer_id, None)

    def server_peer_ids(self) -> list[str]:
        return list(self._server_peers)

    async def tell_server_peers(self, room_id: str, message: dict[str, Any]) -> None:
        """Hand ``message`` to every server peer (what ``push_local`` does for each, without the
        channel lookup: server peers have no channels)."""
        for peer_id, handler in list(self._server_peers.items()):
            try:
                await handler(room_id, peer_id, message)
            except Exception:  # a server peer's bug must not break the departure
                log.exception("server peer %s failed on a message in room %s", peer_id, room_id)

    def server_peer(self, peer_id: str) -> ServerPeerHandler | None:
        return self._server_peers.get(peer_id)

    async def close_all(self, code: int, reason: str, *, kind: str | None = None) -> int:
        """Detach and close every live channel (of ``kind`` only, e.g. ``"poll"``, when given);
        returns how many."""
        keys = [key for key, channel in self._channels.items() if kind is None or channel.kind == kind]
        channels = [self._channels.pop(key) for key in keys]
        for channel in channels:
            try:
                await channel.close(code, reason)
            except Exception:  # closing is best effort at shutdown
                log.debug("closing a channel failed", exc_info=True)
        return len(channels)
