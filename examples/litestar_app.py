"""The seed's three signaling routes on Litestar, calling the fantasize-rtc facade.

Run it (needs ``pip install 'fantasize-rtc-server[examples]'``)::

    python examples/litestar_app.py --port 8000

Same bodies and auth rule as the seed: connect answers with a ``token`` and sets it as an
HttpOnly cookie; heartbeat and signal need the bearer token or that cookie.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, post
from litestar.datastructures import Cookie
from litestar.exceptions import ValidationException

from fantasize_rtc import RtcError, create_rtc_server
from fantasize_rtc.auth import connect_cookie, peer_token
from fantasize_rtc.errors import InvalidRequest

rtc = create_rtc_server(max_peers_per_room=8)


def token_of(request: Request[Any, Any, Any], room_id: Any, peer_id: Any) -> str | None:
    """The bearer token, else the cookie connect set for this room and peer."""
    return peer_token(request.headers.get("authorization"), request.cookies, room_id, peer_id)


async def authorize(request: Request[Any, Any, Any], room_id: Any, peer_id: Any) -> None:
    """A peer may only act as itself: the token must belong to (room_id, peer_id)."""
    await rtc.authorize(token_of(request, room_id, peer_id), room_id, peer_id)


@post("/rtc/connect", status_code=200)
async def connect(data: dict[str, Any], request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    room_id: Any = data.get("roomId")  # the facade validates ids and answers 400
    peer_id: Any = data.get("peerId")
    result = await rtc.connect_peer(
        room_id,
        peer_id,
        data.get("metadata"),
        proof=token_of(request, room_id, peer_id),
    )
    return Response(result.to_wire(), cookies=[Cookie(**connect_cookie(result.room_id, result.peer_id, result.token))])


@post("/rtc/heartbeat", status_code=200)
async def heartbeat(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    await authorize(request, data.get("roomId"), data.get("peerId"))
    return {"lastSeen": await rtc.heartbeat(data["roomId"], data["peerId"])}


@post("/rtc/signal", status_code=200)
async def signal(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    await authorize(request, data.get("roomId"), data.get("fromPeerId"))
    result = await rtc.relay(data["roomId"], data["fromPeerId"], data.get("signal", {}))
    return result.to_wire()


def rtc_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if not isinstance(exc, RtcError):  # Litestar's own 400 for a body that is not a JSON object
        exc = InvalidRequest("The body must be a JSON object.")
    return Response(exc.to_dict(), status_code=exc.status, headers=exc.headers())


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    async with rtc:  # starts the heartbeat reaper; closes every channel on shutdown
        yield


app = Litestar(
    route_handlers=[connect, heartbeat, signal],
    exception_handlers={RtcError: rtc_error, ValidationException: rtc_error},
    lifespan=[lifespan],
)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
