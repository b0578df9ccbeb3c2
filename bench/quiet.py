"""Relay latency when the server is quiet: one-way latency of signals at low fixed rates.

``python -m bench.quiet ours,peerjs`` runs, per server (one at a time, pinned as in
``bench.signaling``), 1 pair at 200 and 2,000 messages/s and 50 pairs at 5,000 messages/s, and
prints p50/p99 in ms; ``python -m bench.quiet ours 1:28000,50:19600`` runs the given pairs:rates. ``bench signaling``'s fixed-load rows offer half of PeerJS's saturation
rate, where queueing dominates; these rates are where a person clicking "call" is.
To compare two builds of ours, run it twice with ``PYTHONPATH=<worktree>/server``.
"""

from __future__ import annotations

import asyncio
import sys

from bench._servers import ServerProcess, plan_cores
from bench.signaling import Settings, relay_once

RATES = ((1, 200.0), (1, 2000.0), (50, 5000.0))


async def run(
    kinds: list[str], rates: tuple[tuple[int, float], ...] = RATES
) -> dict[str, tuple[float | None, float | None]]:
    server_cores, lg_cores = plan_cores()
    s = Settings(
        pairs=[1],
        duration=4.0,
        warmup=1.0,
        idle_peers=0,
        idle_seconds=0,
        heartbeat_s=30,
        churn_concurrency=1,
        workers=1,
        kinds=kinds,
        scenarios=[],
        uvloop=True,
        in_flight=2,
    )
    out: dict[str, tuple[float | None, float | None]] = {}
    for kind in kinds:
        with ServerProcess(kind, server_cores, True) as server:
            for pairs, rate in rates:
                r = await relay_once(server, s, pairs, f"q{pairs}x{int(rate)}", lg_cores, "latency", rate)
                out[f"{kind}, {pairs} pair(s), {int(rate)} msg/s"] = (r["p50_ms"], r["p99_ms"])
    return out


def main() -> None:
    kinds = (sys.argv[1] if len(sys.argv) > 1 else "ours,peerjs").split(",")
    rates = RATES
    if len(sys.argv) > 2:
        rates = tuple((int(p), float(r)) for p, _, r in (x.partition(":") for x in sys.argv[2].split(",")))
    for name, (p50, p99) in asyncio.run(run(kinds, rates)).items():
        print(f"{name}: p50 {p50} ms, p99 {p99} ms")


if __name__ == "__main__":
    main()
