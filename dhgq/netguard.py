"""Outgoing requests to addresses users choose (https sources, webhooks) must not reach inside.

Server-side request forgery: a user's URL must not reach the database, the cloud metadata service
(169.254.169.254, or Alibaba's 100.100.100.200) or anything else on the worker's network. Only
globally routable addresses are reached: ``ipaddress``'s ``is_global`` and, because its answer
differs between Python versions and says nothing of tunnels, an explicit list of special-purpose
networks (RFC 6890's registries) and a check of the IPv4 address embedded in an IPv6 one
(IPv4-mapped and -compatible, NAT64, 6to4, Teredo). A host or network named in Settings'
``allow_private_hosts`` may be reached anyway (the tests allow 127.0.0.1).

A check is only as good as the connection that follows it: ``Guard.resolve`` returns the checked
addresses, and ``dhgq.guarded_http`` connects to exactly those (a second lookup could answer
otherwise: DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dhgq.errors import PermanentError, TransientError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]  # (host, port) -> the addresses it resolves to, as text

# Not globally routable, whatever a Python version's is_global says (IANA's special-purpose registries)
SPECIAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT, cloud internals (100.100.100.200: Alibaba's metadata service)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/127",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",  # Teredo (2001::/32) among them
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives for ``host``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which is where a packet to it may end up."""
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
        found.append(ipaddress.IPv4Address(value))
    if address in NAT64 or address in IPV4_TRANSLATED:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def is_public(address: Address) -> bool:
    """Whether ``address`` is globally routable, and so is any IPv4 address it tunnels to."""
    if any(address in network for network in SPECIAL_NETWORKS if network.version == address.version):
        return False
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(is_public(inner) for inner in embedded_ipv4(address))
    return True


@dataclass(frozen=True)
class Guard:
    """Which hosts a user's URL may reach: public addresses, and those ``allowed`` names."""

    allowed: tuple[str, ...] = ()
    what: str = "URL"  # "source", "webhook": how messages name the URL
    resolver: Resolver = field(default=system_resolver, compare=False)

    def resolve(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """The addresses to connect to for ``host``: every one it resolves to, each checked; else PermanentError."""
        shown = url or host
        try:
            answers = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            answers = self._lookup(host, port, shown)
        if not answers:
            raise PermanentError(f"{self.what} {shown}: no address for {host!r}")
        for address in answers:
            if not is_public(address) and not self._allowed(host, address):
                raise PermanentError(
                    f"{self.what} {shown} resolves to {address}, not a public address (a private, loopback or "
                    "link-local address, a shared or reserved one, or a tunnel to one): refused "
                    "(DHGQ_ALLOW_PRIVATE_HOSTS lists the hosts or networks that may be reached)"
                )
        return [str(address) for address in answers]

    def check_url(self, url: str) -> None:
        """Raise PermanentError unless ``url`` is http(s) with a host whose every address may be reached."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise PermanentError(f"{self.what} {url!r} is not an http(s) URL with a host")
        self.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), url=url)

    def _lookup(self, host: str, port: int, shown: str) -> list[Address]:
        try:
            return [ipaddress.ip_address(text) for text in self.resolver(host, port)]
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                raise PermanentError(f"{self.what} {shown}: no such host {host!r}") from None
            raise TransientError(f"{self.what} {shown}: cannot resolve {host!r} now ({exc})") from None

    def _allowed(self, host: str, address: Address) -> bool:
        for entry in self.allowed:
            if entry.lower() == host.lower():
                return True
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue  # a host name, compared above
            if address.version == network.version and address in network:
                return True
        return False
