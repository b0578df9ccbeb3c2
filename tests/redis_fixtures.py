"""A real ``redis-server`` on a free port, started and stopped by the tests.

Import the fixtures into a test module: ``from tests.redis_fixtures import redis_server  # noqa: F401``.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, require_program, stop_process, wait_for_sync

__all__ = ["RedisServer", "redis_server", "unique_prefix"]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again keep port and data folder, so a
    restart with ``appendonly=True`` comes back with its data."""

    def __init__(self, program: str, data_dir: Path, *, appendonly: bool = False) -> None:
        self.program = program
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.program,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_sync(lambda: _accepts(self.port), timeout=10, message=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): with AOF, every acknowledged write is on disk."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence) for one test."""
    server = RedisServer(require_program("redis-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"
