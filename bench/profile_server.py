"""Profile a server under a saturating load with py-spy (``pip install py-spy``).

``python -m bench.profile_server --server ours --pairs 50 --seconds 8`` prints the functions that
take the server's time (own time and inclusive time, % of samples) under the relay load and
leaves the collapsed stacks in bench/.work/profile-<server>.txt for a flame graph;
``--scenario churn`` profiles connect + join + leave cycles instead (``--concurrency`` loops),
``--scenario http`` wrk's ``POST /rtc/signal`` load of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys

from bench._servers import WORK, ServerProcess, Workers, plan_cores
from bench.signaling import Settings, http_load, relay_once


def summarize(path: str, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                incl[frame] += n
    out = [f"{total} samples", "", "own time:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in incl.most_common(top)]
    return "\n".join(out)


async def _run(args: argparse.Namespace) -> None:
    server_cores, lg_cores = plan_cores()
    s = Settings(
        pairs=[args.pairs],
        duration=args.seconds,
        warmup=1.0,
        idle_peers=0,
        idle_seconds=0,
        heartbeat_s=30,
        churn_concurrency=1,
        workers=max(1, len(lg_cores)),
        kinds=[args.server],
        scenarios=["relay"],
        uvloop=args.uvloop,
        in_flight=args.in_flight,
    )
    out = WORK / f"profile-{args.server}.txt"
    with ServerProcess(args.server, server_cores, args.uvloop) as server:
        spy = subprocess.Popen(  # noqa: ASYNC220 - py-spy runs beside the load, not awaited
            [
                "py-spy",
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if args.scenario == "churn":
            res = await _churn(server.port, args, lg_cores)
        elif args.scenario == "http":
            res = await http_load(server, args.server, s, lg_cores)
        else:
            res = await relay_once(server, s, args.pairs, "p", lg_cores, "relay")
        spy.wait(60)
    print(res)
    print(summarize(str(out), args.top))


async def _churn(port: int, args: argparse.Namespace, lg_cores: list[int]) -> object:
    jobs = [
        {
            "kind": args.server,
            "host": "127.0.0.1",
            "port": port,
            "mode": "churn",
            "concurrency": args.concurrency,
            "warmup": 0.5,
            "duration": args.seconds,
            "offer_deflate": False,
        }
    ]
    workers = Workers(jobs, lg_cores, args.uvloop)
    try:
        await workers.start()
        return await workers.go(timeout=args.seconds + 60)
    finally:
        await workers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="ours", choices=["ours", "bare"])
    parser.add_argument("--scenario", default="relay", choices=["relay", "churn", "http"])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16, help="churn loops")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
