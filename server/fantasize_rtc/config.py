"""Server configuration: one frozen dataclass, with every default documented in the README."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .errors import InvalidRequest

__all__ = ["CliFlag", "IceServer", "RtcConfig", "cli_flags"]

_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


@dataclass(frozen=True, slots=True)
class IceServer:
    """One entry of ``iceServers``: URLs plus optional TURN credentials."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> IceServer:
        """Parse ``stun:host:port`` or ``turn:user:pass@host:port?transport=udp``.

        Credentials may be percent-encoded. The credential part is taken off the URL that
        browsers receive and moved to ``username`` / ``credential``.
        """
        text = text.strip()
        scheme = next((s for s in _ICE_SCHEMES if text.lower().startswith(s)), None)
        if scheme is None:
            raise InvalidRequest(f"ICE server URL must start with one of {', '.join(_ICE_SCHEMES)}: {text!r}")
        rest = text[len(scheme) :]
        username = credential = None
        if "@" in rest:
            creds, rest = rest.rsplit("@", 1)
            user, sep, password = creds.partition(":")
            if not sep or not user:
                raise InvalidRequest(f"ICE server credentials must be user:password@host: {text!r}")
            username, credential = unquote(user), unquote(password)
        _check_ice_address(scheme, rest, text)
        return cls(urls=(scheme + rest,), username=username, credential=credential)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


def _check_ice_address(scheme: str, rest: str, text: str) -> None:
    """``host[:port][?transport=udp|tcp]`` as RFC 7064/7065 allow it, or one sentence on what is wrong
    (at startup, rather than every browser and every server-side session failing later)."""
    address, sep, query = rest.partition("?")
    if sep and (not scheme.startswith("turn") or query.lower() not in ("transport=udp", "transport=tcp")):
        raise InvalidRequest(f"ICE server URL: only turn:/turns: take a query, ?transport=udp or tcp: {text!r}")
    if address.startswith("["):
        host, bracket, port_part = address[1:].partition("]")
        try:
            valid_v6 = bool(bracket) and ipaddress.ip_address(host).version == 6
        except ValueError:
            valid_v6 = False
        if not valid_v6 or (port_part and not port_part.startswith(":")):
            raise InvalidRequest(f"ICE server URL has a bad IPv6 address (write [2001:db8::1]:3478): {text!r}")
        port = port_part[1:] if port_part else None
    else:
        if address.count(":") > 1:
            raise InvalidRequest(f"ICE server URL: an IPv6 address goes in brackets, [2001:db8::1]:3478: {text!r}")
        host, colon, port_text = address.partition(":")
        port = port_text if colon else None
        if not host or any(c.isspace() or c in "/@" for c in host):
            raise InvalidRequest(f"ICE server URL has no usable host: {text!r}")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidRequest(f"ICE server URL has a bad port (1-65535): {text!r}")


@dataclass(frozen=True, slots=True)
class CliFlag:
    """How a config field appears on ``fantasize-rtc serve``: ``--<name>``, its help and, where the
    field's value would not say it (0 standing for a derived default, None for "off"), the default
    as ``--help`` states it."""

    name: str
    help: str
    shown_default: str | None = None


def _flag(name: str, help: str, shown_default: str | None = None) -> dict[str, CliFlag]:
    """Field metadata naming the field's ``serve`` flag: the CLI reads flags, help texts and defaults
    from here, so a default is written once (on the field) and cannot drift."""
    return {"cli": CliFlag(name, help, shown_default)}


@dataclass(frozen=True, slots=True)
class RtcConfig:
    """Everything the server can be told. Times are milliseconds unless the name says otherwise.

    ``peer_timeout_ms`` defaults to 2.5 x ``heartbeat_interval_ms``: a peer may miss one heartbeat
    and be late with the next before it is reaped. Fields with ``_flag`` metadata are flags of
    ``fantasize-rtc serve`` (``cli_flags()``).
    """

    ice_servers: tuple[IceServer, ...] = field(
        default=(),
        metadata=_flag(
            "ice-server",
            "ICE server handed to browsers and used by the server's own peers: stun:host:port, "
            "turn:user:pass@host:port (?transport=udp or tcp) or turns:user:pass@host:443 (TURN over "
            "TLS). Repeat for several; env: comma-separated.",
        ),
    )
    max_peers_per_room: int = field(default=8, metadata=_flag("max-peers-per-room", "Peers a room admits."))
    heartbeat_interval_ms: int = field(
        default=30_000, metadata=_flag("heartbeat-interval-ms", "How often peers should heartbeat.")
    )
    peer_timeout_ms: int = field(  # 0 -> 2.5 x heartbeat_interval_ms
        default=0,
        metadata=_flag("peer-timeout-ms", "Silence after which a peer is reaped.", "2.5 x the heartbeat interval"),
    )
    auth_secret: str | None = field(
        default=None,
        metadata=_flag(
            "auth-secret", "HS256 secret: connect then requires a JWT with claims room, sub (peer id) and exp."
        ),
    )
    admin_key: str | None = field(
        default=None,
        metadata=_flag(
            "admin-key", "Bearer key for operators: snapshots of any room, every media session and recording."
        ),
    )
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata=_flag(
            "cors-origin",
            "Origin allowed to call the API from a browser (repeatable; * for any).",
            "none, CORS off",
        ),
    )

    # Limits (README "Limits").
    max_body_bytes: int = 64 * 1024
    max_frame_bytes: int = 64 * 1024
    max_signal_bytes: int = 48 * 1024
    max_metadata_bytes: int = 4 * 1024
    max_json_depth: int = 32
    rate_limit_per_sec: float = field(  # 0 disables
        default=50.0,
        metadata=_flag(
            "rate-limit-per-sec", "Signals per second one peer may send (burst 200); 0 turns the limit off."
        ),
    )
    rate_limit_burst: int = 200
    max_rooms: int = 10_000
    max_peers: int = 50_000
    outbox_max: int = 256
    outbox_max_bytes: int = 1024 * 1024  # queued for one peer
    outbox_total_max_bytes: int = 64 * 1024 * 1024  # queued for all peers (per process; Redis: in all)
    outbox_ttl_ms: int = 0  # 0 -> peer_timeout_ms
    poll_max_wait_ms: int = 30_000

    # Per client address (docs/security.md); 0 turns a limit off. Behind a reverse proxy every
    # client has the proxy's address: turn these off there and let the proxy limit.
    max_connections_per_address: int = field(
        default=256,
        metadata=_flag(
            "max-connections-per-address",
            "Open connections one client address may hold; 0 turns the limit off (do that behind a reverse "
            "proxy, where every client has the proxy's address, and limit there).",
        ),
    )
    max_rooms_per_address: int = field(
        default=100,
        metadata=_flag(
            "max-rooms-per-address", "Rooms one client address may have created and still open; 0 turns the limit off."
        ),
    )
    max_anonymous_sessions_per_address: int = field(
        default=4,
        metadata=_flag(
            "max-anonymous-sessions-per-address",
            "Media sessions without a token one client address may hold at once; 0 turns the limit off.",
        ),
    )
    # Slow clients: a request's head must be complete this long after the connection opened or its
    # previous response was sent (idle keep-alive connections close then too); a body must arrive
    # within body_timeout_ms.
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 15_000

    # Media (the server as a WebRTC peer).
    recordings_dir: str = field(default="./recordings", metadata=_flag("recordings-dir", "Folder for recordings."))
    max_media_sessions: int = field(
        default=32, metadata=_flag("max-media-sessions", "Concurrent server-side media sessions.")
    )
    max_sessions_per_peer: int = 4
    max_session_seconds: int = field(default=3600, metadata=_flag("max-session-seconds", "Longest media session."))
    max_recording_bytes: int = field(
        default=512 * 1024 * 1024, metadata=_flag("max-recording-bytes", "Largest single recording.")
    )
    #: A session whose peer shows no sign of ICE (no connectivity check succeeded) this long after
    #: the answer is closed (``ice_timeout``): an offer that will never connect frees its slot fast.
    ice_start_timeout_seconds: float = 10.0
    #: With ``auth_secret``, media routes (``/rtc/offer``, ``/whip``) need a peer token, a connect
    #: JWT or the admin key; this lets anonymous sessions in anyway.
    allow_anonymous_media: bool = field(
        default=False,
        metadata=_flag(
            "allow-anonymous-media",
            "With --auth-secret, still answer media offers (/rtc/offer, /whip) that carry no token.",
        ),
    )
    recordings_quota_bytes: int = 5 * 1024 * 1024 * 1024
    turn_secret: str | None = field(
        default=None,
        metadata=_flag(
            "turn-secret", "TURN shared secret (coturn use-auth-secret): mint time-limited TURN credentials."
        ),
    )
    turn_ttl_seconds: int = field(
        default=86_400, metadata=_flag("turn-ttl-seconds", "Lifetime of minted TURN credentials.")
    )

    # Scale-out.
    redis_url: str | None = field(
        default=None,
        metadata=_flag(
            "redis-url",
            "Share rooms across processes through Redis (redis://host:port/db). Needs the [redis] extra.",
            "none, rooms in memory",
        ),
    )

    # Deployment (docs/deploy.md).
    tls_cert: str | None = field(
        default=None,
        metadata=_flag("tls-cert", "Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key.", "none"),
    )
    tls_key: str | None = field(default=None, metadata=_flag("tls-key", "The private key (PEM) of --tls-cert.", "none"))
    tls_self_signed: bool = field(
        default=False,
        metadata=_flag(
            "tls-self-signed",
            "Serve HTTPS with a certificate made at startup for this host's names and addresses, kept in "
            "--state-dir (for trying the camera from a phone on the LAN).",
        ),
    )
    state_dir: str = field(
        default="./.fantasize-rtc",
        metadata=_flag("state-dir", "Folder for what the server keeps between runs (the self-signed certificate)."),
    )
    udp_port: int = field(
        default=0,
        metadata=_flag(
            "udp-port",
            "Put every server-side media session on this one UDP port (open it in the firewall); 0: each "
            "session takes random ports.",
            "0, random ports",
        ),
    )
    udp_port_range: str | None = field(
        default=None,
        metadata=_flag(
            "udp-port-range",
            "Instead of --udp-port: each media session takes free ports from A-B; a full range answers 503.",
            "none",
        ),
    )
    public_ips: tuple[str, ...] = field(
        default=(),
        metadata=_flag(
            "public-ip",
            "Address (IPv4, IPv6 or a name resolved at startup) to announce as the server's own peers' "
            "candidate, with the --udp-port / range port: the server's public address behind NAT. Repeatable.",
            "none",
        ),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_flag(
            "trusted-proxy",
            "Network (CIDR) of a reverse proxy whose X-Forwarded-For / X-Forwarded-Proto are believed: for "
            "logs, per-address limits and the cookie's Secure flag. Repeatable.",
            "none",
        ),
    )

    # Operations (docs/operations.md).
    drain_seconds: float = field(
        default=10.0,
        metadata=_flag(
            "drain-seconds",
            "On SIGTERM/SIGINT: answer 503 draining, ask WebSocket peers to reconnect (close code 1012), "
            "finish recordings and media sessions, and exit within this many seconds.",
        ),
    )
    metrics_port: int = field(
        default=0,
        metadata=_flag(
            "metrics-port",
            "Serve Prometheus /metrics without a key on this port of --metrics-host; 0: only on the main "
            "port, with the admin key.",
            "0, main port with --admin-key",
        ),
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_flag("metrics-host", "Address of the --metrics-port listener (keep it private)."),
    )

    def __post_init__(self) -> None:
        if self.peer_timeout_ms <= 0:
            object.__setattr__(self, "peer_timeout_ms", int(self.heartbeat_interval_ms * 2.5))
        if self.outbox_ttl_ms <= 0:
            object.__setattr__(self, "outbox_ttl_ms", self.peer_timeout_ms)
        ice = tuple(IceServer.parse(s) if isinstance(s, str) else s for s in self.ice_servers)
        object.__setattr__(self, "ice_servers", ice)
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        for name in (
            "max_peers_per_room",
            "heartbeat_interval_ms",
            "max_body_bytes",
            "max_frame_bytes",
            "max_signal_bytes",
            "max_rooms",
            "max_peers",
            "outbox_max",
            "outbox_max_bytes",
            "outbox_total_max_bytes",
            "header_timeout_ms",
            "body_timeout_ms",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_connections_per_address", "max_rooms_per_address", "max_anonymous_sessions_per_address"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (off) or positive")
        if self.ice_start_timeout_seconds <= 0:
            raise ValueError("ice_start_timeout_seconds must be positive")
        for name in ("public_ips", "trusted_proxies"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_self_signed and self.tls_cert is not None:
            raise ValueError("--tls-self-signed or --tls-cert/--tls-key, not both")
        if self.drain_seconds < 0:
            raise ValueError("--drain-seconds must be 0 or more")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("--metrics-port must be from 1 to 65535 (0: off)")
        if not 0 <= self.udp_port <= 65535:
            raise ValueError("--udp-port must be from 1 to 65535 (0: off)")
        if self.udp_port and self.udp_port_range:
            raise ValueError("--udp-port or --udp-port-range, not both")
        self.udp_ports  # noqa: B018 - parses (and so checks) the range
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"--trusted-proxy must be an address or a network (CIDR): {network!r}") from None

    @property
    def udp_ports(self) -> tuple[int, int] | None:
        """The media UDP ports (first, last): the one ``udp_port``, the range, or None (random ports)."""
        if self.udp_port:
            return self.udp_port, self.udp_port
        if not self.udp_port_range:
            return None
        first, sep, last = self.udp_port_range.partition("-")
        try:
            low, high = int(first), int(last)
        except ValueError:
            raise ValueError(f"--udp-port-range must be A-B, e.g. 40000-40100: {self.udp_port_range!r}") from None
        if not sep or not 1 <= low <= high <= 65535:
            raise ValueError(f"--udp-port-range must be A-B with 1 <= A <= B <= 65535: {self.udp_port_range!r}")
        return low, high

    def replace(self, **changes: Any) -> RtcConfig:
        """A copy with ``changes`` applied; derived defaults are recomputed."""
        if "heartbeat_interval_ms" in changes and "peer_timeout_ms" not in changes:
            changes["peer_timeout_ms"] = 0
        if "peer_timeout_ms" in changes and "outbox_ttl_ms" not in changes:
            changes["outbox_ttl_ms"] = 0
        return dataclasses.replace(self, **changes)

    @property
    def reaper_interval_ms(self) -> int:
        """How often the reaper looks for silent peers: a quarter of the timeout, 50 ms to 5 s."""
        return max(50, min(self.peer_timeout_ms // 4, 5_000))


def cli_flags() -> list[tuple[dataclasses.Field[Any], CliFlag]]:
    """The fields that are flags of ``fantasize-rtc serve``, in field order, with their flag."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(RtcConfig) if "cli" in f.metadata]
