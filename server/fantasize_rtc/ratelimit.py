"""Token bucket for per-peer message rates. Pure: time comes in as ``now`` (ms)."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` says whether one was available."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: int, cost: float = 1.0) -> bool:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate / 1000.0)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
