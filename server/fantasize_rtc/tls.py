"""HTTPS and WSS: the server's TLS context, a self-signed certificate for the LAN, reloading.

``fantasize-rtc serve`` asks :func:`context_for` for the context of its flags:

- ``--tls-cert``/``--tls-key``: those files (a chain and its key, PEM), e.g. from certbot;
- ``--tls-self-signed``: a certificate this module makes (:func:`make_self_signed`) for the host's
  names and addresses and keeps in ``--state-dir`` (:func:`self_signed`), so a phone that accepted
  it once sees the same one after a restart. It is made anew when it has expired (or is about to),
  or no longer covers a name or address the host has now.

On SIGHUP the CLI calls :func:`reload`: the files are read again into the *same* context
(``load_cert_chain`` on a live context applies to the handshakes that follow; connections already
open keep theirs). New files that do not load leave the old certificate in place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import RtcConfig

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "Certificate",
    "SelfSigned",
    "TlsError",
    "context_for",
    "describe",
    "fingerprint",
    "host_addresses",
    "host_names",
    "load_context",
    "make_self_signed",
    "reload",
    "self_signed",
    "write_encoder_certificate",
]

log = logging.getLogger(__name__)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The self-signed certificate and its key, in ``--state-dir``.
CERT_FILE = "self-signed-cert.pem"
KEY_FILE = "self-signed-key.pem"
#: How long a self-signed certificate is valid. Apple devices refuse server certificates valid for
#: more than 825 days, trusted by hand or not; a year is well inside that.
VALID_DAYS = 365
#: A self-signed certificate with less than this left is made anew at startup (and on SIGHUP)
#: rather than left to expire under a running server (certbot renews at the same point).
RENEW_BEFORE = dt.timedelta(days=30)
#: Phones' clocks run a little behind at times: a certificate made "now" starts an hour earlier.
CLOCK_SKEW = dt.timedelta(hours=1)


class TlsError(OSError):
    """A certificate or key that cannot be used (missing, unreadable, malformed, not a pair).

    An ``OSError``, like the ``ssl.SSLError`` it usually comes from: ``serve`` reports it as one line
    ("could not start: ...") as it does a port in use."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """What the log says about a certificate (the first of a chain: the server's own)."""

    fingerprint: str
    not_after: dt.datetime
    names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]

    @property
    def covers(self) -> tuple[str, ...]:
        """Its names and addresses as text, names first."""
        return (*self.names, *(str(a) for a in self.ip_addresses))


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """The self-signed certificate in the state folder: where it is, and whether this run made it."""

    cert_path: Path
    key_path: Path
    made: bool
    certificate: Certificate


# -- describing a certificate ---------------------------------------------------------------------


def _first_certificate(cert_pem: str | bytes) -> x509.Certificate:
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        certificates = x509.load_pem_x509_certificates(data)  # a chain: leaf first
    except ValueError:
        raise TlsError("it is not a PEM certificate") from None
    return certificates[0]


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 of the (first) certificate's DER bytes as browsers show it: ``AB:CD:...``."""
    der = _first_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return _colon_hex(hashlib.sha256(der).digest())


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in digest)


def describe(cert_pem: str | bytes) -> Certificate:
    """Fingerprint, expiry and subjectAltNames of the (first) certificate of ``cert_pem``."""
    cert = _first_certificate(cert_pem)
    names: list[str] = []
    addresses: list[IPAddress] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names = san.get_values_for_type(x509.DNSName)
        addresses = [a for a in san.get_values_for_type(x509.IPAddress) if isinstance(a, IPAddress)]
    der = cert.public_bytes(serialization.Encoding.DER)
    return Certificate(
        fingerprint=_colon_hex(hashlib.sha256(der).digest()),
        not_after=cert.not_valid_after_utc,
        names=tuple(names),
        ip_addresses=tuple(addresses),
    )


# -- the context ------------------------------------------------------------------------------------


def _no_password() -> bytes:
    # Without a password callback OpenSSL asks for one on the terminal: a server reloading on
    # SIGHUP would hang there. An encrypted key is refused instead.
    raise TlsError("the private key is encrypted: give an unencrypted key (chmod 600 protects it on disk)")


def load_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer, Python's server-side defaults) with this chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key)
    return context


def _load(context: ssl.SSLContext, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TlsError as exc:
        raise TlsError(f"cannot use the TLS key {os.fspath(key)}: {exc}") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsError(
            f"cannot use the TLS certificate {os.fspath(cert)} with the key {os.fspath(key)}: {reason}"
        ) from None


def _read_certificate(path: Path) -> Certificate:
    try:
        return describe(path.read_bytes())
    except OSError as exc:
        raise TlsError(f"cannot read the TLS certificate {path}: {exc.strerror or exc}") from None


# -- the self-signed certificate ---------------------------------------------------------------------


def host_names() -> list[str]:
    """The names this host is reached by: its hostname, FQDN, ``<hostname>.local`` (mDNS: what
    phones on the LAN resolve without a DNS entry) and ``localhost``."""
    hostname = socket.gethostname()
    candidates = [hostname, socket.getfqdn(), f"{hostname.partition('.')[0]}.local", "localhost"]
    names: list[str] = []
    for candidate in candidates:
        name = candidate.strip().rstrip(".").lower()
        if not name or not name.isascii() or " " in name or _is_address(name) or name in names:
            continue  # a name no certificate can carry (or no name at all)
        names.append(name)
    return names


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_addresses() -> list[IPAddress]:
    """Every address of this machine's interfaces, IPv4 and IPv6, with 127.0.0.1 and ::1.

    IPv6 link-local addresses (``fe80::``) are left out: a browser cannot open a URL with one
    (it needs the interface's zone), and virtual interfaces coming and going would make the
    certificate anew every time."""
    found: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for text in _interface_addresses():
        try:
            address = ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            continue
        if address.version == 6 and address.is_link_local:
            continue
        if address not in found:
            found.append(address)
    return found


def _interface_addresses() -> list[str]:
    try:
        # ifaddr comes with aioice (the server's ICE): every interface's addresses on Linux, macOS
        # and Windows, which the standard library cannot list.
        import ifaddr
    except ImportError:  # pragma: no cover - only without aioice
        infos = socket.getaddrinfo(socket.gethostname(), None)
        return [str(info[4][0]) for info in infos]
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            out.append(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip)
    return out


def make_self_signed(
    names: Sequence[str],
    addresses: Iterable[IPAddress],
    *,
    days: int = VALID_DAYS,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key and a certificate for ``names`` and ``addresses`` (subjectAltNames),
    valid from ``now`` (an hour earlier, for clocks behind) for ``days``; (cert PEM, key PEM).

    A server certificate, not a CA (``CA:FALSE``): Firefox refuses a CA certificate as a site's
    own, and this one is meant to be accepted (or trusted) as the site's."""
    now = now or dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    host = names[0] if names else "localhost"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, host[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fantasize-rtc self-signed"),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(a) for a in addresses]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Key identifiers: strict verifiers (Python 3.13's default context) want them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def self_signed(
    state_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    addresses: Sequence[IPAddress] | None = None,
    now: dt.datetime | None = None,
) -> SelfSigned:
    """The self-signed certificate in ``state_dir``: the one there when it is still good (valid for
    more than :data:`RENEW_BEFORE`, its key is its own, it covers every name and address of the host
    now), else a new one written there. ``names``/``addresses`` default to the host's."""
    folder = Path(state_dir).absolute()  # the log says where it is: a path to find from anywhere
    names = host_names() if names is None else list(names)
    addresses = host_addresses() if addresses is None else list(addresses)
    now = now or dt.datetime.now(dt.timezone.utc)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    reason = _why_not_reuse(cert_path, key_path, names, addresses, now)
    if reason is None:
        return SelfSigned(cert_path, key_path, made=False, certificate=_read_certificate(cert_path))
    log.info("TLS: making a self-signed certificate: %s", reason)
    cert_pem, key_pem = make_self_signed(names, addresses, now=now)
    _make_private_folder(folder)
    # The key first, each file whole or not at all: a crash in between leaves a pair that does not
    # match, which the next start sees and replaces.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return SelfSigned(cert_path, key_path, made=True, certificate=describe(cert_pem))


def _why_not_reuse(
    cert_path: Path, key_path: Path, names: Sequence[str], addresses: Sequence[IPAddress], now: dt.datetime
) -> str | None:
    """None when the certificate in the folder can be used again, else why not (for the log)."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError:
        return f"none in {cert_path.parent} yet"
    except OSError as exc:
        return f"cannot read the one in {cert_path.parent} ({exc.strerror or exc})"
    try:
        cert = _first_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TlsError, ValueError, TypeError):
        return f"the one in {cert_path.parent} does not load"
    if cert.public_key() != key.public_key():
        return f"the key in {key_path} is not the certificate's"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"the one in {cert_path.parent} expires {cert.not_valid_after_utc:%Y-%m-%d}"
    info = describe(cert_pem)
    missing = [n for n in names if n not in info.names] + [str(a) for a in addresses if a not in info.ip_addresses]
    if missing:
        return f"the one in {cert_path.parent} does not cover {', '.join(missing)}"
    return None


def _make_private_folder(folder: Path) -> None:
    if folder.is_dir():
        return  # the operator's folder, perhaps shared: its mode is theirs
    folder.mkdir(mode=0o700, parents=True)
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash: O_EXCL below never writes through a link
    # Created with its mode: the key is never readable by others, not even for a moment.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)  # O_CREAT's mode is masked by the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_encoder_certificate(folder: str | os.PathLike[str], *, days: int = 3650) -> tuple[Path, Path]:
    """A P-256 certificate and key for a WHIP encoder (FFmpeg's ``cert_file``/``key_file``), written
    as ``whip.crt`` and ``whip.key`` (0600) into ``folder``; FileExistsError if either is there.
    WebRTC checks the certificate's fingerprint, not its name (docs/interop.md)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "whip.crt", out / "whip.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it or pick another folder")
    cert_pem, key_pem = make_self_signed(["whip-encoder"], [], days=days)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return cert_path, key_path


# -- what serve uses ----------------------------------------------------------------------------------


def _files_for(config: RtcConfig) -> tuple[Path, Path, SelfSigned | None] | None:
    """(cert, key, the self-signed certificate when it is one) for ``config``; None: TLS is off."""
    if config.tls_cert is not None and config.tls_key is not None:
        return Path(config.tls_cert), Path(config.tls_key), None
    if config.tls_self_signed:
        names, addresses = host_names(), host_addresses()
        for public in config.public_ips:  # behind NAT, browsers open the public address or name
            if _is_address(public):
                address = ipaddress.ip_address(public)
                addresses += [] if address in addresses else [address]
            elif public.lower() not in names:
                names.append(public.lower())
        made = self_signed(config.state_dir, names=names, addresses=addresses)
        return made.cert_path, made.key_path, made
    return None


def context_for(config: RtcConfig) -> ssl.SSLContext | None:
    """The TLS context ``config`` asks for (None: plain HTTP), its certificate described in the log."""
    files = _files_for(config)
    if files is None:
        return None
    cert_path, key_path, made = files
    # Read first: "not a PEM certificate" says more than OpenSSL's "PEM lib" would.
    info = made.certificate if made is not None else _read_certificate(cert_path)
    context = load_context(cert_path, key_path)
    if made is None:
        log.info(
            "TLS: certificate %s for %s, valid until %s, SHA-256 %s",
            cert_path,
            ", ".join(info.covers) or "no subjectAltName",
            f"{info.not_after:%Y-%m-%d %H:%M} UTC",
            info.fingerprint,
        )
        _warn_if_expired(info)
        return context
    log.info(
        "TLS: %s self-signed certificate %s (key %s) for %s, valid until %s",
        "made a new" if made.made else "reusing the",
        cert_path,
        key_path,
        ", ".join(info.covers),
        f"{info.not_after:%Y-%m-%d} UTC",
    )
    log.info("TLS: its SHA-256 fingerprint is %s", info.fingerprint)
    log.info(
        "TLS: browsers warn that this certificate is not trusted. On a phone, open the https URL, check "
        "that the certificate's details show this fingerprint and continue anyway (Chrome: Advanced > "
        "Proceed; Safari: Show Details > visit this website); the camera works on the page then. To "
        "trust it instead, add %s to the device's trusted certificates. It stays the same across "
        "restarts while it covers this host's names and addresses (docs/security.md, HTTPS)",
        cert_path,
    )
    return context


def _warn_if_expired(info: Certificate) -> None:
    if info.not_after <= dt.datetime.now(dt.timezone.utc):
        log.warning(
            "TLS: the certificate expired %s: browsers refuse it until it is renewed (then send SIGHUP)",
            f"{info.not_after:%Y-%m-%d %H:%M} UTC",
        )


def reload(context: ssl.SSLContext, config: RtcConfig) -> bool:
    """Load the certificate files of ``config`` again into ``context`` (the live one: handshakes
    from now on present the new certificate; open connections keep theirs). With
    ``--tls-self-signed`` the certificate is checked again first and made anew if it would not be
    reused at a start. Returns whether the new certificate is in place; when the files do not load,
    logs one error line and leaves the old certificate in place."""
    try:
        files = _files_for(config)
        if files is None:
            log.info("SIGHUP: TLS is off, nothing to reload")
            return False
        cert_path, key_path, _ = files
        info = _read_certificate(cert_path)
        # First into a context of its own: a live context given a certificate whose key then fails
        # to load would be left with neither key (OpenSSL drops the old one), refusing handshakes.
        load_context(cert_path, key_path)
    except OSError as exc:  # TlsError, or the state folder for a new self-signed certificate
        log.error("TLS: kept the current certificate: %s", exc)
        return False
    try:
        _load(context, cert_path, key_path)
    except TlsError as exc:  # they loaded a moment ago: the files are being written as we read them
        log.error("TLS: the certificate files changed while they were reloaded (send SIGHUP again): %s", exc)
        return False
    log.info(
        "TLS: reloaded %s: SHA-256 %s, valid until %s (new connections get it)",
        cert_path,
        info.fingerprint,
        f"{info.not_after:%Y-%m-%d %H:%M} UTC",
    )
    _warn_if_expired(info)
    return True
