"""Managed networking through the whole cloud (issue #8): a real control (`--network-mode
managed`, zones az-a and az-b) and Walrus in the test's namespace; two real nodes (libvirt's
test driver), one per zone, each in a namespace of its own, joined by an underlay veth
(their VXLAN endpoints). The nodes reach control and Walrus, and control reaches them, only
through TCP relays between loopbacks (nsrelay.py): no route joins the namespaces.

Instances are launched with boto3; control gives each a slice address of its group in its
zone and tells its node the segment; a guest namespace stands in for each instance on the
bridge its node put it on. Rules authorized and revoked with boto3 reach both nodes and are
enforced there: the same group reaches across the zones through the tunnel, another group
only where a rule lets it, and the revoked rule stops it again.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("node", "control")]

from netfabric import Fabric, probe_many  # noqa: E402
from nsrelay import Relay  # noqa: E402
from test_control_nodes import make_cloud, walrus_credentials  # noqa: E402
from test_node_network import NetnsNode, node_api  # noqa: E402
from walrustest import wait_for  # noqa: E402

pytestmark = pytest.mark.e2e

_missing = [t for t in ("ip", "nft", "dnsmasq", "bridge") if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing) or not Path("/proc/sys/net/bridge").exists(),
    reason="MANAGED E2E SKIPPED: needs root, ip/nft/dnsmasq/bridge and bridge netfilter "
           f"(euid {os.geteuid()}, missing: {', '.join(_missing) or 'none'})")

NODE_PORT = 8775
PORTS = (8001, 8002)


class ZoneNode:
    """A node in its own namespace, heartbeating to control through relays."""

    def __init__(self, fabric: Fabric, root: Path, env: dict, zone: str, n: int) -> None:
        cloud = env["cloud"]
        self.ns = fabric.add_ns(f"euz{n}")
        self.zone = zone
        control_port = int(cloud.control.url.rstrip("/").rsplit(":", 1)[1])
        walrus_port = int(cloud.walrus.url.rstrip("/").rsplit(":", 1)[1])
        self.relays = [Relay((self.ns, 0), (None, control_port)), Relay((self.ns, 0), (None, walrus_port)),
                       Relay((None, 0), (self.ns, NODE_PORT))]
        creds = root / "walrus-creds.toml"
        if not creds.exists():
            walrus_credentials(cloud.control_dir, root)
        self.secret = (cloud.control_dir / "service.secret").read_text().strip()
        self.data = root / f"node-{zone}"
        self.data.mkdir()
        self.args = ["--port", str(NODE_PORT), "--control", f"http://127.0.0.1:{self.relays[0].port}",
                     "--advertise-url", f"http://127.0.0.1:{self.relays[2].port}",
                     "--walrus", f"http://127.0.0.1:{self.relays[1].port}", "--hypervisor", "test:///default",
                     "--service-secret-file", str(cloud.control_dir / "service.secret"),
                     "--walrus-credentials", str(creds), "--metadata-port", "0", "--cluster", zone,
                     "--bridge", f"ebz{fabric.tag}", "--subnet", "10.211.0.0/24", "--tunnel-ip", f"192.0.2.{n}",
                     "--heartbeat-interval", "0.5"]
        self.process = None

    def start(self) -> None:
        self.process = NetnsNode(self.ns, self.data, self.args)

    def instance(self, instance_id: str) -> dict:
        return node_api(self.ns, self.process.url, "GET", f"/node/v1/instances/{instance_id}",
                        secret=self.secret)["instance"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        for r in self.relays:
            r.close()


@needs_root
def test_managed_cloud_groups_across_two_zones(tmp_path):
    fabric = Fabric(secrets.token_hex(3))
    env = make_cloud(tmp_path, control_extra=["--network-mode", "managed", "--zone", "az-a", "--zone", "az-b"])
    ec2 = env["ec2_a"]
    nodes = {}
    try:
        nodes = {"az-a": ZoneNode(fabric, tmp_path, env, "az-a", 1), "az-b": ZoneNode(fabric, tmp_path, env, "az-b", 2)}
        fabric.underlay(nodes["az-a"].ns, nodes["az-b"].ns, "under", "under", "192.0.2.1/24", "192.0.2.2/24")
        for node in nodes.values():
            node.start()
        web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
        db = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]

        def launch(zone: str, group: str) -> str:
            reply = ec2.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, SecurityGroupIds=[group],
                                      Placement={"AvailabilityZone": zone})
            return reply["Instances"][0]["InstanceId"]

        wanted = {"W1": ("az-a", web), "W2": ("az-b", web), "D1": ("az-a", db)}
        ids = {label: launch(zone, group) for label, (zone, group) in wanted.items()}

        def running():
            got = ec2.describe_instances(InstanceIds=list(ids.values()))["Reservations"]
            items = {i["InstanceId"]: i for r in got for i in r["Instances"]}
            return items if all(i["State"]["Name"] == "running" for i in items.values()) else None
        items = wait_for(running, timeout=90, what="three running instances")
        ips = {label: items[ids[label]]["PrivateIpAddress"] for label in ids}
        # the slices: web has index 1, db 2; zone a is 172.16/16, b 172.17/16; after 16 gateways
        assert ips == {"W1": "172.16.1.17", "W2": "172.17.1.17", "D1": "172.16.2.17"}

        guests = {}
        for label, (zone, _) in wanted.items():
            record = nodes[zone].instance(ids[label])
            assert record["network"]["mode"] == "managed" and record["private_ip"] == ips[label]
            ns = fabric.add_ns(f"eug{label.lower()}")
            fabric.guest(nodes[zone].ns, ns, record, ipaddress.IPv4Network(record["network"]["subnet"]).prefixlen,
                         record["network"]["gateway"], label.lower())
            fabric.listen(ns, label, PORTS)
            guests[label] = ns

        def matrix():
            reached = set()
            targets = {src: {f"{ips[d]}:{p}": (d, p) for d in guests if d != src for p in PORTS} for src in guests}
            answers = probe_many({guests[s]: list(t) for s, t in targets.items()})
            for src, ns in guests.items():
                for target, answer in answers[ns].items():
                    if answer is not None:
                        d, p = targets[src][target]
                        assert answer == f"{d}:{p}:{ips[src]}", (src, target, answer)
                        reached.add((src, d, p))
            return reached

        def settles(expected):
            return wait_for(lambda: matrix() == expected or None, timeout=60, interval=0.5,
                            what=f"the matrix {sorted(expected)}")

        settles(set())  # new groups: nothing in
        ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8001, "ToPort": 8001, "UserIdGroupPairs": [{"GroupId": web}]}])
        settles({("W1", "W2", 8001), ("W2", "W1", 8001)})  # across the zones, through the tunnel
        ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8002, "ToPort": 8002, "UserIdGroupPairs": [{"GroupId": web}]}])
        # web reaches db on 8002 from both zones (routed between the segments by the sender's node)
        settles({("W1", "W2", 8001), ("W2", "W1", 8001), ("W1", "D1", 8002), ("W2", "D1", 8002)})
        ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8001, "ToPort": 8001, "UserIdGroupPairs": [{"GroupId": web}]}])
        settles({("W1", "D1", 8002), ("W2", "D1", 8002)})
    finally:
        for node in nodes.values():
            node.stop()
        env["cloud"].stop()
        fabric.close()
