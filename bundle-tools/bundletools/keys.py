"""RSA side of a bundle: loading PEM keys, wrapping the AES key/IV, signing the manifest.

The AES key and IV travel as 32 lowercase hex *characters*; those ASCII bytes (not
the 16 raw bytes) are what RSA PKCS#1 v1.5 encrypts, as euca2ools, ec2-ami-tools and
Eucalyptus all do (spec 1.6). Signatures are PKCS#1 v1.5 with SHA-1 (spec 1.7).
"""

from __future__ import annotations

import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import BadSignature, KeyFileError, WrongKey

_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class AesKey:
    """The bundle's symmetric key and IV (16 raw bytes each)."""

    key: bytes
    iv: bytes

    @classmethod
    def generate(cls) -> "AesKey":
        return cls(os.urandom(16), os.urandom(16))

    @classmethod
    def from_hex(cls, key_hex: str, iv_hex: str) -> "AesKey":
        return cls(_unhex16(key_hex), _unhex16(iv_hex))

    @property
    def key_hex(self) -> str:
        return self.key.hex()

    @property
    def iv_hex(self) -> str:
        return self.iv.hex()


def _unhex16(text: str) -> bytes:
    if len(text) != 32 or not set(text) <= _HEX:
        raise WrongKey("wrapped AES key/IV did not decrypt to 32 hex characters")
    return bytes.fromhex(text)


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_certificate(path: str | os.PathLike) -> rsa.RSAPublicKey:
    """Public key of a PEM (or DER) X.509 certificate; a bare public key PEM works too."""
    data = _read(path, "certificate")
    try:
        if b"-----BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = x509.load_der_x509_certificate(data).public_key()
    except ValueError as exc:
        raise KeyFileError(f"{path} is not an X.509 certificate") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"{path} does not hold an RSA key")
    return key


def load_private_key(path: str | os.PathLike) -> rsa.RSAPrivateKey:
    """PEM private key in PKCS#1 ("RSA PRIVATE KEY", Eucalyptus 1.x) or PKCS#8 form."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{path} does not hold an RSA key")
    return key


def wrap(public_key: rsa.RSAPublicKey, hex_text: str) -> str:
    """hex(RSA_PKCS1v15(ascii hex)) — one of the four *_encrypted_* manifest values."""
    return public_key.encrypt(hex_text.encode("ascii"), padding.PKCS1v15()).hex()


def unwrap(private_key: rsa.RSAPrivateKey, wrapped_hex: str) -> str:
    """Inverse of `wrap`; raises WrongKey when the key does not fit."""
    try:
        blob = binascii.unhexlify(wrapped_hex.strip())
    except (binascii.Error, ValueError) as exc:
        raise WrongKey("wrapped AES key is not hex") from exc
    if len(blob) != private_key.key_size // 8:
        raise WrongKey("wrapped AES key was made for a key of another size")
    try:
        # cryptography returns random bytes instead of raising on bad PKCS#1 v1.5
        # padding only for implicit rejection; a wrong key still fails the hex check.
        text = private_key.decrypt(blob, padding.PKCS1v15())
    except ValueError as exc:
        raise WrongKey("the private key does not open this bundle") from exc
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise WrongKey("the private key does not open this bundle") from exc
    _unhex16(decoded)
    return decoded.lower()


def unwrap_pair(private_key: rsa.RSAPrivateKey, key_hex: str, iv_hex: str) -> AesKey:
    return AesKey.from_hex(unwrap(private_key, key_hex), unwrap(private_key, iv_hex))


def sign(private_key: rsa.RSAPrivateKey, data: bytes) -> str:
    return private_key.sign(data, padding.PKCS1v15(), hashes.SHA1()).hex()


def verify(public_key: rsa.RSAPublicKey, data: bytes, signature_hex: str) -> None:
    """Raise BadSignature unless `signature_hex` signs `data` for `public_key`."""
    try:
        sig = binascii.unhexlify(signature_hex.strip())
        public_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA1())
    except (binascii.Error, ValueError, InvalidSignature) as exc:
        raise BadSignature("manifest signature does not verify with the given certificate") from exc
