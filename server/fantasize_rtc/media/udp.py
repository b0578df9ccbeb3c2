"""The server's media on known UDP ports: one port for every session (a mux), or a port range.

aiortc's peers each bind a random UDP port per local address, which a server behind NAT or a
firewall cannot forward. With ``--udp-port N`` every server-side session shares one socket per
local address on port N, as mediasoup's WebRtcServer and Pion's UDP mux do: a datagram is handed
to its session by what it is (RFC 7983's first byte) and where it comes from:

- a STUN binding request, by the ICE username fragment (``<our ufrag>:<theirs>``) in its USERNAME,
  which also teaches the mux the sender's address;
- a STUN response, by its transaction id (the session sent the request);
- anything else (DTLS, SRTP, SCTP over DTLS, STUN indications), by the remote address: learned
  from the requests above and from what the session sends.

What no session claims is dropped and counted, never parsed further. A session's routes go when
its transports close. With ``--udp-port-range A-B`` each session binds one free port of the range
on every local address instead (no mux); a full range is :class:`PortsExhausted` (503).

The sockets are asyncio's; how they reach aioice's ICE agent is ``_aiortc_compat.gather_on``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import CapacityExceeded

__all__ = [
    "Announced",
    "HostSockets",
    "MuxEndpoint",
    "PortRange",
    "PortsExhausted",
    "UdpMux",
    "parse_stun",
    "open_host_sockets",
    "stun_binding",
]

log = logging.getLogger(__name__)

_MAGIC = b"\x21\x12\xa4\x42"
_USERNAME = 0x0006
_XOR_MAPPED_ADDRESS = 0x0020
_MAPPED_ADDRESS = 0x0001
#: Outstanding transactions remembered per socket; the oldest are forgotten past this (a request
#: that is never answered must not grow memory).
MAX_TRANSACTIONS = 65_536
#: Receive buffer asked for each mux socket: every session's media arrives on it.
RECEIVE_BUFFER = 4 * 1024 * 1024


class PortsExhausted(CapacityExceeded):
    """Every port of ``--udp-port-range`` is taken by a session."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(f"All media ports ({first}-{last}) are in use; try again later.", retry_after=5)


# -- STUN, as much as routing needs (RFC 8489) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StunHead:
    """The routing facts of a STUN message: class (0 request, 1 indication, 2 success, 3 error),
    transaction id, and for a request the local part of its USERNAME (our ufrag)."""

    cls: int
    transaction_id: bytes
    ufrag: str | None


def parse_stun(data: bytes) -> StunHead | None:
    """The head of a STUN message, or None when ``data`` is not one (or is malformed). Never raises."""
    if len(data) < 20 or data[0] > 1 or data[4:8] != _MAGIC:
        return None
    kind, length = struct.unpack_from("!HH", data)
    if length % 4 or 20 + length > len(data):
        return None
    cls = ((kind >> 7) & 0x2) | ((kind >> 4) & 0x1)
    ufrag = None
    if cls == 0:
        offset, end = 20, 20 + length
        while offset + 4 <= end:
            attr, size = struct.unpack_from("!HH", data, offset)
            value = data[offset + 4 : offset + 4 + size]
            if len(value) < size:
                return None
            if attr == _USERNAME:
                ufrag = value.decode("utf-8", "replace").partition(":")[0]
                break
            offset += 4 + size + (-size % 4)
    return StunHead(cls, bytes(data[8:20]), ufrag)


def stun_binding() -> tuple[bytes, bytes]:
    """(request bytes, transaction id) of a bare STUN binding request."""
    transaction_id = os.urandom(12)
    return struct.pack("!HH", 0x0001, 0) + _MAGIC + transaction_id, transaction_id


def mapped_address(data: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    """The (XOR-)MAPPED-ADDRESS of a STUN binding success for ``transaction_id``, or None."""
    head = parse_stun(data)
    if head is None or head.cls != 2 or head.transaction_id != transaction_id:
        return None
    (length,) = struct.unpack_from("!H", data, 2)
    offset, end = 20, 20 + length
    found = None
    while offset + 4 <= end:
        attr, size = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + size]
        if attr in (_XOR_MAPPED_ADDRESS, _MAPPED_ADDRESS) and len(value) >= 8:
            family, port = value[1], struct.unpack_from("!H", value, 2)[0]
            raw = value[4 : 8 if family == 1 else 20]
            if attr == _XOR_MAPPED_ADDRESS:
                port ^= 0x2112
                key = _MAGIC + transaction_id
                raw = bytes(b ^ key[i] for i, b in enumerate(raw))
            try:
                found = (str(ipaddress.ip_address(raw)), port)
            except ValueError:
                return None
            if attr == _XOR_MAPPED_ADDRESS:
                return found
        offset += 4 + size + (-size % 4)
    return found


# -- the mux -----------------------------------------------------------------------------------------


class _Receiver(Protocol):
    """What the mux hands datagrams to: aioice's ``StunProtocol`` (an asyncio datagram protocol)."""

    def connection_made(self, transport: Any) -> None: ...

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class MuxedTransport(asyncio.DatagramTransport):
    """One session's view of a shared mux socket: what it sends goes out of that socket (and
    teaches the mux where its replies will come from); closing it drops its routes."""

    def __init__(self, endpoint: MuxEndpoint, receiver: _Receiver) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._receiver = receiver
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        # The hot path (every SRTP packet): a 2-tuple as aioice passes it, no copies.
        self._endpoint.sent(self._receiver, data, addr if len(addr) == 2 else (addr[0], addr[1]))

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._endpoint.detach(self._receiver)
        asyncio.get_running_loop().call_soon(self._receiver.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._endpoint.address, self._endpoint.port)
        return default  # no "socket": it is shared, not this session's to configure


class MuxEndpoint(asyncio.DatagramProtocol):
    """The mux socket of one local address, and its routes."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0
        self._by_ufrag: dict[str, _Receiver] = {}
        self._by_addr: dict[tuple[str, int], _Receiver] = {}
        self._by_transaction: dict[bytes, _Receiver] = {}
        self._owned: dict[_Receiver, tuple[str, set[tuple[str, int]], set[bytes]]] = {}

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # IPv4 addresses come as (host, port); IPv6 ones as (host, port, flowinfo, scope_id).
        remote = addr if len(addr) == 2 else (addr[0], addr[1])
        if data and data[0] < 2:  # STUN (RFC 7983): route by what the message says
            head = parse_stun(data)
            receiver = self._stun_receiver(head, remote) if head is not None else None
        else:  # DTLS, SRTP, SCTP: by where it comes from
            receiver = self._by_addr.get(remote)
        if receiver is None:
            self.dropped += 1
            return
        receiver.datagram_received(data, remote)

    def _stun_receiver(self, head: StunHead, remote: tuple[str, int]) -> _Receiver | None:
        if head.cls >= 2:  # a response to a request one of our sessions sent
            receiver = self._by_transaction.pop(head.transaction_id, None)
            if receiver is not None:
                owned = self._owned.get(receiver)
                if owned is not None:
                    owned[2].discard(head.transaction_id)
                return receiver
            return self._by_addr.get(remote)
        if head.cls == 0:  # a connectivity check, addressed by our ufrag
            receiver = self._by_ufrag.get(head.ufrag or "")
            if receiver is not None:
                self._learn(receiver, remote)
            return receiver
        return self._by_addr.get(remote)  # an indication

    def error_received(self, exc: Exception) -> None:
        log.debug("mux socket %s:%d: %s", self.address, self.port, exc)

    # the sessions' side

    def attach(self, receiver: _Receiver, ufrag: str) -> MuxedTransport:
        """A session's receiver (aioice's protocol for this address) with its ICE ufrag."""
        self._by_ufrag[ufrag] = receiver
        self._owned[receiver] = (ufrag, set(), set())
        transport = MuxedTransport(self, receiver)
        receiver.connection_made(transport)
        return transport

    def sent(self, receiver: _Receiver, data: bytes, remote: tuple[Any, ...]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._by_addr.get(remote) is not receiver:
            self._learn(receiver, remote)
        if data and data[0] < 2:
            head = parse_stun(data)
            if head is not None and head.cls == 0:
                self._remember(receiver, head.transaction_id)
        transport.sendto(data, remote)

    def _learn(self, receiver: _Receiver, remote: tuple[str, int]) -> None:
        owned = self._owned.get(receiver)
        if owned is None:
            return
        self._by_addr[remote] = receiver
        owned[1].add(remote)

    def _remember(self, receiver: _Receiver, transaction_id: bytes) -> None:
        owned = self._owned.get(receiver)
        if owned is None:
            return
        if len(self._by_transaction) >= MAX_TRANSACTIONS:  # forget the oldest unanswered one
            oldest = next(iter(self._by_transaction))
            self._by_transaction.pop(oldest)
        self._by_transaction[transaction_id] = receiver
        owned[2].add(transaction_id)

    def detach(self, receiver: _Receiver) -> None:
        owned = self._owned.pop(receiver, None)
        if owned is None:
            return
        ufrag, remotes, transactions = owned
        if self._by_ufrag.get(ufrag) is receiver:
            del self._by_ufrag[ufrag]
        for remote in remotes:
            if self._by_addr.get(remote) is receiver:
                del self._by_addr[remote]
        for transaction_id in transactions:
            if self._by_transaction.get(transaction_id) is receiver:
                del self._by_transaction[transaction_id]

    def routes(self) -> int:
        """Routes held (ufrags, addresses, transactions): zero once every session closed."""
        return len(self._by_ufrag) + len(self._by_addr) + len(self._by_transaction) + len(self._owned)


@dataclass(frozen=True, slots=True)
class Announced:
    """An address announced as the server's candidate besides its own interfaces': ``type`` is
    ``host`` for ``--public-ip`` (Janus's 1:1 NAT mapping) and ``srflx`` for what a STUN server saw."""

    address: str
    type: str
    related_address: str | None = None


class HostSockets(Protocol):
    """Where a session's host candidates live (``_aiortc_compat.gather_on`` asks this)."""

    #: Addresses announced besides the local ones, with the same port.
    announced: tuple[Announced, ...]
    #: Whether each session should also ask the configured STUN server (per-session ports only).
    per_session_stun: bool

    async def bind(
        self, addresses: list[str], make_receiver: Callable[[], _Receiver], ufrag: str
    ) -> list[tuple[str, int, _Receiver]]:
        """(address, port, receiver) for each local address a socket is now open for."""
        ...


class UdpMux:
    """``--udp-port``: one socket per local address on one port, shared by every session."""

    per_session_stun = False

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoints: dict[str, MuxEndpoint] = {}
        self.announced: tuple[Announced, ...] = ()

    async def start(self, addresses: Iterable[str]) -> None:
        """Bind the port on every address (one that cannot be bound is skipped and logged)."""
        loop = asyncio.get_running_loop()
        for address in addresses:
            endpoint = MuxEndpoint(address, self.port)
            try:
                await loop.create_datagram_endpoint(lambda e=endpoint: e, local_addr=(address, self.port))  # type: ignore[misc]
            except OSError as exc:
                log.warning("media UDP port %d cannot be bound on %s: %s", self.port, address, exc)
                continue
            if endpoint.transport is not None:
                sock = endpoint.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.endpoints[address] = endpoint
        if not self.endpoints:
            raise OSError(f"media UDP port {self.port} could not be bound on any address")

    def close(self) -> None:
        for endpoint in self.endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        self.endpoints.clear()

    @property
    def dropped(self) -> int:
        return sum(e.dropped for e in self.endpoints.values())

    def routes(self) -> int:
        return sum(e.routes() for e in self.endpoints.values())

    async def bind(
        self, addresses: list[str], make_receiver: Callable[[], _Receiver], ufrag: str
    ) -> list[tuple[str, int, _Receiver]]:
        out = []
        for address in addresses:
            endpoint = self.endpoints.get(address)
            if endpoint is None:
                continue  # an address that appeared after startup: not served on the mux
            receiver = make_receiver()
            endpoint.attach(receiver, ufrag)
            out.append((address, self.port, receiver))
        return out


@dataclass
class PortRange:
    """``--udp-port-range``: each session binds one free port of the range on every address."""

    first: int
    last: int
    announced: tuple[Announced, ...] = ()
    per_session_stun: bool = True
    _next: int = field(default=0, repr=False)

    async def bind(
        self, addresses: list[str], make_receiver: Callable[[], _Receiver], ufrag: str
    ) -> list[tuple[str, int, _Receiver]]:
        loop = asyncio.get_running_loop()
        size = self.last - self.first + 1
        # Read once: concurrent sessions move _next while this one awaits its binds, and reading it
        # at every step skipped ports (three sessions on three free ports: the third found none).
        start = self._next
        for step in range(size):
            port = self.first + (start + step) % size
            bound: list[tuple[str, int, _Receiver]] = []
            try:
                for address in addresses:
                    receiver = make_receiver()
                    await loop.create_datagram_endpoint(lambda r=receiver: r, local_addr=(address, port))  # type: ignore[misc]
                    bound.append((address, port, receiver))
            except OSError as exc:  # taken (by a session of ours or anyone): close what we got, try the next
                log.debug("port range: %d not usable (%s)", port, exc)
                for _, _, receiver in bound:
                    transport = getattr(receiver, "transport", None)
                    if transport is not None:
                        transport.close()
                continue
            self._next = (start + step + 1) % size
            return bound
        raise PortsExhausted(self.first, self.last)


# -- startup -----------------------------------------------------------------------------------------


class _Waiter:
    """A one-off receiver for the answer to the mux's own STUN request."""

    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.answer: asyncio.Future[tuple[str, int] | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        pass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.answer.done():
            self.answer.set_result(mapped_address(data, self.transaction_id))

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def ask_stun(endpoint: MuxEndpoint, server: tuple[str, int], timeout: float = 3.0) -> tuple[str, int] | None:
    """What ``server`` (a STUN server) sees as this mux socket's address: the NAT's mapping of the
    media port. None when it does not answer (three tries)."""
    transport = endpoint.transport
    if transport is None:
        return None
    for attempt in range(3):
        request, transaction_id = stun_binding()
        waiter = _Waiter(transaction_id)
        endpoint._by_transaction[transaction_id] = waiter  # answered like any session's request
        try:
            transport.sendto(request, server)
            return await asyncio.wait_for(asyncio.shield(waiter.answer), timeout / 3 * (attempt + 1) / 2)
        except asyncio.TimeoutError:
            continue
        finally:
            endpoint._by_transaction.pop(transaction_id, None)
    return None


def _stun_servers(ice_servers: Iterable[Any]) -> list[tuple[str, int]]:
    out = []
    for server in ice_servers:
        for url in server.urls:
            if url.lower().startswith("stun:"):
                host, _, port = url[5:].partition("?")[0].rpartition(":")
                if not host:
                    host, port = url[5:], "3478"
                with contextlib.suppress(ValueError):
                    out.append((host.strip("[]"), int(port)))
    return out


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_private or ip.is_link_local or ip.is_loopback


async def _resolve(names: Iterable[str]) -> list[str]:
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for name in names:
        try:
            out.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise OSError(f"--public-ip {name!r} does not resolve: {exc}") from exc
        for info in infos:
            address = str(info[4][0])
            if address not in out:
                out.append(address)
    return out


async def open_host_sockets(
    ports: tuple[int, int], public_ips: Iterable[str], ice_servers: Iterable[Any], addresses: list[str]
) -> tuple[UdpMux | PortRange, list[str]]:
    """The sockets provider for ``ports`` (one port: a mux bound now; a range: bound per session),
    what it announces, and the lines that say so at startup (the caller logs them)."""
    first, last = ports
    public = await _resolve(public_ips)
    lines: list[str] = []
    sockets: UdpMux | PortRange
    if first == last:
        mux = UdpMux(first)
        await mux.start(addresses)
        sockets = mux
        lines.append(
            f"media: every server-side session on UDP port {first} (bound on {', '.join(mux.endpoints)}); "
            f"open UDP {first} inbound"
        )
    else:
        sockets = PortRange(first, last)
        lines.append(
            f"media: each server-side session takes a UDP port from {first}-{last} on "
            f"{', '.join(addresses) or 'no address'}; open UDP {first}-{last} inbound ({last - first + 1} sessions "
            "at most)"
        )
    announced = [Announced(address, "host") for address in public]
    if not public and isinstance(sockets, UdpMux):
        for server in _stun_servers(ice_servers):
            endpoint = next((e for e in sockets.endpoints.values() if ":" not in e.address), None)
            if endpoint is None:
                break
            try:
                resolved = (await _resolve([server[0]]))[0], server[1]
            except OSError as exc:
                lines.append(f"media: STUN server {server[0]} does not resolve ({exc})")
                continue
            seen = await ask_stun(endpoint, resolved)
            if seen is None:
                lines.append(f"media: STUN server {server[0]}:{server[1]} did not answer from UDP port {first}")
                continue
            if seen[0] in sockets.endpoints:
                lines.append(
                    f"media: STUN server {server[0]} sees this server at {seen[0]}:{seen[1]}: no NAT in between"
                )
            else:
                announced.append(Announced(seen[0], "srflx", endpoint.address))
                lines.append(
                    f"media: STUN server {server[0]} sees UDP port {first} as {seen[0]}:{seen[1]}: announcing it"
                )
                if seen[1] != first:
                    lines.append(
                        f"media: WARNING the NAT maps port {first} to {seen[1]}: forward UDP {first} to this host "
                        "with the same port, or clients will not reach it"
                    )
            break
    sockets.announced = tuple(announced)
    shown = [a.address for a in announced] or [a for a in addresses if not _is_private(a)]
    if announced:
        lines.append(f"media: announcing {', '.join(a.address for a in announced)} besides the local addresses")
    if not shown:
        lines.append(
            "media: WARNING only private addresses are announced ("
            + (", ".join(addresses) or "none")
            + "): clients outside this network cannot reach the server's own peers; set --public-ip "
            "(or an --ice-server stun: URL)"
        )
    return sockets, lines
