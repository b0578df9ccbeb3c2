"""Fuzzing SDP offers (issue 12) through every way in: ``POST /rtc/offer``, ``POST /whip`` and offers
signaled to the server's peers. Offers are a real aiortc offer mutated line by line. Every answer is
below 500 and strict JSON (or SDP), nothing is logged at ERROR, and once the sessions are gone the
process holds as many UDP sockets, threads and other file descriptors as before the run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import example, given
from hypothesis import strategies as st

from fantasize_rtc import RtcConfig
from fantasize_rtc.app import create_app
from fantasize_rtc.media import MEDIA_KEY
from tests.fuzzing import check_answer, check_log
from tests.helpers import wait_for
from tests.media_helpers import client_peer, other_fds, udp_sockets

ADMIN = {"Authorization": "Bearer admin-secret"}

LINE_TOKENS = [
    "",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    ":",
    " ",
    "x",
    "\x00",
    "é",
    "\\ud800",
    "a" * 300,
    "a=candidate:1 1 udp 2130706431 ::1 9 typ host",
    "a=candidate:1 1 udp 2130706431 peer.local 9 typ host",
    "a=candidate:1 1 tcp 1 192.0.2.1 0 typ srflx raddr 0.0.0.0 rport 0",
    "a=candidate:x",
    "a=end-of-candidates",
    "a=setup:passive",
    "a=setup:bogus",
    "a=fingerprint:sha-256 00",
    "a=group:BUNDLE 7",
    "a=rtpmap:96 H264/90000",
    "a=fmtp:96 profile-level-id=zz",
    "a=ssrc:1 cname:x",
    "a=sctp-port:0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=audio 0 RTP/AVP 0",
    "c=IN IP6 ::",
]
mutations = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "replace", "insert", "truncate-line", "drop-prefix", "mid", "kind"]),
        st.integers(0, 10_000),
        st.sampled_from(LINE_TOKENS),
    ),
    min_size=1,
    max_size=4,
)


def mutate(sdp: str, steps: list[tuple[str, int, str]]) -> str:
    lines = sdp.split("\r\n")
    for op, at, token in steps:
        i = at % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[(at * 7) % len(lines)])
        elif op == "replace":
            line = lines[i]
            j = at % (len(line) + 1)
            lines[i] = line[:j] + token + line[j + 1 :]
        elif op == "insert":
            lines.insert(i, token)
        elif op == "truncate-line":
            lines[i] = lines[i][: at % (len(lines[i]) + 1)]
        elif op in ("mid", "kind"):  # the at-th media section's mid, or its kind (m=<kind> ...)
            prefix = "a=mid:" if op == "mid" else "m="
            found = [k for k, line in enumerate(lines) if line.startswith(prefix)]
            if found:
                k = found[at % len(found)]
                rest = "" if op == "mid" else " " + lines[k].split(" ", 1)[-1]
                lines[k] = prefix + token[:20] + rest
        else:  # every line starting like this one goes (all fingerprints, all candidates ...)
            prefix = lines[i].split(":", 1)[0]
            lines = [line for line in lines if not line.startswith(prefix)] or ["v=0"]
        if not lines:
            lines = ["v=0"]
    return "\r\n".join(lines)


class MediaWorld:
    def __init__(self, client: TestClient, offer: str, member: str) -> None:  # type: ignore[type-arg]
        self.client = client
        self.offer = offer
        self.member = member
        self.manager = client.app[MEDIA_KEY]

    async def end_all(self) -> None:
        for session in self.manager.sessions():
            await session.close("deleted")
        await wait_for(lambda: len(self.manager) == 0, 20, message="every session to end")


@pytest.fixture
async def media_world(aiohttp_client: Any, config: RtcConfig) -> AsyncIterator[MediaWorld]:
    config = config.replace(
        max_media_sessions=64, max_anonymous_sessions_per_address=0, rate_limit_per_sec=0, ice_start_timeout_seconds=1
    )
    async with client_peer() as peer:
        peer.add_media()
        peer.open_channel()
        offer = await peer.offer()
    baseline = (udp_sockets(), threading.active_count(), other_fds())
    client: TestClient = await aiohttp_client(create_app(config=config))  # type: ignore[type-arg]
    resp = await client.post("/rtc/connect", json={"roomId": "sdp", "peerId": "fuzzer"})
    world = MediaWorld(client, offer, (await resp.json())["token"])
    yield world
    await world.end_all()
    await client.close()
    await wait_for(lambda: udp_sockets() <= baseline[0], 20, message=f"UDP sockets back to {baseline[0]}")
    await wait_for(lambda: threading.active_count() <= baseline[1], 20, message=f"threads back to {baseline[1]}")
    await wait_for(lambda: other_fds() <= baseline[2], 20, message=f"other descriptors back to {baseline[2]}")


# Issue 12's leaks and ERROR tracebacks: a BUNDLE group whose first mid names no section aiortc
# makes a transport for (renamed, or of a kind it ignores).
@example(steps=[("mid", 0, "9")], way="offer")
@example(steps=[("mid", 0, "")], way="whip")
@example(steps=[("kind", 0, "audi")], way="signal")
@example(steps=[("kind", 0, "audi")], way="offer")
@example(steps=[("kind", 0, "audi")], way="sfu")
@given(steps=mutations, way=st.sampled_from(["offer", "whip", "signal", "sfu"]))
async def test_fuzz_sdp_offers(
    media_world: MediaWorld, steps: list[tuple[str, int, str]], way: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    client = media_world.client
    sdp = mutate(media_world.offer, steps)
    if way == "offer":
        resp = await client.post("/rtc/offer", json={"sdp": sdp, "type": "offer", "mode": "echo"})
    elif way == "whip":
        resp = await client.post(
            "/whip", data=sdp.encode("utf-8", "surrogatepass"), headers={"Content-Type": "application/sdp"}
        )
    else:
        to = "@sfu" if way == "sfu" else "@echo"  # @sfu: the group call's checks (BUNDLE, codecs)
        body = {"signal": {"type": "offer", "to": to, "payload": {"sdp": sdp}}}
        resp = await client.post(
            "/rtc/signal",
            data=json.dumps(body),
            headers={"Authorization": f"Bearer {media_world.member}", "Content-Type": "application/json"},
        )
    text = await resp.text(errors="replace")
    check_answer(resp.status, resp.content_type, text)
    await media_world.end_all()
    check_log(caplog.records)
