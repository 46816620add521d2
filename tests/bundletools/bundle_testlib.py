"""Shared helpers and fixtures for the bundle-tools tests.

A plain module, not a conftest.py: several test folders import `conftest` by name,
and a second conftest module here would shadow theirs. Test modules import the
fixtures they use from here.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundletools import keys

VECTORS = Path(__file__).resolve().parents[1] / "data" / "euca2ools"
KEYS = VECTORS / "keys"
VECTOR_DATA = json.loads((VECTORS / "vectors.json").read_text())


@dataclass(frozen=True)
class VectorKeys:
    alice_cert_path: Path
    alice_pk_path: Path
    cloud_cert_path: Path
    cloud_pk_path: Path

    @property
    def alice_cert(self):
        return keys.load_certificate(self.alice_cert_path)

    @property
    def alice_pk(self):
        return keys.load_private_key(self.alice_pk_path)

    @property
    def cloud_cert(self):
        return keys.load_certificate(self.cloud_cert_path)

    @property
    def cloud_pk(self):
        return keys.load_private_key(self.cloud_pk_path)


def _load_gen_image():
    spec = importlib.util.spec_from_file_location("gen_image", VECTORS / "gen_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_image(path: Path, recipe: list[str]) -> Path:
    """Rebuild a vector image from its recipe (the large ones are not stored)."""
    gen = _load_gen_image()
    with open(path, "wb") as f:
        for segment in recipe:
            for chunk in gen.segment_chunks(segment):
                f.write(chunk)
    return path


def make_bundle(keyset: VectorKeys, image: Path, destination: Path, *, part_size: int = 1 << 20,
                prefix: str | None = None, **spec_fields):
    """Bundle `image` with our writer and the vectors' keys (user copy + cloud copy, signed)."""
    from bundletools.writer import BundleSpec, bundle_image

    spec = BundleSpec(user="123456789012", prefix=prefix or image.name, part_size=part_size, **spec_fields)
    return bundle_image(image, destination, spec, cloud_cert=keyset.cloud_cert,
                        user_cert=keyset.alice_cert, private_key=keyset.alice_pk)


def decrypt_payload(manifest, parts_dir: Path, private_key) -> bytes:
    """Independent check path (no reader): unwrap, AES-CBC decrypt, unpad -> the gzip bytes."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from bundletools.reader import unwrap_bundle_key

    aes = unwrap_bundle_key(manifest, private_key)
    ciphertext = b"".join((parts_dir / p.filename).read_bytes() for p in manifest.parts)
    d = Cipher(algorithms.AES(aes.key), modes.CBC(aes.iv)).decryptor()
    u = padding.PKCS7(128).unpadder()
    return u.update(d.update(ciphertext) + d.finalize()) + u.finalize()


@pytest.fixture(scope="session")
def test_keys() -> VectorKeys:
    return VectorKeys(
        KEYS / "test-only-alice-cert.pem",
        KEYS / "test-only-alice-pk.pem",
        KEYS / "test-only-cloud-cert.pem",
        KEYS / "test-only-cloud-pk.pem",
    )


@pytest.fixture
def bundle_env(test_keys, monkeypatch):
    """The euca2ools environment variables a sourced eucarc would set."""
    monkeypatch.setenv("EC2_CERT", str(test_keys.alice_cert_path))
    monkeypatch.setenv("EC2_PRIVATE_KEY", str(test_keys.alice_pk_path))
    monkeypatch.setenv("EUCALYPTUS_CERT", str(test_keys.cloud_cert_path))
    monkeypatch.setenv("EC2_USER_ID", "123456789012")
    return test_keys
