"""Instructions a server executes per relayed message, counted by valgrind (callgrind).

``python -m bench.instructions`` runs ours and the bare aiohttp forwarder under callgrind, opens
two peers, relays a warm-up batch, zeroes the counters, relays N messages of the relay mix (an
offer, an answer, four candidates; a -> b, every one received), and dumps the counters. The
count is the server's user-space work for those messages: the event loop, aiohttp, our code.
Unlike time, it does not change when other work shares the machine. It leaves out the kernel's
work (system calls, loopback TCP), which is where batched writes save, so it is the ratio of the
Python-level work, not of throughput. Node's JIT makes the PeerJS server's count meaningless, so it is not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._servers import ROOT, WORK, free_port
from bench._ws import HttpClient, WsClient, open_ws, text_frame
from bench.loadgen import MIX

RESULTS = Path(__file__).resolve().parent / "results"


def _command(kind: str, port: int, uvloop: bool) -> list[str]:
    if kind == "ours":
        return [
            sys.executable,
            "-m",
            "fantasize_rtc",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--rate-limit-per-sec",
            "0",
            "--max-connections-per-address",
            "0",
            "--max-rooms-per-address",
            "0",
            "--event-loop",
            "uvloop" if uvloop else "asyncio",
        ]
    return [sys.executable, "-m", "bench.baseline_aiohttp", "--port", str(port)] + (["--uvloop"] if uvloop else [])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server under valgrind exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server under valgrind did not listen on {port} in {timeout} s")


def _total_ir(path: Path) -> int:
    for line in path.read_text().splitlines():
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


async def _peers(kind: str, port: int) -> tuple[WsClient, WsClient, list[bytes]]:
    if kind == "ours":
        http = HttpClient("127.0.0.1", port)
        paths = []
        for peer in ("a", "b"):
            status, body = await http.post("/rtc/connect", json.dumps({"roomId": "ir", "peerId": peer}).encode())
            assert status == 200, body
            paths.append("/rtc/ws?token=" + json.loads(body)["token"])
        await http.close()
        frames = [
            text_frame(
                f'{{"type":"signal","signal":{{"type":"{t}","to":"b","payload":'
                + json.dumps(p, separators=(",", ":"))
                + "}}"
            )
            for t, p in MIX
        ]
    else:
        paths = ["/ws?id=a", "/ws?id=b"]
        frames = [
            text_frame('{"to":"b","type":"' + t + '","payload":' + json.dumps(p, separators=(",", ":")) + "}")
            for t, p in MIX
        ]
    a = await open_ws("127.0.0.1", port, paths[0], timeout=120)
    b = await open_ws("127.0.0.1", port, paths[1], timeout=120)
    return a, b, frames


async def _relay(a: WsClient, b: WsClient, frames: list[bytes], n: int, timeout: float) -> None:
    target = b.received + n
    for i in range(n):
        a.send_frame(frames[i % len(frames)])
    deadline = time.monotonic() + timeout
    while b.received < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {b.received - target + n} of {n} messages arrived")
        await asyncio.sleep(0.05)


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=120)


async def measure(kind: str, n: int, uvloop: bool) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    for old in WORK.glob(f"callgrind-{kind}.*"):
        old.unlink()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = WORK / f"callgrind-{kind}.%p"
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled from a thread
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *_command(kind, port, uvloop)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = 0
    try:
        await asyncio.to_thread(_wait_port, port, proc, 600)
        files = list(WORK.glob(f"callgrind-{kind}.*"))
        pid = int(files[0].name.rsplit(".", 1)[1])  # valgrind's own process (the launcher execs it)
        a, b, frames = await _peers(kind, port)
        await _relay(a, b, frames, 60, 300)  # warm-up: imports, caches, first allocations
        await asyncio.to_thread(_control, "-z", pid)
        await _relay(a, b, frames, n, 600)
        await asyncio.to_thread(_control, "-d", pid)
        dumps = sorted(f for f in WORK.glob(f"callgrind-{kind}.{pid}.*"))
        ir = _total_ir(dumps[-1])
        a.abort()
        b.abort()
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return {"server": kind, "messages": n, "instructions": ir, "instructions_per_message": round(ir / n)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=600, help="messages counted (a multiple of 6 keeps the mix exact)")
    parser.add_argument("--servers", default="bare,ours")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    from bench.signaling import use_uvloop

    uvloop = use_uvloop(args.event_loop)
    results = [asyncio.run(measure(kind, args.n, uvloop)) for kind in args.servers.split(",")]
    by = {r["server"]: r["instructions_per_message"] for r in results}
    for r in results:
        print(f"{r['server']:>5}: {r['instructions_per_message']:>9,} instructions per relayed message")
    if "ours" in by and "bare" in by:
        print(f"bare / ours: {by['bare'] / by['ours']:.2f}x (user-space work; the kernel's is not counted)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructions.json").write_text(
        json.dumps({"event_loop": "uvloop" if uvloop else "asyncio", "results": results}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
