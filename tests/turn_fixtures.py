"""A real TURN server for the tests: coturn (Debian's ``coturn``) on free loopback ports.

It listens for TURN over UDP and TCP on one port and for TURN over TLS on another, with a
self-signed certificate for 127.0.0.1 made here (``Coturn.ca_file``: trust it to verify ``turns:``).
Its log (``Coturn.log``, verbose) has a line per allocation: who, and over TLS or not.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import accepts_tcp, free_port, free_udp_port, require_program, stop_process, wait_for_sync

TURN_SECRET = "turn-test-secret"


@dataclass(frozen=True, slots=True)
class Coturn:
    port: int  # TURN over UDP and over TCP: turn:127.0.0.1:<port>, turn:127.0.0.1:<port>?transport=tcp
    tls_port: int  # TURN over TLS: turns:127.0.0.1:<tls_port>
    ca_file: Path  # the server's self-signed certificate (PEM), the only CA that verifies it
    log: Path

    def allocations(self) -> list[str]:
        """The log's lines of successful allocations: ``session ...: new, realm=<test>,
        username=<expiry:peerId>, lifetime=..., cipher=..., method=TLSv1.2`` (the last two over TLS)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if ": new, realm=" in line]


def stun_answers(port: int) -> bool:
    """coturn answers a STUN binding request once it listens."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(request, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        return data[8:20] == request[8:20]


def _free_udp_and_tcp_port() -> int:
    """coturn binds TCP on its port as well and retries forever when that one is taken."""
    for _ in range(100):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) signed by its own key, usable as its own CA;
    returns the certificate's and the key's PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fantasize-rtc test TURN")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "turn-cert.pem", workdir / "turn-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextmanager
def start_coturn(workdir: Path, relay_ports: tuple[int, int] = (40000, 40999), *, udp: bool = True) -> Iterator[Coturn]:
    """Start coturn with the TURN REST (shared secret) scheme, listening for UDP, TCP and TLS;
    stops it after. ``udp=False``: no UDP listener at all (a network where only TCP gets through),
    so a relay candidate can only have come over TCP or TLS. The relayed addresses are UDP always."""
    binary = require_program("turnserver")
    port = _free_udp_and_tcp_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    cert_file, key_file = self_signed_certificate(workdir)
    log = workdir / "turn.log"
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         f"--tls-listening-port={tls_port}", f"--cert={cert_file}", f"--pkey={key_file}",
         "--allow-loopback-peers", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=test",
         "--no-dtls", *(() if udp else ("--no-udp",)), "--no-cli", f"--pidfile={workdir / 'turn.pid'}",
         f"--log-file={log}", "--simple-log", "--verbose", f"--userdb={workdir / 'turndb'}",
         f"--min-port={relay_ports[0]}", f"--max-port={relay_ports[1]}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # A loaded machine can take a while to start it; the wait ends as soon as it answers.
        wait_for_sync(
            lambda: (
                proc.poll() is not None
                or ((not udp or stun_answers(port)) and accepts_tcp(port) and accepts_tcp(tls_port))
            ),
            30,
            message="coturn to listen",
        )
        assert proc.poll() is None, log.read_text() if log.exists() else "coturn exited"
        yield Coturn(port, tls_port, cert_file, log)
    finally:
        # Idle, it exits at once; with allocations still live (a test that lists aiohttp_client
        # before this fixture ends coturn before the app's sessions) it can take over 10 s: kill it.
        stop_process(proc, 2)


@contextmanager
def run_coturn(workdir: Path, relay_ports: tuple[int, int] = (40000, 40999)) -> Iterator[int]:
    """:func:`start_coturn`, yielding only its UDP/TCP port."""
    with start_coturn(workdir, relay_ports) as server:
        yield server.port


@pytest.fixture
def coturn_server(tmp_path: Path) -> Iterator[Coturn]:
    with start_coturn(tmp_path) as server:
        yield server


@pytest.fixture
def coturn_tcp_only(tmp_path: Path) -> Iterator[Coturn]:
    """coturn reachable over TCP and TLS only (``--no-udp``)."""
    with start_coturn(tmp_path, udp=False) as server:
        yield server


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    with run_coturn(tmp_path) as port:
        yield port
