"""The SSRF guard and the clients that connect through it, against real local servers.

Addresses a user's URL must not reach are refused (cloud metadata on 100.100.100.200, tunnels that
carry a private IPv4 address); the connection goes to the address that was checked (the test's
resolver answers a second lookup differently, as a rebinding DNS server would, and the client
never asks the system's resolver); TLS still checks the certificate and sends SNI for the host name;
redirects are checked hop by hop and credentials never follow one to another origin.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dhgq.errors import PermanentError
from dhgq.fetch.http import download
from dhgq.guarded_http import guarded_client
from dhgq.netguard import Guard, is_public
from tests.support.local_http import Seen, Server, serving

NOT_PUBLIC = [
    "100.100.100.200",  # Alibaba Cloud's metadata service, in 100.64.0.0/10
    "100.64.0.1",
    "169.254.169.254",
    "10.1.2.3",
    "127.0.0.1",
    "0.0.0.0",
    "192.0.0.170",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fd00::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "2002:808:808::1"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_addresses_that_are_not_globally_routable_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    guard = Guard(what="webhook", resolver=lambda host, port: [address])
    with pytest.raises(PermanentError, match="not a public address"):
        guard.check_url("https://hooks.example.com/x")


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    assert Guard(resolver=lambda host, port: [address]).resolve("example.com", 443) == [address]


def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    guard = Guard(resolver=lambda host, port: ["8.8.8.8", "10.0.0.1"])
    with pytest.raises(PermanentError, match="10.0.0.1"):
        guard.resolve("mixed.example.com", 443)


def test_the_allow_list_names_hosts_and_networks() -> None:
    assert Guard(("127.0.0.1",)).resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert Guard(("10.0.0.0/8",), resolver=lambda h, p: ["10.9.8.7"]).resolve("db.internal", 80) == ["10.9.8.7"]
    assert Guard(("db.internal",), resolver=lambda h, p: ["10.9.8.7"]).resolve("DB.internal", 80) == ["10.9.8.7"]
    with pytest.raises(PermanentError):
        Guard(("db.internal",), resolver=lambda h, p: ["10.9.8.7"]).resolve("other.internal", 80)


# --- the connection goes where the check looked ------------------------------------------------------


def ok(seen: Seen, handler: object) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/plain"}, b"media bytes"


class Rebinding:
    """A resolver whose answers change from one lookup to the next, as a rebinding DNS server's do."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_the_client_connects_to_the_address_the_guard_checked() -> None:
    resolver = Rebinding(["127.0.0.1"], ["169.254.169.254"])
    guard = Guard(("127.0.0.1",), resolver=resolver)
    with serving(ok) as server, guarded_client(guard, timeout=5) as client:
        # a name the system cannot resolve: reaching the server proves the checked address was used
        response = client.get(server.url("/talk.mp4", host="media.rebind.test"))
        assert response.status_code == 200 and response.content == b"media bytes"
        assert server.seen[0].headers["host"] == f"media.rebind.test:{server.port}"
        assert resolver.lookups == ["media.rebind.test"]  # one lookup, by the guard
        client.close()  # a new connection: the name now points at the metadata service
    with guarded_client(guard, timeout=5) as client, pytest.raises(PermanentError, match="169.254.169.254"):
        client.get(server.url("/talk.mp4", host="media.rebind.test"))


def self_signed(host: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{host}.crt", folder / f"{host}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    """An HTTPS server with a certificate for media.example.test, and a client context that trusts it."""
    cert, key = self_signed("media.example.test", tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with serving(ok, tls=server_context) as server:
        yield server, ssl.create_default_context(cafile=str(cert))


def test_tls_checks_the_certificate_and_sends_sni_for_the_host_name(
    tls_server: tuple[Server, ssl.SSLContext],
) -> None:
    server, trusting = tls_server
    guard = Guard(("127.0.0.1",), resolver=lambda host, port: ["127.0.0.1"])
    with guarded_client(guard, timeout=5, verify=trusting) as client:
        assert client.get(server.url("/x", host="media.example.test")).status_code == 200
    assert server.server_names[-1] == "media.example.test"
    with guarded_client(guard, timeout=5, verify=trusting) as client, pytest.raises(httpx.ConnectError):
        client.get(server.url("/x", host="other.example.test"))  # the certificate is not for this name
    assert server.server_names[-1] == "other.example.test"


# --- downloads: redirects hop by hop, credentials stay home -------------------------------------------


def redirecting_to(location: Callable[[], str]) -> Callable[[Seen, object], tuple[int, dict[str, str], bytes]]:
    def answer(seen: Seen, handler: object) -> tuple[int, dict[str, str], bytes]:
        if seen.path.startswith("/final"):
            return 200, {}, b"media bytes"
        return 302, {"Location": location()}, b""

    return answer


def fetch(url: str, tmp_path: Path, guard: Guard, **options: object) -> tuple[str, int]:
    return download(url, tmp_path / "out", source=url, max_bytes=1 << 20, timeout=5, guard=guard, **options)  # type: ignore[arg-type]


def test_a_redirect_to_a_private_address_is_refused_before_connecting(tmp_path: Path) -> None:
    guard = Guard(("127.0.0.1",), "source", resolver=lambda host, port: {"metadata.test": ["100.100.100.200"]}[host])
    with serving(redirecting_to(lambda: "http://metadata.test/latest/meta-data/")) as server:
        with pytest.raises(PermanentError, match="100.100.100.200") as refused:
            fetch(server.url("/talk.mp4"), tmp_path, guard)
    assert refused.value.file == server.url("/talk.mp4")
    assert not (tmp_path / "out").exists()


def test_credentials_never_follow_a_redirect_to_another_origin(tmp_path: Path) -> None:
    token = {"Authorization": "Bearer drive-token-0123"}
    guard = Guard(("127.0.0.1",), "redirect to")
    with serving(redirecting_to(lambda: "/never")) as elsewhere:
        elsewhere_url = elsewhere.url("/final")
        with serving(redirecting_to(lambda: elsewhere_url)) as api:
            fetch(api.url("/drive/v3/files/x?alt=media"), tmp_path, guard, headers=token, trusted=True)
    assert api.seen[0].headers["authorization"] == "Bearer drive-token-0123"
    assert "authorization" not in elsewhere.seen[0].headers
    assert (tmp_path / "out").read_bytes() == b"media bytes"


def test_credentials_follow_a_redirect_within_the_same_origin(tmp_path: Path) -> None:
    token = {"Authorization": "Bearer drive-token-0123"}
    with serving(redirecting_to(lambda: "/final/content")) as api:
        fetch(api.url("/drive/v3/files/x?alt=media"), tmp_path, Guard(("127.0.0.1",)), headers=token, trusted=True)
    assert [seen.headers.get("authorization") for seen in api.seen] == ["Bearer drive-token-0123"] * 2


def test_the_operators_own_host_is_trusted_but_its_redirects_are_not(tmp_path: Path) -> None:
    """A Storage signed URL on a private address (the operator's) downloads; where it points elsewhere is checked."""
    nothing_private = Guard((), "redirect to", resolver=lambda host, port: ["10.0.0.7"])
    with serving(redirecting_to(lambda: "http://internal.test/final")) as storage:
        with pytest.raises(PermanentError, match="redirect to internal.test resolves to 10.0.0.7"):
            fetch(storage.url("/object/sign/media/a.mp4?token=x"), tmp_path, nothing_private, trusted=True)
    with serving(redirecting_to(lambda: "/final")) as storage:
        assert fetch(storage.url("/object/sign/media/a.mp4?token=x"), tmp_path, nothing_private, trusted=True)[1] == 11
