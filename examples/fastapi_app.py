"""The seed's three signaling routes on FastAPI, calling the fantasize-rtc facade.

Run it (needs ``pip install 'fantasize-rtc-server[examples]'``)::

    python examples/fastapi_app.py --port 8000

The routes keep the seed's bodies: ``POST /rtc/connect {roomId, peerId}``,
``POST /rtc/heartbeat {roomId, peerId}``, ``POST /rtc/signal {roomId, fromPeerId, signal}``.
Connect answers with a ``token`` and also sets it as an HttpOnly cookie, so a browser's plain
``fetch`` works without handling the token; later calls need the bearer token or that cookie.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fantasize_rtc import RtcError, create_rtc_server
from fantasize_rtc.auth import connect_cookie, peer_token
from fantasize_rtc.errors import InvalidRequest

rtc = create_rtc_server(max_peers_per_room=8)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with rtc:  # starts the heartbeat reaper; closes every channel on shutdown
        yield


app = FastAPI(lifespan=lifespan)


class ConnectBody(BaseModel):
    roomId: str
    peerId: str | None = None
    metadata: dict[str, Any] | None = None


class HeartbeatBody(BaseModel):
    roomId: str
    peerId: str


class SignalBody(BaseModel):
    roomId: str
    fromPeerId: str
    signal: dict[str, Any]


def token_of(request: Request, room_id: Any, peer_id: Any) -> str | None:
    """The bearer token, else the cookie connect set for this room and peer."""
    return peer_token(request.headers.get("authorization"), request.cookies, room_id, peer_id)


async def authorize(request: Request, room_id: str, peer_id: str) -> None:
    """A peer may only act as itself: the token must belong to (room_id, peer_id)."""
    await rtc.authorize(token_of(request, room_id, peer_id), room_id, peer_id)


@app.exception_handler(RtcError)
async def rtc_error(request: Request, err: RtcError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.status, headers=err.headers())


@app.exception_handler(RequestValidationError)
async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await rtc_error(request, InvalidRequest("The body does not have the expected fields."))


@app.post("/rtc/connect")
async def connect(body: ConnectBody, request: Request, response: Response) -> dict[str, Any]:
    proof = token_of(request, body.roomId, body.peerId)  # lets a peer reconnect as itself
    result = await rtc.connect_peer(body.roomId, body.peerId, body.metadata, proof=proof)
    response.set_cookie(**connect_cookie(result.room_id, result.peer_id, result.token))
    return result.to_wire()


@app.post("/rtc/heartbeat")
async def heartbeat(body: HeartbeatBody, request: Request) -> dict[str, Any]:
    await authorize(request, body.roomId, body.peerId)
    return {"lastSeen": await rtc.heartbeat(body.roomId, body.peerId)}


@app.post("/rtc/signal")
async def signal(body: SignalBody, request: Request) -> dict[str, Any]:
    await authorize(request, body.roomId, body.fromPeerId)
    result = await rtc.relay(body.roomId, body.fromPeerId, body.signal)
    return result.to_wire()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
