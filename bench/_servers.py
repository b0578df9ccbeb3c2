"""Start, pin, measure and stop the servers under test, and the load generator workers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"
PEERJS_VERSION = "1.0.2"
PEERJS_DIR = WORK / "peerjs"
PEERJS_BIN = PEERJS_DIR / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan_cores() -> tuple[list[int], list[int]]:
    """(server cores, load generator cores): the server gets one core, the load the rest."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return [], []
    return cores[:1], cores[1:]


def pinned(cmd: list[str], cores: list[int]) -> list[str]:
    if not cores:
        return cmd
    return ["taskset", "-c", ",".join(map(str, cores)), *cmd]


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def ensure_peerjs() -> Path:
    """Install the npm package ``peer`` into bench/.work/peerjs (once) and return its bin script."""
    if PEERJS_BIN.exists():
        return PEERJS_BIN
    PEERJS_DIR.mkdir(parents=True, exist_ok=True)
    log.info("installing PeerJS server (npm peer@%s) into %s", PEERJS_VERSION, PEERJS_DIR)
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
            str(PEERJS_DIR),
            f"peer@{PEERJS_VERSION}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )
    if not PEERJS_BIN.exists():
        raise RuntimeError(f"npm installed peer but {PEERJS_BIN} is missing")
    return PEERJS_BIN


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children it waited for), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_runtime_seconds(pid: int) -> float:
    """Time the process's threads spent on a CPU, from the scheduler's own clock (nanoseconds,
    ``/proc/<pid>/task/*/schedstat``). utime + stime are sampled at timer ticks instead, which
    misjudges a process that wakes briefly many times a second (an idle server answering
    heartbeats): its wake-ups can line up with the ticks."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / 1e9


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class ServerProcess:
    """One server under test, started on a free loopback port and pinned to the server cores."""

    def __init__(self, kind: str, cores: list[int], uvloop: bool = False, pythonpath: str | None = None) -> None:
        self.kind = kind
        self.cores = cores
        self.uvloop = uvloop
        #: A folder put first on the server's PYTHONPATH: another build's ``server/`` (A/B runs).
        self.pythonpath = pythonpath
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        port = str(self.port)
        if self.kind == "ours":
            # The per-peer rate limit (50/s by default) would refuse a benchmark's traffic by design.
            cmd = [
                sys.executable,
                "-m",
                "fantasize_rtc",
                "serve",
                "--port",
                port,
                "--log-level",
                "warning",
                "--rate-limit-per-sec",
                "0",
                # every benchmark client comes from 127.0.0.1: the per-address limits would refuse them
                "--max-connections-per-address",
                "0",
                "--max-rooms-per-address",
                "0",
                "--max-peers-per-room",
                "8",
                "--event-loop",
                "uvloop" if self.uvloop else "asyncio",
            ]
        elif self.kind == "bare":
            cmd = [sys.executable, "-m", "bench.baseline_aiohttp", "--port", port]
            if self.uvloop:
                cmd.append("--uvloop")
        elif self.kind == "peerjs":
            # concurrent_limit defaults to 5000 connections: the idle scenario holds more.
            cmd = [
                "node",
                str(ensure_peerjs()),
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--concurrent_limit",
                "1000000",
                "--alive_timeout",
                "120000",
            ]
        else:
            raise ValueError(self.kind)
        return pinned(cmd, self.cores)

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath + os.pathsep + env["PYTHONPATH"]
        logs = WORK / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.kind}-{self.port}.log"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.kind} server did not listen on {self.port} in {timeout} s") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def runtime(self) -> float:
        return proc_runtime_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Workers:
    """Load generator processes pinned to the load cores: set up, go together, collect results."""

    def __init__(self, jobs: list[dict[str, Any]], cores: list[int], uvloop: bool = False) -> None:
        self.jobs = jobs
        self.cores = cores
        self.uvloop = uvloop
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, timeout: float = 120.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        for i, job in enumerate(self.jobs):
            cmd = [sys.executable, "-m", "bench.loadgen"] + (["--uvloop"] if self.uvloop else [])
            cores = [self.cores[i % len(self.cores)]] if self.cores else []
            proc = await asyncio.create_subprocess_exec(
                *pinned(cmd, cores),
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            self.procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({**job, "worker": i}).encode() + b"\n")
            await proc.stdin.drain()
        for proc in self.procs:
            line = await self._line(proc, timeout)
            if not json.loads(line).get("ready"):
                raise RuntimeError(f"load generator not ready: {line!r}")

    async def _line(self, proc: asyncio.subprocess.Process, timeout: float) -> bytes:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            await proc.wait()
            raise RuntimeError(f"load generator exited with {proc.returncode} (see its stderr above)")
        return line

    async def go(self, timeout: float) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin is not None))
        results = [json.loads(await self._line(p, timeout)) for p in self.procs]
        return results

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.procs.clear()
