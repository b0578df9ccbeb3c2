"""``fantasize-rtc selftest URL`` as a subprocess against a real server this test starts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.cli import build_parser
from fantasize_rtc.media.keys import MEDIA_KEY
from fantasize_rtc.selftest import CHECKS, CheckResult, format_table, run_selftest
from fantasize_rtc.web import RTC_KEY
from tests.helpers import free_port, wait_for


async def selftest(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the real command while this event loop keeps serving the test's server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fantasize_rtc",
        "selftest",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start(aiohttp_server: Any, config: RtcConfig, **kwargs: Any) -> tuple[str, Any]:
    app = create_app(config=config, static=False, **kwargs)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), app


async def test_signaling_checks_pass_and_leave_nothing_behind(aiohttp_server: Any, config: RtcConfig) -> None:
    url, app = await start(aiohttp_server, config)
    code, out, err = await selftest(url, "--json", "--only", "health", "--only", "signaling", "--only", "relay")
    report = json.loads(out)
    assert code == 0, (out, err)
    assert report["ok"] is True and [c["name"] for c in report["checks"]] == ["health", "signaling", "relay"]
    assert all(c["ok"] and c["ms"] >= 0 for c in report["checks"])
    relay = report["checks"][2]["detail"]
    assert "HTTP -> WebSocket" in relay and "WebSocket -> long-poll" in relay
    assert "[1/3] health" in err and "[3/3] relay" in err  # the progress line
    rtc = app[RTC_KEY]
    assert (await rtc.stats())["peers"] == 0  # every selftest peer disconnected


async def test_media_checks_fail_clearly_without_media(aiohttp_server: Any, config: RtcConfig) -> None:
    url, _ = await start(aiohttp_server, config, media=False)
    code, out, _err = await selftest(url, "--only", "echo", "--only", "record", "--timeout", "15")
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0].split() == ["check", "result", "time", "detail"]
    echo = next(line for line in lines if line.startswith("echo"))
    record = next(line for line in lines if line.startswith("record"))
    assert "FAIL" in echo and "peer_not_found" in echo and "@echo" in echo
    assert "FAIL" in record and "no media routes" in record
    assert lines[-1] == f"0/2 checks passed against {url}"


async def test_unreachable_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await selftest(url, "--json", "--only", "health", "--only", "signaling", "--timeout", "10")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert all(not c["ok"] for c in report["checks"])
    assert "ClientConnectorError" in report["checks"][0]["detail"] or "connect" in report["checks"][0]["detail"]


def test_unknown_check_is_a_usage_error(capsys: Any) -> None:
    args = build_parser().parse_args(["selftest", "http://127.0.0.1:1", "--only", "nonsense"])
    assert args.handler(args) == 2
    assert "unknown check(s): nonsense" in capsys.readouterr().err


def test_parser_and_table() -> None:
    args = build_parser().parse_args(["selftest", "http://x", "--json", "--skip", "play"])
    assert args.handler is not None and args.json and args.skip == ["play"]
    table = format_table("http://x", [CheckResult("health", True, 3, "ok"), CheckResult("echo", False, 20, "no")])
    assert "health  pass" in table and "echo    FAIL" in table and table.endswith("1/2 checks passed against http://x")
    assert CHECKS[0] == "health"


async def test_every_check_passes_against_a_full_server(aiohttp_server: Any, config: RtcConfig) -> None:
    url, app = await start(aiohttp_server, config)
    code, out, err = await selftest(url, "--json", "--timeout", "30")
    report = json.loads(out)
    assert code == 0, (out, err)
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    assert all(c["ok"] for c in report["checks"]), report
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert "data channel echoed" in details["echo"]
    assert "video frames decoded" in details["record"] and "webm" in details["record"]
    assert details["probe"].startswith("connected")
    assert "video" in details["play"]
    # it cleaned up after itself: no peers, no live media sessions, its recording deleted
    rtc, manager = app[RTC_KEY], app[MEDIA_KEY]
    await wait_for(lambda: len(manager) == 0, timeout=10, message="media sessions to close")
    assert (await rtc.stats())["peers"] == 0
    assert manager.store.list() == []


async def test_signs_its_own_connect_jwt_when_given_the_secret(aiohttp_server: Any, config: RtcConfig) -> None:
    secret = "a-selftest-secret-of-32-bytes-or-more"
    url, _ = await start(aiohttp_server, config.replace(auth_secret=secret), media=False)
    code, out, _ = await selftest(url, "--json", "--only", "signaling", "--auth-secret", secret)
    assert code == 0, out
    [result] = await run_selftest(url, ["signaling"], timeout=10)  # in-process this time: no secret
    assert not result.ok and result.detail.startswith("unauthorized:"), result


def test_cli_client_and_selftest_import_no_media_or_framework_code() -> None:
    code = (
        "import sys, fantasize_rtc.cli, fantasize_rtc.client, fantasize_rtc.selftest\n"
        "fantasize_rtc.cli.build_parser()\n"
        "bad = [m for m in ('aiortc', 'av', 'fastapi', 'starlette', 'litestar', 'uvicorn') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
