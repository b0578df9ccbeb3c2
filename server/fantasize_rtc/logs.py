"""Log lines for people (text, the default) or for log collectors (``--log-format json``).

JSON lines are one object each: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, then whatever context exists where the line was logged: ``room``, ``peer``,
``session``, ``mode``, ``address`` (the client's, after ``--trusted-proxy``), and the fields a
line carries itself (``extra={"fields": {...}}``, e.g. a media session's summary), and ``error``
with the traceback when there is one.

The context comes from :func:`bind`, which the transport and the media layer call where a request,
a WebSocket or a media session starts: it is a :class:`contextvars.ContextVar`, so it follows
the work into the tasks started from there (aiortc's too) and never leaks into other requests.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["CONTEXT_KEYS", "JsonFormatter", "bind", "bound", "configure", "current", "reset"]

#: The context fields a JSON line may carry, in this order.
CONTEXT_KEYS: Final = ("room", "peer", "session", "mode", "address")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("fantasize_rtc_log", default=None)


def current() -> dict[str, str]:
    """The context bound here (empty when none)."""
    return dict(_context.get() or {})


def bind(**fields: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Add ``fields`` (None values are left out) to the context of this task and of the tasks it
    starts from now on; :func:`reset` with the token undoes it (or use :func:`bound`)."""
    merged = dict(_context.get() or {})
    merged.update({k: v for k, v in fields.items() if v is not None})
    return _context.set(merged)


def reset(token: contextvars.Token[dict[str, str] | None]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get()
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)  # extra={"room": ...} on the call wins
            if value is None and context is not None:
                value = context.get(key)
            if value is not None:
                out[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["error"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log to standard error at ``level`` in ``fmt`` (``text`` or ``json``) for the whole process.

    Below debug, aiortc's, aioice's and aiohttp's access lines are left out (they log every packet
    and request)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"--log-format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if level.lower() != "debug":
        for noisy in ("aioice", "aiortc", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
