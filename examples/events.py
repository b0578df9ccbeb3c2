"""The seed's quick start in Python: a server with no web framework, two peers, events, a relay.

Run it::

    python examples/events.py
"""

from __future__ import annotations

import asyncio

from fantasize_rtc import create_rtc_server
from fantasize_rtc.events import PeerConnected, PeerDisconnected, SignalRelayed


async def main() -> None:
    async with create_rtc_server(max_peers_per_room=4) as rtc:

        @rtc.on("peer:connected")
        def on_connected(event: PeerConnected) -> None:
            print(f"peer:connected {event.peer.peer_id} in {event.room_id}")

        @rtc.on("signal")
        def on_signal(event: SignalRelayed) -> None:  # async def handlers work too
            print(f"signal {event.from_peer_id} -> {event.signal.to or 'everyone'} {event.signal.type}")

        @rtc.on("peer:disconnected")
        def on_disconnected(event: PeerDisconnected) -> None:
            print(f"peer:disconnected {event.peer_id} ({event.reason})")

        alice = await rtc.connect_peer("demo-room", "alice", {"name": "Alice"})
        bob = await rtc.connect_peer("demo-room", "bob")
        print(f"alice's token starts {alice.token[:6]}..., bob sees {[p.peer_id for p in bob.peers]}")

        result = await rtc.relay("demo-room", "alice", {"type": "offer", "payload": {"sdp": "v=0..."}, "to": "bob"})
        print(f"relayed to {result.listeners_notified} listener(s): queued for {list(result.queued)}")

        snapshot = await rtc.get_room_snapshot("demo-room")
        print(f"room {snapshot.room_id}: {[p.peer_id for p in snapshot.peers]}")
        await rtc.disconnect_peer("demo-room", "bob")


if __name__ == "__main__":
    asyncio.run(main())
