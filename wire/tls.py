"""TLS for the coordination API: the server's certificate, and pinning it.

The server creates a self-signed certificate once (kept in its data dir) or
uses one the admin gives. Nodes learn the self-signed certificate's SHA-256
fingerprint from their join token and accept exactly that certificate and
no other: no CA is involved, and no one between node and server can stand
in. A CA-signed certificate (empty fingerprint) is checked the usual way,
hostname included, with service-identity.

The server's side of the connection is in :mod:`wire.tlsserver`.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from wire.fsutil import write_atomically

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"


def fingerprint_of_pem(pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def ensure_self_signed(data_dir: str, common_name: str = "wire-server") -> tuple[str, str]:
    """The data dir's certificate and key paths, created on first use."""
    cert_path, key_path = os.path.join(data_dir, CERT_FILE), os.path.join(data_dir, KEY_FILE)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    write_atomically(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        mode=0o600,
    )
    write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def is_self_signed(cert_path: str) -> bool:
    with open(cert_path, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    return certificate.issuer == certificate.subject


def read_fingerprint(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        return fingerprint_of_pem(f.read())


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedCreator:
    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)
        # An idle connection (the long-poll's, 25 s at a time) holds no
        # OpenSSL buffers (about 20 KiB each).
        self._context.set_mode(SSL.MODE_RELEASE_BUFFERS)

    def _verify(self, connection, certificate, errno, depth, ok) -> bool:
        if depth != 0:
            return True  # only the server's own certificate matters when pinning
        der = certificate.to_cryptography().public_bytes(serialization.Encoding.DER)
        return hmac.compare_digest(hashlib.sha256(der).hexdigest(), self._fingerprint)

    def clientConnectionForTLS(self, protocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(protocol)
        return connection


@implementer(IPolicyForHTTPS)
class PinnedPolicy:
    """Trust exactly the certificate with this SHA-256 fingerprint."""

    def __init__(self, fingerprint: str):
        self._creator = _PinnedCreator(fingerprint)

    def creatorForNetloc(self, hostname: bytes, port: int):
        return self._creator


def client_policy(fingerprint: str) -> IPolicyForHTTPS:
    return PinnedPolicy(fingerprint) if fingerprint else BrowserLikePolicyForHTTPS()
