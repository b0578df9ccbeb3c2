"""Relay latency when the server is quiet: one-way latency of signals at low fixed rates.

``python -m bench.quiet ours,peerjs`` runs, per server (one at a time, pinned as in
``bench.signaling``), 1 pair at 200 and 2,000 messages/s and 50 pairs at 5,000 messages/s, and
prints p50/p99 in ms; ``python -m bench.quiet ours 1:28000,50:19600`` runs the given pairs:rates.
``bench signaling``'s fixed-load rows offer half of PeerJS's saturation rate, where queueing
dominates; these rates are where a person clicking "call" is.

Differences of 0.05 ms are within one run's noise on a shared VM: ``--rounds 5`` runs every server
five times, interleaved, and prints each rate's median and every round. ``--together`` starts every
server once, all at the same time (pinned to the same core: the idle ones cost nothing), and
alternates them measurement by measurement, so that two servers' samples of a round are seconds
apart instead of minutes: the VM's slow phases then fall on both. It also prints, for each server
after the first, the median over rounds of its p50 minus the first server's in the same round. To compare builds of
ours, name each ``ours@<its server/ folder>`` (a git worktree: ``git worktree add /tmp/a <rev>``):
``python -m bench.quiet ours@/tmp/a/server,ours@/tmp/b/server 50:5000 --rounds 5``. Each rate
runs 4 s; ``QUIET_SECONDS=20`` makes it longer (to attach ``py-spy record -p <server pid>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics

from bench._servers import ServerProcess, plan_cores
from bench.signaling import Settings, relay_once

RATES: tuple[tuple[int, float], ...] = ((1, 200.0), (1, 2000.0), (50, 5000.0))

Row = tuple[float | None, float | None, float]


async def run(
    kinds: list[str], rates: tuple[tuple[int, float], ...] = RATES, rounds: int = 1, together: bool = False
) -> dict[str, list[Row]]:
    """``{"<kind>, <pairs> pair(s), <rate> msg/s": [(p50, p99, the server's CPU share) of each round]}``."""
    server_cores, lg_cores = plan_cores()
    s = Settings(
        pairs=[1],
        duration=float(os.environ.get("QUIET_SECONDS", "4")),
        warmup=1.0,
        idle_peers=0,
        idle_seconds=0,
        heartbeat_s=30,
        churn_concurrency=1,
        workers=1,
        kinds=[kind.partition("@")[0] for kind in kinds],
        scenarios=[],
        uvloop=True,
        in_flight=2,
    )
    out: dict[str, list[Row]] = {}

    def server_of(kind: str) -> ServerProcess:
        name, _, path = kind.partition("@")
        return ServerProcess(name, server_cores, True, pythonpath=path or None)

    async def measure(server: ServerProcess, kind: str, n: int, pairs: int, rate: float) -> None:
        r = await relay_once(server, s, pairs, f"q{n}p{pairs}x{int(rate)}", lg_cores, "latency", rate)
        out.setdefault(_name(kind, pairs, rate), []).append((r["p50_ms"], r["p99_ms"], r["server_cpu"]))

    if together:
        with contextlib.ExitStack() as stack:
            servers = {kind: stack.enter_context(server_of(kind)) for kind in kinds}
            for n in range(rounds):
                for pairs, rate in rates:
                    # every other round in the other order: no server always goes first
                    for kind in kinds if n % 2 == 0 else kinds[::-1]:
                        await measure(servers[kind], kind, n, pairs, rate)
        return out
    for n in range(rounds):
        for kind in kinds:
            with server_of(kind) as server:
                for pairs, rate in rates:
                    await measure(server, kind, n, pairs, rate)
    return out


def _name(kind: str, pairs: int, rate: float) -> str:
    return f"{kind}, {pairs} pair(s), {int(rate)} msg/s"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kinds", nargs="?", default="ours,peerjs", help="ours, bare, peerjs, ours@<server/ folder>")
    parser.add_argument("rates", nargs="?", default="", help="pairs:rate,... (default 1:200,1:2000,50:5000)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds through every server")
    parser.add_argument("--together", action="store_true", help="all servers up at once, alternated per measurement")
    args = parser.parse_args()
    rates = RATES
    if args.rates:
        rates = tuple((int(p), float(r)) for p, _, r in (x.partition(":") for x in args.rates.split(",")))
    kinds = args.kinds.split(",")
    results = asyncio.run(run(kinds, rates, args.rounds, args.together))
    for name, rows in results.items():
        p50s, p99s = [row[0] for row in rows], [row[1] for row in rows]
        cpu = _median([row[2] for row in rows])
        line = f"{name}: p50 {_median(p50s)} ms, p99 {_median(p99s)} ms, server CPU {cpu}"
        if len(rows) > 1:
            line += f" (medians of {len(rows)}; p50s {' / '.join(str(v) for v in p50s)})"
        print(line)
    if args.together and len(kinds) > 1:
        for pairs, rate in rates:
            base = results[_name(kinds[0], pairs, rate)]
            for kind in kinds[1:]:
                rows = results[_name(kind, pairs, rate)]
                diffs = [
                    round(b[0] - a[0], 3)
                    for a, b in zip(base, rows, strict=True)
                    if a[0] is not None and b[0] is not None
                ]
                lower = sum(d > 0 for d in diffs)
                print(
                    f"{pairs} pair(s), {int(rate)} msg/s: p50 of {kind} - {kinds[0]}, median of rounds "
                    f"{_median(list(diffs))} ms ({kinds[0]} lower in {lower} of {len(diffs)}; {' / '.join(map(str, diffs))})"
                )


if __name__ == "__main__":
    main()
