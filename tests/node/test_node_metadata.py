"""The instance metadata service of a real `eucalypt node` process: instances launched on
libvirt's test driver with private_ip 127.0.0.2 and 127.0.0.3, and real HTTP requests
from those source addresses (the client socket bound to them), so each instance is told
apart by its address alone -- as it is behind the node's 169.254.169.254 DNAT. Also the
launch body's other new fields: user_data checks, ephemeral and swap disks."""

from __future__ import annotations

import base64
import shutil
import subprocess

import aiohttp
import pytest

from nodetestlib import (  # noqa: F401  (fixtures)
    SECRET, alice_cert, alice_s3, bundle_bucket, cloud_key, ic_walrus, mixed_image, node_health, prepare,
    start_node_process, system_bucket, system_endpoint)
from node.client import NodeApiError, NodeClient
from node.domainxml import DomainSpec, domain_xml
from node.instances import InstanceRecord
from node.metadata import NOT_FOUND_BODY, VERSIONS, metadata_tree, resolve

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlicesKeyAlicesKeyAlicesKeyAlicesKey alice@laptop"
USER_DATA = b"#!/bin/sh\necho hello\n\xff\x00binary tail"


def launch_body(instance_id: str, ip: str, **extra) -> dict:
    metadata = {"instance-id": instance_id, "ami-id": "emi-md000001", "ami-launch-index": "0",
                "reservation-id": "r-0000abcd", "instance-type": "m1.small",
                "hostname": f"euca-{ip.replace('.', '-')}.eucalyptus.internal",
                "local-hostname": f"euca-{ip.replace('.', '-')}.eucalyptus.internal", "local-ipv4": ip,
                "public-hostname": "", "public-ipv4": "", "placement/availability-zone": "zone-a",
                "security-groups": ["default", "web"],
                "block-device-mapping": {"ami": "/dev/vda", "root": "/dev/vda", "ephemeral0": "vdb"}}
    body = {"instance_id": instance_id, "image_id": "emi-md000001", "instance_type": "m1.small", "vcpus": 1,
            "memory_mib": 128, "private_ip": ip, "metadata": metadata}
    body.update(extra)
    return body


async def fetch(url: str, path: str, source: str, method: str = "GET", headers=None) -> tuple[int, bytes, str]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, url + path, headers=headers) as reply:
            return reply.status, await reply.read(), reply.headers.get("Content-Type", "")


@pytest.fixture
def ctx(tmp_path, alice_s3, bundle_bucket, system_endpoint, system_bucket, cloud_key, alice_cert):
    return dict(alice_s3=alice_s3, bundle_bucket=bundle_bucket, system_endpoint=system_endpoint,
                system_bucket=system_bucket, cloud_key=cloud_key, alice_cert=alice_cert)


async def test_metadata_by_source_address_across_a_restart(tmp_path, ctx, ic_walrus):
    await prepare(tmp_path, mixed_image(tmp_path / "m.img", 4, "md"), "emi-md000001", **ctx)
    proc = start_node_process(tmp_path, ic_walrus.url, ctx["system_bucket"], "--cluster", "zone-a")
    client = NodeClient(proc.url, SECRET)
    try:
        a = await client.call("POST", "/node/v1/instances", launch_body(
            "i-md00000a", "127.0.0.2", user_data=base64.b64encode(USER_DATA).decode(),
            metadata={**launch_body("i-md00000a", "127.0.0.2")["metadata"], "public-keys": {"alice": KEY_A}}))
        b = await client.call("POST", "/node/v1/instances", launch_body("i-md00000b", "127.0.0.3"))
        assert a["instance"]["state"] == b["instance"]["state"] == "running"
        assert a["instance"]["private_ip"] == "127.0.0.2" and "user_data" not in a["instance"]
        assert a["instance"]["user_data_bytes"] == len(USER_DATA) and b["instance"]["user_data_bytes"] == 0
        with pytest.raises(NodeApiError) as err:  # one address, one live instance
            await client.call("POST", "/node/v1/instances", launch_body("i-md00000c", "127.0.0.3"))
        assert err.value.status == 409
        md = (await node_health(client))["metadata_url"]
        assert md.startswith("http://127.0.0.1:")

        status, body, ctype = await fetch(md, "/latest/meta-data/instance-id", "127.0.0.2")
        assert (status, body) == (200, b"i-md00000a") and ctype.startswith("text/plain")
        assert (await fetch(md, "/latest/meta-data/instance-id", "127.0.0.3"))[:2] == (200, b"i-md00000b")
        assert (await fetch(md, "/2009-04-04/meta-data/instance-id", "127.0.0.3"))[:2] == (200, b"i-md00000b")
        assert (await fetch(md, "/latest/meta-data/local-ipv4", "127.0.0.3"))[1] == b"127.0.0.3"

        status, body, _ = await fetch(md, "/latest/meta-data/", "127.0.0.2")
        names = body.decode().split("\n")
        assert status == 200 and names == sorted(names)
        for name in ("ami-id", "ami-launch-index", "block-device-mapping/", "hostname", "instance-id",
                     "instance-type", "local-hostname", "local-ipv4", "mac", "placement/", "public-keys/",
                     "reservation-id", "security-groups"):
            assert name in names
        assert "public-ipv4" not in names and "public-hostname" not in names  # empty: not listed
        b_names = (await fetch(md, "/latest/meta-data", "127.0.0.3"))[1].decode().split("\n")
        assert "public-keys/" not in b_names and b_names[0] == "ami-id"

        assert (await fetch(md, "/latest/meta-data/public-keys/", "127.0.0.2"))[1] == b"0=alice"
        assert (await fetch(md, "/latest/meta-data/public-keys/0/", "127.0.0.2"))[1] == b"openssh-key"
        assert (await fetch(md, "/latest/meta-data/public-keys/0/openssh-key", "127.0.0.2"))[1] == KEY_A.encode()
        assert (await fetch(md, "/latest/meta-data/placement/", "127.0.0.2"))[1] == b"availability-zone"
        assert (await fetch(md, "/latest/meta-data/placement/availability-zone", "127.0.0.2"))[1] == b"zone-a"
        assert (await fetch(md, "/latest/meta-data/security-groups", "127.0.0.2"))[1] == b"default\nweb"
        assert (await fetch(md, "/latest/meta-data/block-device-mapping/", "127.0.0.2"))[1] == \
            b"ami\nephemeral0\nroot"
        assert (await fetch(md, "/latest/meta-data/block-device-mapping/root", "127.0.0.2"))[1] == b"/dev/vda"
        assert (await fetch(md, "/latest/meta-data/mac", "127.0.0.2"))[1] == a["instance"]["mac"].encode()

        status, body, ctype = await fetch(md, "/latest/user-data", "127.0.0.2")
        assert (status, body, ctype) == (200, USER_DATA, "application/octet-stream")
        assert (await fetch(md, "/latest/", "127.0.0.2"))[1] == b"meta-data/\nuser-data"
        assert (await fetch(md, "/latest/", "127.0.0.3"))[1] == b"meta-data/"
        status, body, ctype = await fetch(md, "/latest/user-data", "127.0.0.3")
        assert status == 404 and body.decode() == NOT_FOUND_BODY and ctype.startswith("text/html")
        assert (await fetch(md, "/", "127.0.0.2"))[1].decode().split("\n") == list(VERSIONS)
        assert (await fetch(md, "/latest/meta-data/no-such-thing", "127.0.0.2"))[0] == 404
        assert (await fetch(md, "/latest/meta-data/instance-id/", "127.0.0.2"))[0] == 404
        assert (await fetch(md, "/1999-01-01/meta-data/", "127.0.0.2"))[0] == 404
        for path in ("/latest/meta-data/instance-id", "/", "/latest/user-data"):
            assert (await fetch(md, path, "127.0.0.4"))[0] == 404  # an address no instance holds
        status, token, _ = await fetch(md, "/latest/api/token", "127.0.0.2", "PUT",
                                       {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        assert status == 200 and len(token) > 20
        assert (await fetch(md, "/latest/api/token", "127.0.0.2", "PUT"))[0] == 400
        assert (await fetch(md, "/latest/meta-data/instance-id", "127.0.0.2", "GET",
                            {"X-aws-ec2-metadata-token": token.decode()}))[1] == b"i-md00000a"

        # An elastic IP associated after the launch: the policy in force says so, and the
        # metadata follows it (moved away: gone again), as EC2's does.
        def eip_policy(version, public_ip=None, hostname=None):
            return {"version": version, "groups": {}, "members": {},
                    "instances": {"i-md00000a": {"private_ip": "127.0.0.2", "groups": [], "public_ip": public_ip,
                                                 "public_hostname": hostname}}}
        await client.network_policy(eip_policy(1, "198.51.100.7", "euca-198-51-100-7.eucalyptus.compute"))
        assert (await fetch(md, "/latest/meta-data/public-ipv4", "127.0.0.2"))[1] == b"198.51.100.7"
        assert (await fetch(md, "/latest/meta-data/public-hostname", "127.0.0.2"))[1] == \
            b"euca-198-51-100-7.eucalyptus.compute"
        assert (await fetch(md, "/latest/meta-data/public-ipv4", "127.0.0.3"))[0] == 404  # b: not named
        with pytest.raises(NodeApiError) as err:
            await client.network_policy({**eip_policy(2, "198.51.100.7", "bad host!")})
        assert err.value.status == 400
        await client.network_policy(eip_policy(3))
        assert (await fetch(md, "/latest/meta-data/public-ipv4", "127.0.0.2"))[0] == 404
        assert "public-hostname" not in (await fetch(md, "/latest/meta-data/", "127.0.0.2"))[1].decode().split("\n")

        # A restart: the records (and so the metadata) are kept. On the test driver the
        # domains died with the process, so the instances come back "failed"; their
        # metadata is still served until they are terminated.
        await client.close()
        proc.stop()
        proc = start_node_process(tmp_path, ic_walrus.url, ctx["system_bucket"], "--cluster", "zone-a")
        client = NodeClient(proc.url, SECRET)
        md = (await node_health(client))["metadata_url"]
        assert (await client.describe("i-md00000a"))["state"] == "failed"
        assert (await fetch(md, "/latest/meta-data/instance-id", "127.0.0.2"))[1] == b"i-md00000a"
        assert (await fetch(md, "/latest/user-data", "127.0.0.2"))[1] == USER_DATA
        assert (await fetch(md, "/latest/meta-data/public-keys/0/openssh-key", "127.0.0.2"))[1] == KEY_A.encode()
        await client.terminate("i-md00000a")
        assert (await fetch(md, "/latest/meta-data/instance-id", "127.0.0.2"))[0] == 404
        assert (await fetch(md, "/latest/meta-data/instance-id", "127.0.0.3"))[1] == b"i-md00000b"
        metrics = await client.metrics()
        assert 'eucalypt_node_metadata_requests_total{result="ok"}' in metrics
    finally:
        await client.close()
        proc.stop()


async def test_launch_fields_user_data_checks_and_scratch_disks(tmp_path, ctx, ic_walrus):
    await prepare(tmp_path, mixed_image(tmp_path / "m.img", 4, "md"), "emi-md000001", **ctx)
    proc = start_node_process(tmp_path, ic_walrus.url, ctx["system_bucket"])
    client = NodeClient(proc.url, SECRET)
    try:
        for bad, why in ((launch_body("i-md0000e1", "127.0.0.5", user_data="not base64!"), "base64"),
                         (launch_body("i-md0000e2", "127.0.0.5",
                                      user_data=base64.b64encode(bytes(16 * 1024 + 1)).decode()), "16 KiB"),
                         (launch_body("i-md0000e3", "not-an-ip"), "IPv4"),
                         (launch_body("i-md0000e4", "127.0.0.5", ephemeral_gb=-1), "ephemeral_gb"),
                         (launch_body("i-md0000e5", "127.0.0.5", metadata=["x"]), "metadata")):
            with pytest.raises(NodeApiError) as err:
                await client.call("POST", "/node/v1/instances", bad)
            assert err.value.status == 400 and why in err.value.message, err.value.message
        assert await client.instances() == []  # bad input changes nothing

        limit = base64.b64encode(bytes(16 * 1024)).decode()  # exactly 16 KiB is allowed
        doc = (await client.call("POST", "/node/v1/instances", launch_body(
            "i-md0000d1", "127.0.0.5", ephemeral_gb=1, swap_mb=64, user_data=limit)))["instance"]
        assert (doc["state"], doc["ephemeral_gb"], doc["swap_mb"]) == ("running", 1, 64)
        inst = proc.data_dir / "instances" / "i-md0000d1"
        eph, swap = inst / "ephemeral.raw", inst / "swap.raw"
        assert eph.stat().st_size == 1 << 30 and swap.stat().st_size == 64 << 20
        assert eph.stat().st_blocks * 512 < 64 << 20  # sparse: formatting wrote little
        if shutil.which("blkid"):
            def fstype(p):
                return subprocess.run(["blkid", "-o", "export", str(p)], capture_output=True, text=True).stdout
            assert "TYPE=ext4" in fstype(eph) and "LABEL=ephemeral0" in fstype(eph)
            assert "TYPE=swap" in fstype(swap)
        await client.terminate("i-md0000d1")
        assert not inst.exists()

        only_swap = (await client.call("POST", "/node/v1/instances",
                                       launch_body("i-md0000d2", "127.0.0.5", swap_mb=16)))["instance"]
        assert only_swap["state"] == "running"
        assert sorted(p.name for p in (proc.data_dir / "instances" / "i-md0000d2").iterdir()) == \
            ["console.log", "disk.qcow2", "swap.raw"]
    finally:
        await client.close()
        proc.stop()


def test_domain_xml_scratch_disks_follow_the_root_disk():
    import defusedxml.ElementTree as ET
    spec = DomainSpec(name="i-1", vcpus=1, memory_mib=64, disk_path="/d/disk.qcow2", console_log="/d/c",
                      scratch_disks=("/d/ephemeral.raw", "/d/swap.raw"))
    disks = ET.fromstring(domain_xml(spec)).findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("driver").get("type"), d.find("source").get("file"))
            for d in disks] == [("vda", "qcow2", "/d/disk.qcow2"), ("vdb", "raw", "/d/ephemeral.raw"),
                                ("vdc", "raw", "/d/swap.raw")]


def test_tree_fills_in_what_the_node_knows():
    record = InstanceRecord("i-0abc", "m1.small", 1, 64, {"machine": "emi-1", "kernel": "eki-1"}, "running",
                            mac="d0:0d:00:00:00:01", private_ip="10.0.0.5")
    tree = metadata_tree(record)
    assert tree["instance-id"] == "i-0abc" and tree["ami-id"] == "emi-1" and tree["kernel-id"] == "eki-1"
    assert tree["local-hostname"] == "ip-10-0-0-5" and tree["local-ipv4"] == "10.0.0.5"
    assert "ramdisk-id" not in tree and "public-keys" not in tree
    assert resolve(record, "/latest/meta-data/kernel-id") == (b"eki-1", "text/plain")
    assert resolve(record, "/latest/user-data") is None
