"""DTLS interop beyond aiortc: FFmpeg's own WHIP muxer (GnuTLS) publishing H.264 to ``/whip``
with ECDSA and RSA certificates in both DTLS roles, FFmpeg's default P-224 certificate refused
with a log line that says why, and aiortc clients negotiating each SRTP profile (or none) with
``/rtc/offer``. Real processes, real sockets; nothing here is mocked (docs/interop.md)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fantasize_rtc.media import MEDIA_CLOSED, MEDIA_KEY, RECORDING_SAVED
from fantasize_rtc.media._aiortc_compat import use_dtls
from fantasize_rtc.media.dtls import CIPHERS, DtlsTrace
from tests.helpers import wait_for
from tests.media_helpers import client_peer

ROOT = Path(__file__).resolve().parent.parent
PUBLISH_SECONDS = 2.0


async def whip_cert(folder: Path) -> tuple[Path, Path]:
    """``fantasize-rtc whip-cert``, as docs/interop.md tells an encoder's operator to run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fantasize_rtc", "whip-cert", "--out", str(folder), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"-cert_file" in out
    return folder / "whip.crt", folder / "whip.key"


def rsa_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed RSA 2048 certificate and its key, as GStreamer makes and an operator might."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "encoder")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "rsa.crt", folder / "rsa.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def publish(url: str, *options: str, seconds: float = PUBLISH_SECONDS) -> tuple[int, str]:
    """Run FFmpeg's WHIP muxer (tests/whip_publisher.py) to the end: (exit status, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.whip_publisher",
        url,
        str(seconds),
        *options,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


def sessions_closed(client: TestClient) -> list[Any]:  # type: ignore[type-arg]
    closed: list[Any] = []
    client.app[MEDIA_KEY].rtc.on(MEDIA_CLOSED, closed.append)
    return closed


@pytest.mark.parametrize("role", ["passive", "active"])  # FFmpeg's DTLS role: server (its default) or client
@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
async def test_ffmpeg_whip_publishes_h264_that_is_recorded_as_it_came(
    client: TestClient,  # type: ignore[type-arg]
    tmp_path: Path,
    kind: str,
    role: str,
) -> None:
    manager = client.app[MEDIA_KEY]
    saved: list[Any] = []
    manager.rtc.on(RECORDING_SAVED, saved.append)
    closed = sessions_closed(client)
    cert, key = await whip_cert(tmp_path) if kind == "ecdsa" else rsa_certificate(tmp_path)
    options = [f"cert_file={cert}", f"key_file={key}"]
    if role == "active":
        options.append("whip_flags=dtls_active")
    status, err = await publish(str(client.make_url("/whip")), *options)
    assert status == 0, err[-2000:]
    await wait_for(lambda: saved and closed, 20, message="the recording saved and the session ended")
    (recording,) = saved
    assert recording.codecs == ("h264",) and recording.path.endswith(".mkv")  # as received, no transcoding
    _, _, report = manager.get(closed[0].session_id)
    assert closed[0].reason == "deleted"  # FFmpeg's close() sent the WHIP DELETE
    dtls = report["dtls"]
    assert dtls["role"] == ("client" if role == "passive" else "server")
    assert dtls["peerCertificate"] == ("RSA 2048" if kind == "rsa" else "ECDSA P-256")
    assert dtls["version"] == "DTLSv1.2" and dtls["srtpProfile"] and dtls["alertSent"] is None
    if role == "passive":  # we chose the suite from FFmpeg's certificate
        assert dtls["cipher"].startswith("ECDHE-RSA-" if kind == "rsa" else "ECDHE-ECDSA-")
    assert report["recording"]["passthrough"] == {"video": True}
    # The file plays: every frame decodes and the duration is what was sent.
    with av.open(recording.path) as container:
        (stream,) = container.streams.video
        frames = sum(1 for _ in container.decode(stream))
        duration = float(container.duration or 0) / av.time_base
    sent = int(PUBLISH_SECONDS * 30)
    assert sent - 5 <= frames <= sent, frames
    assert abs(duration - PUBLISH_SECONDS) < 0.4, duration


async def test_ffmpegs_own_p224_certificate_is_refused_with_a_reason(
    client: TestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FFmpeg's GnuTLS backend makes a P-224 certificate when given none, which OpenSSL 4 (and
    browsers) refuse: the handshake fails at once, and the log and the report say why and what to
    do, instead of a bare dtls_failed."""
    closed = sessions_closed(client)
    caplog.set_level(logging.WARNING, logger="fantasize_rtc.media.session")
    status, err = await publish(str(client.make_url("/whip")))
    assert status != 0 and "Input/output error" in err  # the muxer gives up
    await wait_for(lambda: closed, 15, message="the session's end")
    assert closed[0].reason == "dtls_failed" and closed[0].duration_ms < 5000
    _, _, report = client.app[MEDIA_KEY].get(closed[0].session_id)
    assert report["dtls"]["peerCertificate"] == "ECDSA secp224r1" and report["dtls"]["alertSent"] == "illegal_parameter"
    (line,) = [r.getMessage() for r in caplog.records if "DTLS handshake failed" in r.getMessage()]
    assert "secp224r1" in line and "cert_file" in line and "docs/interop.md" in line


@pytest.mark.parametrize("profile", ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM", "SRTP_AEAD_AES_256_GCM"])
@pytest.mark.parametrize("server_role", ["client", "server"])
async def test_each_srtp_profile_in_each_role(
    client: TestClient,  # type: ignore[type-arg]
    profile: str,
    server_role: str,
) -> None:
    manager = client.app[MEDIA_KEY]
    trace = DtlsTrace()
    async with client_peer() as peer:
        assert use_dtls(peer.pc, CIPHERS, trace.on_info, profile.encode())
        peer.add_media(audio=False)
        offer = await peer.offer()
        if server_role == "server":  # the client says it will be the DTLS client
            offer = offer.replace("a=setup:actpass", "a=setup:active")
        resp = await client.post("/rtc/offer", json={"sdp": offer, "type": "offer", "mode": "echo"})
        answer = await resp.json()
        assert resp.status == 200, answer
        assert ("a=setup:passive" if server_role == "server" else "a=setup:active") in answer["sdp"]
        await peer.accept(answer["sdp"])
        await wait_for(lambda: peer.frames("video") >= 5, 20, message="echoed video")
        report = manager.get(answer["sessionId"])[2]
        assert report["dtls"]["role"] == server_role
        assert report["dtls"]["srtpProfile"] == profile == trace.srtp_profile
        assert report["dtls"]["peerCertificate"] == "ECDSA P-256"


async def test_no_shared_srtp_profile_fails_with_a_reason(
    client: TestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = sessions_closed(client)
    caplog.set_level(logging.WARNING, logger="fantasize_rtc.media.session")
    async with client_peer() as peer:
        assert use_dtls(peer.pc, CIPHERS, DtlsTrace().on_info, b"SRTP_AES128_CM_SHA1_32")  # not offered by us
        peer.add_media(audio=False)
        resp = await client.post("/rtc/offer", json={"sdp": await peer.offer(), "type": "offer", "mode": "echo"})
        answer = await resp.json()
        await peer.accept(answer["sdp"])
        await wait_for(lambda: closed, 15, message="the session's end")
    assert closed[0].reason == "dtls_failed" and closed[0].duration_ms < 5000
    report = client.app[MEDIA_KEY].get(answer["sessionId"])[2]
    assert report["dtls"]["srtpProfile"] is None
    (line,) = [r.getMessage() for r in caplog.records if "DTLS handshake failed" in r.getMessage()]
    assert "no SRTP protection profile in common" in line


async def test_ffmpeg_whip_h264_is_watched_over_whep_as_it_came(client: TestClient, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """An encoder publishes H.264 (WHIP, ``?mode=sfu``); an aiortc viewer whose offer lists VP8
    first gets H.264 forwarded (the server answers with the publisher's codec) and decodes it."""
    manager = client.app[MEDIA_KEY]
    cert, key = await whip_cert(tmp_path)
    url = str(client.make_url("/whip?mode=sfu"))
    publishing = asyncio.ensure_future(publish(url, f"cert_file={cert}", f"key_file={key}", seconds=8))
    try:

        def live() -> Any:
            return next((s for s in manager.sessions() if s.via == "whip" and s.mode.published and s.connected), None)

        session = await wait_for(live, 20, message="FFmpeg's session publishing")
        await wait_for(lambda: session.mode.group.publications, 10, message="its publication")
        async with client_peer() as viewer:
            viewer.receive_only(audio=False)
            resp = await client.post(
                f"/whep/{session.id}", data=await viewer.offer(), headers={"Content-Type": "application/sdp"}
            )
            answer = await resp.text()
            assert resp.status == 201, answer
            first = answer.split("m=video")[1].split()[2]  # the answer's first payload type
            assert f"a=rtpmap:{first} H264/90000" in answer
            await viewer.accept(answer)
            await viewer.wait_frames("video", 30)
            frame = viewer.sinks["video"].last
            assert (frame.width, frame.height) == (320, 240)
        report = session.report()["forwarding"]["published"][0]
        assert report["codec"] == "video/H264" and report["framesIn"] >= 30
    finally:
        status, err = await publishing
    assert status == 0, err[-2000:]
