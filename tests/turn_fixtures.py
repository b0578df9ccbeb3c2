"""A real TURN server for the tests: coturn (Debian's ``coturn``) on a free loopback port."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import free_udp_port, require_program, wait_for_sync

TURN_SECRET = "turn-test-secret"


def stun_answers(port: int) -> bool:
    """coturn answers a STUN binding request once it listens."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        return data[8:20] == request[8:20]


def _free_udp_and_tcp_port() -> int:
    """coturn binds TCP on its port as well and retries forever when that one is taken."""
    for _ in range(100):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


@contextmanager
def run_coturn(workdir: Path, relay_ports: tuple[int, int] = (40000, 40999)) -> Iterator[int]:
    """Start coturn with the TURN REST (shared secret) scheme; yields its port, stops it after."""
    binary = require_program("turnserver")
    port = _free_udp_and_tcp_port()
    log = workdir / "turn.log"
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         "--allow-loopback-peers", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=test",
         "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", f"--pidfile={workdir / 'turn.pid'}", f"--log-file={log}",
         "--simple-log", f"--userdb={workdir / 'turndb'}", f"--min-port={relay_ports[0]}",
         f"--max-port={relay_ports[1]}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # A loaded machine can take a while to start it; the wait ends as soon as it answers.
        wait_for_sync(lambda: proc.poll() is not None or stun_answers(port), 30, message="coturn to listen")
        assert proc.poll() is None, log.read_text() if log.exists() else "coturn exited"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    with run_coturn(tmp_path) as port:
        yield port
