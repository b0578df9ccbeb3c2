"""A rolling restart seen from the page: two servers on Redis behind the documented nginx config;
the one holding the page's WebSocket gets SIGTERM. The page's client takes the 1012, opens its
socket on the other server with the same token (no rejoin), and the echo that ran there says why
it ended."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import PageErrors, ServerProcess
from tests.helpers import accepts_tcp, free_port, require_program, start_nginx, stop_process, wait_for_sync
from tests.redis_fixtures import RedisServer
from tests.test_redis_cluster import _nginx_config_from_docs

WATCH_JS = """() => {
  window.drainSeen = [];
  demo.lab.on("state", (ev) => drainSeen.push(`${ev.state}: ${ev.error?.message ?? ""}`));
  demo.lab.on("reconnected", (ev) => drainSeen.push(`reconnected: rejoined=${ev.rejoined}`));
  return demo.lab.token;
}"""


def _channels(server: ServerProcess) -> int:
    status, body = server.get("/healthz")
    assert status == 200, (status, body)
    return int(body["channels"])


def test_page_moves_to_the_other_server_on_1012(new_page: Any, tmp_path: Path, page_errors: PageErrors) -> None:
    redis = RedisServer(require_program("redis-server"), tmp_path)
    redis.start()
    servers: list[ServerProcess] = []
    nginx = None
    try:
        for name in ("drain-a", "drain-b"):
            extra = ("--redis-url", redis.url, "--drain-seconds", "5")
            servers.append(ServerProcess(tmp_path / name, name, extra_args=extra))
            servers[-1].workdir.mkdir()
            servers[-1].start()
        port = free_port()
        nginx = start_nginx(_nginx_config_from_docs(tmp_path, port, [s.port for s in servers]), tmp_path)
        wait_for_sync(lambda: accepts_tcp(port), timeout=10, message="nginx listening")

        page = new_page("drain", f"http://127.0.0.1:{port}")
        page.goto("/#echo")
        pill = page.locator("#server-status")
        expect(pill).to_have_attribute("data-state", "connected")
        page.select_option("#source", "generated")
        page.click("#echo-start")
        echo_status = page.locator("#echo-status")
        expect(echo_status).to_have_attribute("data-state", "connected")
        token = page.evaluate(WATCH_JS)
        holder = next(s for s in servers if _channels(s) == 1)
        other = next(s for s in servers if s is not holder)

        assert holder.proc is not None
        holder.proc.send_signal(signal.SIGTERM)
        assert holder.proc.wait(timeout=10) == 0

        expect(echo_status).to_have_attribute("data-state", "failed")
        expect(echo_status).to_contain_text("The server is restarting, so the echo ended")
        expect(pill).to_have_attribute("data-state", "connected", timeout=10_000)
        expect(pill).to_contain_text("WebSocket")
        wait_for_sync(lambda: _channels(other) == 1, timeout=10, message="the page's socket on the other server")
        seen = page.evaluate("drainSeen")
        assert "reconnecting: The server is restarting; connecting again." in seen, seen
        assert seen[-2:] == ["connected: ", "reconnected: rejoined=false"], seen
        assert page.evaluate("demo.lab.token") == token  # the same peer: its membership lived in Redis
        # And the echo works again, on the server that stayed.
        page.click("#echo-start")
        expect(echo_status).to_have_attribute("data-state", "connected")
        assert page_errors.errors == []
    finally:
        if nginx is not None:
            stop_process(nginx)
        for server in servers:
            server.stop()
        redis.stop()
