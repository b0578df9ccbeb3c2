"""Text frames handled as aiohttp parses them (``_aiohttp_compat``): in order, one at a time, also
when a handler waits (the rest of it runs as a task and later frames wait their turn), with
aiohttp's control frames, binary frames and close handshake untouched. Each behaviour runs with
the fast path and without it (an aiohttp the fast path does not know)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fantasize_rtc import RtcConfig
from fantasize_rtc import _aiohttp_compat as compat
from fantasize_rtc import events as ev
from fantasize_rtc._aiohttp_compat import FrameWebSocketResponse, start_eagerly
from fantasize_rtc.app import create_app
from fantasize_rtc.protocol import CloseCode
from fantasize_rtc.web import RTC_KEY
from tests.helpers import IN_CI, wait_for
from tests.test_web import bearer, connect

# -- start_eagerly --------------------------------------------------------------------------------


async def test_a_coroutine_that_does_not_suspend_finishes_in_the_call() -> None:
    done: list[int] = []

    async def work() -> int:
        done.append(1)
        return 1

    assert start_eagerly(work()) is None
    assert done == [1]


async def test_an_error_before_the_first_suspension_is_raised_at_once() -> None:
    async def work() -> None:
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        start_eagerly(work())


async def test_a_suspended_coroutine_carries_on_as_a_task() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def work() -> str:
        steps.append("start")
        got = await gate  # a future
        steps.append(got)
        await asyncio.sleep(0)  # a bare yield
        steps.append("end")
        return "result"

    task = start_eagerly(work())
    assert task is not None and steps == ["start"]
    gate.set_result("gate")
    assert await asyncio.wait_for(task, 5) == "result"
    assert steps == ["start", "gate", "end"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    cleaned: list[bool] = []

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    task = start_eagerly(work())
    assert task is not None
    task.cancel()  # before the task's first step, too
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_an_error_after_a_suspension_ends_the_task() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    task = start_eagerly(work())
    assert task is not None
    with pytest.raises(KeyError, match="late"):
        await task


# -- FrameWebSocketResponse on a real server --------------------------------------------------------


def require_fast_path() -> None:
    """The fast path must be on with the aiohttp ``make test`` installs. Outside CI, an aiohttp
    newer than _aiohttp_compat knows skips the fast variants (the server then runs without the fast
    path, which the "queued" variants test); in CI that fails: teach _aiohttp_compat the new version."""
    if compat.FAST_FRAMES:
        return
    if IN_CI or compat.supported(aiohttp.__version__):
        pytest.fail(f"no fast frame path with aiohttp {aiohttp.__version__}: check _aiohttp_compat._post_start")
    pytest.skip(f"no fast frame path for aiohttp {aiohttp.__version__}")


@pytest.fixture(params=[True, False], ids=["fast", "queued"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param:
        require_fast_path()
    monkeypatch.setattr(compat, "FAST_FRAMES", request.param)
    return bool(request.param)


class Recorder:
    """A frame handler: frames named ``slow...`` wait for :attr:`gate`; ``stop`` ends reading."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.in_callback: list[bool] = []  # handled in the read callback, not in a task
        self.gate = asyncio.Event()
        self.loop_saw: list[Any] = []
        self.running = 0
        self.most_running = 0
        self.sockets: list[FrameWebSocketResponse] = []
        self.served = 0  # handlers (of the web server) that returned
        self.cancelled: list[str] = []

    async def handle(self, text: str) -> bool:
        self.in_callback.append(asyncio.current_task() is None)
        self.started.append(text)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        if text.startswith("slow"):
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(text)
                raise
        self.running -= 1
        self.finished.append(text)
        return text != "stop"

    def queued(self) -> int:
        """Frames parsed but waiting in aiohttp's queue (internals: a test may look)."""
        return len(self.sockets[0]._reader._buffer)  # type: ignore[union-attr]


@pytest.fixture
async def served(aiohttp_client: Any) -> AsyncIterator[tuple[TestClient, Recorder]]:
    recorder = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = FrameWebSocketResponse()
        await ws.prepare(request)
        recorder.sockets.append(ws)
        ws.handle_frames(recorder.handle)
        async for msg in ws:
            recorder.loop_saw.append(msg.type)
            if msg.type is aiohttp.WSMsgType.TEXT:
                if not await ws.run_queued(recorder.handle, msg.data):
                    break
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_str("binary " + msg.data.decode())
        await ws.close()
        await ws.finish_frames()
        recorder.served += 1
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client: TestClient = await aiohttp_client(app)
    yield client, recorder


async def test_frames_are_handled_in_order_in_the_read_callback(
    fast: bool, served: tuple[TestClient, Recorder]
) -> None:
    client, recorder = served
    ws = await client.ws_connect("/ws")
    texts = [f"frame {i}" for i in range(200)]
    for text in texts:
        await ws.send_str(text)
    await wait_for(lambda: len(recorder.finished) == len(texts), message="all frames handled")
    assert recorder.finished == texts
    # Without the fast path every frame waits for the handler task; with it, none does.
    assert all(recorder.in_callback) if fast else not any(recorder.in_callback)
    assert recorder.loop_saw == ([] if fast else [aiohttp.WSMsgType.TEXT] * len(texts))
    await ws.close()


async def test_frames_after_a_waiting_handler_wait_their_turn(fast: bool, served: tuple[TestClient, Recorder]) -> None:
    client, recorder = served
    ws = await client.ws_connect("/ws")
    await ws.send_str("a")
    await ws.send_str("slow b")
    for text in ("c", "d", "e"):
        await ws.send_str(text)
    await wait_for(lambda: recorder.started == ["a", "slow b"], message="the slow frame to start")
    await ws.send_str("f")
    # Fast: b's handler runs as a task, c is taken by the socket's loop (waiting for b), d e f
    # are queued. Queued: the loop is in b's handler, c d e f are queued.
    await wait_for(lambda: recorder.queued() == (3 if fast else 4), message="later frames to queue up")
    assert recorder.started == ["a", "slow b"] and recorder.finished == ["a"]
    recorder.gate.set()
    await wait_for(lambda: len(recorder.finished) == 6, message="the rest")
    assert recorder.finished == ["a", "slow b", "c", "d", "e", "f"]
    assert recorder.most_running == 1
    # Once the queue is drained, frames are handled in the read callback again.
    await ws.send_str("g")
    await wait_for(lambda: recorder.finished[-1:] == ["g"], message="g")
    assert recorder.in_callback[-1] is fast
    await ws.close()


async def test_control_and_binary_frames_and_the_close_handshake(
    fast: bool, served: tuple[TestClient, Recorder]
) -> None:
    client, recorder = served
    ws = await client.ws_connect("/ws", autoping=False)
    await ws.ping(b"are you there")
    pong = await ws.receive(timeout=5)
    assert pong.type is aiohttp.WSMsgType.PONG and pong.data == b"are you there"
    await ws.send_bytes(b"raw")
    reply = await ws.receive(timeout=5)
    assert reply.type is aiohttp.WSMsgType.TEXT and reply.data == "binary raw"
    await ws.send_str("text")
    await wait_for(lambda: recorder.finished == ["text"], message="the text frame")
    assert await ws.close() is True
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_a_handler_that_stops_ends_reading(fast: bool, served: tuple[TestClient, Recorder]) -> None:
    client, recorder = served
    ws = await client.ws_connect("/ws")
    await ws.send_str("stop")
    await ws.send_str("after")
    # The server reads our close frame after "after": once the handshake is done, it saw both.
    await ws.close()
    assert recorder.started == ["stop"]


async def test_a_running_handler_goes_with_its_socket(fast: bool, served: tuple[TestClient, Recorder]) -> None:
    client, recorder = served
    # Without the fast path the socket's task is busy with the slow frame and answers no close
    # frame: the client gives up on the handshake after ws_close and drops the connection.
    ws = await client.ws_connect("/ws", timeout=aiohttp.ClientWSTimeout(ws_close=0.5))
    await ws.send_str("slow x")
    await wait_for(lambda: recorder.started == ["slow x"], message="the slow frame")
    await ws.close()
    # aiohttp cancels the web handler when its client is gone; the handler still waiting for
    # the slow frame is cancelled with it, not left running
    await wait_for(lambda: recorder.cancelled == ["slow x"], message="the slow frame's handler to be cancelled")
    assert recorder.finished == []


# -- the signaling socket (web.py) ------------------------------------------------------------------


async def test_the_signaling_socket_relays_in_the_read_callback(aiohttp_client: Any, config: RtcConfig) -> None:
    require_fast_path()
    client: TestClient = await aiohttp_client(create_app(config=config, media=False))
    rtc = client.app[RTC_KEY]
    in_task: list[bool] = []
    rtc.on(ev.SIGNAL, lambda event: in_task.append(asyncio.current_task() is not None))
    alice = await connect(client, "r", "alice")
    bob = await connect(client, "r", "bob")
    ws_a = await client.ws_connect("/rtc/ws", headers=bearer(alice))
    ws_b = await client.ws_connect("/rtc/ws", headers=bearer(bob))
    for i in range(20):
        await ws_a.send_json({"type": "signal", "signal": {"type": "n", "payload": i, "to": "bob"}})
    got = [(await ws_b.receive_json(timeout=5))["signal"]["payload"] for _ in range(20)]
    assert got == list(range(20))
    assert in_task == [False] * 20  # no frame waited for the socket's task
    await ws_a.close()
    await ws_b.close()


async def test_a_relayed_frame_is_handled_without_a_coroutine(config: RtcConfig) -> None:
    """The signaling socket's handler answers a relay to a member with a socket here (memory
    backend) itself; only a frame that has to wait (the peer's once-a-second touch, a
    disconnect) gets a coroutine, which handle_frame carries on."""
    from fantasize_rtc import create_rtc_server
    from fantasize_rtc.web._channel import WriteBatch
    from fantasize_rtc.web._socket import PeerFrames

    class Channel:
        kind = "ws"
        closing = None
        batch = WriteBatch()

        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, text: str) -> bool:
            self.sent.append(text)
            return True

        def begin_close(self, code: int, reason: str) -> None:
            self.sent.append(f"close {code}")

    class Socket:
        closed = False

    async with create_rtc_server(config) as rtc:
        await rtc.connect_peer("r", "alice")
        await rtc.connect_peer("r", "bob")
        to_bob, to_alice = Channel(), Channel()
        await rtc.attach_channel("r", "bob", to_bob)  # type: ignore[arg-type]
        frames = PeerFrames(rtc, Socket(), to_alice, "r", "alice", joined=True)  # type: ignore[arg-type]
        signal = '{"type":"signal","signal":{"type":"n","payload":1,"to":"bob"},"id":1}'
        assert frames.handle(signal) is True
        assert [json.loads(t)["type"] for t in to_alice.sent] == ["ack"]
        assert json.loads(to_bob.sent[-1])["signal"]["payload"] == 1
        assert frames.handle('{"type":"nonsense"}') is True  # refused at once: an error frame
        assert json.loads(to_alice.sent[-1])["error"]["code"] == "invalid_request"
        frames.last_touch = 0.0  # a second went by: this frame touches the peer first
        touching = frames.handle(signal)
        assert asyncio.iscoroutine(touching)
        assert compat.start_frame(touching) is True
        assert len(to_bob.sent) == 2
        leaving = frames.handle('{"type":"disconnect"}')
        assert asyncio.iscoroutine(leaving)
        assert compat.start_frame(leaving) is False
        assert to_alice.sent[-1] == f"close {CloseCode.LEFT}"
        assert "alice" not in {p.peer_id for p in (await rtc.get_room_snapshot("r")).peers}


async def test_a_bug_while_handling_a_frame_closes_1011_without_a_traceback(
    aiohttp_client: Any, config: RtcConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client: TestClient = await aiohttp_client(create_app(config=config, media=False))
    rtc = client.app[RTC_KEY]
    alice = await connect(client, "r", "alice")
    await connect(client, "r", "bob")
    ws = await client.ws_connect("/rtc/ws", headers=bearer(alice))
    assert (await ws.receive_json(timeout=5))["type"] == "peer:connected"

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(rtc, "relay_now", broken)
    await ws.send_json({"type": "signal", "signal": {"type": "n", "payload": 1, "to": "bob"}, "id": 7})
    error = await ws.receive_json(timeout=5)
    assert error == {"type": "error", "error": {"code": "internal_error", "message": "Internal server error."}}
    closing = await ws.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.INTERNAL_ERROR
    assert "a bug" in caplog.text and "ZeroDivisionError" in caplog.text  # in the log, not on the wire
    # the server goes on: alice can connect again
    monkeypatch.undo()
    ws = await client.ws_connect("/rtc/ws", headers=bearer(alice))
    await ws.send_json({"type": "heartbeat", "id": "ok"})
    assert await ws.receive_json(timeout=5) == {"type": "ack", "id": "ok"}
    await ws.close()
