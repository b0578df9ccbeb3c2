"""``fantasize-rtc``: run the server (``serve``) or check a running one (``selftest``).

Every ``serve`` flag can also come from an environment variable ``FANTASIZE_RTC_<FLAG>``
(e.g. ``FANTASIZE_RTC_PORT=9000``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ._version import __version__
from .config import IceServer, RtcConfig

__all__ = ["main"]

log = logging.getLogger("fantasize_rtc")

ENV_PREFIX = "FANTASIZE_RTC_"

# (flag, config field or None, type, default, help, repeatable)
_SERVE_FLAGS: list[tuple[str, str | None, Any, Any, str, bool]] = [
    ("host", None, str, "127.0.0.1", "Address to listen on (0.0.0.0 for every interface).", False),
    ("port", None, int, 8080, "Port to listen on (0 picks a free one).", False),
    (
        "ice-server",
        "ice_servers",
        str,
        None,
        "ICE server handed to browsers and used by the server's own peers: stun:host:port or "
        "turn:user:pass@host:port?transport=udp. Repeat for several; env: comma-separated.",
        True,
    ),
    ("max-peers-per-room", "max_peers_per_room", int, 8, "Peers a room admits.", False),
    ("heartbeat-interval-ms", "heartbeat_interval_ms", int, 30_000, "How often peers should heartbeat.", False),
    (
        "peer-timeout-ms",
        "peer_timeout_ms",
        int,
        None,
        "Silence after which a peer is reaped (default 2.5 x the heartbeat interval).",
        False,
    ),
    (
        "auth-secret",
        "auth_secret",
        str,
        None,
        "HS256 secret: connect then requires a JWT with claims room, sub (peer id) and exp.",
        False,
    ),
    (
        "cors-origin",
        "cors_origins",
        str,
        None,
        "Origin allowed to call the API from a browser (repeatable; * for any). Off by default.",
        True,
    ),
    (
        "admin-key",
        "admin_key",
        str,
        None,
        "Bearer key for operators: snapshots of any room, every media session and recording.",
        False,
    ),
    ("recordings-dir", "recordings_dir", str, "./recordings", "Folder for recordings.", False),
    ("max-media-sessions", "max_media_sessions", int, 32, "Concurrent server-side media sessions.", False),
    ("max-session-seconds", "max_session_seconds", int, 3600, "Longest media session.", False),
    ("max-recording-bytes", "max_recording_bytes", int, 512 * 1024 * 1024, "Largest single recording.", False),
    (
        "turn-secret",
        "turn_secret",
        str,
        None,
        "TURN shared secret (coturn use-auth-secret): mint time-limited TURN credentials.",
        False,
    ),
    ("turn-ttl-seconds", "turn_ttl_seconds", int, 86_400, "Lifetime of minted TURN credentials.", False),
    (
        "redis-url",
        "redis_url",
        str,
        None,
        "Share rooms across processes through Redis (redis://host:port/db). Needs the [redis] extra.",
        False,
    ),
    (
        "rate-limit-per-sec",
        "rate_limit_per_sec",
        float,
        None,
        "Signals per second one peer may send (burst 200); 0 turns the limit off. (default: 50)",
        False,
    ),
    (
        "max-connections-per-address",
        "max_connections_per_address",
        int,
        256,
        "Open connections one client address may hold; 0 turns the limit off (do that behind a reverse proxy, "
        "where every client has the proxy's address, and limit there).",
        False,
    ),
    (
        "max-rooms-per-address",
        "max_rooms_per_address",
        int,
        100,
        "Rooms one client address may have created and still open; 0 turns the limit off.",
        False,
    ),
    (
        "max-anonymous-sessions-per-address",
        "max_anonymous_sessions_per_address",
        int,
        4,
        "Media sessions without a token one client address may hold at once; 0 turns the limit off.",
        False,
    ),
    (
        "allow-anonymous-media",
        "allow_anonymous_media",
        bool,
        False,
        "With --auth-secret, still answer media offers (/rtc/offer, /whip) that carry no token.",
        False,
    ),
    ("event-loop", None, str, "auto", "auto (uvloop when it is installed), uvloop or asyncio.", False),
    ("log-level", None, str, "info", "debug, info, warning or error.", False),
]


def _env_default(flag: str, kind: Any, default: Any, repeatable: bool) -> Any:
    raw = os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"))
    if raw is None:
        return default
    if repeatable:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fantasize-rtc",
        description="WebRTC signaling rooms and a real WebRTC peer (echo, record, probe, play) on aiohttp + aiortc.",
        epilog="Run 'fantasize-rtc serve' and open the URL it prints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the server with its demo page",
        description="Run the signaling server, the server's own WebRTC peers and the demo page. "
        f"Each flag may also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT).",
    )
    for flag, _field, kind, default, text, repeatable in _SERVE_FLAGS:
        env = ENV_PREFIX + flag.upper().replace("-", "_")
        value = _env_default(flag, kind, default, repeatable)
        shown = "" if default is None else f" (default: {default})"
        if kind is bool:
            serve.add_argument(f"--{flag}", default=value, action="store_true", help=f"{text} [env {env}]")
            continue
        serve.add_argument(
            f"--{flag}",
            type=kind,
            default=value,
            action="append" if repeatable else "store",
            help=f"{text}{shown} [env {env}]",
        )
    _add_selftest(sub)
    return parser


def _add_selftest(sub: Any) -> None:
    try:
        from .selftest import add_parser  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ModuleNotFoundError:
        return
    add_parser(sub)


def config_from_args(args: argparse.Namespace) -> RtcConfig:
    values: dict[str, Any] = {}
    for flag, field, _kind, _default, _text, repeatable in _SERVE_FLAGS:
        if field is None:
            continue
        value = getattr(args, flag.replace("-", "_"))
        if value is None:
            continue
        if repeatable:
            value = tuple(value)
            if field == "ice_servers":
                value = tuple(IceServer.parse(v) for v in value)
        values[field] = value
    return RtcConfig(**values)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level.lower() != "debug":
        for noisy in ("aioice", "aiortc", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


#: Young-generation threshold of the cyclic garbage collector while serving (Python's default: 700).
GC_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a server holding many connections.

    Every waiting socket keeps a few young objects alive (its pending read), so with Python's
    defaults the collector ran every ~150 relayed messages and, through the older generations, kept
    walking the ~120,000 objects that imports and the app leave behind: about 20% of the CPU of a
    relay among 1,000 sockets (BENCHMARKS.md). After startup this freezes what exists (never
    walked again; it lives as long as the process anyway) and collects the young generation every
    10,000 allocations instead of 700. Memory is still freed at once by reference counting; only
    reference cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


async def serve(args: argparse.Namespace, config: RtcConfig) -> None:
    from . import serving
    from .app import create_app

    raised = serving.raise_fd_limit()
    if raised is not None:
        log.info("raised the open-file limit from %d to %d (each connection needs one)", *raised)
    app = create_app(config=config)
    runner, site, _limiter = await serving.start(app, args.host, args.port, config)
    tune_gc()
    port = site.port
    host = args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1"
    log.info("fantasize-rtc %s serving on http://%s:%s/ - open it in a browser", __version__, host, port)
    if config.ice_servers:
        log.info("ICE servers: %s", ", ".join(u for s in config.ice_servers for u in s.urls))
    else:
        log.info("ICE servers: none configured (host candidates only; fine on one machine or LAN)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: closing sessions and sockets")
    finally:
        # Shutdown waits up to 5 s for requests; past that, say what it still waits for.
        slow = loop.call_later(SLOW_SHUTDOWN_S, _log_waiting_tasks)
        try:
            await runner.cleanup()
        finally:
            slow.cancel()
        log.info("stopped")


#: Seconds after which a shutdown still in progress logs the tasks it waits for.
SLOW_SHUTDOWN_S = 8.0


def _log_waiting_tasks() -> None:
    current = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        out = io.StringIO()
        task.print_stack(limit=8, file=out)
        log.warning("shutdown still waits for %r:\n%s", task.get_name(), out.getvalue().rstrip())


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for or (``auto``) when installed; None for asyncio's own.

    uvloop's C transports cut the cost of every WebSocket read and write (BENCHMARKS.md)."""
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"--event-loop must be auto, uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(coro: Coroutine[Any, Any, None], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    if loop_factory is None:
        asyncio.run(coro)
        return
    log.debug("running on uvloop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(coro)
    else:  # pragma: no cover - Python 3.10
        loop = loop_factory()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(coro)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except Exception as exc:  # a bad flag value: say which, no traceback
            parser.error(str(exc))
        configure_logging(args.log_level)
        try:
            loop_factory = _loop_factory(args.event_loop)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            _run(serve(args, config), loop_factory)
        except OSError as exc:
            log.error("could not start: %s", exc)
            return 1
        return 0
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
