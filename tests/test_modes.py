"""Modes of one's own (docs/modes.md): the registry, and a registered mode reached the three ways a
built-in one is (``POST /rtc/offer``, ``@name`` in a room, WHIP), with its lifecycle run by the
server. Real server, real aiortc peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiortc import MediaStreamTrack, RTCDataChannel

from fantasize_rtc import RtcConfig, create_app
from fantasize_rtc.client import split_candidates
from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY, MediaSession, Mode, ModeRegistry, modes
from fantasize_rtc.media.echo import EchoMode
from tests.helpers import wait_for
from tests.media_helpers import SmallVideo, client_peer, http_offer
from tests.test_media_signaling import Member, from_server_peer

README = Path(__file__).resolve().parent.parent / "README.md"
EVENTS: list[tuple[str, Any]] = []


class Shout(Mode):
    """Answers every text message in capitals and counts what it saw."""

    def __init__(self) -> None:
        self.messages = 0
        self.tracks: list[str] = []

    def on_track(self, session: MediaSession, track: MediaStreamTrack) -> None:
        self.tracks.append(track.kind)
        session.drain(track)

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        def answer(message: Any) -> None:
            self.messages += 1
            channel.send(str(message).upper())

        channel.on("message", answer)

    async def on_connected(self, session: MediaSession) -> None:
        EVENTS.append(("connected", session.id))

    async def close(self, session: MediaSession, reason: str) -> None:
        EVENTS.append(("close", reason))

    def report(self) -> dict[str, Any]:
        return {"shout": {"messages": self.messages, "tracks": self.tracks}}


@pytest.fixture
def registry() -> ModeRegistry:
    registry = modes.copy()  # the built-ins, and nothing leaks into the global registry
    registry.register("shout", Shout)
    return registry


@pytest.fixture
async def app_client(aiohttp_client: Any, tmp_path: Path, registry: ModeRegistry) -> Any:
    EVENTS.clear()
    config = RtcConfig(recordings_dir=str(tmp_path / "recordings"), admin_key="admin-secret")
    return await aiohttp_client(create_app(config=config, modes=registry))


def test_the_registry_takes_classes_factories_and_lazy_names() -> None:
    registry = ModeRegistry()

    @registry.register("deco", description="a decorated one")
    class Deco(Mode):
        pass

    def make() -> Mode:  # a factory: any function returning a new Mode
        return Deco()

    registry.register("factory", make)
    registry.register("lazy", "fantasize_rtc.media.echo:EchoMode")
    assert isinstance(registry.create("deco"), Deco) and registry.create("deco").name == "deco"
    assert registry.create("factory").name == "factory"
    made = registry.create("lazy")
    assert isinstance(made, EchoMode) and made.name == "lazy"  # named as registered
    assert registry.info("deco").description == "a decorated one"
    assert list(registry) == ["deco", "factory", "lazy"] and "lazy" in registry and len(registry) == 3
    with pytest.raises(ValueError, match="registered already"):
        registry.register("deco", Deco)
    registry.register("deco", Shout, replace=True)
    assert isinstance(registry.create("deco"), Shout)
    assert registry.info("deco").description.startswith("Answers every text")  # the new one's docstring
    for bad in ("", "Upper", "9lives", "a b", "@echo", "x" * 33):
        with pytest.raises(ValueError, match="mode name"):
            registry.register(bad, Deco)
    with pytest.raises(TypeError):
        registry.register("nothing", 42)
    registry.register("wrong", object)
    with pytest.raises(TypeError, match=r"not a fantasize_rtc\.media\.Mode"):
        registry.create("wrong")


def test_the_built_in_modes_are_registered_like_any_other() -> None:
    assert list(modes)[:5] == ["echo", "record", "probe", "play", "sfu"]
    assert modes.info("play").whip is False and modes.info("record").whip is True
    assert all(modes.info(name).description for name in ("echo", "record", "probe", "play"))
    assert type(modes.create("echo")).__name__ == "EchoMode"


async def test_get_modes_lists_built_ins_and_registered_ones(app_client: Any) -> None:
    resp = await app_client.get("/rtc/modes")
    listed = {m["name"]: m for m in (await resp.json())["modes"]}
    assert list(listed)[:5] == ["echo", "record", "probe", "play", "sfu"]
    assert listed["shout"] == {
        "name": "shout",
        "description": "Answers every text message in capitals and counts what it saw.",
        "serverPeer": "@shout",
        "whip": True,
    }


async def test_a_registered_mode_over_http_with_its_lifecycle_and_report(app_client: Any) -> None:
    manager = app_client.app[MEDIA_KEY]
    closed: list[Any] = []
    manager.rtc.on(MEDIA_CLOSED, closed.append)
    async with client_peer() as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        channel = peer.open_channel("chat")
        body = await http_offer(app_client, peer, mode="shout")
        await wait_for(lambda: channel.readyState == "open", 20, message="the data channel")
        channel.send("hello")
        await wait_for(lambda: "HELLO" in peer.messages, 10, message="the mode's answer")
        assert ("connected", body["sessionId"]) in EVENTS
        resp = await app_client.delete(f"/rtc/sessions/{body['sessionId']}")
        assert resp.status == 200
    await wait_for(lambda: closed, 10, message="media:closed")
    assert closed[0].mode == "shout" and EVENTS[-1] == ("close", "deleted")
    report = manager.get(body["sessionId"])[2]
    assert report["mode"] == "shout" and report["shout"] == {"messages": 1, "tracks": ["video"]}


async def test_a_registered_mode_through_a_room(app_client: Any) -> None:
    alice = await Member.join(app_client, "alice")
    async with client_peer() as peer:
        channel = peer.open_channel("chat")
        sdp, candidates = split_candidates(await peer.offer())
        await alice.signal("@shout", "offer", {"sdp": sdp})
        for candidate in candidates:
            await alice.signal("@shout", "candidate", candidate)
        await alice.signal("@shout", "candidate", None)
        answer = await alice.receive(from_server_peer("@shout", "answer"))
        await peer.accept(answer["signal"]["payload"]["sdp"])
        await wait_for(lambda: channel.readyState == "open", 20, message="the data channel")
        channel.send("through the room")
        await wait_for(lambda: "THROUGH THE ROOM" in peer.messages, 10, message="the mode's answer")
        assert "@shout" in await alice.snapshot_peers()
        await alice.signal("@shout", "bye", None)
    await alice.ws.close()


async def test_whip_takes_the_modes_that_accept_a_publisher(app_client: Any, registry: ModeRegistry) -> None:
    class Listener(Mode):
        whip = False

    registry.register("listener", Listener)  # after the app was made: not offered by WHIP anyway
    async with client_peer() as peer:
        peer.pc.addTransceiver(SmallVideo(), direction="sendonly")
        offer = await peer.offer()
        resp = await app_client.post("/whip?mode=shout", data=offer, headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        assert app_client.app[MEDIA_KEY].sessions()[0].mode.name == "shout"
        for refused in ("play", "listener", "nosuch"):
            resp = await app_client.post(
                f"/whip?mode={refused}", data=offer, headers={"Content-Type": "application/sdp"}
            )
            assert resp.status == 400 and "WHIP mode must be one of" in (await resp.json())["error"]["message"]


async def test_an_unknown_mode_is_refused_with_the_names(app_client: Any) -> None:
    async with client_peer() as peer:
        peer.add_media(audio=False)
        resp = await app_client.post("/rtc/offer", json={"sdp": await peer.offer(), "type": "offer", "mode": "nosuch"})
    body = await resp.json()
    assert resp.status == 400 and "shout" in body["error"]["message"] and "echo" in body["error"]["message"]


async def test_the_readme_snippet_registers_a_working_mode(aiohttp_client: Any, tmp_path: Path) -> None:
    readme = README.read_text()
    (snippet,) = [
        block.split("```", 1)[0] for block in readme.split("```python")[1:] if 'modes.register("shout"' in block
    ]
    assert len(snippet.strip().splitlines()) < 30
    exec(compile(snippet, "README.md", "exec"), {})  # registers "shout" into the global registry
    try:
        client = await aiohttp_client(create_app(config=RtcConfig(recordings_dir=str(tmp_path))))
        async with client_peer() as peer:
            channel = peer.open_channel("chat")
            await http_offer(client, peer, mode="shout")
            await wait_for(lambda: channel.readyState == "open", 20, message="the data channel")
            channel.send("hey")
            await wait_for(lambda: "HEY" in peer.messages, 10, message="the README mode's answer")
    finally:
        modes.unregister("shout")
