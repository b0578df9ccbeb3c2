"""The seed's three signaling routes on Starlette, calling the fantasize-rtc facade.

Run it (needs ``pip install 'fantasize-rtc-server[examples]'``)::

    python examples/starlette_app.py --port 8000

Same bodies and auth rule as the seed: connect answers with a ``token`` and sets it as an
HttpOnly cookie; heartbeat and signal need the bearer token or that cookie.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fantasize_rtc import RtcError, create_rtc_server
from fantasize_rtc.auth import connect_cookie, peer_token
from fantasize_rtc.errors import InvalidRequest

rtc = create_rtc_server(max_peers_per_room=8)


def token_of(request: Request, room_id: Any, peer_id: Any) -> str | None:
    """The bearer token, else the cookie connect set for this room and peer."""
    return peer_token(request.headers.get("authorization"), request.cookies, room_id, peer_id)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


async def authorize(request: Request, room_id: Any, peer_id: Any) -> None:
    """A peer may only act as itself: the token must belong to (room_id, peer_id)."""
    await rtc.authorize(token_of(request, room_id, peer_id), room_id, peer_id)


async def connect(request: Request) -> Response:
    body = await json_body(request)
    room_id: Any = body.get("roomId")  # the facade validates ids and answers 400
    peer_id: Any = body.get("peerId")
    result = await rtc.connect_peer(
        room_id,
        peer_id,
        body.get("metadata"),
        proof=token_of(request, room_id, peer_id),
    )
    response = JSONResponse(result.to_wire())
    response.set_cookie(**connect_cookie(result.room_id, result.peer_id, result.token))
    return response


async def heartbeat(request: Request) -> Response:
    body = await json_body(request)
    await authorize(request, body.get("roomId"), body.get("peerId"))
    return JSONResponse({"lastSeen": await rtc.heartbeat(body["roomId"], body["peerId"])})


async def signal(request: Request) -> Response:
    body = await json_body(request)
    await authorize(request, body.get("roomId"), body.get("fromPeerId"))
    result = await rtc.relay(body["roomId"], body["fromPeerId"], body.get("signal", {}))
    return JSONResponse(result.to_wire())


async def rtc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RtcError)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with rtc:  # starts the heartbeat reaper; closes every channel on shutdown
        yield


app = Starlette(
    routes=[
        Route("/rtc/connect", connect, methods=["POST"]),
        Route("/rtc/heartbeat", heartbeat, methods=["POST"]),
        Route("/rtc/signal", signal, methods=["POST"]),
    ],
    exception_handlers={RtcError: rtc_error},
    lifespan=lifespan,
)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
