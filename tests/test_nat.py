"""Issue 14: the server behind a NAT that forwards one TCP port and one UDP port, a client behind a
home-router NAT, no route between the private networks (tests/netlab.py). The server's own peers
are reached through both NATs only with the media on the forwarded port and the public address
announced; without them the same lab fails, which shows the lab is real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import SERVER_PRIVATE, SERVER_PUBLIC, NatLab, require_lab

ROOT = Path(__file__).resolve().parents[1]
TCP_PORT = 8443
UDP_PORT = 40000


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    require_lab()
    lab = NatLab(TCP_PORT, (UDP_PORT, UDP_PORT + 2))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


class LabServer:
    def __init__(self, lab: NatLab, tmp: Path, *flags: str) -> None:
        self.lab = lab
        self.log = tmp / "server.log"
        self._out = self.log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CI": ""}
        argv = [sys.executable, "-m", "fantasize_rtc", "serve", "--host", "0.0.0.0", "--port", str(TCP_PORT)]
        argv += ["--recordings-dir", str(tmp / "rec"), *flags]
        self.proc = lab.popen("srv", argv, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"http://{SERVER_PUBLIC}:{TCP_PORT}"
        health = self.client("health", timeout=40)
        assert health and health[0]["health"], self.log.read_text()[-2000:]

    def client(self, *modes: str, timeout: float = 90) -> list[dict[str, Any]]:
        done = self.lab.run(
            "cli", [sys.executable, "-m", "tests.lab_client", self.url, *modes], timeout=timeout, cwd=ROOT
        )
        assert done.returncode == 0 or modes == ("health",), done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self._out.close()
        return self.log.read_text()


@pytest.fixture
def serve(lab: NatLab, tmp_path: Path) -> Iterator[Any]:
    servers: list[LabServer] = []

    def start(*flags: str) -> LabServer:
        server = LabServer(lab, tmp_path, *flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_the_servers_own_peers_are_reached_through_two_nats_on_one_udp_port(serve: Any) -> None:
    server = serve("--udp-port", str(UDP_PORT), "--public-ip", SERVER_PUBLIC)
    results = {r["mode"]: r for r in server.client("echo", "passthrough", "record", "probe")}
    for mode, result in results.items():
        assert result.get("connected"), (mode, result)
        candidates = result["answerCandidates"]
        assert any(f"{SERVER_PUBLIC} {UDP_PORT} typ host" in c for c in candidates), candidates
        assert all(f" {UDP_PORT} typ" in c for c in candidates if "typ host" in c), candidates  # one port
    assert results["echo"]["framesBack"] >= 15 and results["passthrough"]["framesBack"] >= 15
    assert results["record"]["report"]["recording"]["saved"]["size"] > 0
    probe = results["probe"]["report"]
    pair = probe["candidatePair"]
    assert pair["local"]["address"] == SERVER_PRIVATE and pair["local"]["port"] == UDP_PORT
    assert pair["remote"]["address"] == "203.0.113.2"  # the client as its NAT shows it (prflx)
    assert probe["verdict"].startswith("connected over UDP through NAT"), probe["verdict"]
    log = server.stop()
    assert f"every server-side session on UDP port {UDP_PORT}" in log and f"announcing {SERVER_PUBLIC}" in log


def test_without_the_one_port_and_the_public_address_the_same_lab_fails(serve: Any) -> None:
    server = serve("--public-ip", SERVER_PUBLIC)  # random ports: the NAT forwards none of them
    (result,) = server.client("echo")
    assert result["connected"] is False, result
    server.stop()
    server = serve("--udp-port", str(UDP_PORT))  # the one port, but only the private address announced
    (result,) = server.client("echo")
    assert result["connected"] is False, result
    assert "only private addresses are announced" in server.stop()


def test_a_port_range_through_the_nat(serve: Any) -> None:
    server = serve("--udp-port-range", f"{UDP_PORT}-{UDP_PORT + 2}", "--public-ip", SERVER_PUBLIC)
    results = server.client("echo", "passthrough", "echo")
    assert all(r["connected"] for r in results), results
    ports = {c.split()[5] for r in results for c in r["answerCandidates"] if "typ host" in c}
    assert ports == {str(UDP_PORT), str(UDP_PORT + 1), str(UDP_PORT + 2)}, ports
