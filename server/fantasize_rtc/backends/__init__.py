"""Backends: where room state lives and how messages reach a peer's process.

:class:`Backend` is the seam the facade talks to. :class:`MemoryBackend` is the embedded
default (one process). A Redis backend runs the same rules across processes.
"""

from __future__ import annotations

from ._base import (
    Backend,
    DeliveryReport,
    DeliverySink,
    Envelope,
    JoinOutcome,
    LeaveOutcome,
    OutboxLimits,
    UndeliveredNotice,
)
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "DeliveryReport",
    "DeliverySink",
    "Envelope",
    "JoinOutcome",
    "LeaveOutcome",
    "MemoryBackend",
    "OutboxLimits",
    "UndeliveredNotice",
    "create_backend",
]


def create_backend(redis_url: str | None = None, **options: object) -> Backend:
    """The memory backend, or the Redis one when ``redis_url`` is given (needs the extra)."""
    if not redis_url:
        return MemoryBackend()
    try:
        from .redis import RedisBackend  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("The Redis backend needs redis-py: pip install 'fantasize-rtc-server[redis]'") from exc
    backend: Backend = RedisBackend(redis_url, **options)  # type: ignore[arg-type]
    return backend
