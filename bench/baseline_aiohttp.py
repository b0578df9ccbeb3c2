"""The ceiling of our own stack: a bare aiohttp WebSocket forwarder and JSON POST handler.

No rooms, tokens, validation, events, outboxes or heartbeats: ``GET /ws?id=X`` registers a
socket under ``X``; a text frame ``{"to": "Y", ...}`` is parsed, ``Y``'s socket looked up and the
frame sent to it as it came. ``POST /signal`` with ``{"to": "Y", ...}`` does the same and answers
``{"delivered": 0|1}``. The ratio of fantasize-rtc to this is what our code costs on top of
aiohttp.

Run: ``python -m bench.baseline_aiohttp --port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import WSMsgType, web

SOCKETS = web.AppKey("sockets", dict)


async def ws_handler(request: web.Request) -> web.StreamResponse:
    peer_id = request.query.get("id", "")
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    sockets: dict[str, web.WebSocketResponse] = request.app[SOCKETS]
    sockets[peer_id] = ws
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            try:
                to = json.loads(msg.data).get("to")
            except (ValueError, AttributeError):
                continue
            dest = sockets.get(to) if isinstance(to, str) else None
            if dest is not None and not dest.closed:
                await dest.send_str(msg.data)
    finally:
        if sockets.get(peer_id) is ws:
            del sockets[peer_id]
    return ws


async def signal_handler(request: web.Request) -> web.Response:
    body = await request.json()
    to = body.get("to") if isinstance(body, dict) else None
    dest = request.app[SOCKETS].get(to) if isinstance(to, str) else None
    delivered = 0
    if dest is not None and not dest.closed:
        await dest.send_str(json.dumps(body))
        delivered = 1
    return web.json_response({"delivered": delivered})


def make_app() -> web.Application:
    app = web.Application()
    app[SOCKETS] = {}
    app.add_routes([web.get("/ws", ws_handler), web.post("/signal", signal_handler)])
    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare aiohttp listening on {host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (when installed)")
    args = parser.parse_args()
    if args.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
