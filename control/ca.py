"""The cloud's certificate authority: its key pair and the user certificates it signs.

The CA is created on first start in the data dir: ``cloud-cert.pem`` (public, handed to
users as their credentials' cloud-cert.pem and used to wrap bundle keys) and
``cloud-pk.pem`` (mode 0600; it never leaves the data dir — imagecache decrypts bundles
with it).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERT_FILE = "cloud-cert.pem"
KEY_FILE = "cloud-pk.pem"
CA_YEARS = 20
USER_CERT_YEARS = 5


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically write ``data`` (fsynced) with ``mode`` from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class CloudCA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def fingerprint(self, digest: str = "SHA-256") -> str:
        """Colon-hex fingerprint of the DER certificate (SHA-256 or SHA-1)."""
        algo = {"SHA-256": hashlib.sha256, "SHA-1": hashlib.sha1}[digest]
        raw = algo(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
        return ":".join(raw[i:i + 2] for i in range(0, len(raw), 2))

    def issue_user_certificate(self, account_id: str, user_name: str) -> tuple[str, str]:
        """A new RSA 2048 key and a certificate for it signed by the cloud: (cert_pem, key_pem)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eucalypt"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, account_id),
            x509.NameAttribute(NameOID.COMMON_NAME, user_name),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * USER_CERT_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def ensure_cloud_ca(data_dir: Path) -> CloudCA:
    """Load the cloud CA from ``data_dir``, creating it if absent (callers hold the bootstrap lock)."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return CloudCA(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eucalypt"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "cloud"),
        x509.NameAttribute(NameOID.COMMON_NAME, "eucalypt cloud"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                     crl_sign=True, content_commitment=False, data_encipherment=True,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    # The key first: a cert without its key would be useless, the reverse is simply redone.
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return CloudCA(key, cert)
