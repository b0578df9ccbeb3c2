"""Behind a reverse proxy: the client's address and scheme from ``X-Forwarded-For`` and
``X-Forwarded-Proto``, believed only when the TCP peer is a trusted proxy (``--trusted-proxy``).

The middleware hands the routes a clone of the request whose ``remote`` is the client's address
and whose ``scheme`` is the client's, so every use of ``request.remote`` (per-address limits, log
lines) and ``request.secure`` (the connect cookie) sees the client without knowing about proxies.
A request from any other peer passes through untouched: its forwarding headers are ignored (anyone
can send them), never an error.

The standard ``Forwarded`` header (RFC 7239) is deliberately not read. A proxy rewrites only the
header it is configured for and passes the other through from the client unchanged (nginx's
``$proxy_add_x_forwarded_for`` leaves a client's ``Forwarded: for=...`` alone), so believing both
would let a client pick its own address through the one the proxy does not touch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

__all__ = ["TrustedProxies", "proxy_middleware"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The schemes ``X-Forwarded-Proto`` may set; anything else is a proxy's mistake and is ignored.
_SCHEMES = frozenset({"http", "https"})


def parse_address(text: str) -> _Address | None:
    """An address as proxies write it in ``X-Forwarded-For``: ``203.0.113.7``, ``2001:db8::1``,
    and the forms some add a port to (``203.0.113.7:5000``, ``[2001:db8::1]:5000``); None for
    anything else (``unknown``, a name, garbage). IPv4-mapped IPv6 addresses (what a dual-stack
    socket reports for an IPv4 peer) become the IPv4 address, so one network matches both."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks whose forwarding headers are believed, and how they are read."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    def trusts_peer(self, peer: str) -> bool:
        address = parse_address(peer)
        return address is not None and self.trusts(address)

    def client_address(self, forwarded_for: Iterable[str]) -> str | None:
        """The client's address from the ``X-Forwarded-For`` values (in header order) a trusted
        peer sent; None when they name nobody believable (then the peer is the client).

        Each proxy appends the address it got the request from, so the header reads
        ``client-written..., client, proxy1, proxy2`` and only the part a trusted proxy wrote can be
        believed. Walking from the right: a trusted address is a proxy of ours, whose own entry
        to its left is believed too; the first untrusted address is the client. When every entry
        is trusted, the left-most one is the client (it is inside our networks, as nginx's
        ``real_ip_recursive`` decides); an entry that is no address stops the walk at the last
        trusted one (whoever wrote it cannot be told apart from the client writing garbage)."""
        entries = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
        believed: _Address | None = None
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                break
            if not self.trusts(address):
                return str(address)
            believed = address
        return None if believed is None else str(believed)

    @staticmethod
    def scheme(forwarded_proto: Iterable[str]) -> str | None:
        """The scheme in the last ``X-Forwarded-Proto`` value: the one the nearest proxy set (a
        proxy that appends rather than replaces leaves what the client sent to its left)."""
        values = [entry.strip().lower() for value in forwarded_proto for entry in value.split(",")]
        last = values[-1] if values else ""
        return last if last in _SCHEMES else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def proxy_middleware(networks: Iterable[str]) -> Any:
    """A middleware giving the handler the client's address and scheme when the request came from
    one of ``networks`` (see the module's docstring)."""
    proxies = TrustedProxies(networks)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        if peer is None or not proxies.trusts_peer(peer):
            return await handler(request)
        headers = request.headers
        remote = proxies.client_address(headers.getall("X-Forwarded-For", ()))
        scheme = proxies.scheme(headers.getall("X-Forwarded-Proto", ()))
        if remote is None and scheme is None:
            return await handler(request)
        # A clone, not the request changed in place: aiohttp offers exactly this for proxies, and
        # the connection's own request (which aiohttp's access log and connection guards see) stays
        # the TCP peer's. Nothing has read the body yet (this middleware is the outermost), which
        # clone requires.
        clone = request.clone(remote=remote or peer, scheme=scheme or request.scheme)
        return await handler(clone)

    return middleware
