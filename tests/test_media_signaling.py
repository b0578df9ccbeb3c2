"""The server peers through signaling: offers to @echo/@probe with trickled candidates, bye, owners."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from fantasize_rtc.client import split_candidates
from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY
from tests.helpers import wait_for
from tests.media_helpers import client_peer, http_offer

ROOM = "media-room"


class Member:
    """A room member on a real WebSocket."""

    def __init__(self, client: TestClient, token: str, ws: Any) -> None:  # type: ignore[type-arg]
        self.client, self.token, self.ws = client, token, ws

    @classmethod
    async def join(cls, client: TestClient, peer_id: str) -> Member:  # type: ignore[type-arg]
        resp = await client.post("/rtc/connect", json={"roomId": ROOM, "peerId": peer_id})
        assert resp.status == 200
        token = (await resp.json())["token"]
        ws = await client.ws_connect(f"/rtc/ws?token={token}")
        return cls(client, token, ws)

    async def signal(self, to: str, kind: str, payload: Any) -> None:
        await self.ws.send_json({"type": "signal", "signal": {"type": kind, "payload": payload, "to": to}})

    async def receive(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        while True:
            message = await self.ws.receive_json(timeout=timeout)
            if predicate(message):
                return dict(message)

    async def snapshot_peers(self) -> list[str]:
        resp = await self.client.get(f"/rtc/rooms/{ROOM}", headers={"Authorization": f"Bearer {self.token}"})
        return [p["peerId"] for p in (await resp.json())["peers"]]


def from_server_peer(name: str, kind: str) -> Any:
    return lambda m: m.get("type") == "signal" and m["fromPeerId"] == name and m["signal"]["type"] == kind


async def test_echo_by_signaling_with_trickled_candidates_listing_and_bye(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    closed: list[Any] = []
    manager.rtc.on(MEDIA_CLOSED, closed.append)
    alice = await Member.join(client, "alice")
    async with client_peer() as peer:
        peer.add_media(audio=False)
        sdp, candidates = split_candidates(await peer.offer())
        assert candidates and "a=candidate" not in sdp
        await alice.signal("@echo", "offer", {"sdp": sdp})
        for candidate in candidates:
            await alice.signal("@echo", "candidate", candidate)
        await alice.signal("@echo", "candidate", None)
        answer = await alice.receive(from_server_peer("@echo", "answer"))
        session_id = answer["signal"]["payload"]["sessionId"]
        await peer.accept(answer["signal"]["payload"]["sdp"])
        await peer.wait_frames("video", 10)
        assert "@echo" in await alice.snapshot_peers()
        report = await (
            await client.get(f"/rtc/sessions/{session_id}", headers={"Authorization": f"Bearer {alice.token}"})
        ).json()
        assert report["via"] == "signaling" and report["roomId"] == ROOM and report["peerId"] == "alice"
        await alice.signal("@echo", "bye", None)
        await wait_for(lambda: closed, 20, message="media:closed")
        assert closed[0].reason == "bye" and closed[0].room_id == ROOM
    assert "@echo" not in await alice.snapshot_peers()
    await alice.ws.close()


async def test_sessions_end_when_their_owner_leaves(client: TestClient) -> None:  # type: ignore[type-arg]
    manager = client.app[MEDIA_KEY]
    closed: list[Any] = []
    manager.rtc.on(MEDIA_CLOSED, closed.append)
    bob = await Member.join(client, "bob")
    async with client_peer() as by_signal, client_peer() as by_http:
        by_signal.add_media(audio=False)
        await bob.signal("@probe", "offer", {"sdp": await by_signal.offer(), "probeSeconds": 0.5})
        answer = await bob.receive(from_server_peer("@probe", "answer"))
        await by_signal.accept(answer["signal"]["payload"]["sdp"])
        report = await bob.receive(from_server_peer("@probe", "probe:report"))
        assert report["signal"]["payload"]["verdict"].startswith("connected directly over UDP")

        by_http.add_media(audio=False)
        body = await http_offer(client, by_http, "echo", token=bob.token, roomId=ROOM)
        await by_http.wait_frames("video", 5)
        assert {"@echo", "@probe"} <= set(await bob.snapshot_peers())
        # Another peer's token may not read bob's session; no token at all is refused too.
        carol = await Member.join(client, "carol")
        resp = await client.get(
            f"/rtc/sessions/{body['sessionId']}", headers={"Authorization": f"Bearer {carol.token}"}
        )
        assert resp.status == 403
        assert (await client.get(f"/rtc/sessions/{body['sessionId']}")).status == 401
        await bob.ws.send_json({"type": "disconnect"})
        await wait_for(lambda: len(closed) == 2, 20, message="both sessions to end")
    assert {c.reason for c in closed} == {"owner_left"}
    assert len(manager) == 0
    assert not {"@echo", "@probe"} & set(await carol.snapshot_peers())
    await carol.ws.close()


async def test_a_bad_offer_by_signaling_comes_back_as_an_error_frame(client: TestClient) -> None:  # type: ignore[type-arg]
    dave = await Member.join(client, "dave")
    await dave.signal("@record", "offer", {"sdp": "v=0\r\nthis is not sdp\r\n"})
    error = await dave.receive(lambda m: m.get("type") == "error")
    assert error["error"]["code"] == "invalid_request" and error["error"]["fromPeerId"] == "@record"
    await dave.signal(
        "@echo", "offer", {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"}
    )
    error = await dave.receive(lambda m: m.get("type") == "error")
    assert error["error"]["code"] == "invalid_request" and error["error"]["fromPeerId"] == "@echo"
    assert len(client.app[MEDIA_KEY]) == 0
    await dave.ws.close()


async def test_candidates_trickled_after_the_offer_was_applied_still_connect(client: TestClient) -> None:  # type: ignore[type-arg]
    """A pure-trickle client whose candidates come late: the server waits for the first one before
    it answers, instead of starting ICE on an empty check list (which fails at once)."""
    manager = client.app[MEDIA_KEY]
    alice = await Member.join(client, "late")
    async with client_peer() as peer:
        peer.add_media(audio=False)
        sdp, candidates = split_candidates(await peer.offer())
        await alice.signal("@echo", "offer", {"sdp": sdp})
        session = await wait_for(lambda: next(iter(manager._signaling.values()), None), 20, message="the session")
        # The offer is applied and the server holds its answer for a candidate: only now trickle.
        await wait_for(lambda: session.elapsed_ms("awaiting-candidates") is not None, 20, message="the wait")
        assert session.elapsed_ms("gathering") is None
        for candidate in candidates:
            await alice.signal("@echo", "candidate", candidate)
        answer = await alice.receive(from_server_peer("@echo", "answer"))
        await peer.accept(answer["signal"]["payload"]["sdp"])
        await peer.wait_frames("video", 5)
        await alice.signal("@echo", "bye", None)
    await alice.ws.close()


async def test_a_sender_never_waits_for_a_server_peer_and_its_messages_keep_their_order(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    """Issue 13: an offer to a server peer was handled inside the sender's relay, which could
    wait seconds (an old session closing). Now the relay returns at once; the manager handles
    the messages in a task of its own, in the order they were sent."""
    import asyncio

    manager = client.app[MEDIA_KEY]
    rtc = manager.rtc
    await rtc.connect_peer(ROOM, "sender")
    gate = asyncio.Event()
    handled: list[str] = []
    real_handle = manager._handle

    async def slow_handle(room_id: str, server_peer_id: str, message: dict[str, Any]) -> None:
        await gate.wait()  # as slow as an old session's close can be
        handled.append(message["signal"]["type"])
        await real_handle(room_id, server_peer_id, message)

    manager._handle = slow_handle
    try:
        for kind in ("hello", "candidate", "bye"):
            payload = {"candidate": ""} if kind == "candidate" else None
            result = await asyncio.wait_for(
                rtc.relay(ROOM, "sender", {"type": kind, "payload": payload, "to": "@echo"}), 2
            )
            assert result.delivered == ("@echo",)
        assert handled == []  # all three relays returned while the first was still being handled
        gate.set()
        await wait_for(lambda: handled == ["hello", "candidate", "bye"], message="the three, in order")
    finally:
        manager._handle = real_handle


async def test_the_recordings_quota_is_not_a_scan_of_the_folder_per_check(
    client: TestClient,
    monkeypatch: Any,  # type: ignore[type-arg]
) -> None:
    """Issue 13: every recording session scanned the recordings folder on the event loop twice a
    second. The folder is counted once at startup; the count is kept as recordings come and go."""
    store = client.app[MEDIA_KEY].store

    def no_scan() -> int:
        raise AssertionError("the recordings folder was scanned after startup")

    monkeypatch.setattr(store, "scan", no_scan)
    before = store.used_bytes()
    saved: list[Any] = []
    client.app[MEDIA_KEY].rtc.on("recording:saved", saved.append)
    async with client_peer() as peer:
        peer.add_media(audio=False)
        body = await http_offer(client, peer, "record")
        session = client.app[MEDIA_KEY].sessions()[0]
        await wait_for(lambda: session.frames["video"] >= 10, 20, message="a few recorded frames")
        # the recording being written counts (as the muxer flushes to the file)
        await wait_for(lambda: store.used_bytes() > before, 20, message="the file being written to count")
        await client.delete(f"/rtc/sessions/{body['sessionId']}")
        await wait_for(lambda: saved, 20, message="the recording to be saved")
    after = store.used_bytes()
    assert after >= before + saved[0].size
    store.delete(store.get(saved[0].recording_id))
    assert store.used_bytes() < after
