"""A lean WebSocket and HTTP/1.1 client for the load generator.

The load generator shares a small machine with the server it measures, so it must spend far
less CPU per message than the server does, or it measures itself. aiohttp's client is general
(futures per message, masking, a reader queue); this one is an ``asyncio.Protocol`` that parses
frames in place, calls a plain callback per text frame, and writes pre-built frames. Client
frames carry the all-zero mask key: RFC 6455 requires a mask, and zero is a valid one, so the
payload needs no XOR pass. Only what the benchmark needs: text frames, ping/pong, close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["HttpClient", "WsClient", "open_ws", "text_frame"]

_ZERO_MASK = b"\x00\x00\x00\x00"
_CLOSE_FRAME = b"\x88\x82" + _ZERO_MASK + b"\x03\xe8"  # close, code 1000


def text_frame(payload: bytes | str) -> bytes:
    """One masked (zero key), final text frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = b"\x81\xfe" + struct.pack("!H", n)
    else:
        head = b"\x81\xff" + struct.pack("!Q", n)
    return head + _ZERO_MASK + payload


OnText = Callable[["WsClient", bytes], None]


class WsClient(asyncio.Protocol):
    """One client WebSocket. ``on_text(client, payload)`` runs for every text frame."""

    def __init__(
        self, host: str, port: int, path: str, on_text: OnText | None = None, offer_deflate: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.on_text: OnText | None = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshake_done = False
        self.buf = bytearray()
        self.tag: Any = None  # the caller's per-connection state
        self.received = 0
        # Browsers offer permessage-deflate on every WebSocket; a server that accepts compresses
        # each frame it sends (RSV1 set), which this client then inflates.
        self.offer_deflate = offer_deflate
        self.inflater: Any = None
        # Frames sent from inside on_text are gathered and written once per read: fewer syscalls.
        self._pending: list[bytes] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                + (
                    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                    if self.offer_deflate
                    else ""
                )
                + "\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection to {self.path} lost before the handshake"))
            self.opened.exception()  # retrieved: open_ws may have given up on it already
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b"permessage-deflate" in buf[:end].lower():
                self.inflater = zlib.decompressobj(-15)
            del buf[: end + 4]
            if b" 101 " not in status:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(f"handshake refused: {status.decode(errors='replace')}"))
                    self.opened.exception()
                if self.transport is not None:
                    self.transport.close()
                return
            self.handshake_done = True
            self.opened.set_result(None)
        pending: list[bytes] = []
        self._pending = pending
        try:
            self._parse(buf)
        finally:
            self._pending = None
            if pending and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(pending))

    def _parse(self, buf: bytearray) -> None:
        pos = 0
        size = len(buf)
        on_text = self.on_text
        try:
            while size - pos >= 2:
                b0 = buf[pos]
                n = buf[pos + 1] & 0x7F
                head = 2
                if n == 126:
                    if size - pos < 4:
                        break
                    n = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 4
                elif n == 127:
                    if size - pos < 10:
                        break
                    n = struct.unpack_from("!Q", buf, pos + 2)[0]
                    head = 10
                end = pos + head + n
                if end > size:
                    break
                opcode = b0 & 0x0F
                if opcode == 1:
                    self.received += 1
                    if b0 & 0x40 and self.inflater is not None:  # RSV1: compressed; the context spans frames
                        payload = self.inflater.decompress(bytes(buf[pos + head : end]) + b"\x00\x00\xff\xff")
                        if on_text is not None:
                            on_text(self, payload)
                    elif on_text is not None:
                        on_text(self, bytes(buf[pos + head : end]))
                elif opcode == 9 and self.transport is not None:  # ping -> pong
                    body = bytes(buf[pos + head : end])
                    self.transport.write(bytes((0x8A, 0x80 | len(body))) + _ZERO_MASK + body)
                elif opcode == 8 and self.transport is not None:
                    self.transport.close()
                pos = end
        finally:
            if pos:
                del buf[:pos]

    # -- sending ----------------------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """Write pre-built frame bytes (from :func:`text_frame`)."""
        if self._pending is not None:
            self._pending.append(frame)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_text(self, text: bytes | str) -> None:
        self.send_frame(text_frame(text))

    async def close(self, timeout: float = 2.0) -> None:
        """Send a close frame and wait (bounded) for the server to drop the connection."""
        if self.transport is None:
            return
        if not self.transport.is_closing():
            self.transport.write(_CLOSE_FRAME)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_ws(
    host: str, port: int, path: str, on_text: OnText | None = None, timeout: float = 20.0, offer_deflate: bool = False
) -> WsClient:
    """Connect and finish the WebSocket handshake."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(host, port, path, on_text, offer_deflate), host, port), timeout
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), timeout)
    except BaseException:
        client.abort()
        raise
    return client


class HttpClient:
    """Keep-alive HTTP/1.1 POSTs of JSON over one connection (one request at a time)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n"
            ).encode()
            + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None
