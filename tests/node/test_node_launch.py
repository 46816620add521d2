"""Launching instances from images prepared by imagecache into a real Walrus, on a real
node agent (HTTP on loopback) over libvirt's test driver."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess

import pytest

from nodetestlib import (  # noqa: F401  (fixtures)
    SECRET, alice_cert, alice_s3, bundle_bucket, cloud_key, hypervisor, ic_walrus, mixed_image, node_config,
    prepare, start_node, system_bucket, system_endpoint)
from imagecache_testlib import sha256_file
from node.client import NodeApiError, NodeClient


@pytest.fixture
def ctx(tmp_path, alice_s3, bundle_bucket, system_endpoint, system_bucket, cloud_key, alice_cert):
    return dict(alice_s3=alice_s3, bundle_bucket=bundle_bucket, system_endpoint=system_endpoint,
                system_bucket=system_bucket, cloud_key=cloud_key, alice_cert=alice_cert)


async def test_launch_twice_second_fetches_nothing(tmp_path, ctx, ic_walrus, hypervisor):
    prepared = await prepare(tmp_path, mixed_image(tmp_path / "a.img", 12, "a"), "emi-aaaa0001", **ctx)
    m = prepared.manifest
    stored = sum({c.sha256: c.length for c in m.stored_chunks}.values())
    node = await start_node(node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"]), hypervisor)
    try:
        first = await node.client.run_instance("i-00000001", "emi-aaaa0001", vcpus=2, memory_mib=512)
        assert first["state"] == "running" and first["domain_state"] == "running"
        assert node.fetched == stored == first["fetched_bytes"]
        base = node.agent.cache.base_path("emi-aaaa0001")
        assert sha256_file(base) == m.sha256
        assert base.stat().st_blocks * 512 < m.size  # zero chunks are holes
        disk, console = node.agent.instances.paths("i-00000001")
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], check=True,
                                         capture_output=True).stdout)
        assert info["format"] == "qcow2" and info["virtual-size"] == m.size
        assert info["backing-filename"] == str(base.resolve())

        second = await node.client.run_instance("i-00000002", "emi-aaaa0001")
        assert second["state"] == "running"
        assert node.fetched == stored and second["fetched_bytes"] == 0  # all from the local cache
        assert node.metric("eucalypt_node_chunk_cache_hit_bytes_total") == stored

        domains = {d.name: d for d in await hypervisor.list()}
        assert domains["i-00000001"].images == {"machine": "emi-aaaa0001"}
        images = await node.client.images()
        assert [(i["image_id"], i["state"], i["pins"]) for i in images] == [("emi-aaaa0001", "ready", 2)]

        console.write_bytes(b"Linux version 6.1\nlogin: ")
        out = await node.client.console("i-00000001")
        assert base64.b64decode(out["output"]) == b"Linux version 6.1\nlogin: "
        assert (await node.client.reboot("i-00000001"))["state"] == "running"

        res = await node.client.resources()
        assert res["cores"]["used"] == 3 and res["memory_mib"]["used"] == 768 and res["instances"] == 2
        assert res["cache_bytes"]["used"] == node.agent.cache.used() > 0

        with pytest.raises(NodeApiError) as err:
            await node.client.run_instance("i-00000001", "emi-aaaa0001")
        assert err.value.status == 409

        assert (await node.client.terminate("i-00000001"))["state"] == "terminated"
        assert "i-00000001" not in {d.name for d in await hypervisor.list()}
        assert not disk.parent.exists()
        assert [i["pins"] for i in await node.client.images()] == [1]
        await node.client.terminate("i-00000002")

        text = await node.client.metrics()
        for name in ("eucalypt_node_chunk_fetched_bytes_total", "eucalypt_node_chunk_cache_hit_bytes_total",
                     "eucalypt_node_cache_used_bytes", "eucalypt_node_cache_limit_bytes",
                     'eucalypt_node_launch_phase_seconds_count{phase="fetch"}',
                     'eucalypt_node_launch_phase_seconds_count{phase="assemble"}',
                     'eucalypt_node_launch_phase_seconds_count{phase="define"}',
                     'eucalypt_node_launch_phase_seconds_count{phase="start"}'):
            assert name in text
    finally:
        await node.stop()


async def test_concurrent_launches_share_one_fetch(tmp_path, ctx, ic_walrus, hypervisor):
    prepared = await prepare(tmp_path, mixed_image(tmp_path / "s.img", 8, "s"), "emi-5f000001", **ctx)
    stored = sum({c.sha256: c.length for c in prepared.manifest.stored_chunks}.values())
    node = await start_node(node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"]), hypervisor)
    try:
        results = await asyncio.gather(*(node.client.run_instance(f"i-5f00000{k}", "emi-5f000001")
                                         for k in range(4)))
        assert [r["state"] for r in results] == ["running"] * 4
        assert node.fetched == stored
        assert sorted(r["fetched_bytes"] for r in results) == [0, 0, 0, stored]
    finally:
        await node.stop()


async def test_api_is_signed_and_errors_are_json(tmp_path, ctx, ic_walrus, hypervisor):
    node = await start_node(node_config(tmp_path / "node", ic_walrus.url, ctx["system_bucket"]), hypervisor)
    try:
        async with NodeClient(node.server.url, "wrong-secret") as bad:
            with pytest.raises(NodeApiError) as err:
                await bad.resources()
            assert err.value.status == 401
        with pytest.raises(NodeApiError) as err:
            await node.client.run_instance("i-00000009", "emi-missing01")
        assert err.value.status == 404 and "emi-missing01" in err.value.message
        failed = await node.client.describe("i-00000009")
        assert failed["state"] == "failed" and "does not exist" in failed["reason"]
        with pytest.raises(NodeApiError) as err:
            await node.client.call("POST", "/node/v1/instances", {"instance_id": "bad id", "image_id": "x"})
        assert err.value.status == 400
        with pytest.raises(NodeApiError) as err:
            await node.client.describe("i-0000000a")
        assert err.value.status == 404
        async with node.client._session.get(node.server.url + "/_eucalypt/health") as reply:
            assert reply.status == 200 and (await reply.json())["status"] == "ok"
    finally:
        await node.stop()
