"""Signaling benchmark: fantasize-rtc against the PeerJS server and a bare aiohttp forwarder.

``python -m bench signaling`` (or ``make bench``) starts every server itself on loopback, pins the
server to one core and the load generator to the others (``taskset``), runs each scenario
against each server in turn and writes ``bench/results/signaling.json`` and
``bench/results/signaling.md`` (``--write-doc`` also puts the table into BENCHMARKS.md).

Scenarios: relay throughput and latency, HTTP signal (wrk), idle peers, churn. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._servers import ROOT, ServerProcess, Workers, node_available, plan_cores
from bench._ws import HttpClient, open_ws
from bench.loadgen import CANDIDATE

log = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"
DOC = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- signaling:begin -->", "<!-- signaling:end -->"
LABEL = {"ours": "fantasize-rtc", "peerjs": "PeerJS server 1.0.2", "bare": "bare aiohttp"}


@dataclass
class Settings:
    pairs: list[int]
    duration: float
    warmup: float
    idle_peers: int
    idle_seconds: float
    heartbeat_s: float
    churn_concurrency: int
    workers: int
    kinds: list[str]
    scenarios: list[str]
    uvloop: bool
    in_flight: int
    repeat: int = 1  # rounds of the relay scenario; rows are medians
    settle: float = 2.0  # seconds for processes to finish starting before RSS and CPU are read
    offer_deflate: bool = False  # clients offer permessage-deflate, as browsers do
    storm_peers: int = 10_000  # peers in the reconnect storm


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[k]


def split_pairs(pairs: list[tuple[str, str, str]], n: int) -> list[list[tuple[str, str, str]]]:
    n = max(1, min(n, len(pairs)))
    return [pairs[i::n] for i in range(n)]


# -- scenario 1: relay throughput and latency ------------------------------------------------------


async def relay_once(
    server: ServerProcess, s: Settings, n_pairs: int, tag: str, lg_cores: list[int], mode: str, rate: float = 0.0
) -> dict[str, Any]:
    pairs = [(f"{tag}r{i}", f"{tag}a{i}", f"{tag}b{i}") for i in range(n_pairs)]
    chunks = split_pairs(pairs, s.workers)
    window = max(1, math.ceil(s.in_flight / (2 * n_pairs)))
    jobs = [
        {
            "kind": server.kind,
            "host": "127.0.0.1",
            "port": server.port,
            "mode": mode,
            "pairs": chunk,
            "window": window,
            "warmup": s.warmup,
            "duration": s.duration,
            "rate": rate * len(chunk) / n_pairs,
            "offer_deflate": s.offer_deflate,
        }
        for chunk in chunks
    ]
    workers = Workers(jobs, lg_cores, s.uvloop)
    try:
        await workers.start()
        cpu0, t0 = server.cpu(), time.monotonic()
        results = await workers.go(timeout=s.warmup + s.duration + 60)
        server_cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
    finally:
        await workers.close()
    lg_cpu = sum(r["cpu"] for r in results) / max(r["elapsed"] for r in results)
    out: dict[str, Any] = {
        "pairs": n_pairs,
        "server_cpu": round(server_cpu, 3),
        "loadgen_cpu": round(lg_cpu, 3),
        "loadgen_cores": max(1, len(lg_cores)),
    }
    if mode == "relay":
        elapsed = max(r["elapsed"] for r in results)
        out["msgs_per_s"] = round(sum(r["delivered"] for r in results) / elapsed, 1)
        out["in_flight"] = window * 2 * n_pairs
        # CPU time per message does not depend on how much CPU the server was given: it is the
        # number to compare when other work shares the machine.
        out["server_us_per_msg"] = round(1e6 * server_cpu / out["msgs_per_s"], 1) if out["msgs_per_s"] else None
    else:
        lat = [x / 1000 for r in results for x in r["latencies_us"]]
        sent = sum(r["sent"] for r in results)
        received = sum(r["received"] for r in results)
        out.update(
            offered_per_s=round(rate, 1),
            sent=sent,
            received=received,
            p50_ms=_round(percentile(lat, 50)),
            p99_ms=_round(percentile(lat, 99)),
            max_ms=_round(max(lat) if lat else None),
        )
    # The load generator is the limit when its cores are busy while the server's is not.
    out["loadgen_bound"] = lg_cpu >= 0.9 * max(1, len(lg_cores)) and server_cpu < 0.9
    return out


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


async def scenario_relay(s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    """Throughput, then latency, each in ``s.repeat`` rounds that go through every server in turn
    (so a noisy minute hits all of them); a row is the median round, every round is in the JSON."""
    server_cores, lg_cores = cores
    # PeerJS runs first: half of its saturation rate is the fixed load the others are measured at.
    kinds = sorted(s.kinds, key=lambda k: {"peerjs": 0, "bare": 1, "ours": 2}[k])
    runs: dict[str, dict[str, list[list[dict[str, Any]]]]] = {
        k: {"throughput": [[] for _ in s.pairs], "latency": [[] for _ in s.pairs]} for k in kinds
    }
    for _ in range(s.repeat):
        for kind in kinds:
            with ServerProcess(kind, server_cores, s.uvloop) as server:
                for i, n in enumerate(s.pairs):
                    res = await relay_once(server, s, n, f"t{n}x", lg_cores, "relay")
                    log.info(
                        "relay   %-6s pairs=%-4d %8.0f msg/s  server cpu %.2f (%s us/msg)  loadgen cpu %.2f",
                        kind,
                        n,
                        res["msgs_per_s"],
                        res["server_cpu"],
                        res["server_us_per_msg"],
                        res["loadgen_cpu"],
                    )
                    runs[kind]["throughput"][i].append(res)
    out: dict[str, Any] = {
        k: {"throughput": [_median_run(r, "msgs_per_s") for r in runs[k]["throughput"]], "latency": []} for k in kinds
    }
    rates = []
    for i in range(len(s.pairs)):
        sat = {k: out[k]["throughput"][i]["msgs_per_s"] for k in kinds}
        # without PeerJS: half of the slowest median saturation
        rates.append(0.5 * (sat["peerjs"] if "peerjs" in sat else min(sat.values())))
    for _ in range(s.repeat):
        for kind in kinds:
            with ServerProcess(kind, server_cores, s.uvloop) as server:
                for i, n in enumerate(s.pairs):
                    res = await relay_once(server, s, n, f"l{n}x", lg_cores, "latency", rates[i])
                    log.info(
                        "latency %-6s pairs=%-4d at %6.0f msg/s: p50 %s ms p99 %s ms (%d/%d received)",
                        kind,
                        n,
                        rates[i],
                        res["p50_ms"],
                        res["p99_ms"],
                        res["received"],
                        res["sent"],
                    )
                    runs[kind]["latency"][i].append(res)
    for kind in kinds:
        for i in range(len(s.pairs)):
            rounds = runs[kind]["latency"][i]
            row = dict(_median_run(rounds, "p99_ms"))
            row["p50_ms"] = _median([r["p50_ms"] for r in rounds])  # each percentile's own median
            out[kind]["latency"].append(row)
        out[kind]["rounds"] = runs[kind]
    return out


def _median(values: list[Any]) -> Any:
    present = sorted(v for v in values if v is not None)
    return present[(len(present) - 1) // 2] if present else None


def _median_run(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose ``key`` is the median (the lower one of an even count)."""
    ranked = sorted(rounds, key=lambda r: (r.get(key) is None, r.get(key) or 0))
    return ranked[(len(ranked) - 1) // 2]


# -- scenario 2: HTTP signal with wrk --------------------------------------------------------------

LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
%s
"""


def parse_wrk(text: str) -> dict[str, Any]:
    def dur_ms(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
        if not m:
            return float("nan")
        x, unit = float(m.group(1)), m.group(2)
        return x * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "requests_per_s": float(rps.group(1)) if rps else None,
        "p50_ms": _round(dur_ms(p50.group(1))) if p50 else None,
        "p99_ms": _round(dur_ms(p99.group(1))) if p99 else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


async def scenario_http(s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    """``s.repeat`` rounds through every server in turn (wrk's figure moves a lot between runs on
    a shared machine); each server's row is its median round."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    runs: dict[str, list[dict[str, Any]]] = {}
    kinds: list[str] = [k for k in ("bare", "ours") if k in s.kinds]
    for _ in range(max(1, s.repeat)):
        for kind in kinds:
            runs.setdefault(kind, []).append(await _http_once(kind, s, cores))
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        ranked = sorted(results, key=lambda r: r["requests_per_s"])
        out[kind] = {**ranked[len(ranked) // 2], "rounds": [r["requests_per_s"] for r in results]}
    if "peerjs" in s.kinds:
        out["peerjs"] = {"skipped": "PeerJS server 1.x has no HTTP signal route (WebSocket only)"}
    return out


async def _http_once(kind: str, s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    server_cores, lg_cores = cores
    with ServerProcess(kind, server_cores, s.uvloop) as server:
        return await http_load(server, kind, s, lg_cores)


async def http_load(server: ServerProcess, kind: str, s: Settings, lg_cores: list[int]) -> dict[str, Any]:
    """wrk's ``POST`` of one candidate, 32 connections, against a running server."""
    wrk = shutil.which("wrk")
    assert wrk is not None
    http = HttpClient("127.0.0.1", server.port)
    body: dict[str, Any]
    if kind == "ours":
        tokens = {}
        for peer in ("a", "b"):
            status, answer = await http.post("/rtc/connect", json.dumps({"roomId": "http", "peerId": peer}).encode())
            assert status == 200, answer
            tokens[peer] = json.loads(answer)["token"]
        receiver = await open_ws("127.0.0.1", server.port, "/rtc/ws?token=" + tokens["b"])
        body = {
            "roomId": "http",
            "fromPeerId": "a",
            "signal": {"type": "candidate", "to": "b", "payload": CANDIDATE},
        }
        headers = f'wrk.headers["Authorization"] = "Bearer {tokens["a"]}"'
        path = "/rtc/signal"
    else:
        receiver = await open_ws("127.0.0.1", server.port, "/ws?id=b")
        body = {"to": "b", "type": "candidate", "payload": CANDIDATE}
        headers = ""
        path = "/signal"
    await http.close()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (json.dumps(body, separators=(",", ":")), headers))
        script = f.name
    threads = max(1, len(lg_cores))
    cmd = [
        wrk,
        f"-t{threads}",
        "-c32",
        f"-d{max(1, round(s.duration))}s",
        "--latency",
        "-s",
        script,
        f"http://127.0.0.1:{server.port}{path}",
    ]
    if lg_cores:
        cmd = ["taskset", "-c", ",".join(map(str, lg_cores)), *cmd]
    cpu0, t0 = server.cpu(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text = (await asyncio.wait_for(proc.communicate(), s.duration + 60))[0].decode()
    server_cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
    os.unlink(script)
    res = parse_wrk(text)
    res.update(server_cpu=round(server_cpu, 3), delivered_to_ws=receiver.received)
    await receiver.close()
    if res["requests_per_s"] is None:
        raise RuntimeError(f"wrk gave no result for {kind}:\n{text}")
    log.info(
        "http   %-6s %8.0f req/s  p99 %s ms  non-2xx %d",
        kind,
        res["requests_per_s"],
        res["p99_ms"],
        res["non_2xx"],
    )
    return res


# -- scenario 3: idle peers ------------------------------------------------------------------------


async def scenario_idle(s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    """Every server holds ``idle_peers`` at once, for the same window: one minute for all three."""
    server_cores, lg_cores = cores
    out: dict[str, Any] = {}
    servers = [ServerProcess(kind, server_cores, s.uvloop) for kind in s.kinds]
    workers: list[Workers] = []
    try:
        base: dict[str, int] = {}
        for server in servers:
            server.start()
        await asyncio.sleep(s.settle / 2)  # let each process finish its imports before the baseline RSS
        for server in servers:
            base[server.kind] = server.rss()
        t_connect: dict[str, float] = {}

        async def connect(server: ServerProcess) -> Workers:
            n_pairs = s.idle_peers // 2
            pairs = [(f"i{i // 4}", f"ia{i}", f"ib{i}") for i in range(n_pairs)]  # 8 peers a room
            jobs = [
                {
                    "kind": server.kind,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "mode": "idle",
                    "pairs": chunk,
                    "duration": s.idle_seconds,
                    "heartbeat_s": s.heartbeat_s,
                    "connect_concurrency": 64,
                    "offer_deflate": s.offer_deflate,
                }
                for chunk in split_pairs(pairs, s.workers)
            ]
            w = Workers(jobs, lg_cores, s.uvloop)
            workers.append(w)
            t0 = time.monotonic()
            await w.start(timeout=600)
            t_connect[server.kind] = time.monotonic() - t0
            log.info("idle   %-6s %d peers connected in %.1f s", server.kind, n_pairs * 2, t_connect[server.kind])
            return w

        # the servers' peers connect at the same time: the connect phase is not what is measured
        ordered = await asyncio.gather(*(connect(server) for server in servers))
        workers[:] = ordered
        await asyncio.sleep(s.settle)  # the last handshakes settle before the window opens
        cpu0 = {sv.kind: sv.cpu() for sv in servers}
        run0 = {sv.kind: sv.runtime() for sv in servers}
        t0 = time.monotonic()
        results = await asyncio.gather(*(w.go(timeout=s.idle_seconds + 120) for w in workers))
        elapsed = time.monotonic() - t0
        for server, res in zip(servers, results, strict=True):
            peers = sum(r["peers"] for r in res)
            lost = sum(r["lost"] for r in res)
            rss = server.rss()
            out[server.kind] = {
                "peers": peers,
                "lost": lost,
                "connect_s": round(t_connect[server.kind], 2),
                "heartbeats": sum(r["heartbeats"] for r in res),
                "rss_base_mb": round(base[server.kind] / 2**20, 1),
                "rss_mb": round(rss / 2**20, 1),
                "rss_per_peer_kb": round((rss - base[server.kind]) / max(1, peers) / 1024, 2),
                "idle_cpu_pct": round(100 * (server.cpu() - cpu0[server.kind]) / elapsed, 2),
                "idle_runtime_pct": round(100 * (server.runtime() - run0[server.kind]) / elapsed, 2),
            }
            log.info(
                "idle   %-6s %d peers: %.1f KB/peer, %.2f%% of a core (ticks: %.2f%%)",
                server.kind,
                peers,
                out[server.kind]["rss_per_peer_kb"],
                out[server.kind]["idle_runtime_pct"],
                out[server.kind]["idle_cpu_pct"],
            )
    finally:
        for w in workers:
            await w.close()
        for server in servers:
            server.stop()
    return out


# -- scenario 5: reconnect storm --------------------------------------------------------------------


async def scenario_storm(s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    """``storm_peers`` WebSocket peers connected; every socket drops at once; each comes back with
    the clients' backoff and jitter. One server at a time, alone on its core."""
    server_cores, lg_cores = cores
    out: dict[str, Any] = {}
    n_pairs = s.storm_peers // 2
    for kind in s.kinds:
        with ServerProcess(kind, server_cores, s.uvloop) as server:
            pairs = [(f"s{i // 4}", f"sa{i}", f"sb{i}") for i in range(n_pairs)]
            jobs = [
                {
                    "kind": kind,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "mode": "storm",
                    "pairs": chunk,
                    "connect_concurrency": 64,
                    "offer_deflate": s.offer_deflate,
                }
                for chunk in split_pairs(pairs, s.workers)
            ]
            w = Workers(jobs, lg_cores, s.uvloop)
            try:
                await w.start(timeout=900)
                await asyncio.sleep(s.settle)
                cpu0 = server.cpu()
                res = await w.go(timeout=180)
                server_cpu = server.cpu() - cpu0
            finally:
                await w.close()
            back = sorted(t for r in res for t in r["back"])
            peers = sum(r["peers"] for r in res)
            out[kind] = {
                "peers": peers,
                "back": len(back),
                "t50_s": round(percentile(back, 50) or 0, 3),
                "t99_s": round(percentile(back, 99) or 0, 3),
                "t100_s": round(back[-1], 3) if len(back) == peers and back else None,
                "failed_attempts": sum(r["failures"] for r in res),
                "server_cpu_s": round(server_cpu, 2),
            }
            log.info(
                "storm  %-6s %d/%d back: 50%% %.2f s, 99%% %.2f s, 100%% %s s; %d failed attempts; server cpu %.1f s",
                kind,
                len(back),
                peers,
                out[kind]["t50_s"],
                out[kind]["t99_s"],
                out[kind]["t100_s"],
                out[kind]["failed_attempts"],
                server_cpu,
            )
    return out


# -- scenario 4: churn -----------------------------------------------------------------------------


async def scenario_churn(s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    """``s.repeat`` rounds through every server in turn; each server's row is its median round."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(max(1, s.repeat)):
        for kind in s.kinds:
            runs.setdefault(kind, []).append(await _churn_once(kind, s, cores))
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        ranked = sorted(results, key=lambda r: r["cycles_per_s"])
        out[kind] = {**ranked[len(ranked) // 2], "rounds": [r["cycles_per_s"] for r in results]}
    return out


async def _churn_once(kind: str, s: Settings, cores: tuple[list[int], list[int]]) -> dict[str, Any]:
    server_cores, lg_cores = cores
    with ServerProcess(kind, server_cores, s.uvloop) as server:
        jobs = [
            {
                "kind": kind,
                "host": "127.0.0.1",
                "port": server.port,
                "mode": "churn",
                "concurrency": max(1, s.churn_concurrency // s.workers),
                "warmup": s.warmup,
                "duration": s.duration,
                "offer_deflate": s.offer_deflate,
            }
            for _ in range(s.workers)
        ]
        w = Workers(jobs, lg_cores, s.uvloop)
        try:
            await w.start()
            cpu0, t0 = server.cpu(), time.monotonic()
            res = await w.go(timeout=s.warmup + s.duration + 60)
            server_cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
        finally:
            await w.close()
    elapsed = max(r["elapsed"] for r in res)
    lg_cpu = sum(r["cpu"] for r in res) / elapsed
    out = {
        "cycles_per_s": round(sum(r["cycles"] for r in res) / elapsed, 1),
        "errors": sum(r["errors"] for r in res),
        "server_cpu": round(server_cpu, 3),
        "loadgen_cpu": round(lg_cpu, 3),
    }
    log.info(
        "churn  %-6s %8.0f cycles/s  errors %d  server cpu %.2f  loadgen cpu %.2f",
        kind,
        out["cycles_per_s"],
        out["errors"],
        server_cpu,
        lg_cpu,
    )
    return out


# -- report ----------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and x >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x}{unit}"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    kinds = [k for k in ("ours", "bare", "peerjs") if k in meta["kinds"]]
    lines = [
        f"Run {meta['date']} on {meta['machine']}; server pinned to core(s) {meta['server_cores'] or 'any'}, "
        f"load generator to {meta['loadgen_cores'] or 'any'} ({meta['workers']} process(es)); "
        f"{meta['duration']} s per measurement after {meta['warmup']} s warm-up; relay rows are the median of "
        f"{meta.get('repeat', 1)} round(s) through every server in turn; event loop: "
        f"{'uvloop' if meta['uvloop'] else 'asyncio'}; run took {meta['took_s']:.0f} s.",
        "",
    ]
    relay = results.get("relay")
    if relay:
        lines += ["#### Relay throughput (messages delivered per second, saturated)", ""]
        head = "| pairs | " + " | ".join(LABEL[k] for k in kinds) + " | ours / bare | ours / PeerJS |"
        lines += [head, "|" + "---|" * (len(kinds) + 3)]
        for i, n in enumerate(meta["pairs"]):
            row = {k: relay[k]["throughput"][i] for k in kinds}
            cells = []
            for k in kinds:
                r = row[k]
                flag = " (load-bound)" if r["loadgen_bound"] else ""
                cells.append(f"{_fmt(r['msgs_per_s'])}{flag} (cpu {r['server_cpu']:.0%}, load {r['loadgen_cpu']:.0%})")
            lines.append(
                f"| {n} | "
                + " | ".join(cells)
                + f" | {_ratio(row['ours']['msgs_per_s'], row.get('bare', {}).get('msgs_per_s'))}"
                f" | {_ratio(row['ours']['msgs_per_s'], row.get('peerjs', {}).get('msgs_per_s'))} |"
            )
        if any("rounds" in relay[k] and len(relay[k]["rounds"]["throughput"][0]) > 1 for k in kinds):
            lines += ["", "Every round (msgs/s, in the order they ran):", ""]
            for i, n in enumerate(meta["pairs"]):
                per_kind = [
                    f"{LABEL[k]} " + " / ".join(_fmt(r["msgs_per_s"]) for r in relay[k]["rounds"]["throughput"][i])
                    for k in kinds
                    if "rounds" in relay[k]
                ]
                lines.append(f"- {n} pair(s): " + "; ".join(per_kind))
        lines += [
            "",
            "#### Relay: server CPU time per delivered message (us; lower is better)",
            "",
            "The same runs. On a core of its own a CPU-bound server's throughput is 1 / this, so the "
            "ratios (theirs / ours) are the throughput ratios a quiet machine would show; CPU time per "
            "message moves much less than throughput when other work shares the machine.",
            "",
        ]
        head = "| pairs | " + " | ".join(LABEL[k] for k in kinds) + " | bare / ours | PeerJS / ours |"
        lines += [head, "|" + "---|" * (len(kinds) + 3)]
        for i, n in enumerate(meta["pairs"]):
            row = {k: relay[k]["throughput"][i] for k in kinds}
            cells = [_fmt(row[k].get("server_us_per_msg")) for k in kinds]
            ours_us = row["ours"].get("server_us_per_msg")
            lines.append(
                f"| {n} | " + " | ".join(cells) + f" | {_ratio(row.get('bare', {}).get('server_us_per_msg'), ours_us)}"
                f" | {_ratio(row.get('peerjs', {}).get('server_us_per_msg'), ours_us)} |"
            )
        lines += ["", "#### Relay latency at a fixed offered load (half of PeerJS's saturation rate)", ""]
        head = "| pairs | offered msg/s | " + " | ".join(f"{LABEL[k]} p50 / p99 ms" for k in kinds) + " |"
        lines += [head, "|" + "---|" * (len(kinds) + 2)]
        for i, n in enumerate(meta["pairs"]):
            row = {k: relay[k]["latency"][i] for k in kinds}
            offered = row[kinds[0]]["offered_per_s"]
            cells = []
            for k in kinds:
                r = row[k]
                lost = r["sent"] - r["received"]
                cells.append(f"{r['p50_ms']} / {r['p99_ms']}" + (f" ({lost} late/lost)" if lost else ""))
            lines.append(f"| {n} | {_fmt(offered)} | " + " | ".join(cells) + " |")
        lines.append("")
    http = results.get("http")
    if http:
        lines += ["#### HTTP signal (`POST /rtc/signal`, wrk, 32 connections)", ""]
        lines += ["| server | requests/s | p50 ms | p99 ms | server cpu |", "|---|---|---|---|---|"]
        for k in kinds:
            r = http.get(k)
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {LABEL[k]} | n/a: {r['skipped']} | | | |")
            else:
                lines.append(
                    f"| {LABEL[k]} | {_fmt(r['requests_per_s'])} | {r['p50_ms']} | {r['p99_ms']} | "
                    f"{r['server_cpu']:.0%} |"
                )
        rounds = [
            f"{LABEL[k]} " + " / ".join(_fmt(x) for x in http[k]["rounds"])
            for k in kinds
            if "rounds" in http.get(k, {})
        ]
        if rounds:
            lines.append(
                "\nEvery round (requests/s, in the order they ran; rows are each server's median): " + "; ".join(rounds)
            )
        if "ours" in http and "bare" in http and "requests_per_s" in http["ours"]:
            lines.append(
                f"\nours / bare aiohttp handler: **{_ratio(http['ours']['requests_per_s'], http['bare']['requests_per_s'])}**"
            )
        lines.append("")
    idle = results.get("idle")
    if idle:
        lines += [
            f"#### Idle peers ({meta['idle_peers']:,} WebSockets per server held for {meta['idle_seconds']:g} s, "
            f"a heartbeat every {meta['heartbeat_s']:g} s each)",
            "",
        ]
        lines += [
            "| server | peers held | connect s | RSS before / after MB | RSS per peer KB "
            "| idle CPU, scheduler clock (% of a core) | idle CPU, utime+stime ticks |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in kinds:
            r = idle.get(k)
            if r:
                lines.append(
                    f"| {LABEL[k]} | {r['peers'] - r['lost']:,} | {r['connect_s']} | {r['rss_base_mb']} / {r['rss_mb']} | "
                    f"{r['rss_per_peer_kb']} | {r.get('idle_runtime_pct', 'n/a')}% | {r['idle_cpu_pct']}% |"
                )
        if "ours" in idle and "bare" in idle:
            lines.append(
                f"\nRSS per peer, ours / bare aiohttp: **{_ratio(idle['ours']['rss_per_peer_kb'], idle['bare']['rss_per_peer_kb'])}**"
            )
        lines.append("")
    churn = results.get("churn")
    if churn:
        lines += [f"#### Churn (connect + join + leave, {meta['churn_concurrency']} concurrent loops)", ""]
        lines += ["| server | cycles/s | errors | server cpu | load cpu |", "|---|---|---|---|---|"]
        for k in kinds:
            r = churn.get(k)
            if r:
                lines.append(
                    f"| {LABEL[k]} | {_fmt(r['cycles_per_s'])} | {r['errors']} | {r['server_cpu']:.0%} | "
                    f"{r['loadgen_cpu']:.0%} |"
                )
        rounds = [
            f"{LABEL[k]} " + " / ".join(_fmt(x) for x in churn[k]["rounds"])
            for k in kinds
            if "rounds" in churn.get(k, {})
        ]
        if rounds:
            lines.append(
                "\nEvery round (cycles/s, in the order they ran; rows are each server's median): " + "; ".join(rounds)
            )
        if "ours" in churn and "peerjs" in churn:
            lines.append(
                f"\nours / PeerJS: **{_ratio(churn['ours']['cycles_per_s'], churn['peerjs']['cycles_per_s'])}**"
            )
        lines.append("")
    storm = results.get("storm")
    if storm:
        lines += [
            f"#### Reconnect storm ({meta.get('storm_peers', '?'):,} WebSocket peers drop at once and come back "
            "with the clients' backoff and jitter)",
            "",
            "| server | back | 50% back after | 99% | 100% | failed attempts | server CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in kinds:
            r = storm.get(k)
            if r:
                lines.append(
                    f"| {LABEL[k]} | {r['back']:,} / {r['peers']:,} | {r['t50_s']} s | {r['t99_s']} s | "
                    f"{r['t100_s'] if r['t100_s'] is not None else 'not all'} s | {r['failed_attempts']} | "
                    f"{r['server_cpu_s']} s |"
                )
        lines.append("")
    return "\n".join(lines)


def write_doc(table: str, doc: Path = DOC) -> None:
    """Replace the generated block of BENCHMARKS.md's Signaling section (and nothing else)."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{doc} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + BEGIN + "\n" + table.rstrip() + "\n" + END + tail)


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench signaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenarios", default="relay,http,idle,churn,storm", help="comma-separated subset")
    p.add_argument("--servers", default="ours,bare,peerjs", help="comma-separated subset of ours,bare,peerjs")
    p.add_argument("--pairs", default="1,50,500", help="pair counts for the relay scenario")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--repeat", type=int, default=3, help="rounds of the relay scenario (rows are medians)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each measurement")
    p.add_argument("--in-flight", type=int, default=256, help="messages in flight in the saturated relay")
    p.add_argument("--idle-peers", type=int, default=10_000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--heartbeat-s", type=float, default=30.0, help="idle heartbeat period (ours announces 30 s)")
    p.add_argument("--churn-concurrency", type=int, default=16)
    p.add_argument("--storm-peers", type=int, default=10_000, help="peers in the reconnect storm")
    p.add_argument("--workers", type=int, default=0, help="load generator processes (default: one per load core)")
    p.add_argument(
        "--event-loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="loop for our server, the bare one and the load generator (auto: uvloop when installed)",
    )
    p.add_argument(
        "--offer-deflate",
        action="store_true",
        help="clients offer permessage-deflate as browsers do (servers that accept compress every frame)",
    )
    p.add_argument("--quick", action="store_true", help="tiny run (smoke test): few peers, short windows")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for signaling.json and signaling.md")
    p.add_argument("--write-doc", action="store_true", help="also fill the table into BENCHMARKS.md")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render the table of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.duration, args.warmup = "1,2", 0.5, 0.2
        args.idle_peers, args.idle_seconds, args.heartbeat_s, args.churn_concurrency = 20, 1.0, 0.5, 2
        args.storm_peers = 20
        args.in_flight, args.repeat = 16, 1
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cores, lg_cores = plan_cores()
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if "peerjs" in kinds and not node_available():
        log.warning("node/npm not found: skipping the PeerJS server")
        kinds.remove("peerjs")
    s = Settings(
        pairs=[int(x) for x in args.pairs.split(",")],
        duration=args.duration,
        warmup=args.warmup,
        idle_peers=args.idle_peers,
        idle_seconds=args.idle_seconds,
        heartbeat_s=args.heartbeat_s,
        churn_concurrency=args.churn_concurrency,
        workers=args.workers or max(1, len(lg_cores)),
        storm_peers=args.storm_peers,
        kinds=kinds,
        scenarios=[x.strip() for x in args.scenarios.split(",") if x.strip()],
        uvloop=use_uvloop(args.event_loop),
        in_flight=args.in_flight,
        repeat=max(1, args.repeat),
        settle=0.2 if args.quick else 2.0,
        offer_deflate=args.offer_deflate,
    )
    started = time.monotonic()
    results: dict[str, Any] = {}
    cores = (server_cores, lg_cores)
    scenarios = {
        "relay": scenario_relay,
        "http": scenario_http,
        "idle": scenario_idle,
        "churn": scenario_churn,
        "storm": scenario_storm,
    }
    for name in s.scenarios:
        if name not in scenarios:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(scenarios)}")
        log.info("scenario %s", name)
        results[name] = await scenarios[name](s, cores)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {len(server_cores) + len(lg_cores) or 1} cores, {_cpu_model()}, "
        f"Python {platform.python_version()}, {_node_version()}",
        "server_cores": server_cores,
        "loadgen_cores": lg_cores,
        "workers": s.workers,
        "kinds": kinds,
        "pairs": s.pairs,
        "duration": s.duration,
        "warmup": s.warmup,
        "repeat": s.repeat,
        "idle_peers": s.idle_peers,
        "idle_seconds": s.idle_seconds,
        "heartbeat_s": s.heartbeat_s,
        "churn_concurrency": s.churn_concurrency,
        "storm_peers": s.storm_peers,
        "uvloop": s.uvloop,
        "offer_deflate": s.offer_deflate,
        "took_s": time.monotonic() - started,
    }
    return results


def use_uvloop(choice: str) -> bool:
    if choice == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return False
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "no Node"
    import subprocess

    return "Node " + subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    results = json.loads(args.render.read_text()) if args.render else asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        (args.out / "signaling.json").write_text(json.dumps(results, indent=1) + "\n")
    table = render(results)
    (args.out / "signaling.md").write_text(table + "\n")
    print(table)
    if args.write_doc:
        write_doc(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
