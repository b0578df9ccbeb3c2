"""A peer's WebSocket as a hub channel: frames written at once, or queued without waiting and
written once per loop pass where that saves writes (a socket sent several frames in one pass)."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import weakref
from bisect import bisect_left
from typing import Protocol

from aiohttp import web

from ..counters import TransportCounters
from ..protocol import CloseCode

__all__ = [
    "SEND_BUFFER_LIMIT",
    "SOCKETS_KEY",
    "WRITE_BATCH_KEY",
    "SocketLike",
    "WebSocketChannel",
    "WriteBatch",
    "text_frame",
]

log = logging.getLogger("fantasize_rtc.web")

#: A peer whose socket holds this much unsent data (it stopped reading) is closed with CloseCode.TOO_SLOW (4002); what
#: could not be handed over waits in its outbox for its next connection.
SEND_BUFFER_LIMIT = 4 * 1024 * 1024


_PACK_LEN2 = struct.Struct("!BBH").pack


_PACK_LEN3 = struct.Struct("!BBQ").pack


def text_frame(text: str) -> bytes:
    """A server's text frame (unmasked, RFC 6455 section 5.2) of ``text``."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return _PACK_LEN2(0x81, 126, n) + data
    return _PACK_LEN3(0x81, 127, n) + data


#: While the server keeps up (a pass of the loop has read at most SHORT_PASS frames), a frame's
#: relay waits at most MAX_HOLD seconds for the rest of its pass: a read that brings a burst goes
#: out in slices instead of after its last frame. A longer pass means the server is behind: then
#: everything queued waits for the end of the pass and goes out in one write per socket, which is
#: what keeps a saturated relay fast (BENCHMARKS.md, issue 19). 50 us is two or three frames' work
#: (0.1 ms was four when a frame cost more; the shorter hold measured a little lower at one pair).
MAX_HOLD = 0.00005
SHORT_PASS = 64


class WriteBatch:
    """Flushes, once per pass of the event loop, every socket that queued frames in that pass:
    one callback for all of them instead of one per socket and message.

    Batching pays where a socket is sent several frames in one pass (one write instead of several);
    where every socket gets one, it saves no write and only delays (many pairs, each signalling a
    little). So a pass writes each socket's first frame at once (:attr:`eager`) and queues only what
    follows it to the same socket; a pass where that happened batches the next one whole, and a
    batched pass where no socket took two frames in one write lets the next write at once again.

    It also counts what the sockets write and times it: :meth:`received` notes when a frame was
    read, and the flush after it counts, for every frame it writes, the time since the oldest
    frame read in that pass (``TransportCounters.relay_latency``): the relay latency as a peer sees
    it, less the network, at the cost of one clock read per pass."""

    __slots__ = ("_dirty", "_in_pass", "_loop", "_received", "_scheduled", "coalesced", "counters", "eager", "passes")

    def __init__(self, counters: TransportCounters | None = None) -> None:
        self.counters = counters or TransportCounters()
        self._dirty: list[WebSocketChannel] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._received = 0.0
        self._in_pass = 0  # frames read in this pass of the loop, after its first
        #: Write each socket's first frame of the pass as it is sent (the last pass's batching
        #: saved no write, or there was none).
        self.eager = True
        #: A socket took several frames in one write in this pass (or would have, eagerly).
        self.coalesced = False
        #: Passes of the loop so far: a channel notes the one it last wrote at once in.
        self.passes = 0

    def add(self, channel: WebSocketChannel) -> None:
        self._dirty.append(channel)
        if not self._scheduled:
            self._schedule()

    def received(self, at: float) -> None:
        """A frame was read at ``at`` (``time.monotonic()``), before it is handled."""
        self.counters.frames_in += 1
        first = self._received
        if not first:
            self._received = at
            if not self._scheduled:  # a flush follows every note, so a note is never stale
                self._schedule()
            return
        self._in_pass = in_pass = self._in_pass + 1
        if in_pass <= SHORT_PASS and at - first > MAX_HOLD:
            # A burst, and the server keeps up: what the frames handled so far queued goes out
            # now, not after the rest. (A long pass means it is behind: then one write each.)
            self._write()
            self._received = at

    def _schedule(self) -> None:
        self._scheduled = True
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._in_pass = 0
        self._write()
        self.eager = not self.coalesced  # the next pass batches only if this one saved writes
        self.coalesced = False
        self.passes += 1

    def wrote(self) -> None:
        """A channel wrote a frame at once (:attr:`eager`): count it and its latency. The pass
        ends with a flush even when no frame was read in it (a message the server sent of its
        own), so that the socket's next frame, later, is a first one again."""
        self.counters.frames_out += 1
        self._observe(1)
        if not self._scheduled:
            self._schedule()

    def _observe(self, written: int) -> None:
        """``written`` frames went out now: their latency since the pass's first frame was read
        (Histogram.observe() for ``written`` samples at once, inlined)."""
        if self._received:
            latency = time.monotonic() - self._received
            histogram = self.counters.relay_latency
            histogram.counts[bisect_left(histogram.bounds, latency)] += written
            histogram.sum += latency * written
            histogram.count += written

    def _write(self) -> None:
        dirty, self._dirty = self._dirty, []
        written = 0
        for channel in dirty:
            written += channel.flush()
        if written > len(dirty):
            self.coalesced = True  # a socket took several frames in one write
        if written:
            self._observe(written)
        self._received = 0.0


class SocketLike(Protocol):
    """What a channel (and a peer's frames) use of a server WebSocket: aiohttp's
    (``_aiohttp_compat.FrameWebSocketResponse``) or the lean one (``web._lean.LeanSocket``)."""

    @property
    def closed(self) -> bool: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool:
        """Send a close frame and wait for the client's; False when it was closed already."""

    def begin_close(self, code: int, message: bytes) -> asyncio.Future[bool]:
        """:meth:`close`, without waiting: cancelling the future cuts the connection."""


class WebSocketChannel:
    """A peer's WebSocket as a hub channel.

    :meth:`send` does not wait: it frames the text (a server's frames are unmasked, RFC 6455
    section 5.2) and queues it, and everything queued for the socket during one pass of the event
    loop goes out in one write. A relay that reads 40 signals from one socket in one pass then
    writes them to the other with one system call instead of 40 (BENCHMARKS.md). Every frame to
    the peer goes through here, so they keep their order; :meth:`flush` runs before a close.
    """

    kind = "ws"
    __slots__ = ("__weakref__", "_queued", "_size", "_transport", "_wrote_in", "batch", "closing", "ws")

    def __init__(self, ws: SocketLike, transport: asyncio.Transport, batch: WriteBatch) -> None:
        self.ws = ws
        self.closing: asyncio.Future[bool] | None = None
        self._transport = transport
        self.batch = batch
        self._queued: list[bytes] = []
        self._size = 0
        self._wrote_in = -1  # the batch's pass this socket last wrote a frame at once in

    def send(self, text: str) -> bool:
        if self.closing is not None or self.ws.closed or self._transport.is_closing():
            return False
        data = text.encode()
        n = len(data)
        # text_frame, inlined (this runs for every message; the size is needed below too)
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = _PACK_LEN2(0x81, 126, n)
        else:
            header = _PACK_LEN3(0x81, 127, n)
        size = self._size + n
        if size + self._transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            log.warning("closing a WebSocket that stopped reading (%d bytes unsent)", size)
            self.begin_close(CloseCode.TOO_SLOW, "too slow: messages were not read")
            return False
        queued = self._queued
        if not queued:
            batch = self.batch
            if batch.eager:
                if self._wrote_in != batch.passes:  # its first frame in this pass: it waits for nothing
                    self._wrote_in = batch.passes
                    self._transport.write(header + data)
                    batch.wrote()
                    return True
                batch.coalesced = True  # a second one: it waits for the pass's end, and so does the next pass
            batch.add(self)
        queued.append(header + data)
        self._size = size
        return True

    def flush(self) -> int:
        """Write what is queued now; returns how many frames went out."""
        queued = self._queued
        if not queued:
            return 0
        self._queued = []
        self._size = 0
        # A close frame went out meanwhile (the client closed): nothing may follow it.
        if self.ws.closed or self._transport.is_closing():
            return 0
        self._transport.write(queued[0] if len(queued) == 1 else b"".join(queued))
        n = len(queued)
        self.batch.counters.frames_out += n
        return n

    async def close(self, code: int, reason: str) -> None:
        self.begin_close(code, reason)

    def begin_close(self, code: int, reason: str) -> None:
        # The close handshake waits for the client's reply; whoever closes (the reaper, another
        # peer's connect) must not wait on a slow or hostile client, so it runs as a task that the
        # socket's own handler awaits before it returns.
        if self.closing is None and not self.ws.closed:
            self.flush()
            self.closing = self.ws.begin_close(code, reason.encode()[:120])


SOCKETS_KEY: web.AppKey[weakref.WeakSet[WebSocketChannel]] = web.AppKey("sockets")


WRITE_BATCH_KEY: web.AppKey[WriteBatch] = web.AppKey("write_batch")
