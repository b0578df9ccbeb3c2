"""Shared test helpers: polling instead of sleeping, free ports, real programs."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01, message: str = "condition"
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts_tcp(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def nginx_binary() -> str:
    """nginx (Debian puts it in /usr/sbin, not always on a user's PATH)."""
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    return found or require_program("nginx")


def nginx_config(folder: Path, http: str) -> Path:
    """A runnable nginx.conf around ``http`` (the inside of an ``http {}`` block, as docs give
    it), with its log, pid and temporary files in ``folder``."""
    temp = "\n".join(
        f"{name}_temp_path {folder / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = folder / "nginx.conf"
    conf.write_text(
        f"error_log {folder / 'nginx-error.log'} warn;\npid {folder / 'nginx.pid'};\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{temp}\n{http}\n}}\n"
    )
    return conf


def start_nginx(conf: Path, prefix: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [nginx_binary(), "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def require_program(name: str) -> str:
    """Path of a real program the test drives; skip without it, except in CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (make test installs it)")
        pytest.skip(f"{name} is not installed (make test installs it)")
    return path


class FakeClock:
    """Milliseconds that only move when told to."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


async def gather_with_timeout(*aws: Awaitable[T], timeout: float = 10.0) -> list[T]:
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
