"""A client for the NAT lab (tests/test_nat.py), run in the client's namespace with the project's own
Python client (:class:`fantasize_rtc.client.RtcClient`) and aiortc peers:

``python -m tests.lab_client [--ca CERT] URL MODE [MODE ...]`` opens one session per MODE at once and
prints one JSON line per session: whether it connected, the frames it got back, the answer's
candidates and the server's session report. Modes ``echo``, ``passthrough``, ``record`` and ``probe``
go through ``POST /rtc/offer``; ``@echo`` joins a room and signals the server's ``@echo`` peer over
the WebSocket (wss: with an https URL). ``--ca`` trusts that certificate (the server's self-signed
one) and verifies the server against it, as a user who added it would.
``python -m tests.lab_client [--ca CERT] URL health`` waits until ``/healthz`` answers."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from fantasize_rtc.client import RtcClient
from tests.helpers import wait_for
from tests.media_helpers import ClientPeer

CONNECT_S = 12.0


async def health(url: str, trust: ssl.SSLContext | bool) -> int:
    deadline = time.monotonic() + 20
    async with RtcClient(url, ssl=trust, auto_heartbeat=False) as client:
        while time.monotonic() < deadline:
            try:
                print(json.dumps({"health": await asyncio.wait_for(client.health(), 2)}))
                return 0
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                print(json.dumps({"health": None, "tls": str(exc)}))  # no use waiting: it will not verify
                return 1
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)  # polling the server's start, nothing to wait on
    print(json.dumps({"health": None}))
    return 1


async def until(predicate: Any, seconds: float) -> bool:
    """Whether ``predicate()`` came true within ``seconds`` (polled)."""
    try:
        await wait_for(predicate, seconds, interval=0.05)
    except AssertionError:
        return False
    return True


async def _answer_by_signaling(client: RtcClient, sdp: str, index: int) -> dict[str, Any]:
    """Join a room and hand the offer to ``@echo``; its answer comes back over the WebSocket."""
    await client.connect(f"lab-room-{index}", f"lab-{index}")
    await client.signal({"type": "offer", "payload": {"sdp": sdp}}, to="@echo")
    while True:
        message = await client.next_message(timeout=20)
        signal = message.get("signal") or {}
        if message.get("fromPeerId") == "@echo" and signal.get("type") == "answer":
            return {"sdp": signal["payload"]["sdp"], "sessionId": signal["payload"]["sessionId"]}


async def session(url: str, trust: ssl.SSLContext | bool, mode: str, index: int) -> dict[str, Any]:
    peer = ClientPeer()
    extra: dict[str, Any] = {}
    if mode == "passthrough":
        extra["passthrough"] = True
    if mode in ("record", "probe"):
        extra["probeSeconds"] = 1
    if mode == "probe":
        peer.open_channel("probe")
    else:
        peer.add_media(audio=False)
    client = RtcClient(url, ssl=trust, auto_heartbeat=False, transport="ws")
    try:
        sdp = await peer.offer()
        try:
            if mode == "@echo":
                answer = await _answer_by_signaling(client, sdp, index)
            else:
                answer = await client.offer(sdp, "echo" if mode == "passthrough" else mode, **extra)
        except Exception as exc:  # the test prints what went wrong
            return {"mode": mode, "error": repr(exc)}
        await peer.accept(answer["sdp"])
        session_id = answer["sessionId"]
        connected = await until(lambda: peer.pc.connectionState == "connected", CONNECT_S)
        out: dict[str, Any] = {"mode": mode, "sessionId": session_id, "connected": connected}
        out["answerCandidates"] = [line for line in answer["sdp"].split("\r\n") if line.startswith("a=candidate")]
        if mode == "@echo":
            out["channel"] = client.channel
        if connected and mode in ("echo", "passthrough", "@echo"):
            await until(lambda: peer.frames("video") >= 15, 10)
            out["framesBack"] = peer.frames("video")
        if connected and mode == "record":
            await asyncio.sleep(1.5)  # recording this long is the point
        if connected and mode == "probe":
            await until(lambda: bool(peer.messages), 10)
        out["report"] = await client.media_session(session_id)
        if mode != "probe":
            await client.close_media_session(session_id)
        deadline = time.monotonic() + 15
        while mode == "record" and connected and time.monotonic() < deadline:
            # A recording is finalized after its session closed: poll until the report says so.
            out["report"] = await client.media_session(session_id)
            if (out["report"].get("recording") or {}).get("saved"):
                break
            await asyncio.sleep(0.1)
        return out
    finally:
        await peer.close()
        await client.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab_client")
    parser.add_argument("--ca", help="trust this certificate (PEM) and verify the server against it")
    parser.add_argument("url")
    parser.add_argument("modes", nargs="+")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    trust: ssl.SSLContext | bool = True
    if args.ca:
        if args.modes == ["health"]:  # a starting server may still be making its certificate
            await until(lambda: Path(args.ca).exists(), 20)
        trust = ssl.create_default_context(cafile=args.ca)
    if args.modes == ["health"]:
        return await health(url, trust)
    results = await asyncio.gather(*(session(url, trust, mode, i) for i, mode in enumerate(args.modes)))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
