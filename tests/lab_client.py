"""A client for the NAT lab (tests/test_nat.py), run in the client's namespace:
``python -m tests.lab_client URL MODE [MODE ...]`` opens one ``POST /rtc/offer`` session per MODE
at once (``echo``, ``passthrough``, ``record``, ``probe``), waits for media, and prints one JSON line
per session: whether it connected, the frames it got back, and the server's session report.
``python -m tests.lab_client URL health`` waits until ``/healthz`` answers."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from typing import Any

import aiohttp

from tests.helpers import wait_for
from tests.media_helpers import ClientPeer

CONNECT_S = 12.0


def _ssl() -> ssl.SSLContext | bool:
    return False  # the lab's server has a self-signed certificate (or none): this is a reachability test


async def health(url: str) -> int:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/healthz", ssl=_ssl(), timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        print(json.dumps({"health": await resp.json()}))
                        return 0
            except (aiohttp.ClientError, asyncio.TimeoutError):
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


async def session(http: aiohttp.ClientSession, url: str, mode: str) -> dict[str, Any]:
    peer = ClientPeer()
    body: dict[str, Any] = {"type": "offer", "mode": "echo"}
    if mode == "passthrough":
        body["passthrough"] = True
    elif mode in ("record", "probe"):
        body["mode"] = mode
        body["probeSeconds"] = 1
    if mode == "probe":
        peer.open_channel("probe")
    else:
        peer.add_media(audio=False)
    try:
        body["sdp"] = await peer.offer()
        async with http.post(f"{url}/rtc/offer", json=body, ssl=_ssl()) as resp:
            answer = await resp.json()
            if resp.status != 200:
                return {"mode": mode, "status": resp.status, "error": answer}
        await peer.accept(answer["sdp"])
        session_id = answer["sessionId"]
        connected = await until(lambda: peer.pc.connectionState == "connected", CONNECT_S)
        out: dict[str, Any] = {"mode": mode, "sessionId": session_id, "connected": connected}
        out["answerCandidates"] = [line for line in answer["sdp"].split("\r\n") if line.startswith("a=candidate")]
        if connected and mode in ("echo", "passthrough"):
            await until(lambda: peer.frames("video") >= 15, 10)
            out["framesBack"] = peer.frames("video")
        if connected and mode == "record":
            await asyncio.sleep(1.5)  # recording this long is the point
        if connected and mode == "probe":
            await until(lambda: bool(peer.messages), 10)
        if mode in ("record", "passthrough", "echo"):
            async with http.delete(f"{url}/rtc/sessions/{session_id}", ssl=_ssl()) as resp:
                out["closed"] = resp.status
        deadline = time.monotonic() + 15
        while True:  # a recording is finalized after its session closed: poll until it says so
            async with http.get(f"{url}/rtc/sessions/{session_id}", ssl=_ssl()) as resp:
                out["report"] = await resp.json()
            saved = (out["report"].get("recording") or {}).get("saved")
            if mode != "record" or not connected or saved or time.monotonic() > deadline:
                return out
            await asyncio.sleep(0.1)
    finally:
        await peer.close()


async def main(argv: list[str]) -> int:
    url, modes = argv[0].rstrip("/"), argv[1:]
    if modes == ["health"]:
        return await health(url)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(session(http, url, mode) for mode in modes))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
