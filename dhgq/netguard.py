"""Outgoing requests to addresses users choose (https sources, webhooks) must not reach inside.

A URL whose host resolves to a private, loopback, link-local, reserved or multicast address is
refused (server-side request forgery: a user's URL must not reach the database, the cloud
metadata service or anything else on the worker's network), unless Settings' allow_private_hosts
names the host or a network that holds the address (the tests allow 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from dhgq.errors import PermanentError, TransientError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_public_url(url: str, allowed: tuple[str, ...] = (), *, what: str = "URL") -> None:
    """Raise PermanentError unless ``url`` is http(s) and every address its host resolves to may be reached."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise PermanentError(f"{what} {url!r} is not an http(s) URL with a host")
    host = parts.hostname
    for address in _addresses(host, parts.port or (443 if parts.scheme == "https" else 80), url, what):
        if _inside(address) and not _allowed(host, address, allowed):
            raise PermanentError(
                f"{what} {url} resolves to {address}, a private, loopback or link-local address: refused "
                "(DHGQ_ALLOW_PRIVATE_HOSTS lists the hosts or networks that may be reached)"
            )


def _addresses(host: str, port: int, url: str, what: str) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            raise PermanentError(f"{what} {url}: no such host {host!r}") from None
        raise TransientError(f"{what} {url}: cannot resolve {host!r} now ({exc})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _inside(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return bool(
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def _allowed(host: str, address: Address, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name, compared above
    return False
