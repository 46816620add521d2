"""Crash safety (SIGKILL of a preparing CLI process, then retry) and eviction."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pytest

from bundletools import keys
from bundletools.writer import BundleSpec, bundle_image
from imagecache import CacheConfig, ImageCache, ImageNotFound
from imagecache_testlib import (  # noqa: F401  (fixtures)
    ALICE_CERT,
    ALICE_PK,
    CLOUD_CERT,
    CLOUD_PK,
    SYSTEM,
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
from walrustest import ROOT


def _bundle(tmp_path, image, prefix, part_size=1 << 20):
    return bundle_image(image, tmp_path / f"bundle-{prefix}",
                        BundleSpec(user="123456789012", prefix=prefix, part_size=part_size),
                        cloud_cert=keys.load_certificate(CLOUD_CERT), user_cert=keys.load_certificate(ALICE_CERT),
                        private_key=keys.load_private_key(ALICE_PK))


def _write(path, pieces: list[bytes]):
    with open(path, "wb") as f:
        for p in pieces:
            f.write(p)
    return path


def _rand(seed: str, n: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(n)


async def test_kill_mid_prepare_then_retry(tmp_path, ic_walrus, alice_s3, system_s3, bundle_bucket, system_bucket,
                                           system_endpoint, cloud_key, alice_cert):
    image = _write(tmp_path / "big.img", [_rand(f"crash{i}", 1 << 20) for i in range(160)])
    b = _bundle(tmp_path, image, "big.img", part_size=256 << 10)
    location = upload_bundle_dir(alice_s3, bundle_bucket, b.manifest_path.parent, b.manifest_path.name)
    cmd = [sys.executable, "-m", "imagecache.cli", "--endpoint", ic_walrus.url, "-I", SYSTEM.access_key,
           "-S", SYSTEM.secret_key, "--bucket", system_bucket, "prepare", location, "emi-crash001",
           "--cloud-key", str(CLOUD_PK), "--user-cert", str(ALICE_CERT), "--pack-size", "5M"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        # kill once at least one pack is complete (some bytes are published for good)
        while not list_keys(system_s3, system_bucket, "packs/"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    orphans = set(list_keys(system_s3, system_bucket, "packs/"))
    assert orphans
    assert list_keys(system_s3, system_bucket, "manifests/") == [], "the process finished before the kill"
    async with ImageCache(system_endpoint, cloud_key, CacheConfig(bucket=system_bucket)) as cache:
        with pytest.raises(ImageNotFound):
            await cache.manifest("emi-crash001")
        assert (await cache.list_images()) == []
        # the dead process's lease is still there: gc keeps every pack while it is fresh
        assert (await cache.gc(grace=0)).gc_skipped

    retry = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert retry.returncode == 0, retry.stderr
    verify = subprocess.run(cmd[:11] + ["verify", "emi-crash001"], cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    async with ImageCache(system_endpoint, cloud_key, CacheConfig(bucket=system_bucket, lease_ttl=0)) as cache:
        out = await cache.reassemble("emi-crash001", tmp_path / "out.img")
        assert out.read_bytes() == image.read_bytes()
        manifest = await cache.manifest("emi-crash001")
        assert not {p.key for p in manifest.packs} & orphans  # the retry did not trust orphans
        usage = await cache.usage()
        assert usage.garbage_bytes > 0
        # the killed process's lease is stale (its expiry is past for a clock far ahead)
        cache.clock = lambda: time.time() + 3600
        result = await cache.gc(grace=0)
        assert set(result.deleted_packs) >= orphans - {p.key for p in manifest.packs}
        assert (await cache.usage()).garbage_bytes == 0
        await cache.verify("emi-crash001")
        assert system_s3.list_multipart_uploads(Bucket=system_bucket).get("Uploads", []) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_eviction_keeps_shared_chunks_and_pinned_images(tmp_path, alice_s3, system_s3, bundle_bucket,
                                                               system_bucket, system_endpoint, cloud_key,
                                                               alice_cert):
    base = [_rand(f"base{i}", 1 << 20) for i in range(8)]
    images = {
        "emi-aaaa0001": _write(tmp_path / "a.img", base + [_rand(f"a{i}", 1 << 20) for i in range(8)]),
        "emi-bbbb0002": _write(tmp_path / "b.img", base + [_rand(f"b{i}", 1 << 20) for i in range(4)]),
        "emi-cccc0003": _write(tmp_path / "c.img", [_rand(f"c{i}", 1 << 20) for i in range(6)]),
    }
    locations = {}
    for image_id, path in images.items():
        bnd = _bundle(tmp_path, path, path.name, part_size=4 << 20)
        locations[image_id] = upload_bundle_dir(alice_s3, bundle_bucket, bnd.manifest_path.parent,
                                                bnd.manifest_path.name)
    clock = FakeClock()
    # 2 MiB packs: an image's own chunks and the shared base land in different packs
    config = CacheConfig(bucket=system_bucket, pack_size=2 << 20, part_size=5 << 20)
    async with ImageCache(system_endpoint, cloud_key, config, clock=clock) as cache:
        for image_id in ("emi-cccc0003", "emi-aaaa0001", "emi-bbbb0002"):  # C oldest, then A, then B
            await cache.prepare(locations[image_id], image_id, user_cert=alice_cert)
            clock.now += 10
        await cache.touch("emi-bbbb0002")
        await cache.pin("emi-cccc0003", "node-1/i-00000001")
        listed = {i.image_id: i for i in await cache.list_images()}
        assert listed["emi-cccc0003"].pinned_by == ("node-1_i-00000001",)
        usage = await cache.usage()
        assert usage.garbage_bytes == 0 and usage.images == 3

        a = await cache.manifest("emi-aaaa0001")
        b = await cache.manifest("emi-bbbb0002")
        only_a = {p.key for p in a.packs} - {p.key for p in b.packs}
        shared = {p.key for p in a.packs} & {p.key for p in b.packs}
        assert only_a and shared
        only_a_bytes = sum(p.size for p in a.packs if p.key in only_a)

        # A cap just under the current usage: the LRU unpinned image (A, not C) goes;
        # the packs A shares with B stay.
        result = await cache.evict(usage.referenced_bytes - 1)
        assert result.evicted == ("emi-aaaa0001",)
        assert set(result.deleted_packs) == only_a and result.freed_bytes == only_a_bytes
        assert result.referenced_bytes == usage.referenced_bytes - only_a_bytes
        assert set(list_keys(system_s3, system_bucket, "packs/")) >= shared
        for image_id in ("emi-bbbb0002", "emi-cccc0003"):
            await cache.verify(image_id)
        with pytest.raises(ImageNotFound):
            await cache.manifest("emi-aaaa0001")

        # Named explicitly, a pinned image still stays; and with a prepare running
        # (its lease held), manifests may go but packs are left for a later gc.
        assert (await cache.evict(0, images=["emi-cccc0003"])).evicted == ()
        async with cache._lease("emi-dddd0004"):
            busy = await cache.evict(0)
            assert busy.evicted == ("emi-bbbb0002",) and busy.gc_skipped and busy.deleted_packs == ()
        await cache.verify("emi-cccc0003")
        # B's packs now look like any orphan: a later gc takes them once past the grace period
        assert (await cache.gc(grace=3600)).deleted_packs == ()
        done = await cache.gc(grace=0)
        assert not done.gc_skipped and set(done.deleted_packs) == {p.key for p in b.packs}
        await cache.verify("emi-cccc0003")
        await cache.unpin("emi-cccc0003", "node-1/i-00000001")
        assert (await cache.evict(0)).evicted == ("emi-cccc0003",)
        assert list_keys(system_s3, system_bucket, "packs/") == []

        # an evicted image is prepared again from its bundle on demand
        again = await cache.prepare(locations["emi-aaaa0001"], "emi-aaaa0001", user_cert=alice_cert)
        assert not again.already_prepared
        out = await cache.reassemble("emi-aaaa0001", tmp_path / "a.out")
        assert out.read_bytes() == images["emi-aaaa0001"].read_bytes()
