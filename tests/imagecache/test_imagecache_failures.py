"""Every way a bundle can be bad gives its own user-visible reason and publishes nothing."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile

import pytest
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bundletools import keys
from bundletools.manifest import Manifest, PartInfo
from bundletools.writer import BundleSpec, bundle_image
from imagecache import (
    BundleCorrupt,
    BundleDigestMismatch,
    BundleKeyInvalid,
    BundleManifestInvalid,
    BundleNotFound,
    BundlePartMissing,
    BundlePartTampered,
    BundleSignatureInvalid,
    BundleSizeMismatch,
    CacheConfig,
    ImageCache,
    PrepareFailed,
)
from imagecache_testlib import (  # noqa: F401  (fixtures)
    ALICE_CERT,
    ALICE_PK,
    CLOUD_CERT,
    alice_cert,
    alice_s3,
    bundle_bucket,
    cloud_key,
    ic_walrus,
    list_keys,
    system_bucket,
    system_endpoint,
    system_s3,
    upload_bundle_dir,
)

IMAGE_SIZE = 6 << 20


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    """A multi-part bundle of our own bundler (1 MiB parts), compressible, with zeros."""
    d = tmp_path_factory.mktemp("good")
    image = d / "disk.img"
    with open(image, "wb") as f:
        for i in range(IMAGE_SIZE >> 20):
            f.write(hashlib.shake_256(b"fail%d" % i).digest(1 << 19) + bytes(1 << 19))
    return bundle_image(image, d / "bundle", BundleSpec(user="123456789012", prefix="disk.img", part_size=1 << 20),
                        cloud_cert=keys.load_certificate(CLOUD_CERT), user_cert=keys.load_certificate(ALICE_CERT),
                        private_key=keys.load_private_key(ALICE_PK))


def _upload(s3, bucket, bundle) -> str:
    return upload_bundle_dir(s3, bucket, bundle.manifest_path.parent, bundle.manifest_path.name)


def _put_manifest(s3, bucket, manifest: Manifest, name="disk.img.manifest.xml") -> str:
    s3.put_object(Bucket=bucket, Key=name, Body=manifest.to_bytes(), ACL="aws-exec-read")
    return f"{bucket}/{name}"


def _resign(manifest: Manifest, **changes) -> Manifest:
    return dataclasses.replace(manifest, raw=None, **changes).signed_with(keys.load_private_key(ALICE_PK))


def _assert_nothing_published(system_s3, bucket):
    assert list_keys(system_s3, bucket) == []
    try:
        uploads = system_s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except system_s3.exceptions.NoSuchBucket:
        uploads = []
    assert uploads == []


async def _prepare_fails(endpoint, cloud_key, user_cert, bucket, location, error):
    async with ImageCache(endpoint, cloud_key, CacheConfig(bucket=bucket, part_size=5 << 20)) as cache:
        with pytest.raises(error) as info:
            await cache.prepare(location, "emi-bad00001", user_cert=user_cert)
    assert isinstance(info.value, PrepareFailed)
    assert info.value.reason and info.value.code.startswith("bundle-")
    return info.value


def _craft(directory, payload: bytes, *, digest_of: bytes | None = None, size: int = 100) -> Manifest:
    """A one-part bundle whose decrypted payload is `payload` (gzip or not: the caller's)."""
    aes = keys.AesKey.generate()
    enc = Cipher(algorithms.AES(aes.key), modes.CBC(aes.iv)).encryptor()
    padder = sym_padding.PKCS7(128).padder()
    body = enc.update(padder.update(payload) + padder.finalize()) + enc.finalize()
    (directory / "crafted.part.00").write_bytes(body)
    cloud, alice = keys.load_certificate(CLOUD_CERT), keys.load_certificate(ALICE_CERT)
    m = Manifest(
        name="crafted", user="123456789012", image_type="machine",
        digest=hashlib.sha1(digest_of if digest_of is not None else b"").hexdigest(), size=size,
        bundled_size=len(body),
        ec2_encrypted_key=keys.wrap(cloud, aes.key_hex), user_encrypted_key=keys.wrap(alice, aes.key_hex),
        ec2_encrypted_iv=keys.wrap(cloud, aes.iv_hex), user_encrypted_iv=keys.wrap(alice, aes.iv_hex),
        parts=(PartInfo(0, "crafted.part.00", hashlib.sha1(body).hexdigest()),),
    )
    return m.signed_with(keys.load_private_key(ALICE_PK))


def _upload_crafted(s3, bucket, directory, manifest) -> str:
    s3.put_object(Bucket=bucket, Key="crafted.part.00", Body=(directory / "crafted.part.00").read_bytes(),
                  ACL="aws-exec-read")
    return _put_manifest(s3, bucket, manifest, "crafted.manifest.xml")


async def test_bad_signature(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                             cloud_key):
    location = _upload(alice_s3, bundle_bucket, good_bundle)
    # the cloud's certificate is not the registering user's: the signature cannot verify
    err = await _prepare_fails(system_endpoint, cloud_key, keys.load_certificate(CLOUD_CERT), system_bucket,
                               location, BundleSignatureInvalid)
    assert "signature" in err.reason
    _assert_nothing_published(system_s3, system_bucket)


async def test_manifest_edited_after_signing(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket,
                                             system_endpoint, cloud_key, alice_cert):
    raw = good_bundle.manifest_path.read_bytes().replace(b"<size>", b"<size>1", 1)
    _upload(alice_s3, bundle_bucket, good_bundle)
    alice_s3.put_object(Bucket=bundle_bucket, Key="disk.img.manifest.xml", Body=raw, ACL="aws-exec-read")
    await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket,
                         f"{bundle_bucket}/disk.img.manifest.xml", BundleSignatureInvalid)
    _assert_nothing_published(system_s3, system_bucket)


async def test_wrong_cloud_key(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                               alice_cert):
    location = _upload(alice_s3, bundle_bucket, good_bundle)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    err = await _prepare_fails(system_endpoint, other, alice_cert, system_bucket, location, BundleKeyInvalid)
    assert "cloud" in err.reason
    _assert_nothing_published(system_s3, system_bucket)


@pytest.mark.parametrize("which", [0, "last"])
async def test_tampered_part(which, good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket,
                             system_endpoint, cloud_key, alice_cert):
    location = _upload(alice_s3, bundle_bucket, good_bundle)
    parts = good_bundle.manifest.parts
    part = parts[0] if which == 0 else parts[-2]  # the last non-empty one
    data = bytearray((good_bundle.manifest_path.parent / part.filename).read_bytes())
    data[len(data) // 2] ^= 0x01
    alice_s3.put_object(Bucket=bundle_bucket, Key=part.filename, Body=bytes(data), ACL="aws-exec-read")
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundlePartTampered)
    assert err.part == part.filename and part.filename in err.reason
    _assert_nothing_published(system_s3, system_bucket)


async def test_missing_part(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                            cloud_key, alice_cert):
    location = _upload(alice_s3, bundle_bucket, good_bundle)
    part = good_bundle.manifest.parts[3]
    alice_s3.delete_object(Bucket=bundle_bucket, Key=part.filename)
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundlePartMissing)
    assert err.part == part.filename
    _assert_nothing_published(system_s3, system_bucket)


async def test_missing_manifest(alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint, cloud_key,
                                alice_cert):
    await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket,
                         f"{bundle_bucket}/nothing.manifest.xml", BundleNotFound)
    _assert_nothing_published(system_s3, system_bucket)


async def test_private_bundle_not_readable_by_cloud(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket,
                                                    system_endpoint, cloud_key, alice_cert):
    """Uploaded without aws-exec-read: the cloud may not read it, and says so."""
    alice_s3.put_object(Bucket=bundle_bucket, Key="disk.img.manifest.xml",
                        Body=good_bundle.manifest_path.read_bytes())
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket,
                               f"{bundle_bucket}/disk.img.manifest.xml", BundleNotFound)
    assert "aws-exec-read" in err.reason
    _assert_nothing_published(system_s3, system_bucket)


async def test_not_a_manifest(alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint, cloud_key,
                              alice_cert):
    alice_s3.put_object(Bucket=bundle_bucket, Key="x.manifest.xml", Body=b"<manifest><oops/>", ACL="aws-exec-read")
    await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, f"{bundle_bucket}/x.manifest.xml",
                         BundleManifestInvalid)
    _assert_nothing_published(system_s3, system_bucket)


@pytest.mark.parametrize("change", ["image-size", "bundled-size"])
async def test_size_mismatch(change, good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket,
                             system_endpoint, cloud_key, alice_cert):
    """Signed by alice, so the signature holds; the sizes do not. The image size is only
    known at the very end, after chunks were uploaded: they must be removed again."""
    _upload(alice_s3, bundle_bucket, good_bundle)
    m = good_bundle.manifest
    edited = _resign(m, size=m.size + 4096) if change == "image-size" else _resign(m, bundled_size=m.bundled_size - 16)
    location = _put_manifest(alice_s3, bundle_bucket, edited)
    await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundleSizeMismatch)
    _assert_nothing_published(system_s3, system_bucket)


async def test_digest_mismatch(good_bundle, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                               cloud_key, alice_cert):
    _upload(alice_s3, bundle_bucket, good_bundle)
    location = _put_manifest(alice_s3, bundle_bucket, _resign(good_bundle.manifest, digest="0" * 40))
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundleDigestMismatch)
    assert "SHA-1" in err.reason
    _assert_nothing_published(system_s3, system_bucket)


async def test_payload_not_gzip(tmp_path, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                                cloud_key, alice_cert):
    payload = os.urandom(50000)
    location = _upload_crafted(alice_s3, bundle_bucket, tmp_path, _craft(tmp_path, payload, digest_of=payload))
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundleCorrupt)
    assert "gzip" in err.reason
    _assert_nothing_published(system_s3, system_bucket)


@pytest.mark.parametrize("kind", ["not-tar", "no-regular-file", "truncated"])
async def test_unreadable_tar(kind, tmp_path, alice_s3, system_s3, bundle_bucket, system_bucket, system_endpoint,
                              cloud_key, alice_cert):
    if kind == "not-tar":
        tar = b"this is not a tar archive\n" * 4000
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
            if kind == "no-regular-file":
                info = tarfile.TarInfo("a-directory")
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info = tarfile.TarInfo("image")
                info.size = 400000
                t.addfile(info, io.BytesIO(os.urandom(400000)))
        tar = buf.getvalue()
        if kind == "truncated":
            tar = tar[:200000]
    location = _upload_crafted(alice_s3, bundle_bucket, tmp_path,
                               _craft(tmp_path, gzip.compress(tar), digest_of=tar, size=400000))
    err = await _prepare_fails(system_endpoint, cloud_key, alice_cert, system_bucket, location, BundleCorrupt)
    assert "tar" in err.reason
    _assert_nothing_published(system_s3, system_bucket)
