"""The local cache: eviction under the cap (pinned and shared chunks survive, the MRU
image relaunches with 0 bytes, usage counts every pack byte on disk), corrupt chunks
inside a pack and lost packs refetched, stray packs deleted on start, and a restarted
agent rediscovering its cache and instances."""

from __future__ import annotations

import time

import pytest

from eucalypt.clock import FakeClock
from node.fetcher import FetchPolicy
from nodetestlib import (  # noqa: F401  (fixtures)
    alice_cert, alice_s3, bundle_bucket, cloud_key, hypervisor, ic_walrus, node_config, prepare, random_bytes,
    start_node, system_bucket, system_endpoint)
from imagecache_testlib import sha256_file
from node.client import NodeApiError

MiB = 1 << 20


@pytest.fixture
def ctx(tmp_path, alice_s3, bundle_bucket, system_endpoint, system_bucket, cloud_key, alice_cert):
    return dict(alice_s3=alice_s3, bundle_bucket=bundle_bucket, system_endpoint=system_endpoint,
                system_bucket=system_bucket, cloud_key=cloud_key, alice_cert=alice_cert)


def stored(manifest) -> dict[str, int]:
    return {c.sha256: c.length for c in manifest.stored_chunks}


async def test_eviction_keeps_pinned_and_shared(tmp_path, ctx, ic_walrus, hypervisor):
    images = {"emi-e0000001": random_bytes("one", 3 * MiB),
              "emi-e0000002": random_bytes("two", 6 * MiB)}
    images["emi-e0000003"] = images["emi-e0000002"] + random_bytes("three", 1 * MiB)  # shares two's chunks
    images["emi-e0000004"] = random_bytes("four", 3 * MiB)
    manifests = {}
    for image_id, data in images.items():
        (tmp_path / image_id).write_bytes(data)
        manifests[image_id] = (await prepare(tmp_path, tmp_path / image_id, image_id, **ctx)).manifest
    clock = FakeClock(time.time())  # the service signatures are checked against it too
    # used = chunk files + base images: one ~6, two ~12, three ~1 + 7 = 26 MiB; four needs 6
    # more: 32 > high (30.6) -> evict LRU unpinned (two) -> ~26.1 <= low (27.2): stop there.
    config = node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"], cache_limit=34 * MiB,
                         cache_high=0.9, cache_low=0.8)
    node = await start_node(config, hypervisor, clock=clock)
    try:
        await node.client.run_instance("i-e0000001", "emi-e0000001")  # oldest, but pinned (running)
        clock.advance(10)
        await node.client.prefetch("emi-e0000002")
        clock.advance(10)
        await node.client.prefetch("emi-e0000003")
        clock.advance(10)
        assert node.agent.cache.used() <= config.cache_limit
        await node.client.prefetch("emi-e0000004")
        cached = {i["image_id"]: i for i in await node.client.images()}
        assert sorted(cached) == ["emi-e0000001", "emi-e0000003", "emi-e0000004"]
        assert cached["emi-e0000001"]["pins"] == 1
        assert node.agent.cache.used() <= config.cache_limit * 0.8
        assert node.metric("eucalypt_node_cache_evicted_images_total") == 1
        cache = node.agent.cache
        two, three = stored(manifests["emi-e0000002"]), stored(manifests["emi-e0000003"])
        shared, only_two = set(two) & set(three), set(two) - set(three)
        assert len(shared) > 10 * len(only_two) > 0
        assert all(cache.has_chunk(sha) for sha in shared)  # three still needs them
        assert not any(cache.has_chunk(sha) or cache.db.chunk(sha) for sha in only_two)
        assert not cache.base_path("emi-e0000002").exists()
        # the cap is honest: what counts as used is every pack byte on disk (dead ones too)
        packs = sum(p.stat().st_size for p in cache.chunks.root.glob("*.pack"))
        assert cache.db.totals()[0] == packs and cache.db.pack_names() == cache.chunks.pack_names()

        before = node.fetched
        relaunched = await node.client.run_instance("i-e0000003", "emi-e0000003")  # the MRU survivor
        assert relaunched["fetched_bytes"] == 0 and node.fetched == before

        # two again: only its chunks that three does not share travel
        clock.advance(10)
        await node.client.run_instance("i-e0000002", "emi-e0000002")
        assert node.fetched - before == sum(two[s] for s in only_two)

        # everything pinned now: an image that cannot fit is refused, nothing evicted
        images_before = sorted(i["image_id"] for i in await node.client.images() if i["pins"])
        big = tmp_path / "big"
        big.write_bytes(random_bytes("big", 20 * MiB))
        await prepare(tmp_path, big, "emi-e00000bb", **ctx)
        with pytest.raises(NodeApiError) as err:
            await node.client.run_instance("i-e00000bb", "emi-e00000bb")
        assert err.value.status == 507 and err.value.code == "CacheFull"
        assert images_before == sorted(i["image_id"] for i in await node.client.images() if i["pins"])
        assert node.agent.cache.used() <= config.cache_limit
    finally:
        await node.stop()


def flip_byte(path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


async def test_corrupt_and_lost_chunks_are_refetched(tmp_path, ctx, ic_walrus, hypervisor):
    data = random_bytes("corrupt", 4 * MiB) + bytes(2 * MiB) + random_bytes("corrupt2", 2 * MiB)
    (tmp_path / "c.img").write_bytes(data)
    m = (await prepare(tmp_path, tmp_path / "c.img", "emi-c0000001", **ctx)).manifest
    # 256 KiB requests: packs of a few chunks each, so a corrupt chunk has live neighbours
    policy = FetchPolicy(min_request=256 << 10, max_gap=0, max_request=256 << 10)
    config = node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"], fetch=policy)
    node = await start_node(config, hypervisor)
    await node.client.prefetch("emi-c0000001")
    total = node.fetched
    where = {sha: node.agent.cache.db.chunk(sha) for sha in stored(m)}
    await node.stop()

    chunks = sorted(stored(m).items())
    corrupt_sha, corrupt_len = chunks[3]
    corrupt_pack = where[corrupt_sha].pack
    assert sum(w.pack == corrupt_pack for w in where.values()) > 1
    lost_pack = next(where[sha].pack for sha, _ in chunks[7:] if where[sha].pack != corrupt_pack)
    lost = {sha: n for sha, n in chunks if where[sha].pack == lost_pack}
    cache_root = tmp_path / "node" / "cache" / "chunks"
    flip_byte(cache_root / f"{corrupt_pack}.pack", where[corrupt_sha].offset + corrupt_len // 2)  # in the chunk
    (cache_root / f"{lost_pack}.pack").unlink()  # every chunk in it is lost
    (cache_root / "0123abcd.pack").write_bytes(b"half a pack a crash left, never named")
    (cache_root / "4567cdef.pack.tmp").write_bytes(b"a temp")
    (tmp_path / "node" / "images" / "emi-c0000001.img").unlink()  # the base must be assembled again

    node = await start_node(config, hypervisor)  # a restart: the cache comes back from LMDB
    try:
        assert [(i["image_id"], i["state"]) for i in await node.client.images()] == [("emi-c0000001", "fetching")]
        launched = await node.client.run_instance("i-c0000001", "emi-c0000001")
        assert launched["state"] == "running"
        assert launched["fetched_bytes"] == node.fetched == corrupt_len + sum(lost.values()) < total
        assert node.metric("eucalypt_node_chunk_corrupt_chunks_total") == 1 + len(lost)
        assert sha256_file(node.agent.cache.base_path("emi-c0000001")) == m.sha256
        db = node.agent.cache.db
        assert db.chunk(corrupt_sha).pack not in (corrupt_pack, lost_pack)  # refetched into a new pack
        assert db.pack(corrupt_pack).live == sum(w.pack == corrupt_pack for w in where.values()) - 1
        assert db.pack(lost_pack) is None
        assert sorted(p.name for p in cache_root.iterdir()) == sorted(f"{n}.pack" for n in db.pack_names())
    finally:
        await node.stop()


async def test_restart_rediscovers_cache_and_instances(tmp_path, ctx, ic_walrus, hypervisor):
    (tmp_path / "r.img").write_bytes(random_bytes("restart", 3 * MiB))
    await prepare(tmp_path, tmp_path / "r.img", "emi-4e000001", **ctx)
    config = node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"])
    node = await start_node(config, hypervisor)
    await node.client.run_instance("i-4e000001", "emi-4e000001")
    await node.client.run_instance("i-4e000002", "emi-4e000001")
    await hypervisor.destroy("i-4e000002")  # shut off behind the agent's back
    await node.stop()

    # Same process, same libvirt connection: what qemu:///system looks like to a restarted agent.
    node = await start_node(config, hypervisor)
    try:
        assert node.agent.rediscovered == {"adopted": ["i-4e000001", "i-4e000002"], "failed": []}
        states = {i["instance_id"]: (i["state"], i["domain_state"]) for i in await node.client.instances()}
        assert states == {"i-4e000001": ("running", "running"), "i-4e000002": ("stopped", "shutoff")}
        assert [(i["state"], i["pins"]) for i in await node.client.images()] == [("ready", 2)]
        again = await node.client.run_instance("i-4e000003", "emi-4e000001")
        assert again["fetched_bytes"] == 0 and node.fetched == 0
    finally:
        await node.stop()

    # Domains gone while the agent was down (a process restart on test:///default, a host
    # reboot on qemu:///system): the records fail with the reason, pins drop, the cache stays.
    for name in ("i-4e000001", "i-4e000002", "i-4e000003"):
        await hypervisor.destroy(name)
        await hypervisor.undefine(name)
    node = await start_node(config, hypervisor)
    try:
        assert sorted(node.agent.rediscovered["failed"]) == ["i-4e000001", "i-4e000002", "i-4e000003"]
        record = await node.client.describe("i-4e000001")
        assert record["state"] == "failed" and "vanished" in record["reason"]
        assert [(i["state"], i["pins"]) for i in await node.client.images()] == [("ready", 0)]
    finally:
        await node.stop()
