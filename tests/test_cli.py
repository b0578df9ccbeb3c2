"""The real server as a user runs it: ``fantasize-rtc serve`` in a subprocess on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fantasize_rtc.cli import _SERVE_FLAGS, _shown_default, build_parser, config_from_args
from fantasize_rtc.config import IceServer, RtcConfig
from tests.helpers import free_port, stop_process, wait_for, wait_for_sync

OFFER = {"type": "offer", "payload": {"sdp": "v=0\r\n"}}
ANSWER = {"type": "answer", "payload": {"sdp": "v=0\r\n"}}
CANDIDATE = {
    "type": "candidate",
    "payload": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
}


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "FANTASIZE_RTC_PEER_TIMEOUT_MS": "1500", "FANTASIZE_RTC_ADMIN_KEY": "admin-secret"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fantasize_rtc",
                "serve",
                "--port",
                str(port),
                "--heartbeat-interval-ms",
                "500",
                "--recordings-dir",
                str(tmp_path / "rec"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        match = wait_for_sync(
            lambda: re.search(r"serving on (http://\S+)", log.read_text()),
            timeout=30,
            message="the server to log its URL",
        )
        yield Served(proc, match.group(1), log)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()
    assert "stopped" in log.read_text()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _connect(http: aiohttp.ClientSession, url: str, room: str, peer: str) -> dict[str, Any]:
    async with http.post(url + "rtc/connect", json={"roomId": room, "peerId": peer}) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


def test_help_explains_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fantasize_rtc", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--ice-server",
        "--max-peers-per-room",
        "--heartbeat-interval-ms",
        "--peer-timeout-ms",
        "--auth-secret",
        "--cors-origin",
        "--admin-key",
        "--log-level",
    ):
        assert flag in out
    assert "FANTASIZE_RTC_PORT" in out
    top = subprocess.run([sys.executable, "-m", "fantasize_rtc", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in top.stdout


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FANTASIZE_RTC_* from the shell that runs the tests: build_parser reads them."""
    for name in list(os.environ):
        if name.startswith("FANTASIZE_RTC_"):
            monkeypatch.delenv(name)
    return monkeypatch


def serve_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fantasize_rtc", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FANTASIZE_RTC_")},
    )
    return out.stdout


def test_help_states_every_flags_default_and_env_variable(clean_env: pytest.MonkeyPatch) -> None:
    serve = build_parser().parse_args(["serve"])
    text = " ".join(serve_help().split())  # argparse wraps lines anywhere
    for flag in _SERVE_FLAGS:
        assert hasattr(serve, flag.dest)
        assert f"--{flag.name}" in text and f"(default: {_shown_default(flag)}) [env {flag.env}]" in text, flag


def test_config_flags_default_to_rtc_config_itself(clean_env: pytest.MonkeyPatch) -> None:
    assert config_from_args(build_parser().parse_args(["serve"])) == RtcConfig()
    # A derived default stays derived: the timeout follows an interval given on the command line.
    args = build_parser().parse_args(["serve", "--heartbeat-interval-ms", "1000"])
    assert config_from_args(args).peer_timeout_ms == 2500


def test_environment_sets_flags_and_the_command_line_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FANTASIZE_RTC_MAX_PEERS_PER_ROOM", "3")
    clean_env.setenv("FANTASIZE_RTC_RATE_LIMIT_PER_SEC", "2.5")
    clean_env.setenv("FANTASIZE_RTC_ALLOW_ANONYMOUS_MEDIA", "yes")
    clean_env.setenv("FANTASIZE_RTC_CORS_ORIGIN", "https://a.example, https://c.example")
    config = config_from_args(build_parser().parse_args(["serve", "--rate-limit-per-sec", "7"]))
    assert (config.max_peers_per_room, config.rate_limit_per_sec, config.allow_anonymous_media) == (3, 7.0, True)
    assert config.cors_origins == ("https://a.example", "https://c.example")


@pytest.mark.parametrize(
    ("flag", "env_value", "given", "field", "expected"),
    [
        (
            "cors-origin",
            "https://a.example,https://c.example",
            ["https://b.example"],
            "cors_origins",
            ("https://b.example",),
        ),
        (
            "cors-origin",
            "https://a.example",
            ["https://b.example", "https://d.example"],
            "cors_origins",
            ("https://b.example", "https://d.example"),
        ),
        (
            "ice-server",
            "stun:env.example:3478",
            ["stun:cli.example:3478"],
            "ice_servers",
            (IceServer(("stun:cli.example:3478",)),),
        ),
        (
            "ice-server",
            "stun:env.example:3478",
            ["stun:one.example:3478", "turn:u:p@two.example:3478"],
            "ice_servers",
            (IceServer(("stun:one.example:3478",)), IceServer(("turn:two.example:3478",), "u", "p")),
        ),
    ],
)
def test_a_repeatable_flag_on_the_command_line_replaces_the_environments_list(
    clean_env: pytest.MonkeyPatch, flag: str, env_value: str, given: list[str], field: str, expected: tuple[Any, ...]
) -> None:
    clean_env.setenv("FANTASIZE_RTC_" + flag.upper().replace("-", "_"), env_value)
    argv = ["serve"] + [part for value in given for part in (f"--{flag}", value)]
    assert getattr(config_from_args(build_parser().parse_args(argv)), field) == expected


def test_bad_flag_value_is_a_clear_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fantasize_rtc", "serve", "--ice-server", "http://nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "ICE server URL must start with" in out.stderr and "Traceback" not in out.stderr


async def test_two_ws_peers_and_two_poll_peers_through_the_real_server(
    served: Served, http: aiohttp.ClientSession
) -> None:
    url = served.url
    alice = await _connect(http, url, "call", "alice")
    ws_alice = await http.ws_connect(f"{url}rtc/ws?token={alice['token']}")
    bob = await _connect(http, url, "call", "bob")
    ws_bob = await http.ws_connect(f"{url}rtc/ws?token={bob['token']}")
    assert (await ws_alice.receive_json(timeout=5))["peer"]["peerId"] == "bob"

    # WebSocket pair: targeted offer, answer back, trickled candidates both ways.
    await ws_alice.send_json({"type": "signal", "signal": {**OFFER, "to": "bob"}})
    assert (await ws_bob.receive_json(timeout=5))["signal"]["type"] == "offer"
    await ws_bob.send_json({"type": "signal", "signal": {**ANSWER, "to": "alice"}})
    assert (await ws_alice.receive_json(timeout=5))["signal"]["type"] == "answer"
    await ws_bob.send_json({"type": "signal", "signal": {**CANDIDATE, "to": "alice"}})
    await ws_alice.send_json({"type": "signal", "signal": {**CANDIDATE, "to": "bob"}})
    assert (await ws_alice.receive_json(timeout=5))["signal"] == {**CANDIDATE, "to": "alice"}
    assert (await ws_bob.receive_json(timeout=5))["signal"] == {**CANDIDATE, "to": "bob"}

    # HTTP + long-poll pair in the same room.
    carol = await _connect(http, url, "call", "carol")
    dave = await _connect(http, url, "call", "dave")
    for ws in (ws_alice, ws_bob):
        assert [(await ws.receive_json(timeout=5))["peer"]["peerId"] for _ in range(2)] == ["carol", "dave"]

    async def poll(peer: dict[str, Any], wait_ms: int = 3000) -> list[dict[str, Any]]:
        async with http.get(url + "rtc/poll", params={"token": peer["token"], "waitMs": str(wait_ms)}) as resp:
            assert resp.status == 200
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    assert [m["peer"]["peerId"] for m in await poll(carol)] == ["dave"]
    carol_auth = {"Authorization": f"Bearer {carol['token']}"}
    dave_auth = {"Authorization": f"Bearer {dave['token']}"}
    # broadcast from carol over HTTP: every other member gets it, live or queued
    async with http.post(
        url + "rtc/signal", json={"roomId": "call", "fromPeerId": "carol", "signal": OFFER}, headers=carol_auth
    ) as resp:
        result = await resp.json()
    assert sorted(result["delivered"]) == ["alice", "bob"] and result["queued"] == ["dave"]
    for ws in (ws_alice, ws_bob):
        got = await ws.receive_json(timeout=5)
        assert (got["fromPeerId"], got["signal"]["type"]) == ("carol", "offer")
    dave_msgs = await poll(dave)
    assert [m.get("signal", {}).get("type") for m in dave_msgs] == ["offer"]
    waiting = asyncio.ensure_future(poll(carol, 10_000))
    async with http.post(url + "rtc/signal", json={"signal": {**ANSWER, "to": "carol"}}, headers=dave_auth) as resp:
        assert resp.status == 200
    assert (await waiting)[0]["signal"]["type"] == "answer"

    # Everyone but dave keeps heartbeating; dave goes silent and is reaped (timeout 1.5 s).
    async def keep_alive() -> None:
        while True:
            for ws in (ws_alice, ws_bob):
                await ws.send_json({"type": "heartbeat"})
            async with http.post(url + "rtc/heartbeat", json={"roomId": "call", "peerId": "carol"}, headers=carol_auth):
                pass
            await asyncio.sleep(0.3)  # a heartbeat cadence, not a wait for a result

    beat = asyncio.ensure_future(keep_alive())
    try:

        async def dave_gone() -> bool:
            msg = await ws_alice.receive_json(timeout=10)
            return bool(msg["type"] == "peer:disconnected" and msg["peerId"] == "dave" and msg["reason"] == "timeout")

        await wait_for(dave_gone, timeout=15, message="dave to be reaped")
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
    async with http.get(url + "rtc/rooms/call", headers={"Authorization": "Bearer admin-secret"}) as resp:
        assert [p["peerId"] for p in (await resp.json())["peers"]] == ["alice", "bob", "carol"]

    await ws_bob.send_json({"type": "disconnect"})
    left = await ws_alice.receive_json(timeout=5)
    assert (left["type"], left["peerId"], left["reason"]) == ("peer:disconnected", "bob", "left")
    await ws_alice.close()
    assert "peer dave in room call timed out" in served.output()


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    """What `serve` does once it listens (in a child process: the collector is process-wide)."""
    code = (
        "import gc, json; from fantasize_rtc.cli import tune_gc, GC_THRESHOLD; before = gc.get_threshold(); "
        "tune_gc(); print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(), GC_THRESHOLD]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after, frozen, threshold = json.loads(out.stdout)
    assert after == [threshold, before[1], before[2]] and threshold > before[0]
    assert frozen > 10_000  # the imports' objects, never walked again


async def test_a_slow_shutdown_logs_what_it_waits_for(caplog: pytest.LogCaptureFixture) -> None:
    from fantasize_rtc.cli import _log_waiting_tasks

    async def stuck_relay() -> None:
        await asyncio.Event().wait()

    task = asyncio.ensure_future(stuck_relay())
    task.set_name("stuck-relay")
    await asyncio.sleep(0)  # let it start waiting
    with caplog.at_level("WARNING", logger="fantasize_rtc"):
        _log_waiting_tasks()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "shutdown still waits for 'stuck-relay'" in caplog.text and "stuck_relay" in caplog.text
