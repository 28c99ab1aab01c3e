"""Which network addresses a request to an upstream may reach.

Public addresses always; loopback, link-local, private (RFC 1918, shared 100.64/10, ULA) and
reserved ones only when the connector's own host has an address of that same kind (an internal
channel); unspecified and multicast never (``0.0.0.0`` reaches the server itself on Linux).
Host names are resolved and every address must pass, so a name cannot hide a private address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the addresses it resolves to; raises OSError when it does not resolve."""

PUBLIC = "public"
NEVER = frozenset({"unspecified", "multicast"})

_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def literal_address(host: str) -> str | None:
    """The address when ``host`` is an IP literal (``[::1]`` or ``::1``), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def address_kind(address: str) -> str:
    """``public``, ``loopback``, ``link-local``, ``private``, ``reserved``, ``unspecified`` or ``multicast``."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_unspecified:
            return "unspecified"
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64[0]:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip in _NAT64[1]:
            return "private"  # local-use NAT64: whatever it translates to is inside
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if any(ip in network for network in _PRIVATE_NETWORKS):
        return "private"
    if not ip.is_global:
        return "reserved"
    return PUBLIC


@dataclass(frozen=True)
class AddressPolicy:
    """The kinds of address one connector's requests may reach."""

    allowed: frozenset[str]

    @classmethod
    def for_home(cls, home_addresses: Iterable[str]) -> AddressPolicy:
        """Public, plus the kinds of the connector's own addresses (never unspecified or multicast)."""
        return cls(frozenset({PUBLIC, *(address_kind(a) for a in home_addresses)}) - NEVER)

    def refusal(self, addresses: Iterable[str]) -> str | None:
        """Why these addresses may not be reached (the first refused kind), or None when all may."""
        for address in addresses:
            kind = address_kind(address)
            if kind not in self.allowed:
                return f"a {kind} address" if kind != "unspecified" else "the unspecified address"
        return None
