"""TLS for the streaming server: configured certificate files, or a self-signed certificate
made at startup (CN = host name; SANs = host name, localhost, loopback and the listen
address), as containerd does. HTTP/1.1 only: ``h2`` is never offered in ALPN.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
from pathlib import Path


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def self_signed(address: str, days: int = 365) -> tuple[bytes, bytes]:
    """A new (certificate PEM, key PEM) pair for this host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname() or "localhost"
    names: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        ip = ipaddress.ip_address(address)
        if not ip.is_unspecified:
            ips.add(ip)
    except ValueError:
        names.append(x509.DNSName(address))
    names += [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def self_signed_context(address: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a fresh self-signed certificate, and that certificate (PEM)
    for clients that want to trust it. The key touches disk only in a private temporary
    directory, removed before returning (ssl loads chains from files only)."""
    cert, key = self_signed(address)
    with tempfile.TemporaryDirectory(prefix="cri-async-tls-") as d:
        os.chmod(d, 0o700)
        cert_path, key_path = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_path.write_bytes(cert)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return server_context(str(cert_path), str(key_path)), cert
