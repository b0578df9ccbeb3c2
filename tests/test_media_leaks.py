"""100 open/echo/close cycles, some ended abruptly: peer connections, tasks, threads, fds at baseline."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from typing import Any

from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection

from fantasize_rtc.media import MEDIA_KEY
from tests.helpers import wait_for
from tests.media_helpers import ClientPeer, http_offer, udp_sockets, wait_closed

CYCLES = 100


def peer_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


def own_threads() -> list[str]:
    # The loop's default executor ("asyncio_N", aiortc encodes there) is a bounded pool that
    # keeps its idle workers; every other thread (decoders, recorders) must be gone.
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def cycle(client: TestClient, n: int) -> None:  # type: ignore[type-arg]
    peer = ClientPeer()
    try:
        channel = peer.open_channel()
        record = n % 25 == 5  # a few recordings: recorder threads and files must close too
        if n % 10 == 0 or record:
            peer.add_media(audio=n % 20 == 0 or record)
        # some echo cycles pass encoded frames through (the receivers' decoder threads must still end)
        options: dict[str, Any] = {"passthrough": True} if n % 20 == 10 else {}
        body = await http_offer(client, peer, "record" if record else "echo", **options)
        await peer.wait_open()
        if not record:
            channel.send(f"ping {n}")
            await wait_for(lambda: peer.messages, 20, message=f"echo in cycle {n}")
        if n % 10 == 0 and not record:
            await peer.wait_frames("video", 3)
        if record:
            session = next(s for s in client.app[MEDIA_KEY].sessions() if s.id == body["sessionId"])
            await wait_for(lambda: session.frames["video"] >= 3, 20, message=f"recorded frames in cycle {n}")
        if n % 3 == 0:
            return  # abrupt: the client just closes its peer connection, no DELETE, no bye
        resp = await client.delete(f"/rtc/sessions/{body['sessionId']}")
        assert resp.status == 200
    finally:
        await peer.close()


async def test_open_echo_close_cycles_leave_nothing_behind(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    await cycle(client, 0)  # warm up: imports, codec pools, the HTTP keep-alive connection
    await wait_closed(manager)
    await wait_for(lambda: peer_connections() == 0, 10, message="warm-up peer connections to go")
    base_tasks = len(asyncio.all_tasks())
    base_threads = own_threads()
    base_fds = fds()
    base_udp = udp_sockets()

    for n in range(1, CYCLES + 1):
        await cycle(client, n)
    await wait_closed(manager, 30)

    await wait_for(lambda: peer_connections() == 0, 20, message="no RTCPeerConnection left")
    await wait_for(
        lambda: len(asyncio.all_tasks()) <= base_tasks, 20, message=f"tasks back to {base_tasks}: {asyncio.all_tasks()}"
    )
    await wait_for(lambda: own_threads() == base_threads, 20, message=f"threads back to {base_threads}")
    await wait_for(lambda: udp_sockets() <= base_udp, 20, message="UDP sockets back to baseline")
    await wait_for(lambda: fds() <= base_fds, 20, message=f"fds back to {base_fds} (now {fds()})")
    reasons = [r["closeReason"] for _, r in manager._ended.values()]
    assert reasons.count("deleted") >= 60 and reasons.count("peer_closed") >= 30, reasons
    assert len(manager.store.list()) == 4
