"""``fantasize-rtc``: run the server (``serve``) or check a running one (``selftest``).

Every ``serve`` flag can also come from an environment variable ``FANTASIZE_RTC_<FLAG>``
(e.g. ``FANTASIZE_RTC_PORT=9000``; repeatable flags take a comma-separated list); a flag on the
command line wins, and a repeatable one replaces the variable's list rather than adding to it.

The flags that set an ``RtcConfig`` field, their help and their defaults come from the field
itself (``config.cli_flags()``); only the flags that are not config (address, event loop, log
level) are listed here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import importlib
import io
import ipaddress
import logging
import os
import signal
import ssl
import sys
import threading
import time
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from . import logs
from ._version import __version__
from .config import CliFlag, RtcConfig, cli_flags

__all__ = ["main"]

log = logging.getLogger("fantasize_rtc")

ENV_PREFIX = "FANTASIZE_RTC_"


@dataclass(frozen=True, slots=True)
class _Flag:
    """One ``serve`` flag; ``field`` is the ``RtcConfig`` field it sets, None for the process's own."""

    name: str
    field: str | None
    kind: Callable[[str], Any]
    default: Any
    help: str
    repeatable: bool = False
    shown_default: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


# The flags that are not RtcConfig fields: where to listen (shown first) and how to run the process
# (shown last).
_LISTEN_FLAGS = [
    _Flag("host", None, str, "127.0.0.1", "Address to listen on (0.0.0.0 for every interface)."),
    _Flag("port", None, int, 8080, "Port to listen on (0 picks a free one)."),
]
_PROCESS_FLAGS = [
    _Flag("event-loop", None, str, "auto", "auto (uvloop when it is installed), uvloop or asyncio."),
    _Flag("log-level", None, str, "info", "debug, info, warning or error."),
    _Flag("log-format", None, str, "text", "text (for people) or json (one object per line, for log collectors)."),
]


def _config_flag(name: str, default: Any, hint: Any, cli: CliFlag) -> _Flag:
    # Tuple fields are lists of strings on the command line (RtcConfig parses ICE server URLs);
    # str | None is a str that defaults to None.
    repeatable = typing.get_origin(hint) is tuple
    kind = hint if hint in (int, float, bool) else str
    return _Flag(cli.name, name, kind, default, cli.help, repeatable, cli.shown_default)


def _serve_flags() -> list[_Flag]:
    hints = typing.get_type_hints(RtcConfig)
    from_config = [_config_flag(f.name, f.default, hints[f.name], cli) for f, cli in cli_flags()]
    return [*_LISTEN_FLAGS, *from_config, *_PROCESS_FLAGS]


_SERVE_FLAGS = _serve_flags()


def _env_default(flag: _Flag) -> Any:
    raw = os.environ.get(flag.env)
    if raw is None:
        return flag.default
    if flag.repeatable:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if flag.kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return flag.kind(raw)


def _shown_default(flag: _Flag) -> str:
    """The default as --help states it: the field's own (not the environment's) in words."""
    if flag.shown_default is not None:
        return flag.shown_default
    if flag.default is None or flag.default == ():
        return "none"
    if flag.default is False:
        return "off"
    if isinstance(flag.default, float) and flag.default.is_integer():
        return str(int(flag.default))
    return str(flag.default)


class _ReplaceThenAppend(argparse.Action):
    """A repeatable flag whose first use replaces the default, later uses add to it.

    argparse's own ``append`` adds to the default, and the default is the environment variable's
    list when it is set: the command line would extend the environment instead of winning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        # Still the default object itself means this is the flag's first use.
        given = [] if current is self.default else list(current)
        setattr(namespace, self.dest, [*given, values])


def _add_flag(serve: argparse.ArgumentParser, flag: _Flag) -> None:
    value = _env_default(flag)
    text = f"{flag.help} (default: {_shown_default(flag)}) [env {flag.env}]"
    if flag.kind is bool:
        serve.add_argument(f"--{flag.name}", default=value, action="store_true", help=text)
    elif flag.repeatable:
        serve.add_argument(f"--{flag.name}", type=flag.kind, default=value, action=_ReplaceThenAppend, help=text)
    else:
        serve.add_argument(f"--{flag.name}", type=flag.kind, default=value, help=text)


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
    for flag in _SERVE_FLAGS:
        _add_flag(serve, flag)
    whip_cert = sub.add_parser(
        "whip-cert",
        help="write a P-256 certificate for a WHIP encoder (FFmpeg's cert_file/key_file)",
        description="Write whip.crt and whip.key (ECDSA P-256) for an encoder to use in its DTLS "
        "handshake. FFmpeg's WHIP muxer built with GnuTLS (PyAV's) makes a P-224 certificate by itself, "
        "which WebRTC stacks refuse; pass it these instead (docs/interop.md).",
    )
    whip_cert.add_argument("--out", default=".", help="folder to write them into (default: here)")
    whip_cert.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    _add_selftest(sub)
    return parser


def _add_selftest(sub: Any) -> None:
    try:
        from .selftest import add_parser  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ModuleNotFoundError:
        return
    add_parser(sub)


def config_from_args(args: argparse.Namespace) -> RtcConfig:
    # Every config flag has a value (the field's default when neither flag nor env gave one), so
    # RtcConfig derives what it derives (peer_timeout_ms 0 -> 2.5 x the interval) as it would alone.
    values: dict[str, Any] = {}
    for flag in _SERVE_FLAGS:
        if flag.field is None:
            continue
        value = getattr(args, flag.dest)
        values[flag.field] = tuple(value) if flag.repeatable else value
    return RtcConfig(**values)


def configure_logging(level: str, fmt: str = "text") -> None:
    """``--log-level`` and ``--log-format`` (``logs.py``: text, or one JSON object per line)."""
    logs.configure(level, fmt)


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


async def serve(args: argparse.Namespace, config: RtcConfig, stopping: _Stopping | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop within ``--drain-seconds``
    (docs/operations.md, "Drain and restart"); ``stopping`` keeps the hard deadline of that."""
    from . import serving, tls
    from .app import create_app
    from .web import DRAIN_KEY

    stopping = stopping or _Stopping()

    raised = serving.raise_fd_limit()
    if raised is not None:
        log.info("raised the open-file limit from %d to %d (each connection needs one)", *raised)
    # Before the app: a certificate that does not load stops the start with one line, nothing opened.
    ssl_context = tls.context_for(config)
    app = create_app(config=config)
    # Requests still running after the drain get part of the cleanup's share of the budget.
    shutdown_timeout = max(0.1, serving.cleanup_reserve(config.drain_seconds) / 2)
    runner, site, _limiter = await serving.start(
        app, args.host, args.port, config, ssl_context=ssl_context, shutdown_timeout=shutdown_timeout
    )
    metrics_runner = None
    if config.metrics_port:  # kept until the very end: a scraper sees the drain too
        from .metrics import start_metrics_server

        metrics_runner = await start_metrics_server(app, config.metrics_host, config.metrics_port)
    # Signals are ours before the URL is logged: whoever waits for that line (systemd, a script,
    # a test) may send SIGTERM or SIGHUP at once, and the default action would kill the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    budget = config.drain_seconds

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _hard_exit(f"{sig.name} again while draining: exiting now, without finishing the drain")
        app[DRAIN_KEY].begin()  # /healthz answers 503 draining from this very moment
        stopping.arm(budget)
        stop.set()
        log.info("%s: draining, then stopping, within %g s (--drain-seconds)", sig.name, budget)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hangup is not None:
        loop.add_signal_handler(hangup, _reload_certificate, ssl_context, config)
    tune_gc()
    port = site.port
    scheme = "https" if ssl_context is not None else "http"
    wildcard = args.host in ("0.0.0.0", "::", "")
    host = "127.0.0.1" if wildcard else f"[{args.host}]" if ":" in args.host else args.host
    log.info("fantasize-rtc %s serving on %s://%s:%s/ - open it in a browser", __version__, scheme, host, port)
    if config.tls_self_signed:
        _log_lan_urls(args.host, port, tls.host_addresses())
    if config.ice_servers:
        log.info("ICE servers: %s", ", ".join(u for s in config.ice_servers for u in s.urls))
    else:
        log.info("ICE servers: none configured (host candidates only; fine on one machine or LAN)")
    try:
        await stop.wait()
    finally:
        if hangup is not None:
            loop.remove_signal_handler(hangup)
        started = time.monotonic()
        stopping.arm(budget)  # (already armed by a signal)
        # Near the end of the budget, say what the shutdown still waits for.
        slow = loop.call_later(budget * SLOW_SHUTDOWN_SHARE, _log_waiting_tasks)
        try:
            _report, stopping.complete = await serving.stop(runner, budget)
            if metrics_runner is not None:  # kept until now: a scraper sees the drain too
                left = max(0.1, started + budget - time.monotonic())
                done, _ = await asyncio.wait([asyncio.ensure_future(metrics_runner.cleanup())], timeout=left)
                stopping.complete = stopping.complete and bool(done)
        finally:
            slow.cancel()
        log.info("stopped %.2f s after the signal", time.monotonic() - started)


def _reload_certificate(context: ssl.SSLContext | None, config: RtcConfig) -> None:
    """SIGHUP: load the certificate files again (a renewed certificate, without a restart)."""
    if context is None:
        log.info("SIGHUP: ignored, TLS is off (it reloads the certificate of --tls-cert or --tls-self-signed)")
        return
    from . import tls

    log.info("SIGHUP: reloading the TLS certificate")
    tls.reload(context, config)


def _log_lan_urls(
    listen_host: str, port: int, addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> None:
    """Where a phone on the LAN opens the page (it cannot use 127.0.0.1)."""
    if listen_host not in ("0.0.0.0", "::", ""):
        if listen_host in ("127.0.0.1", "::1", "localhost"):
            log.info("listening on %s only: add --host 0.0.0.0 to reach it from a phone on this network", listen_host)
        return
    urls = [
        f"https://{a}:{port}/" if a.version == 4 else f"https://[{a}]:{port}/"
        for a in addresses
        if not a.is_loopback and (a.version == 4 or listen_host == "::")
    ]
    if urls:
        log.info("from a phone on this network: %s", " or ".join(urls))


#: The share of ``--drain-seconds`` after which a shutdown still in progress logs the tasks it
#: waits for (at the whole of it, the process exits anyway: :class:`_Stopping`).
SLOW_SHUTDOWN_SHARE = 0.8


class _Stopping:
    """The hard deadline of a shutdown: once armed, a timer thread ends the process when the
    deadline passes, whatever the event loop does (a task that ignores cancellation, a blocked
    loop, interpreter teardown waiting for a thread). ``complete`` is False when the graceful path
    was cut short (exit status 1)."""

    def __init__(self) -> None:
        self.complete = True
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float) -> None:
        if self._timer is None:
            message = f"shutdown did not finish within {seconds:g} s (--drain-seconds): exiting now"
            self._timer = threading.Timer(seconds, _hard_exit, (message,))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _hard_exit(reason: str) -> None:
    """Exit now (status 1), after saying why and where every thread is."""
    log.error("%s", reason)
    with contextlib.suppress(Exception):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(1)


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


def _whip_cert(folder: str, days: int) -> int:
    from .tls import write_encoder_certificate

    try:
        cert, key = write_encoder_certificate(folder, days=days)
    except (OSError, ValueError) as exc:
        print(f"fantasize-rtc whip-cert: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key} (ECDSA P-256, {days} days)")
    print(f"FFmpeg: -f whip -cert_file {cert} -key_file {key} https://<server>/whip")
    print(f'PyAV:   av.open(url, mode="w", format="whip", options={{"cert_file": "{cert}", "key_file": "{key}"}})')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "whip-cert":
        return _whip_cert(args.out, args.days)
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except Exception as exc:  # a bad flag value: say which, no traceback
            parser.error(str(exc))
        try:
            configure_logging(args.log_level, args.log_format)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            loop_factory = _loop_factory(args.event_loop)
        except ValueError as exc:
            parser.error(str(exc))
        stopping = _Stopping()
        try:
            _run(serve(args, config, stopping), loop_factory)
        except OSError as exc:
            log.error("could not start: %s", exc)
            return 1
        finally:
            stopping.disarm()
        return 0 if stopping.complete else 1
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
