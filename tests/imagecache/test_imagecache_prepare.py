"""prepare against a real Walrus: every euca2ools vector and bundles of our own bundler
reassemble byte for byte; re-preparing is idempotent; an identical image costs nothing."""

from __future__ import annotations

import hashlib
import os

import pytest

from bundletools import keys
from bundletools.writer import BundleSpec, bundle_image
from imagecache import CacheConfig, ImageCache, ImageManifest, manifest_key
from imagecache_testlib import (  # noqa: F401  (fixtures)
    ALICE_CERT,
    ALICE_PK,
    CLOUD_CERT,
    VECTOR_DATA,
    VECTORS,
    alice_cert,
    alice_s3,
    bundle_bucket,
    cloud_key,
    ic_walrus,
    list_keys,
    sha256_file,
    system_bucket,
    system_endpoint,
    system_s3,
    upload_bundle_dir,
)

VECTOR_IDS = [v["id"] for v in VECTOR_DATA["vectors"]]


def _vector(vid: str) -> dict:
    return next(v for v in VECTOR_DATA["vectors"] if v["id"] == vid)


@pytest.mark.parametrize("vid", VECTOR_IDS)
async def test_prepare_euca2ools_vector(vid, tmp_path, alice_s3, system_s3, bundle_bucket, system_bucket,
                                        system_endpoint, cloud_key, alice_cert):
    v = _vector(vid)
    location = upload_bundle_dir(alice_s3, bundle_bucket, VECTORS / vid, v["manifest_file"])
    image_id = f"emi-{hashlib.sha1(vid.encode()).hexdigest()[:8]}"
    async with ImageCache(system_endpoint, cloud_key, CacheConfig(bucket=system_bucket)) as cache:
        result = await cache.prepare(location, image_id, user_cert=alice_cert)
        m = result.manifest
        assert m.size == v["image"]["size"]
        assert m.sha256 == v["image"]["sha256"]
        assert m.kind == v["expected"]["type"]
        out = await cache.reassemble(image_id, tmp_path / "image")
        await cache.verify(image_id)
    assert out.stat().st_size == v["image"]["size"]
    assert sha256_file(out) == v["image"]["sha256"]
    if v["image"]["stored"]:
        assert out.read_bytes() == (VECTORS / vid / v["image"]["file"]).read_bytes()
    assert result.stats.bytes_read == v["expected"]["bundled_size"]
    # what is in the bucket is exactly the manifest and the packs it names
    stored = ImageManifest.from_bytes(system_s3.get_object(Bucket=system_bucket, Key=manifest_key(image_id))["Body"].read())
    assert stored == m
    assert sorted(list_keys(system_s3, system_bucket, "packs/")) == sorted(p.key for p in m.packs)


def _bundle(tmp_path, image_path, prefix, part_size=1 << 20, image_type="machine"):
    return bundle_image(
        image_path, tmp_path / f"bundle-{prefix}", BundleSpec(user="123456789012", prefix=prefix,
                                                              part_size=part_size, image_type=image_type),
        cloud_cert=keys.load_certificate(CLOUD_CERT), user_cert=keys.load_certificate(ALICE_CERT),
        private_key=keys.load_private_key(ALICE_PK))


def _mixed_image(path, size_mib=24, seed=b"x"):
    """Random data, text, long zero runs: what a filesystem image looks like to a chunker."""
    with open(path, "wb") as f:
        for i in range(size_mib):
            kind = i % 4
            if kind == 0:
                f.write(hashlib.shake_256(seed + i.to_bytes(4, "big")).digest(1 << 20))
            elif kind == 1:
                f.write((b"line %d of some text that compresses well\n" % i) * ((1 << 20) // 44) + b"\n" * ((1 << 20) % 44))
            elif kind == 2:
                f.write(bytes(1 << 20))
            else:
                f.write(os.urandom(1 << 19) + bytes(1 << 19))
    return path


async def test_prepare_our_bundle_multi_pack(tmp_path, alice_s3, system_s3, bundle_bucket, system_bucket,
                                             system_endpoint, cloud_key, alice_cert):
    image = _mixed_image(tmp_path / "mixed.img")
    result = _bundle(tmp_path, image, "mixed.img")
    location = upload_bundle_dir(alice_s3, bundle_bucket, result.manifest_path.parent, result.manifest_path.name,
                                 prefix="some/prefix/")
    # small packs and parts so one prepare writes several multipart packs
    config = CacheConfig(bucket=system_bucket, pack_size=6 << 20, part_size=5 << 20)
    async with ImageCache(system_endpoint, cloud_key, config) as cache:
        first = await cache.prepare(location, "emi-mixed001", user_cert=alice_cert)
        s = first.stats
        assert s.zero_chunks > 0 and s.zero_bytes >= 6 << 20
        assert s.packs >= 2 and len(first.manifest.packs) == s.packs
        assert s.bytes_published + s.zero_bytes + s.dedup_bytes == image.stat().st_size
        assert s.bytes_read == result.manifest.bundled_size
        assert s.bytes_decrypted == image.stat().st_size
        out = await cache.reassemble("emi-mixed001", tmp_path / "out.img")
        assert out.read_bytes() == image.read_bytes()

        again = await cache.prepare(location, "emi-mixed001", user_cert=alice_cert)
        assert again.already_prepared and again.manifest == first.manifest

        # the same image under another id: every chunk is already stored
        twin = await cache.prepare(location, "emi-mixed002", user_cert=alice_cert)
        assert twin.stats.bytes_published == 0 and twin.stats.packs == 0
        assert twin.stats.new_chunks == 0
        assert {p.key for p in twin.manifest.packs} <= {p.key for p in first.manifest.packs}
        await cache.verify("emi-mixed002")
    assert len(list_keys(system_s3, system_bucket, "manifests/")) == 2
    assert not list_keys(system_s3, system_bucket, "state/")  # leases are released
