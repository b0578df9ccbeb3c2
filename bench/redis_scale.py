"""Scale-out benchmark: relay throughput and latency of two server processes on Redis against one
process in memory, in the same run.

``python -m bench redis [--duration S] [--pairs N] [--window W] [--rate R] [--repeat K]``

It starts a redis-server on a free port, then for each setup its server processes (``python -m
bench.redis_scale worker``: the real app with the rate limit off, no media) and two load
generator processes (the lean WebSocket client of ``bench/_ws.py``) for every setup. Each pair
of peers is a sender and a receiver in their own room. Setups: one process in memory; one
process on Redis; two processes on Redis where every message crosses (each load generator sends
through one process and receives through the other); two processes on Redis where the peers of
a pair share a process (a load balancer that happened to place them together).

Throughput: every sender keeps ``window`` messages in flight (sent, not yet received) for
``duration`` seconds; messages/s counts receptions. Latency: a fixed total ``rate`` of messages
spread over the senders; each message carries its send time and the receiver (same load
generator process, same clock) takes the difference. Setups alternate for ``repeat`` rounds and
the medians are reported (the machine may be shared). Results: ``bench/results/redis.json`` and
``redis.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the server process --------------------------------------------------------------------------


def _worker(port: int, redis_url: str | None) -> int:
    from aiohttp import web

    from fantasize_rtc import RtcConfig
    from fantasize_rtc.app import create_app
    from fantasize_rtc.cli import tune_gc

    config = RtcConfig(
        redis_url=redis_url,
        rate_limit_per_sec=0,
        max_rooms_per_address=0,  # every benchmark client comes from 127.0.0.1
        heartbeat_interval_ms=60_000,
        max_peers_per_room=2,
        recordings_dir=tempfile.gettempdir(),
    )
    try:  # the loop `fantasize-rtc serve` picks: uvloop when installed (the `fast` extra)
        import uvloop

        loop: asyncio.AbstractEventLoop | None = uvloop.new_event_loop()
    except ImportError:
        loop = None
    app = create_app(config=config, media=False, static=False)

    async def as_serve_does(app: web.Application) -> None:
        tune_gc()  # what `fantasize-rtc serve` does once it listens

    app.on_startup.append(as_serve_does)
    web.run_app(
        app,
        loop=loop,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=2,
    )
    return 0


# -- the load generator process ------------------------------------------------------------------


async def _load(job: dict[str, Any]) -> dict[str, Any]:
    # The lean client of the signaling benchmark: the load generator shares the machine with
    # the servers, so it must cost far less per message than they do.
    from bench._ws import HttpClient, WsClient, open_ws

    pairs: int = job["pairs"]
    duration: float = job["duration"]
    latencies: list[float] = []
    received = [0] * pairs
    sent = [0] * pairs
    measuring = False
    progress = asyncio.Event()
    moved = [asyncio.Event() for _ in range(pairs)]  # pair i received something
    latency_mode = job["mode"] == "latency"

    def on_text(client: WsClient, payload: bytes) -> None:
        if b'"type":"signal"' not in payload[:24]:
            return  # peer:connected and the like
        now = time.perf_counter()
        i = client.tag
        received[i] += 1
        if measuring and latency_mode:
            latencies.append(now - json.loads(payload)["signal"]["payload"]["t"])
        progress.set()
        moved[i].set()

    async def join(url: str, room: str, peer: str, i: int) -> WsClient:
        host, port = url.split("//")[1].rstrip("/").split(":")
        http = HttpClient(host, int(port))
        try:
            status, body = await http.post("/rtc/connect", json.dumps({"roomId": room, "peerId": peer}).encode())
        finally:
            await http.close()
        if status != 200:
            raise RuntimeError(f"connect {peer} in {room}: {status} {body[:200]!r}")
        token = json.loads(body)["token"]
        client = await open_ws(host, int(port), f"/rtc/ws?token={token}", on_text)
        client.tag = i
        return client

    senders, receivers = [], []
    for i in range(pairs):
        room = f"{job['tag']}-{i}"
        receivers.append(await join(job["recv_url"], room, "r", i))
        senders.append(await join(job["send_url"], room, "s", i))

    def frame() -> str:
        return json.dumps({"type": "signal", "signal": {"type": "n", "payload": {"t": time.perf_counter()}}})

    async def flood(i: int, ws: WsClient, until: float) -> None:
        window = job["window"]
        while time.perf_counter() < until:
            if sent[i] - received[i] >= window:
                moved[i].clear()
                if sent[i] - received[i] >= window:  # checked after clear(): no lost wakeup
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(moved[i].wait(), 0.25)
                continue
            sent[i] += 1
            ws.send_text(frame())
            await asyncio.sleep(0)

    async def paced(i: int, ws: WsClient, until: float) -> None:
        interval = pairs / job["rate"]
        next_at = time.perf_counter() + interval * i / pairs
        while next_at < until:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # a timer: messages leave at a fixed rate
            sent[i] += 1
            ws.send_text(frame())
            next_at += interval

    async def settle(limit: float) -> None:
        deadline = time.perf_counter() + limit
        while sum(received) < sum(sent) and time.perf_counter() < deadline:
            progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(progress.wait(), 0.1)

    run = flood if job["mode"] == "throughput" else paced
    # warm up (connections, caches, the Redis scripts), then measure
    warm_until = time.perf_counter() + min(1.0, duration / 4)
    await asyncio.gather(*(run(i, ws, warm_until) for i, ws in enumerate(senders)))
    await settle(2)
    base = sum(received)
    measuring = True
    cpu_pids = job.get("cpu_pids", {})
    cpu_before = {name: _cpu_seconds(pid) for name, pid in cpu_pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(run(i, ws, started + duration) for i, ws in enumerate(senders)))
    elapsed = time.perf_counter() - started
    got = sum(received) - base
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in cpu_pids.items()}
    lost = 0
    if latency_mode:  # let the tail arrive (it counts)
        await settle(5)
        lost = sum(sent) - sum(received)
    measuring = False
    for ws in senders + receivers:
        await ws.close()
    return {"received": got, "elapsed": elapsed, "latencies": latencies, "lost": lost, "cpu": cpu}


def _loadgen(job_json: str) -> int:
    result = asyncio.run(_load(json.loads(job_json)))
    print(json.dumps(result))
    return 0


# -- the driver ----------------------------------------------------------------------------------


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.redis_scale", *args]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "server"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _run_setup(
    name: str,
    processes: int,
    redis_url: str | None,
    opts: argparse.Namespace,
    *,
    cross: bool = True,
    redis_pid: int | None = None,
) -> dict[str, Any]:
    ports = [_free_port() for _ in range(processes)]
    servers = []
    for port in ports:
        args = ["worker", "--port", str(port)] + (["--redis-url", redis_url] if redis_url else [])
        servers.append(
            subprocess.Popen(_python(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        for port, proc in zip(ports, servers, strict=True):
            _wait_port(port, proc)
        urls = [f"http://127.0.0.1:{p}/" for p in ports]
        out: dict[str, Any] = {"setup": name, "processes": processes}
        for mode in ("throughput", "latency"):
            jobs = []
            # on two processes each load generator sends through one and (cross) receives through the other
            gens = 2  # the same load generators for every setup
            for g in range(gens):
                jobs.append(
                    {
                        "mode": mode,
                        "tag": f"{processes}{'r' if redis_url else 'm'}{'x' if cross else 's'}-{mode}-{g}-{uuid.uuid4().hex[:8]}",
                        "pairs": max(1, opts.pairs // gens),
                        "duration": opts.duration,
                        "window": opts.window,
                        "rate": opts.rate / gens,
                        "send_url": urls[g % processes],
                        "recv_url": urls[(g + int(cross)) % processes],
                    }
                )
            # the first load generator also reads the CPU the servers (and Redis) spend meanwhile
            jobs[0]["cpu_pids"] = {f"server{i}": p.pid for i, p in enumerate(servers)}
            if redis_url and redis_pid:
                jobs[0]["cpu_pids"]["redis"] = redis_pid
            procs = [
                subprocess.Popen(_python("loadgen", json.dumps(job)), env=_env(), stdout=subprocess.PIPE)
                for job in jobs
            ]
            results = []
            for proc in procs:
                stdout, _ = proc.communicate(timeout=opts.duration * 4 + 60)
                if proc.returncode != 0:
                    raise RuntimeError(f"load generator failed ({proc.returncode})")
                results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
            if mode == "throughput":
                out["msgs_per_s"] = sum(r["received"] / r["elapsed"] for r in results)
                # CPU per relayed message is what the machine's contention does not change much:
                # it says what each process could carry with a core of its own.
                received = out["msgs_per_s"] * results[0]["elapsed"]  # in the window CPU was read over
                cpu = results[0]["cpu"]
                server_cpu = sum(v for k, v in cpu.items() if k.startswith("server"))
                out["server_cpu_us_per_msg"] = server_cpu / received * 1e6 if received else float("nan")
                out["busiest_server_cpu_us_per_msg"] = (
                    max(v for k, v in cpu.items() if k.startswith("server")) / received * 1e6
                    if received
                    else float("nan")
                )
                out["redis_cpu_us_per_msg"] = cpu.get("redis", 0.0) / received * 1e6 if received else float("nan")
                out["server_cpu_share"] = server_cpu / results[0]["elapsed"] / processes
            else:
                lat = sorted(x * 1000 for r in results for x in r["latencies"])
                out["latency_samples"] = len(lat)
                out["lost"] = sum(r["lost"] for r in results)
                out["p50_ms"] = lat[len(lat) // 2] if lat else float("nan")
                out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        return out
    finally:
        for proc in servers:
            _stop(proc)


def _start_redis() -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit("redis-server is not installed (scripts/install-system-deps.sh installs it)")
    port = _free_port()
    tmp = tempfile.TemporaryDirectory(prefix="bench-redis-")
    proc = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


SETUPS: list[tuple[str, int, bool, bool]] = [
    # (name, processes, on Redis, every message crosses processes)
    ("1 process, memory", 1, False, False),
    ("1 process, Redis", 1, True, False),
    ("2 processes, Redis, every message crosses", 2, True, True),
    ("2 processes, Redis, pairs on one process", 2, True, False),
]
RESULTS = Path(__file__).resolve().parent / "results"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print a Markdown table, write bench/results/redis.{json,md}."""
    parser = argparse.ArgumentParser(prog="python -m bench redis", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="Seconds measured per run.")
    parser.add_argument("--pairs", type=int, default=16, help="Sender/receiver pairs in all.")
    parser.add_argument("--window", type=int, default=8, help="Messages in flight per pair (throughput).")
    parser.add_argument("--rate", type=float, default=400.0, help="Messages/s in all (latency run).")
    parser.add_argument("--repeat", type=int, default=3, help="Rounds; setups alternate, medians are reported.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for redis.json and redis.md.")
    opts = parser.parse_args(list(argv) if argv is not None else None)

    load = os.getloadavg()
    started = time.monotonic()
    redis_proc, redis_url, tmp = _start_redis()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in SETUPS}
    try:
        for _ in range(opts.repeat):  # alternating setups spreads the machine's load over all
            for name, processes, on_redis, cross in SETUPS:
                url = redis_url if on_redis else None
                runs[name].append(_run_setup(name, processes, url, opts, cross=cross, redis_pid=redis_proc.pid))
    finally:
        _stop(redis_proc)
        tmp.cleanup()
    rows = []
    for name, *_ in SETUPS:
        results = runs[name]
        rows.append(
            {
                "setup": name,
                "msgs_per_s": _median([r["msgs_per_s"] for r in results]),
                "p50_ms": _median([r["p50_ms"] for r in results]),
                "p99_ms": _median([r["p99_ms"] for r in results]),
                "lost": sum(r["lost"] for r in results),
                "server_cpu_us_per_msg": _median([r["server_cpu_us_per_msg"] for r in results]),
                "busiest_server_cpu_us_per_msg": _median([r["busiest_server_cpu_us_per_msg"] for r in results]),
                "redis_cpu_us_per_msg": _median([r["redis_cpu_us_per_msg"] for r in results]),
                "server_cpu_share": _median([r["server_cpu_share"] for r in results]),
                "runs": results,
            }
        )
    base, crossing, local = rows[0], rows[2], rows[3]
    load_after = os.getloadavg()
    summary = {
        "cores": os.cpu_count(),
        "loadavg_before": load,
        "loadavg_after": load_after,
        "wall_s": time.monotonic() - started,
        "duration_s": opts.duration,
        "pairs": opts.pairs,
        "window": opts.window,
        "rate": opts.rate,
        "repeat": opts.repeat,
        "rows": rows,
        "two_crossing_vs_one_memory": crossing["msgs_per_s"] / base["msgs_per_s"],
        # With a core per server process, the busiest one's CPU per message bounds the total rate.
        "projected_two_crossing_vs_one_memory": base["busiest_server_cpu_us_per_msg"]
        / crossing["busiest_server_cpu_us_per_msg"],
        "projected_two_local_vs_one_memory": base["busiest_server_cpu_us_per_msg"]
        / local["busiest_server_cpu_us_per_msg"],
        "two_local_vs_one_memory": local["msgs_per_s"] / base["msgs_per_s"],
        "p99_added_ms": crossing["p99_ms"] - base["p99_ms"],
        "p50_added_ms": crossing["p50_ms"] - base["p50_ms"],
    }
    lines = [
        f"{summary['cores']} cores, load average (1 min) {load[0]:.1f} before and {load_after[0]:.1f} after; "
        f"{opts.pairs} pairs, window {opts.window}, {opts.duration:g} s per run, latency at {opts.rate:g} msg/s, "
        f"median of {opts.repeat} alternating rounds",
        "",
        "| setup | relay msgs/s | p50 ms | p99 ms | lost | server CPU µs/msg | busiest process µs/msg | "
        "Redis µs/msg | msgs/s with a core per process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        capacity = 1e6 / row["busiest_server_cpu_us_per_msg"] if row["busiest_server_cpu_us_per_msg"] else 0
        lines.append(
            f"| {row['setup']} | {row['msgs_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['lost']} "
            f"| {row['server_cpu_us_per_msg']:.0f} | {row['busiest_server_cpu_us_per_msg']:.0f} "
            f"| {row['redis_cpu_us_per_msg']:.0f} | {capacity:.0f} |"
        )
    lines += [
        "",
        f"Two processes on Redis / one in memory: {summary['two_crossing_vs_one_memory']:.2f}x messages/s when "
        f"every message crosses processes, {summary['two_local_vs_one_memory']:.2f}x when the peers of a pair "
        f"share a process. Added by the Redis hop at {opts.rate:g} msg/s: p50 {summary['p50_added_ms']:+.2f} ms, "
        f"p99 {summary['p99_added_ms']:+.2f} ms.",
        "",
        "With a core per server process (CPU per message of the busiest process, measured above): "
        f"{summary['projected_two_crossing_vs_one_memory']:.2f}x when every message crosses, "
        f"{summary['projected_two_local_vs_one_memory']:.2f}x when pairs share a process "
        "(Redis on a core of its own).",
    ]
    print("\n".join(lines))
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "redis.json").write_text(json.dumps(summary, indent=2) + "\n")
    (opts.out / "redis.md").write_text("\n".join(lines) + "\n")
    return 0


def _entry(argv: Sequence[str]) -> int:
    if argv and argv[0] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--redis-url", default=None)
        args = parser.parse_args(argv[1:])
        return _worker(args.port, args.redis_url)
    if argv and argv[0] == "loadgen":
        return _loadgen(argv[1])
    return main(argv)


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[1:]))
