"""DTLS as the server's peers do it: what they offer, and what a handshake that failed says.

aiortc offers only ``ECDHE-ECDSA`` cipher suites, so a far end that is the DTLS server with an RSA
certificate (several encoders and media frameworks make RSA ones) shares none with it. The
server's peers offer the ``ECDHE-RSA`` suites too, AES-GCM first and ECDSA preferred
(:data:`CIPHERS`; RFC 8827 section 6.5 needs ``TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`` with
P-256, which stays first). The context is set up by ``_aiortc_compat.use_dtls``.

:class:`DtlsTrace` follows one peer connection's handshakes through OpenSSL's info callback: the
role, the far end's certificate key, alerts sent and received, and once done the version, cipher
suite and SRTP profile. The session report carries it (``dtls``) and a failure is logged with
:meth:`DtlsTrace.explain`, one sentence that says why in words an operator can act on.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL

__all__ = ["CIPHERS", "DtlsTrace", "describe_key"]

#: OpenSSL cipher list of the server's DTLS peers: ECDSA before RSA, AEAD before CBC.
CIPHERS = b":".join(
    (
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    )
)

#: TLS alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2) by number.
ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
}

#: Curves a WebRTC stack accepts for certificates (browsers: P-256 and P-384; OpenSSL 4 dropped
#: the others from TLS).
_USABLE_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def describe_key(key: Any) -> str:
    """``ECDSA P-256``, ``ECDSA secp224r1``, ``RSA 2048``, ``Ed25519`` ..."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {_USABLE_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


class DtlsTrace:
    """What one peer connection's DTLS handshake did (see the module's doc)."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.peer_key: str | None = None
        self.alert_sent: str | None = None
        self.alert_received: str | None = None
        self.version: str | None = None
        self.cipher: str | None = None
        self.srtp_profile: str | None = None
        self.done = False

    def on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        """OpenSSL's info callback (``SSL_CTX_set_info_callback``); never raises."""
        with contextlib.suppress(Exception):  # a diagnostic must never break a handshake
            self._on_info(conn, where, ret)

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if self.role is None and where & (SSL.SSL_ST_CONNECT | SSL.SSL_ST_ACCEPT):
            self.role = "client" if where & SSL.SSL_ST_CONNECT else "server"
        if self.peer_key is None:
            cert = conn.get_peer_certificate(as_cryptography=True)
            if cert is not None:
                self.peer_key = describe_key(cert.public_key())
        if where & SSL.SSL_CB_ALERT:
            level, code = (ret >> 8) & 0xFF, ret & 0xFF
            if code == 0:  # close_notify: a hangup, not a failure
                return
            name = ALERTS.get(code, f"alert {code}") + ("" if level == 2 else " (warning)")
            if where & SSL.SSL_CB_WRITE:
                self.alert_sent = self.alert_sent or name
            else:
                self.alert_received = self.alert_received or name
        elif where & SSL.SSL_CB_HANDSHAKE_DONE:
            self.done = True
            self.version = conn.get_protocol_version_name()
            self.cipher = conn.get_cipher_name()
            profile = conn.get_selected_srtp_profile()
            self.srtp_profile = profile.decode() if profile else None

    def to_wire(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "peerCertificate": self.peer_key,
            "version": self.version,
            "cipher": self.cipher,
            "srtpProfile": self.srtp_profile,
            "alertSent": self.alert_sent,
            "alertReceived": self.alert_received,
        }

    def explain(self) -> str:
        """Why the handshake failed, in one sentence."""
        key = self.peer_key or ""
        if key.startswith("ECDSA") and key.split()[-1] not in _USABLE_CURVES.values():
            return (
                f"the peer's DTLS certificate is {key}, a curve no WebRTC stack accepts any more "
                "(RFC 8827 needs P-256; OpenSSL 4 and browsers refuse it). FFmpeg's WHIP muxer makes "
                "such a certificate when built with GnuTLS: give it a P-256 one with the cert_file "
                "and key_file options (`fantasize-rtc whip-cert` writes one; docs/interop.md)"
            )
        if self.done and self.srtp_profile is None:
            return (
                "no SRTP protection profile in common: the server offers SRTP_AEAD_AES_256_GCM, "
                "SRTP_AEAD_AES_128_GCM and SRTP_AES128_CM_SHA1_80"
            )
        if self.alert_sent:
            return f"the server sent the alert {self.alert_sent} (peer certificate: {key or 'none'})"
        if self.alert_received:
            return f"the peer sent the alert {self.alert_received} (peer certificate: {key or 'none'})"
        if self.role is None:
            return "the handshake never started"
        return "the peer did not answer the handshake in time"
