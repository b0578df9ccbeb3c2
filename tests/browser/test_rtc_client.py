"""static/rtc-client.js as a library, used from a page the way other apps would use it."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import PageErrors, ServerProcess, unique, wait_for_media
from tests.helpers import wait_for_sync

# Two clients in one page; every message either receives is kept for the test to read.
SETUP = """async (room) => {
  const { RtcClient, RtcError } = await import('/static/rtc-client.js');
  const seen = { a: [], b: [], states: [] };
  const a = new RtcClient();
  const b = new RtcClient({ transport: 'poll' });
  a.on('message', (m) => seen.a.push(m));
  b.on('message', (m) => seen.b.push(m));
  a.on('state', (ev) => seen.states.push(ev.state));
  const infoA = await a.connect(room, 'alice', { name: 'Alice' });
  const infoB = await b.connect(room, 'bob');
  window.t = { a, b, seen, RtcError };
  return { infoA, infoB, transports: [a.transport, b.transport] };
}"""


def test_connect_signal_ack_errors_and_disconnect(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    page: Page = new_page("lib", server.url)
    page.goto("/static/rtc-client.js")  # any page of the server's origin will do
    room = unique("lib")
    out: dict[str, Any] = page.evaluate(SETUP, room)
    assert out["transports"] == ["websocket", "poll"]
    info_a, info_b = out["infoA"], out["infoB"]
    assert info_a["peerId"] == "alice" and info_a["token"] and info_a["peers"] == []
    assert info_a["iceServers"] == [] and info_a["heartbeatIntervalMs"] > 0
    assert [p["peerId"] for p in info_b["peers"]] == ["alice"]

    # Alice learns of Bob live; her peers map follows.
    wait_for_sync(lambda: page.evaluate("[...t.a.peers.keys()]") == ["bob"], timeout=10, message="bob in alice's peers")
    assert page.evaluate("t.seen.a.some(m => m.type === 'peer:connected' && m.peer.peerId === 'bob')")

    # signal() over the WebSocket resolves with the relay result (the ack)...
    ack = page.evaluate("t.a.signal({type: 'hello', payload: {n: 1}, to: 'bob'})")
    assert ack == {"listenersNotified": 1, "delivered": ["bob"], "queued": []}
    # ...and the long-polling Bob receives it, stamped with the sender.
    wait_for_sync(
        lambda: page.evaluate("t.seen.b.find(m => m.type === 'signal' && m.signal.type === 'hello')"),
        timeout=10,
        message="bob to receive hello",
    )
    msg = page.evaluate("t.seen.b.find(m => m.type === 'signal')")
    assert msg["fromPeerId"] == "alice" and msg["signal"]["payload"] == {"n": 1} and msg["roomId"] == room
    # Over HTTP (Bob) too, and as (type, payload, to).
    ack_b = page.evaluate("t.b.signal('hi', {n: 2}, 'alice')")
    assert ack_b["delivered"] == ["alice"]

    # Refusals reject with RtcError and the protocol's code, on both transports.
    for who in ("a", "b"):
        err = page.evaluate(
            f"""t.{who}.signal({{type: 'x', payload: null, to: 'nobody'}}).then(
                 () => null, (e) => ({{name: e.name, code: e.code, isRtc: e instanceof t.RtcError}}))"""
        )
        assert err == {"name": "RtcError", "code": "peer_not_found", "isRtc": True}, who
    err = page.evaluate("t.a.connect('other', 'x').then(() => null, (e) => e.code)")
    assert err == "invalid_state"

    snapshot = page.evaluate("t.a.snapshot()")
    assert {p["peerId"] for p in snapshot["peers"]} == {"alice", "bob"}
    assert server.room_peers(room) == {"alice", "bob"}

    page.evaluate("t.b.disconnect()")
    wait_for_sync(lambda: page.evaluate("[...t.a.peers.keys()]") == [], timeout=10, message="bob gone for alice")
    assert page.evaluate("t.seen.a.some(m => m.type === 'peer:disconnected' && m.peerId === 'bob')")
    page.evaluate("t.a.disconnect()")
    page.evaluate("t.a.disconnect()")  # twice is fine
    assert page.evaluate("[t.a.state, t.b.state]") == ["closed", "closed"]
    assert page.evaluate("t.seen.states") == ["connecting", "connected", "closed"]
    wait_for_sync(lambda: server.room_peers(room) is None, timeout=10, message="the room to close")
    assert page_errors.errors == []


def test_auto_transport_falls_back_to_long_poll(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    """A network that refuses WebSockets (a proxy, say) gets long-poll, and the page still works."""
    page: Page = new_page("nows", server.url)

    def refuse(ws: WebSocketRoute) -> None:
        ws.close(code=1011, reason="no websockets here")

    page.route_web_socket("**/rtc/ws*", refuse)
    page.goto("/#call")
    expect(page.locator("#server-status")).to_have_text("Connected to the server (long-poll)")
    assert page.evaluate("demo.lab.transport") == "poll"
    page.fill("#call-room", unique("nows"))
    page.fill("#call-name", "walled")
    page.click("#call-join-button")
    expect(page.locator("#call-status")).to_have_attribute("data-state", "connected")
    assert page.evaluate("demo.call.client.transport") == "poll"
    assert page_errors.errors == []


RECV_ONLY_PC = """() => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  return pc;
}"""


def test_server_peer_helpers_receive_the_play_source(new_page, server: ServerProcess, page_errors: PageErrors) -> None:
    """offerToServer (one round trip, no room) and callServerPeer (signaling, trickle ICE)."""
    page: Page = new_page("helpers", server.url)
    page.goto("/static/rtc-client.js")
    session_id = page.evaluate(
        f"""async () => {{
          const {{ offerToServer }} = await import('/static/rtc-client.js');
          window.httpPc = ({RECV_ONLY_PC})();
          const {{ sessionId, answer }} = await offerToServer(window.httpPc, {{ mode: 'play' }});
          return answer.type === 'answer' ? sessionId : null;
        }}"""
    )
    assert session_id
    wait_for_media(page, "httpPc")
    # Anonymous sessions are read by whoever holds the id.
    status, report = server.get(f"/rtc/sessions/{session_id}", token=None)
    assert status == 200 and report["mode"] == "play" and report["via"] == "http"

    room = unique("helpers")
    answer = page.evaluate(
        f"""async (room) => {{
          const {{ RtcClient, callServerPeer }} = await import('/static/rtc-client.js');
          window.client = new RtcClient();
          await window.client.connect(room, 'viewer');
          window.sigPc = ({RECV_ONLY_PC})();
          window.link = await callServerPeer(window.client, window.sigPc, '@play');
          return window.link.answerPayload;
        }}""",
        room,
    )
    assert answer["sessionId"] and answer["sdp"].startswith("v=0")
    wait_for_media(page, "sigPc")
    assert server.room_peers(room) == {"viewer", "@play"}
    page.evaluate("window.link.hangUp()")
    assert page.evaluate("window.sigPc.signalingState") == "closed"
    wait_for_sync(lambda: server.room_peers(room) == {"viewer"}, timeout=10, message="@play to leave after bye")
    page.evaluate("window.httpPc.close(); window.client.disconnect()")
    assert page_errors.errors == []


def test_dropped_websocket_reconnects_without_leaving_the_room(
    new_page, server: ServerProcess, page_errors: PageErrors
) -> None:
    """A WebSocket that drops (the server stays up) comes back with the same membership."""
    page: Page = new_page("drop", server.url)
    routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def proxy(ws: WebSocketRoute) -> None:
        routes.append((ws, ws.connect_to_server()))

    page.route_web_socket("**/rtc/ws*", proxy)
    page.goto("/static/rtc-client.js")
    room = unique("drop")
    page.evaluate(SETUP, room)
    # (ends in null: Playwright would call a function the expression returned, here the unsubscriber)
    page.evaluate("t.reconnects = []; t.a.on('reconnected', (ev) => t.reconnects.push(ev)); null")
    wait_for_sync(lambda: len(routes) == 1, timeout=10, message="alice's WebSocket")
    token = page.evaluate("t.a.token")

    page_side, server_side = routes[0]
    server_side.close(code=4500, reason="network hiccup")
    page_side.close(code=4500, reason="network hiccup")
    wait_for_sync(lambda: page.evaluate("t.reconnects.length") == 1, timeout=15, message="alice to reconnect")
    assert page.evaluate("t.reconnects[0].rejoined") is False
    assert page.evaluate("t.a.state") == "connected" and page.evaluate("t.a.transport") == "websocket"
    assert page.evaluate("t.a.token") == token  # same membership, no new join
    assert len(routes) == 2
    assert "reconnecting" in page.evaluate("t.seen.states")
    # Bob never saw Alice leave, and reaches her over the new socket.
    assert not page.evaluate("t.seen.b.some(m => m.type === 'peer:disconnected')")
    ack = page.evaluate("t.b.signal({type: 'still-there', payload: null, to: 'alice'})")
    assert ack["delivered"] == ["alice"]
    wait_for_sync(
        lambda: page.evaluate("t.seen.a.some(m => m.type === 'signal' && m.signal.type === 'still-there')"),
        timeout=10,
        message="the signal on the new socket",
    )
    assert server.room_peers(room) == {"alice", "bob"}
    page.evaluate("Promise.all([t.a.disconnect(), t.b.disconnect()])")
    assert page_errors.errors == []


def test_unreadable_answers_and_frames_are_reported_not_swallowed(
    new_page, server: ServerProcess, page_errors: PageErrors
) -> None:
    """Issue 12: a 200 whose body JSON.parse refuses (such as NaN echoed by an older server) was
    turned into null, and an unreadable frame dropped without a word. Both are errors now."""
    page: Page = new_page("unreadable", server.url)
    routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def proxy(ws: WebSocketRoute) -> None:
        routes.append((ws, ws.connect_to_server()))

    page.route_web_socket("**/rtc/ws*", proxy)
    page.route(
        "**/rtc/heartbeat*",
        lambda route: route.fulfill(status=200, content_type="application/json", body='{"lastSeen": NaN}'),
    )
    page.goto("/static/rtc-client.js")
    page.evaluate(SETUP, unique("unreadable"))
    page.evaluate("t.errors = []; t.a.on('error', (e) => t.errors.push(e)); null")
    err = page.evaluate("t.b.request('POST', '/rtc/heartbeat', {}).then(() => null, (e) => [e.code, e.status])")
    assert err == ["bad_response", 200]
    wait_for_sync(lambda: len(routes) == 1, timeout=10, message="alice's WebSocket")
    routes[0][0].send('{"type": "signal", "signal": {"payload": NaN}}')
    wait_for_sync(lambda: page.evaluate("t.errors.length") == 1, timeout=10, message="the error event")
    assert page.evaluate("t.errors[0].code") == "bad_message"
    assert page.evaluate("t.a.state") == "connected"  # one bad frame does not cost the connection
    assert page_errors.errors == []


def test_connect_joins_in_the_websocket_upgrade_and_falls_back_to_connect(
    new_page, server: ServerProcess, page_errors: PageErrors
) -> None:
    """One round trip: no POST /rtc/connect, the socket the join came over is the channel. A join
    the upgrade refuses (a full room) is asked again with POST /rtc/connect, whose error says why."""
    page: Page = new_page("one-step", server.url)
    page.goto("/static/rtc-client.js")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    room = unique("one")
    out = page.evaluate(
        """async (room) => {
          const { RtcClient } = await import('/static/rtc-client.js');
          const a = new RtcClient();
          const info = await a.connect(room, 'alice');
          window.one = a;
          const ack = await a.signal({type: 'hello', payload: 1});
          return { peerId: info.peerId, transport: a.transport, ack };
        }""",
        room,
    )
    assert out == {
        "peerId": "alice",
        "transport": "websocket",
        "ack": {"listenersNotified": 0, "delivered": [], "queued": []},
    }
    assert [u for u in posts if "/rtc/connect" in u] == []
    assert len(sockets) == 1 and "roomId=" in sockets[0] and "token=" not in sockets[0]
    # A refused join (the id is taken): the upgrade says 409, POST /rtc/connect then names why.
    code = page.evaluate(
        """async (room) => {
          const { RtcClient } = await import('/static/rtc-client.js');
          const b = new RtcClient();
          return b.connect(room, 'alice').then(() => null, (e) => e.code);
        }""",
        room,
    )
    assert code == "peer_id_taken"
    assert len([u for u in posts if "/rtc/connect" in u]) == 1
    page.evaluate("window.one.disconnect()")
