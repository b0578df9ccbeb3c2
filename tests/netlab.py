"""A NAT lab of Linux network namespaces, veth pairs and nftables: a server behind one NAT, a
client behind another, and an "internet" between them that routes neither private network.

::

    server 10.20.0.2 --- 10.20.0.1 [server NAT] 198.51.100.2 --- 198.51.100.1 [internet]
    203.0.113.1 --- 203.0.113.2 [client NAT] 192.168.1.1 --- 192.168.1.2 client

The server NAT forwards only the TCP port and the UDP ports it is told to (DNAT to the server)
and masquerades the rest; the client NAT masquerades the client and lets in only return traffic,
as a home router does. Programs run in a namespace with :meth:`NatLab.run` / :meth:`NatLab.popen`
(``ip netns exec``). Needs root; :func:`require_lab` skips without it, and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from tests.helpers import IN_CI

SERVER_PRIVATE = "10.20.0.2"
SERVER_PUBLIC = "198.51.100.2"
CLIENT_PRIVATE = "192.168.1.2"
CLIENT_PUBLIC = "203.0.113.2"


def require_lab() -> None:
    """Skip (fail in CI) when namespaces and nftables cannot be used here."""
    why = None
    if os.geteuid() != 0:
        why = "the NAT lab needs root (network namespaces)"
    elif shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        why = "the NAT lab needs nftables (make test installs it)"
    elif shutil.which("ip") is None:
        why = "the NAT lab needs iproute2"
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def _sh(*args: str, input: str | None = None) -> None:
    subprocess.run(args, check=True, input=input, text=True, capture_output=True, timeout=30)


class NatLab:
    """Build with :meth:`up`, tear down with :meth:`down` (also after a failure halfway)."""

    def __init__(self, tcp_port: int, udp_ports: tuple[int, int]) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {name: f"fz{name}{tag}" for name in ("srv", "nats", "wan", "natc", "cli")}
        self.tcp_port = tcp_port
        self.udp_ports = udp_ports
        self._tag = tag

    # -- building ------------------------------------------------------------------------------

    def _link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        left, right = f"fa{a_if}{self._tag}"[:15], f"fb{b_if}{self._tag}"[:15]
        _sh("ip", "link", "add", left, "type", "veth", "peer", "name", right)
        _sh("ip", "link", "set", left, "netns", self.ns[a])
        _sh("ip", "link", "set", right, "netns", self.ns[b])
        self.ip(a, "link", "set", left, "name", a_if)
        self.ip(b, "link", "set", right, "name", b_if)

    def ip(self, ns: str, *args: str) -> None:
        _sh("ip", "-n", self.ns[ns], *args)

    def _address(self, ns: str, ifname: str, cidr: str) -> None:
        self.ip(ns, "addr", "add", cidr, "dev", ifname)
        self.ip(ns, "link", "set", ifname, "up")

    def _nft(self, ns: str, rules: str) -> None:
        _sh("ip", "netns", "exec", self.ns[ns], "nft", "-f", "-", input=rules)

    def up(self) -> NatLab:
        for name in self.ns.values():
            _sh("ip", "netns", "add", name)
        for ns in self.ns:
            self.ip(ns, "link", "set", "lo", "up")
        self._link("srv", "eth0", "nats", "in0")
        self._link("nats", "out0", "wan", "ws0")
        self._link("wan", "wc0", "natc", "out0")
        self._link("natc", "in0", "cli", "eth0")
        self._address("srv", "eth0", f"{SERVER_PRIVATE}/24")
        self._address("nats", "in0", "10.20.0.1/24")
        self._address("nats", "out0", f"{SERVER_PUBLIC}/24")
        self._address("wan", "ws0", "198.51.100.1/24")
        self._address("wan", "wc0", "203.0.113.1/24")
        self._address("natc", "out0", f"{CLIENT_PUBLIC}/24")
        self._address("natc", "in0", "192.168.1.1/24")
        self._address("cli", "eth0", f"{CLIENT_PRIVATE}/24")
        self.ip("srv", "route", "add", "default", "via", "10.20.0.1")
        self.ip("nats", "route", "add", "default", "via", "198.51.100.1")
        self.ip("natc", "route", "add", "default", "via", "203.0.113.1")
        self.ip("cli", "route", "add", "default", "via", "192.168.1.1")
        for router in ("nats", "wan", "natc"):
            # (not sysctl: procps may not be installed; /proc/sys is the namespace's own)
            _sh("ip", "netns", "exec", self.ns[router], "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        first, last = self.udp_ports
        udp = f"{first}-{last}" if first != last else str(first)
        # The server's NAT: only the TCP port and the media UDP port(s) come in.
        self._nft(
            "nats",
            f"""
table ip lab {{
  chain prerouting {{
    type nat hook prerouting priority -100;
    iifname "out0" tcp dport {self.tcp_port} dnat to {SERVER_PRIVATE}
    iifname "out0" udp dport {udp} dnat to {SERVER_PRIVATE}
  }}
  chain postrouting {{
    type nat hook postrouting priority 100;
    oifname "out0" masquerade
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
    iifname "in0" accept
    ct state established,related accept
    ct status dnat accept
  }}
}}
""",
        )
        # The client's home router: out with masquerading, in only what answers it.
        self._nft(
            "natc",
            """
table ip lab {
  chain postrouting {
    type nat hook postrouting priority 100;
    oifname "out0" masquerade
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    iifname "in0" accept
    ct state established,related accept
  }
}
""",
        )
        return self

    def down(self) -> None:
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=30)

    # -- running things in it -------------------------------------------------------------------

    def command(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[ns], *argv]

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(ns, argv), text=True, **kwargs)

    def run(self, ns: str, argv: Sequence[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(ns, argv), text=True, capture_output=True, timeout=timeout, **kwargs)
