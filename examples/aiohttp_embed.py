"""Mount the fantasize-rtc routes inside an existing aiohttp app, next to its own routes.

Run it::

    python examples/aiohttp_embed.py --port 8000

Your app keeps ``/`` and ``/stats``; signaling lives under ``/realtime`` (``/realtime/rtc/connect``,
``/realtime/rtc/ws`` ...). Point clients at the prefix: ``RtcClient("http://127.0.0.1:8000/realtime")``.
Sharing one facade (``rtc``) lets your own handlers see rooms and events.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from fantasize_rtc import create_app, create_rtc_server
from fantasize_rtc.events import PeerConnected

log = logging.getLogger("embed-example")

rtc = create_rtc_server(max_peers_per_room=8)


@rtc.on("peer:connected")
def greet(event: PeerConnected) -> None:
    log.info("your app sees peer %s join room %s", event.peer.peer_id, event.room_id)


async def home(request: web.Request) -> web.Response:
    return web.Response(text="Your app, with fantasize-rtc signaling under /realtime.\n")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await rtc.stats())


def build_app() -> web.Application:
    app = web.Application()
    app.add_routes([web.get("/", home), web.get("/stats", stats)])
    # media=False keeps aiortc out of this app; set it to True to add the server's own peers.
    app.add_subapp("/realtime", create_app(rtc, media=False, static=False))

    async def close_rtc(app: web.Application) -> None:
        await rtc.close()  # the sub-app started the facade; we passed it in, so we close it

    app.on_cleanup.append(close_rtc)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    web.run_app(build_app(), host=args.host, port=args.port)
