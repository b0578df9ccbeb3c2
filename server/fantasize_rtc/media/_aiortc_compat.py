"""Everything the media layer does inside aiortc and aioice, behind one version gate (:func:`supported`).

aiortc has no public API for a few things a server needs, and aioice is reached only through
aiortc's private ``RTCIceTransport._connection``. Every such access is here, and nowhere else, so
that an upgrade is checked in one file. Each accessor is used as written only with the versions it
was checked against (:data:`AIORTC_CHECKED`, :data:`AIOICE_CHECKED`); on any other version, and
whenever an internal is not what it expects, it falls back to something that keeps the server
working, degraded, and never raises ``AttributeError``:

=================================  ==================================  ======================================
what                               inside                              fallback
=================================  ==================================  ======================================
:func:`skip_backlog`,              ``RemoteStreamTrack._queue``        drops nothing, returns 0 (frames queue
:func:`backlog_skipper`                                                up when an encoder is slow)
:func:`end_received_track`         ``RemoteStreamTrack._queue``        False: the reader must be cancelled
:func:`sender_codec`               ``RTCRtpTransceiver._codecs``       None: passthrough echo is off
:func:`received_codec`             ``RTCRtpTransceiver._codecs``       None: recordings transcode
:func:`tap_decoder`                the receiver's decoder queue        False: passthrough echo is off (the
                                                                       echo re-encodes instead), recordings
                                                                       transcode
:func:`forward_keyframe_requests`  ``RTCRtpSender._send_keyframe``     False: the far end's keyframe requests
                                                                       are not forwarded
:func:`send_first`                 ``RTCRtpTransceiver._codecs``       False: a WHEP viewer whose offer lists
                                                                       another codec first is refused
:func:`set_stream_id`              ``RTCRtpSender._stream_id``         False: every forwarded track is in the
                                                                       connection's one stream (``a=msid``)
:func:`forward_promptly`           ``RTCRtpReceiver.__jitter_buffer``  False: frames are handed over when
                                                                       the next one starts (video: one frame
                                                                       later; audio: four packets later)
:func:`reoffer`                    ``RTCRtpTransceiver._codecs``,      aiortc's own offer (which browsers
                                   ``._headerExtensions``              refuse: it renumbers what was agreed)
:func:`codecs_compatible`          ``rtcpeerconnection.                False: forwarding compares MIME types
                                   is_codec_compatible``               and H.264 packetization only
:func:`keyframe_requests`          ``RTCRtpReceiver._send_rtcp_pli``   none: no keyframe is asked for
:func:`transport_stats`            ``RTCDtlsTransport._get_stats``     None: callers report zeros
:func:`heard_from_peer`            aioice's check list                 True: nothing is ended early
:func:`selected_candidates`        aioice's nominated pair             None: no candidate pair is reported
:func:`stun_round_trip_ms`         aioice's STUN requests              None: no round-trip sample
:func:`gather_on`                  aioice's candidate gathering        False: the caller refuses the session
                                                                       (fixed UDP ports were asked for)
:func:`bundle_everything`          ``RTCPeerConnection.__configuration``  False: a client connection that is not
                                                                       ``max-bundle`` may put two sections a
                                                                       server offer adds at once on a dead
                                                                       transport (aiortc's ``balanced``)
:func:`consent_interval`           ``aioice.ice.CONSENT_INTERVAL``     False: the test hook changes nothing
:func:`use_dtls`                   ``RTCPeerConnection.__certificates``,  False: aiortc's own DTLS context (ECDSA
                                   ``RTCCertificate._create_ssl_context``  suites only, no handshake diagnosis)
=================================  ==================================  ======================================

One warning is logged at import when the installed versions are not the checked ones. Nothing
here adds work per media frame: the decoder tap's ``put`` is what aiortc calls per frame (as
before), and the hot paths bind :func:`backlog_skipper`'s choice once, at setup.

To support a new aiortc or aioice: read each accessor against the new sources, run
``tests/test_aiortc_compat.py`` and the media tests, then add the version to :func:`supported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
import queue
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import aioice
import aioice.ice as aioice_ice
import aiortc
from aioice import Candidate, Connection
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCCertificate,
    RTCConfiguration,
    RTCDtlsTransport,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCTransportStats,
)
from aiortc import sdp as aiortc_sdp
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

_is_codec_compatible: Callable[..., Any] | None
try:
    from aiortc.rtcpeerconnection import is_codec_compatible as _is_codec_compatible
except ImportError:  # pragma: no cover - another aiortc
    _is_codec_compatible = None

if TYPE_CHECKING:
    from .udp import HostSockets

__all__ = [
    "AIOICE_CHECKED",
    "AIORTC_CHECKED",
    "aioice_supported",
    "aiortc_supported",
    "backlog_skipper",
    "bundle_everything",
    "codecs_compatible",
    "consent_interval",
    "end_received_track",
    "forward_keyframe_requests",
    "forward_promptly",
    "gather_on",
    "host_addresses",
    "heard_from_peer",
    "keyframe_requests",
    "received_codec",
    "reoffer",
    "selected_candidates",
    "sender_codec",
    "skip_backlog",
    "stun_round_trip_ms",
    "supported",
    "send_first",
    "set_stream_id",
    "tap_decoder",
    "transport_stats",
    "use_dtls",
]

log = logging.getLogger(__name__)

#: The (major, minor) versions every accessor was read against and tested with.
CHECKED_AIORTC = (1, 16)
CHECKED_AIOICE = (0, 13)


def _major_minor(version: str) -> tuple[int, int] | None:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def aiortc_supported(version: str) -> bool:
    """Whether this module was written and checked against this aiortc version (1.16)."""
    return _major_minor(version) == CHECKED_AIORTC


def aioice_supported(version: str) -> bool:
    """Whether this module was written and checked against this aioice version (0.13)."""
    return _major_minor(version) == CHECKED_AIOICE


def supported(aiortc_version: str, aioice_version: str) -> bool:
    """Whether this module was checked against this pair of versions (aiortc 1.16, aioice 0.13)."""
    return aiortc_supported(aiortc_version) and aioice_supported(aioice_version)


#: Whether aiortc's internals are used (the installed aiortc is one this module knows). Read at
#: each call (at setup for the per-frame paths), so tests can turn it off.
AIORTC_CHECKED: bool = aiortc_supported(aiortc.__version__)
#: Whether aioice's internals are used. The ICE accessors reach aioice through aiortc, so they
#: need both flags.
AIOICE_CHECKED: bool = aioice_supported(aioice.__version__)


def _warn_if_unchecked() -> None:
    """One warning naming what runs degraded (called at import)."""
    if AIORTC_CHECKED and AIOICE_CHECKED:
        return
    degraded = (
        []
        if AIORTC_CHECKED
        else ["passthrough echo re-encodes", "stale frames kept", "transport stats 0", "DTLS: ECDSA suites only"]
    )
    degraded.append("no candidate pair, ICE timeout or STUN round trip")
    log.warning(
        "aiortc %s / aioice %s: fantasize_rtc's media layer was checked against aiortc %d.%d and aioice %d.%d "
        "only; running without their internals (%s)",
        aiortc.__version__,
        aioice.__version__,
        *CHECKED_AIORTC,
        *CHECKED_AIOICE,
        ", ".join(degraded),
    )


_warn_if_unchecked()


# -- received tracks -------------------------------------------------------------------------------


def _skip_backlog(track: MediaStreamTrack, keep: int) -> int:
    # Per frame (echo, recording): keep it as lean as it is.
    waiting: asyncio.Queue[Any] | None = getattr(track, "_queue", None)
    if waiting is None:
        return 0
    dropped = 0
    try:
        while waiting.qsize() > keep:
            item = waiting.get_nowait()
            if item is None:  # end of stream: put it back so the next recv() ends the track
                waiting.put_nowait(None)
                break
            dropped += 1
    except AttributeError:  # not an asyncio.Queue after all: drop nothing more
        pass
    return dropped


def _skip_nothing(track: MediaStreamTrack, keep: int) -> int:
    return 0


def skip_backlog(track: MediaStreamTrack, keep: int) -> int:
    """Drop all but ``keep`` frames waiting in a received track's queue; returns how many went.

    aiortc decodes received media in a thread into an unbounded queue (``RemoteStreamTrack._queue``).
    When a consumer (an encoder) is slower than real time, stale frames would pile up without bound;
    for live media the newest frames are the ones worth keeping. An end-of-stream marker is never
    dropped. Unchecked aiortc: drops nothing and returns 0. Per-frame callers use
    :func:`backlog_skipper` instead, which checks the version once.
    """
    return _skip_backlog(track, keep) if AIORTC_CHECKED else 0


def backlog_skipper() -> Callable[[MediaStreamTrack, int], int]:
    """:func:`skip_backlog` for a per-frame loop: the version is checked here, once, and the
    function returned does only the dropping (or nothing, on an unchecked aiortc)."""
    return _skip_backlog if AIORTC_CHECKED else _skip_nothing


def end_received_track(track: MediaStreamTrack) -> bool:
    """Queue an end marker behind the frames a received track already holds: its ``recv()``
    returns them, then raises ``MediaStreamError`` (how aiortc itself ends it). This lets a
    recording write what arrived before it stops. False, changing nothing, on an unchecked aiortc
    or a track without that queue: the reader then has to be cancelled."""
    if not AIORTC_CHECKED:
        return False
    waiting = getattr(track, "_queue", None)
    if not isinstance(waiting, asyncio.Queue):
        return False
    waiting.put_nowait(None)
    return True


# -- passthrough echo ------------------------------------------------------------------------------

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"


class _DecoderTap(queue.Queue[Any]):
    """Stands in for a receiver's decoder queue: encoded frames go to ``out`` instead of the
    decoder thread, which idles until the end marker (passed on, so the thread still exits)."""

    def __init__(self, out: asyncio.Queue[Any]) -> None:
        super().__init__()
        self._out = out

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        # Called per frame, on the event loop thread (RTP handling and receiver shutdown both run there).
        if item is None:
            super().put(None)
        self._out.put_nowait(item)


def sender_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec the transceiver's sender sends: the first negotiated one (aiortc keeps the list
    private). aiortc sets it when the remote description is applied, before the ``track`` event,
    and this server never applies a second one to a peer connection, so it can be read once then.
    None when it cannot be known (unchecked aiortc, nothing negotiated)."""
    if not AIORTC_CHECKED:
        return None
    codecs = getattr(transceiver, "_codecs", None)
    if not isinstance(codecs, list) or not codecs or not isinstance(codecs[0], RTCRtpCodecParameters):
        return None
    return codecs[0]


def send_first(transceiver: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> bool:
    """Make the transceiver send ``codec`` (a compatible one of its negotiated codecs, and that
    codec's RTX) before its answer is made: forwarding must send what the publisher sends, and an
    offer may list another codec first. Call it after the remote offer is applied, before
    ``createAnswer`` (which lists the codecs in this order). False, changing nothing, when the
    transceiver did not negotiate such a codec or on an unchecked aiortc."""
    if not AIORTC_CHECKED:
        return False
    codecs = getattr(transceiver, "_codecs", None)
    if not isinstance(codecs, list):
        return False
    match = next((c for c in codecs if c.mimeType.lower() != "video/rtx" and codecs_compatible(c, codec)), None)
    if match is None:
        return False
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == match.payloadType]
    rest = [c for c in codecs if c is not match and all(c is not r for r in rtx)]
    setattr(transceiver, "_codecs", [match, *rtx, *rest])  # noqa: B010
    return True


async def reoffer(pc: RTCPeerConnection) -> Any:
    """A new offer on a connection that has negotiated before (the server's renegotiation).

    aiortc's ``createOffer`` gives every section its own default payload types and header
    extension ids, also the sections already agreed on; browsers refuse that ("RTP extension ID
    reassignment not supported"; RFC 8843 and JSEP: what was negotiated stays). This offer keeps,
    for every section that was negotiated, the codecs and extension ids the last answer agreed,
    and numbers new sections the way the bundle already does (the same payload type for the
    same codec, the same id for the same extension, free ones otherwise).

    On an unchecked aiortc: aiortc's own offer (an aiortc peer accepts it; a browser does not)."""
    if not AIORTC_CHECKED:
        return await pc.createOffer()
    agreed: dict[str, tuple[list[Any], list[Any]]] = {}
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        extensions = getattr(transceiver, "_headerExtensions", None)
        if (
            transceiver.mid is not None
            and transceiver.currentDirection is not None
            and codecs
            and extensions is not None
        ):
            agreed[transceiver.mid] = (copy.deepcopy(codecs), copy.deepcopy(extensions))
    offer = await pc.createOffer()
    if not agreed:
        return offer
    # createOffer also reset the transceivers' own lists to aiortc's defaults, and a sender or
    # receiver that starts before the answer is in (aiortc starts them from a task of the last
    # setRemoteDescription, which may run only now) would register those: the bundle's shared
    # header extension map would then read the browser's ids wrongly, and its receive loop dies
    # on the first packet that does not parse. Put back what was agreed.
    for transceiver in pc.getTransceivers():
        kept = agreed.get(str(transceiver.mid))
        if kept is not None:
            setattr(transceiver, "_codecs", copy.deepcopy(kept[0]))  # noqa: B010
            setattr(transceiver, "_headerExtensions", copy.deepcopy(kept[1]))  # noqa: B010
    description = aiortc_sdp.SessionDescription.parse(offer.sdp)
    description.type = "offer"
    ids: dict[str, int] = {}
    payload_types: dict[tuple[str, int, int | None, str], int] = {}
    for codecs, extensions in agreed.values():
        for extension in extensions:
            ids.setdefault(extension.uri, extension.id)
        for codec in codecs:
            if codec.mimeType.lower() != "video/rtx":
                payload_types.setdefault(_codec_key(codec), codec.payloadType)
    taken_types = {c.payloadType for codecs, _ in agreed.values() for c in codecs}
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        kept = agreed.get(media.rtp.muxId)
        if kept is not None:
            media.rtp.codecs, media.rtp.headerExtensions = copy.deepcopy(kept[0]), copy.deepcopy(kept[1])
        else:
            _renumber(media, ids, payload_types, taken_types)
        media.fmt = [codec.payloadType for codec in media.rtp.codecs]
    return type(offer)(sdp=str(description), type="offer")


def _codec_key(codec: RTCRtpCodecParameters) -> tuple[str, int, int | None, str]:
    parameters = ";".join(f"{k}={v}" for k, v in sorted(codec.parameters.items()) if k != "apt")
    return (codec.mimeType.lower(), codec.clockRate, codec.channels, parameters)


def _renumber(media: Any, ids: dict[str, int], payload_types: dict[Any, int], taken: set[int]) -> None:
    """A new section's extension ids and payload types, as the bundle's other sections have them."""
    for extension in media.rtp.headerExtensions:
        if extension.uri not in ids:
            ids[extension.uri] = next(i for i in range(1, 15) if i not in ids.values())
        extension.id = ids[extension.uri]
    renamed: dict[int, int] = {}
    for codec in media.rtp.codecs:
        if codec.mimeType.lower() == "video/rtx":
            continue
        key = _codec_key(codec)
        if key not in payload_types:
            payload_types[key] = _free_payload_type(taken, payload_types)
        renamed[codec.payloadType] = payload_types[key]
        taken.add(payload_types[key])
    for codec in media.rtp.codecs:
        if codec.mimeType.lower() == "video/rtx":
            base = renamed.get(codec.parameters.get("apt"))  # type: ignore[arg-type]
            if base is None:
                continue
            rtx_key = ("video/rtx", codec.clockRate, None, f"apt={base}")
            if rtx_key not in payload_types:
                payload_types[rtx_key] = _free_payload_type(taken, payload_types)
            codec.parameters["apt"] = base
            codec.payloadType = payload_types[rtx_key]
            taken.add(codec.payloadType)
        else:
            codec.payloadType = renamed[codec.payloadType]
    media.rtp.codecs = [
        c for c in media.rtp.codecs if c.mimeType.lower() != "video/rtx" or c.parameters.get("apt") in renamed.values()
    ]


def _free_payload_type(taken: set[int], assigned: dict[Any, int]) -> int:
    """A dynamic payload type (96-127) the bundle does not use yet."""
    used = taken | set(assigned.values())
    free = next((pt for pt in range(96, 128) if pt not in used), None)
    if free is None:
        raise ValueError("every dynamic payload type of the bundle is taken")
    return free


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> bool:
    """Name the media stream the sender's track belongs to (the ``a=msid`` stream id the far end
    groups tracks by: ``event.streams`` in a browser). aiortc gives every sender of a connection
    the same one and has no API to choose it. False, changing nothing, on an unchecked aiortc."""
    if not AIORTC_CHECKED or not isinstance(getattr(sender, "_stream_id", None), str):
        return False
    setattr(sender, "_stream_id", stream_id)  # noqa: B010
    return True


def bundle_everything(pc: RTCPeerConnection) -> bool:
    """Make the connection put every section it creates from now on on its first transport
    (``max-bundle``), whatever it was made with. aiortc's default, ``balanced``, gives a section a
    remote offer adds the transport of an earlier section of its kind; when one offer adds two of
    a kind, the second gets the first one's own transport before BUNDLE moves the first onto the
    shared one, and stays there: never connected, its receiver never starts, and its packets reach
    the first section's receiver (a group call's server offers do this as members join). True when
    the policy is ``max-bundle`` now; False, changing nothing, on an unchecked aiortc."""
    if not AIORTC_CHECKED:
        return False
    configuration = getattr(pc, "_RTCPeerConnection__configuration", None)
    if not isinstance(configuration, RTCConfiguration):
        return False
    configuration.bundlePolicy = RTCBundlePolicy.MAX_BUNDLE
    return True


def codecs_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    """Whether frames of codec ``a`` can be sent as codec ``b`` without transcoding: the same MIME
    type and clock rate, and for H.264 the same packetization mode and profile (aiortc's own
    check, where this aiortc has it)."""
    if a.mimeType.lower() != b.mimeType.lower() or a.clockRate != b.clockRate:
        return False
    if AIORTC_CHECKED and callable(_is_codec_compatible):
        try:
            return bool(_is_codec_compatible(a, b))
        except (AttributeError, KeyError, TypeError, ValueError):
            return False
    if a.mimeType.lower() == "video/h264":
        return a.parameters.get("packetization-mode", "0") == b.parameters.get("packetization-mode", "0")
    return True


def received_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec the peer sends on this transceiver: the first negotiated one (the answer lists
    them in that order, and a sender sends with the first), as :func:`sender_codec` reads it.
    Passthrough recording needs it before the first frame, to pick the container's stream. None
    when it cannot be known (unchecked aiortc, nothing negotiated)."""
    return sender_codec(transceiver)


def tap_decoder(receiver: RTCRtpReceiver, out: asyncio.Queue[Any]) -> bool:
    """Send the receiver's encoded frames, as ``(codec, frame)`` tuples, to ``out`` instead of its
    decoder (then None when the receiver stops). This is what passthrough echo needs, and aiortc
    has no hook for it: the tap replaces the receiver's private decoder queue. Call it before the
    receiver starts (from the ``track`` event), while its decoder thread does not exist yet.

    False, changing nothing, on an unchecked aiortc, when the receiver has no such queue, or when
    its decoder thread already runs (it would wait on the old queue forever)."""
    if not AIORTC_CHECKED:
        return False
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        return False
    if getattr(receiver, _DECODER_THREAD, None) is not None:
        return False
    setattr(receiver, _DECODER_QUEUE, _DecoderTap(out))
    return True


class _PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer hands a video frame over when the first packet of the *next* frame
    arrives (a frame interval later: 33 ms at 30 fps) and audio four packets later (80 ms), which
    suits a decoder. A forwarder wants each frame the moment it is complete: video when its last
    packet (the RTP marker) is in and every packet back to the frame's first; audio at once (one
    packet is one frame; a gap is the subscriber's jitter buffer's to conceal)."""

    def add(self, packet: Any) -> tuple[bool, Any]:
        pli_flag, frame = super().add(packet)
        origin = self._origin
        if frame is not None or origin is None:
            return pli_flag, frame
        if not self._is_video:
            count = (packet.sequence_number - origin) % 65536 + 1
            if count > self._capacity:
                return pli_flag, None
            self.remove(count)  # anything older that is missing is given up
            return pli_flag, JitterFrame(data=packet._data, timestamp=packet.timestamp)
        # The frame at the front is complete when its packets run, with no gap, to its marker.
        parts: list[bytes] = []
        timestamp = None
        for count in range(1, self._capacity + 1):
            held = self._packets[(origin + count - 1) % self._capacity]
            if held is None or (timestamp is not None and held.timestamp != timestamp):
                return pli_flag, None  # a packet is missing (a NACK may bring it)
            timestamp = held.timestamp
            parts.append(held._data)  # type: ignore[attr-defined]
            if held.marker:
                self.remove(count)
                return pli_flag, JitterFrame(data=b"".join(parts), timestamp=timestamp)
        return pli_flag, None


_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def forward_promptly(receiver: RTCRtpReceiver, kind: str) -> bool:
    """Hand the receiver's frames over as soon as each is complete (:class:`_PromptJitterBuffer`),
    for forwarding; call it before media arrives. False, changing nothing, on an unchecked aiortc
    or a receiver without that buffer."""
    if not AIORTC_CHECKED or not isinstance(getattr(receiver, _JITTER_BUFFER, None), JitterBuffer):
        return False
    video = kind == "video"
    setattr(receiver, _JITTER_BUFFER, _PromptJitterBuffer(capacity=512 if video else 16, is_video=video))
    return True


def forward_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> bool:
    """Call ``callback`` instead of forcing a keyframe from the sender's own encoder when the far
    end asks for one (RTCP PLI or FIR). A passthrough sender has no encoder: only the peer that
    encoded the frames can answer. False, changing nothing, when the sender has no such hook."""
    if not AIORTC_CHECKED or not callable(getattr(sender, "_send_keyframe", None)):
        return False
    setattr(sender, "_send_keyframe", callback)  # noqa: B010 (mypy forbids assigning to a method)
    return True


def keyframe_requests(receiver: RTCRtpReceiver) -> list[Coroutine[Any, Any, None]]:
    """One RTCP picture-loss indication per stream the receiver has heard from, as coroutines to
    run: the sending peer answers with a keyframe. Empty when unavailable."""
    if not AIORTC_CHECKED:
        return []
    try:
        ssrcs = list(getattr(receiver, _REMOTE_STREAMS))
        send = receiver._send_rtcp_pli
    except (AttributeError, TypeError):
        return []
    return [send(ssrc) for ssrc in ssrcs]


# -- transport counters ----------------------------------------------------------------------------


def transport_stats(dtls: RTCDtlsTransport) -> list[RTCTransportStats] | None:
    """The DTLS transport's packet and byte counters. ``getStats()`` reports only RTP streams;
    aiortc keeps the transport's own counters (everything received: RTP, RTCP, DTLS, SCTP)
    private. None on an unchecked aiortc or when they cannot be read."""
    if not AIORTC_CHECKED:
        return None
    try:
        report = dtls._get_stats()
        return [stat for stat in report.values() if isinstance(stat, RTCTransportStats)]
    except (AttributeError, TypeError):
        return None


# -- ICE -------------------------------------------------------------------------------------------


def _ice_checked() -> bool:
    return AIORTC_CHECKED and AIOICE_CHECKED


def heard_from_peer(transports: Iterable[RTCIceTransport]) -> bool:
    """Whether the remote peer has answered any ICE connectivity check on these transports (a
    candidate pair succeeded: the peer is there and doing ICE). aiortc reports no ICE state
    between "checking" and "completed". True when it cannot be known (unchecked versions, changed
    internals), so that nothing is ended early."""
    if not _ice_checked():
        return True
    for ice in transports:
        check_list = getattr(getattr(ice, "_connection", None), "_check_list", None)
        if check_list is None:
            return True
        try:
            for pair in check_list:
                if getattr(getattr(pair, "state", None), "name", "") == "SUCCEEDED":
                    return True
        except TypeError:
            return True
    return False


def _nominated(transports: Iterable[RTCIceTransport]) -> tuple[Connection, Any] | None:
    # aiortc does not expose the selected pair; aioice keeps it on the connection (bundled media
    # share one transport, so the first nominated pair is the one).
    for ice in transports:
        connection = getattr(ice, "_connection", None)
        nominated = getattr(connection, "_nominated", None)
        if not isinstance(connection, Connection) or not isinstance(nominated, dict):
            continue
        for pair in nominated.values():
            return connection, pair
    return None


def selected_candidates(transports: Iterable[RTCIceTransport]) -> tuple[Candidate, Candidate] | None:
    """(local, remote) candidates of the pair ICE nominated; None before ICE completes, and when it
    cannot be known (aiortc has no API for the selected pair)."""
    if not _ice_checked():
        return None
    found = _nominated(transports)
    if found is None:
        return None
    local = getattr(found[1], "local_candidate", None)
    remote = getattr(found[1], "remote_candidate", None)
    if not isinstance(local, Candidate) or not isinstance(remote, Candidate):
        return None
    return local, remote


async def stun_round_trip_ms(transports: Iterable[RTCIceTransport], timeout: float = 2.0) -> float | None:
    """Round trip of one STUN binding request on the nominated pair (a consent check, RFC 7675),
    in ms, sent the way aioice sends its own. None before ICE completes, on a lost check or a
    closing transport, and when it cannot be done (unchecked versions, changed internals)."""
    if not _ice_checked():
        return None
    found = _nominated(transports)
    if found is None:
        return None
    connection, pair = found
    try:
        password = connection.remote_password
        if password is None:
            return None
        request = connection.build_request(pair, nominate=False)
        start = time.perf_counter()
        await asyncio.wait_for(
            pair.protocol.request(request, pair.remote_addr, integrity_key=password.encode("utf8"), retransmissions=0),
            timeout,
        )
        return (time.perf_counter() - start) * 1000
    except asyncio.CancelledError:
        raise
    except Exception:  # a lost check, a closing transport, or changed internals: no sample this time
        log.debug("STUN round-trip check failed", exc_info=True)
        return None


def host_addresses() -> list[str]:
    """The local addresses aioice gathers host candidates on (every interface's, but loopback and
    link-local), which the media UDP port is bound on."""
    return aioice_ice.get_host_addresses(use_ipv4=True, use_ipv6=True)


def gather_on(transports: Iterable[RTCIceTransport], sockets: HostSockets) -> bool:
    """Make these ICE transports (before their gathering, which ``setLocalDescription`` starts)
    open their host candidates on ``sockets`` (the UDP mux or the port range, media/udp.py)
    instead of a random port per address; relayed (TURN) candidates as aioice makes them.
    ``sockets.announced`` addresses are added as candidates with the same port (what a NAT in
    front forwards to), and with ``sockets.per_session_stun`` each IPv4 socket asks the
    configured STUN server for its server-reflexive address, as aioice would.

    False, changing nothing, when it cannot be done (unchecked versions, changed internals): the
    caller must refuse the session, since the operator asked for known ports."""
    if not _ice_checked():
        return False
    connections = [getattr(ice, "_connection", None) for ice in transports]
    if not connections or not all(
        isinstance(c, Connection) and callable(getattr(c, "get_component_candidates", None)) for c in connections
    ):
        return False
    for connection in connections:
        assert isinstance(connection, Connection)
        connection.get_component_candidates = _gathering_on(connection, sockets)  # type: ignore[method-assign]
    return True


def _gathering_on(connection: Connection, sockets: HostSockets) -> Callable[..., Coroutine[Any, Any, list[Candidate]]]:
    original = connection.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        relayed = await original(component=component, addresses=[], timeout=timeout)  # TURN only
        bound = await sockets.bind(addresses, lambda: aioice_ice.StunProtocol(connection), connection.local_username)
        host: list[Candidate] = []
        for address, port, protocol in bound:
            protocol.local_candidate = Candidate(  # type: ignore[attr-defined]
                foundation=candidate_foundation("host", "udp", address),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=address,
                port=port,
                type="host",
            )
            connection._protocols.append(protocol)  # type: ignore[arg-type]
            host.append(protocol.local_candidate)  # type: ignore[attr-defined]
        extra = _announced(component, host, sockets)
        if sockets.per_session_stun and connection.stun_server:
            extra += await _reflexive(connection, [p for _, _, p in bound], timeout)
        return host + extra + relayed

    return get_component_candidates


def _announced(component: int, host: list[Candidate], sockets: HostSockets) -> list[Candidate]:
    out = []
    for announced in sockets.announced:
        version = ipaddress.ip_address(announced.address).version
        base = next((c for c in host if ipaddress.ip_address(c.host).version == version), None)
        if base is None or any(c.host == announced.address for c in host):
            continue
        out.append(
            Candidate(
                foundation=candidate_foundation(announced.type, "udp", announced.address),
                component=component,
                transport="udp",
                priority=candidate_priority(component, announced.type),
                host=announced.address,
                port=base.port,
                type=announced.type,
                related_address=base.host if announced.type != "host" else None,
                related_port=base.port if announced.type != "host" else None,
            )
        )
    return out


async def _reflexive(connection: Connection, protocols: list[Any], timeout: int) -> list[Candidate]:
    stun_server = connection.stun_server
    assert stun_server is not None
    tasks = [
        asyncio.ensure_future(aioice_ice.server_reflexive_candidate(p, stun_server))
        for p in protocols
        if ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    return [task.result()[0] for task in done if task.exception() is None]


# -- test hook -------------------------------------------------------------------------------------


@contextlib.contextmanager
def consent_interval(seconds: float) -> Iterator[bool]:
    """Test hook: ICE consent checks (RFC 7675) every ``seconds`` (jittered) instead of aioice's
    5 s, while the block runs, so that a vanished peer is noticed after about six intervals
    instead of about 30 s. Process-wide (a module constant of aioice): for tests only.

    Yields True when the schedule was shortened; False, changing nothing, on an unchecked aioice
    or one without that constant (the caller should skip)."""
    try:
        import aioice.ice as aioice_ice
    except ImportError:  # pragma: no cover - an aioice whose modules moved
        yield False
        return
    old = getattr(aioice_ice, "CONSENT_INTERVAL", None)
    if not AIOICE_CHECKED or not isinstance(old, int | float):
        yield False
        return
    setattr(aioice_ice, "CONSENT_INTERVAL", seconds)  # noqa: B010 (typed int there; a float works)
    try:
        yield True
    finally:
        setattr(aioice_ice, "CONSENT_INTERVAL", old)  # noqa: B010


# -- DTLS ---------------------------------------------------------------------------------------

_CERTIFICATES = "_RTCPeerConnection__certificates"


class _Certificate(RTCCertificate):
    """aiortc's certificate, whose DTLS context offers ``ciphers`` and reports to ``on_info``."""

    def __init__(
        self,
        certificate: RTCCertificate,
        ciphers: bytes,
        on_info: Callable[..., None],
        srtp_profiles: bytes | None,
    ) -> None:
        super().__init__(key=certificate._key, cert=certificate._cert)
        self._ciphers = ciphers
        self._on_info = on_info
        self._srtp_profiles = srtp_profiles

    def _create_ssl_context(self, srtp_profiles: Any) -> Any:
        ctx = super()._create_ssl_context(srtp_profiles=srtp_profiles)
        ctx.set_cipher_list(self._ciphers)
        ctx.set_info_callback(self._on_info)
        if self._srtp_profiles is not None:
            ctx.set_tlsext_use_srtp(self._srtp_profiles)
        return ctx


def use_dtls(
    pc: RTCPeerConnection,
    ciphers: bytes,
    on_info: Callable[..., None],
    srtp_profiles: bytes | None = None,
) -> bool:
    """Make ``pc``'s DTLS transports offer ``ciphers`` and call ``on_info(conn, where, ret)``
    (OpenSSL's info callback) during their handshakes. Call before any description is set.
    ``srtp_profiles`` (OpenSSL's names, ``b"SRTP_AEAD_AES_128_GCM"``, colon-separated) offers
    only those instead of aiortc's three: for test clients."""
    if not AIORTC_CHECKED:
        return False
    certificates = getattr(pc, _CERTIFICATES, None)
    if not (
        isinstance(certificates, list)
        and len(certificates) == 1
        and hasattr(certificates[0], "_key")
        and hasattr(certificates[0], "_cert")
        and hasattr(RTCCertificate, "_create_ssl_context")
    ):
        return False
    setattr(pc, _CERTIFICATES, [_Certificate(certificates[0], ciphers, on_info, srtp_profiles)])
    return True
