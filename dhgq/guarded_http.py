"""HTTP clients that connect only to addresses the guard checked, within an optional total deadline.

``netguard.Guard`` says which addresses a user's URL may reach; checking a name and then letting
httpx resolve it again would let a DNS server answer a public address to the check and a private
one to the connection (DNS rebinding). So the connection itself is made here: httpcore's network
backend is replaced by one that resolves through the guard and connects to one of the addresses
it returned. The request still names the host, so the Host header, TLS's SNI and the certificate
check are the host's, as with any client.

Every new connection (a redirect to another host included) goes through the check. Hosts in
``exempt`` (the operator's own services: a Storage signed URL, the Drive API) connect as usual.

``deadline`` (time.monotonic()) bounds the whole exchange, not each read: a receiver that trickles
one byte at a time is cut off when it passes, with httpx's ReadTimeout or WriteTimeout.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from dhgq.netguard import Guard

SocketOptions = Iterable[tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]]


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation waits at most until the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _budget(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the deadline for the whole request passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = self._budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, budget), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the addresses the guard checked for a host, never to what a second lookup says."""

    def __init__(self, guard: Guard | None, exempt: frozenset[str], deadline: float | None) -> None:
        self._guard = guard
        self._exempt = exempt
        self._deadline = deadline
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: SocketOptions | None = None,
    ) -> httpcore.NetworkStream:
        if self._guard is None or host.lower() in self._exempt:
            addresses = [host]
        else:
            addresses = self._guard.resolve(host, port)  # PermanentError when any is refused
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(address, port, self._budget(timeout), local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return stream if self._deadline is None else _DeadlineStream(stream, self._deadline)
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: SocketOptions | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("guarded clients connect over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _budget(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the deadline for the whole request passed")
        return left if timeout is None else min(timeout, left)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (its error mapping and streaming) on a pool that connects through the guard."""

    def __init__(
        self,
        guard: Guard | None,
        *,
        exempt: Iterable[str] = (),
        deadline: float | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(verify=verify, trust_env=False)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            network_backend=_PinnedBackend(guard, frozenset(h.lower() for h in exempt), deadline),
        )


def guarded_client(
    guard: Guard | None,
    *,
    timeout: float,
    exempt: Iterable[str] = (),
    deadline: float | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """A client for URLs a user chose: no redirects followed, no proxy from the environment, the guard on
    every connection (``guard`` None: no address check, the deadline only)."""
    return httpx.Client(
        transport=GuardedTransport(guard, exempt=exempt, deadline=deadline, verify=verify),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
