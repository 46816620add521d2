"""The managed network modes on real nodes (issue #8; node/segments.py, node/firewall.py).

First the pure parts (no root): the launch body's and policy's "network", the segment
plan. Then, as root, in network namespaces this test creates: two `eucalypt node`
processes (libvirt's test driver), each in its own namespace, joined by an "underlay"
veth (their --tunnel-ip addresses); guests are namespaces on veths whose node ends carry
the instances' tap names, attached to the bridge the node put the instance on.

  * managed, one zone: three groups, six instances (each group on both nodes); a
    reachability matrix on three TCP ports, computed from the rules by a small model,
    must be matched exactly before and after a rule change and after an agent restart;
    DHCP on a segment answers from the instance's own node only, with the node's gateway
    and MTU 1450; every VXLAN frame on the underlay carries its group's segment id, and a
    host on another group's segment sees none of the group's frames.
  * managed-novlan: groups share the node bridge (VNI 1 between the nodes); the rules
    alone separate them, and the matrix still matches.
  * cross-cluster: two zones with their own slices; a group reaches its members in the
    other zone through the tunnel, another group does not.
  * 802.1Q: the same tagging check on a trunk veth, where the kernel has CONFIG_VLAN_8021Q
    (skipped, saying so, where it has not).

Every probe has a bounded timeout; nothing routes out of these namespaces; all of them are
deleted afterwards."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from netfabric import Capture, Fabric, probe, probe_many
from nodetestlib import (  # noqa: F401  (fixtures)
    alice_cert, alice_s3, bundle_bucket, cloud_key, ic_walrus, mixed_image, node_process_args, prepare,
    system_bucket, system_endpoint, warm_cache)
from test_node_network import NetnsNode, guest_get, in_ns, node_api, ns_python, sh
from node.errors import BadRequest
from node.firewall import parse_policy, policy_to_json
from node.segments import GroupNet, Peer, parse_launch_network, parse_network, plan_segments

_missing = [t for t in ("ip", "nft", "dnsmasq", "bridge") if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing) or not Path("/proc/sys/net/bridge").exists(),
    reason="MANAGED NETWORK TEST SKIPPED: needs root, ip/nft/dnsmasq/bridge and bridge netfilter "
           f"(euid {os.geteuid()}, missing: {', '.join(_missing) or 'none'})")

IMAGE = "emi-mn000001"
PORTS = (8001, 8002, 8003)
FLAT = "10.211.0.0/24"


def rule(protocol, from_port=None, to_port=None, cidrs=(), groups=()):
    return {"protocol": protocol, "from_port": from_port, "to_port": to_port, "cidrs": list(cidrs),
            "groups": list(groups)}


ALL_OUT = rule("-1", cidrs=["0.0.0.0/0"])


# pure ------------------------------------------------------------------------------------------

def test_network_documents_are_checked():
    good = {"mode": "managed", "segment": 11, "subnet": "172.16.1.0/24", "gateway": "172.16.1.2",
            "peer_subnets": ["172.17.1.0/24"]}
    assert parse_launch_network(good).net == GroupNet(11, "172.16.1.0/24", "172.16.1.2", ("172.17.1.0/24",))
    assert parse_launch_network(None) is None
    assert parse_launch_network({**good, "mode": "managed-novlan", "segment": None}).net.segment is None
    for bad, why in [({**good, "mode": "vlan"}, "mode"), ({**good, "segment": 0}, "segment"),
                     ({**good, "segment": "11"}, "segment"), ({**good, "subnet": "172.16.1.1/24"}, "subnet"),
                     ({**good, "gateway": "172.16.2.1"}, "gateway"), ({**good, "gateway": "172.16.1.0"}, "gateway"),
                     ({**good, "peer_subnets": ["172.16.0.0/16"]}, "overlaps"),
                     ({**good, "peer_subnets": [11]}, "peer_subnets"), ({**good, "subnet": 2886729984}, "subnet"),
                     ({**good, "mode": "managed-novlan"}, "null"), ([], "object")]:
        with pytest.raises(BadRequest, match=why):
            parse_launch_network(bad)
    net = {"mode": "managed", "groups": {"sg-a": good, "sg-b": {**good, "subnet": "172.16.2.0/24",
                                                                 "gateway": "172.16.2.2", "peer_subnets": []}},
           "private_ranges": ["172.16.0.0/16"], "peers": [{"tunnel_ip": "192.0.2.2", "same_zone": True}]}
    with pytest.raises(BadRequest, match="share segment 11"):
        parse_network(net)
    net["groups"]["sg-b"]["segment"] = 12
    doc = {"version": 3, "network": net}
    policy = parse_policy(doc)
    assert policy.network.peers == (Peer("192.0.2.2", True),)
    assert parse_policy(policy_to_json(policy)) == policy
    assert parse_policy({"version": 1, "network": {"mode": "flat"}}).network is None
    for bad, why in [({**net, "peers": [{"tunnel_ip": "x"}]}, "tunnel_ip"), ({**net, "private_ranges": "x"}, "list"),
                     ({**net, "groups": []}, "object")]:
        with pytest.raises(BadRequest, match=why):
            parse_policy({"version": 1, "network": bad})


def test_segment_plan():
    groups = {"sg-a": GroupNet(11, "172.16.1.0/24", "172.16.1.2", ("172.17.1.0/24",)),
              "i-1": GroupNet(11, "172.16.1.0/24", "172.16.1.2", ("172.17.1.0/24",)),
              "sg-b": GroupNet(12, "172.16.2.0/24", "172.16.2.2")}
    peers = (Peer("192.0.2.1", True), Peer("192.0.2.3", False), Peer("192.0.2.2", True))
    plans = plan_segments("br0", "managed", groups, peers, tunnel_ip="192.0.2.2", uplink=None, vlan_capable=False)
    assert [(p.bridge, p.vxlan, p.vni, p.vlan, p.addresses, p.routes, p.mtu) for p in plans] == [
        ("br0-11", "br0v11", 11, None, ("172.16.1.2/24",), ("172.17.1.0/24",), 1450),
        ("br0-12", "br0v12", 12, None, ("172.16.2.2/24",), (), 1450)]
    assert plans[0].flood == ("192.0.2.1", "192.0.2.3")  # never itself
    # with an 802.1Q uplink, VXLAN floods only to the other zones (the trunk joins the zone)
    vlan = plan_segments("br0", "managed", groups, peers, tunnel_ip="192.0.2.2", uplink="eth1", vlan_capable=True)
    assert (vlan[0].vlan, vlan[0].flood, vlan[0].fabric) == ("eth1.11", ("192.0.2.3",), ("br0v11", "eth1.11"))
    novlan = plan_segments("br0", "managed-novlan",
                           {g: GroupNet(None, n.subnet, n.gateway, n.peer_subnets) for g, n in groups.items()},
                           peers, tunnel_ip=None, uplink="eth1", vlan_capable=True)
    assert [(p.bridge, p.vxlan, p.vlan, p.addresses, p.mtu) for p in novlan] == [
        ("br0", None, None, ("172.16.1.2/24", "172.16.2.2/24"), None)]


# for real ----------------------------------------------------------------------------------------

@dataclass
class Inst:
    label: str          # "A1": group A on node 1
    instance_id: str
    group: str
    node: int
    ip: str
    record: dict | None = None


def allowed(rules: list[dict], peer_ip: str, port: int, members: dict[str, list[str]]) -> bool:
    """The model: does one of these rules let TCP `port` to/from `peer_ip` through?"""
    for r in rules:
        if r["protocol"] not in ("tcp", "-1"):
            continue
        if r["protocol"] == "tcp" and r["from_port"] is not None and not r["from_port"] <= port <= r["to_port"]:
            continue
        if any(ipaddress.IPv4Address(peer_ip) in ipaddress.IPv4Network(c) for c in r["cidrs"]) or \
                any(peer_ip in members.get(g, []) for g in r["groups"]):
            return True
    return False


def expected(insts: list[Inst], groups: dict) -> set[tuple[str, str, int]]:
    members = {}
    for i in insts:
        members.setdefault(i.group, []).append(i.ip)
    return {(s.label, d.label, port) for s in insts for d in insts if s is not d for port in PORTS
            if allowed(groups[s.group]["egress"], d.ip, port, members)
            and allowed(groups[d.group]["ingress"], s.ip, port, members)}


class ManagedCloud:
    """Two nodes in namespaces on one underlay, their guests, the policy documents."""

    def __init__(self, fabric: Fabric, tmp_path: Path, mode: str, zones: tuple[str, str], slices: dict,
                 ic_walrus, system_bucket, *, public: bool = False) -> None:
        self.fabric, self.mode, self.zones, self.slices = fabric, mode, zones, slices
        self.node_ns = [fabric.add_ns("eumn1"), fabric.add_ns("eumn2")]
        self.tunnel = ["192.0.2.1", "192.0.2.2"]
        fabric.underlay(self.node_ns[0], self.node_ns[1], "under", "under", "192.0.2.1/24", "192.0.2.2/24")
        extra = []
        if public:  # a public LAN: a bridge in the "outside" namespace, each node's "pub" on it
            self.outside = fabric.add_ns("euout")
            sh("ip", "-n", self.outside, "link", "add", "lan", "type", "bridge")
            sh("ip", "-n", self.outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "lan")
            sh("ip", "-n", self.outside, "link", "set", "lan", "up")
            for n in (1, 2):
                fabric.underlay(self.node_ns[n - 1], self.outside, "pub", f"lan{n}", f"198.51.100.{1 + n}/24")
                sh("ip", "-n", self.outside, "link", "set", f"lan{n}", "master", "lan")
            extra = ["--public-interface", "pub"]
        self.bridge = f"ebr{fabric.tag}"
        self.args, self.nodes, self.data = [], [], []
        for n in (1, 2):
            data = tmp_path / f"node{n}"
            warm_cache(tmp_path, ic_walrus.url, system_bucket, IMAGE, data)
            self.data.append(data)
            self.args.append(node_process_args(tmp_path, ic_walrus.url, system_bucket, "--bridge", self.bridge,
                                               "--subnet", FLAT, "--tunnel-ip", self.tunnel[n - 1],
                                               "--cluster", zones[n - 1], *extra))
            self.nodes.append(NetnsNode(self.node_ns[n - 1], data, self.args[-1]))
        self.insts: list[Inst] = []
        self.guest_ns: dict[str, str] = {}

    def group_net(self, group: str, node: int) -> dict:
        """The group's network as node `node` (1, 2) sees it: its zone's slice, gateway slice+n."""
        zone = self.zones[node - 1]
        subnet = ipaddress.IPv4Network(self.slices[group][zone])
        peers = sorted({s for z, s in self.slices[group].items() if z not in (zone, "segment")})
        return {"segment": None if self.mode == "managed-novlan" else self.slices[group]["segment"],
                "subnet": str(subnet), "gateway": str(subnet.network_address + node), "peer_subnets": peers}

    def api(self, node: int, method: str, path: str, body=None, *, status=200):
        return node_api(self.node_ns[node - 1], self.nodes[node - 1].url, method, path, body, status=status)

    def launch(self, inst: Inst) -> dict:
        net = self.group_net(inst.group, inst.node)
        body = {"instance_id": inst.instance_id, "image_id": IMAGE, "vcpus": 1, "memory_mib": 64,
                "private_ip": inst.ip, "network": {"mode": self.mode, **net}}
        record = self.api(inst.node, "POST", "/node/v1/instances", body)["instance"]
        assert record["state"] == "running", record
        return record

    def add(self, label: str, group: str, node: int, ip: str) -> Inst:
        inst = Inst(label, f"i-mn{label.lower()}{self.fabric.tag}", group, node, ip)
        inst.record = self.launch(inst)
        net = self.group_net(group, node)
        ns = self.fabric.add_ns(f"eug{label.lower()}")
        self.guest_ns[label] = ns
        self.fabric.guest(self.node_ns[node - 1], ns, inst.record, ipaddress.IPv4Network(net["subnet"]).prefixlen,
                          net["gateway"], label.lower())
        self.fabric.listen(ns, label, PORTS)
        self.insts.append(inst)
        return inst

    def policy(self, version: int, node: int, groups: dict, eips: dict[str, str] | None = None) -> dict:
        members: dict[str, list[str]] = {}
        for i in self.insts:
            members.setdefault(i.group, []).append(i.ip)
        eips = eips or {}
        return {"version": version,
                "instances": {i.instance_id: {"private_ip": i.ip, "groups": [i.group],
                                              "public_ip": eips.get(i.label)}
                              for i in self.insts if i.node == node},
                "groups": groups, "members": members,
                "network": {"mode": self.mode, "groups": {g: self.group_net(g, node) for g in self.slices},
                            "private_ranges": sorted({str(ipaddress.IPv4Network(s).supernet(new_prefix=16))
                                                      for g in self.slices.values() for z, s in g.items()
                                                      if z != "segment"}),
                            "peers": [{"tunnel_ip": self.tunnel[2 - node], "same_zone": self.zones[0] == self.zones[1]}]}}

    def push(self, version: int, groups: dict, eips: dict[str, str] | None = None) -> None:
        for node in (1, 2):
            assert self.api(node, "PUT", "/node/v1/network-policy", self.policy(version, node, groups, eips)) == \
                {"version": version, "enforced": True}

    def matrix(self) -> set[tuple[str, str, int]]:
        """(source, destination, port) of every TCP connection answered; the listener must
        have seen the source's own private address (no NAT inside the cloud)."""
        reached = set()
        targets = {src.label: {f"{d.ip}:{port}": (d, port) for d in self.insts if d is not src for port in PORTS}
                   for src in self.insts}
        answers = probe_many({self.guest_ns[s]: list(t) for s, t in targets.items()})
        for src in self.insts:
            for target, answer in answers[self.guest_ns[src.label]].items():
                if answer is not None:
                    dst, port = targets[src.label][target]
                    assert answer == f"{dst.label}:{port}:{src.ip}", (src.label, target, answer)
                    reached.add((src.label, dst.label, port))
        return reached

    def restart(self, node: int) -> None:
        """Stop the agent on `node` and start it again; test:///default lost the domains
        with the process, so its instances are launched again under the same ids (the
        same taps and MACs the guests' veths carry)."""
        assert self.nodes[node - 1].stop() == 0
        self.nodes[node - 1] = NetnsNode(self.node_ns[node - 1], self.data[node - 1], self.args[node - 1])
        for inst in self.insts:
            if inst.node == node:
                assert self.api(node, "GET", f"/node/v1/instances/{inst.instance_id}")["instance"]["state"] == "failed"
                self.api(node, "DELETE", f"/node/v1/instances/{inst.instance_id}")
                self.launch(inst)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture
def fabric():
    f = Fabric(secrets.token_hex(3))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def image(tmp_path, alice_s3, bundle_bucket, system_endpoint, system_bucket, cloud_key, alice_cert):
    asyncio.run(prepare(tmp_path, mixed_image(tmp_path / "m.img", 1, "mn"), IMAGE, alice_s3=alice_s3,
                        bundle_bucket=bundle_bucket, system_endpoint=system_endpoint, system_bucket=system_bucket,
                        cloud_key=cloud_key, alice_cert=alice_cert))
    return IMAGE


ONE_ZONE = {"sg-a": {"segment": 11, "az-a": "172.16.1.0/24"}, "sg-b": {"segment": 12, "az-a": "172.16.2.0/24"},
            "sg-c": {"segment": 13, "az-a": "172.16.3.0/24"}}
V1 = {"sg-a": {"ingress": [rule("tcp", 8001, 8001, groups=["sg-a"]), rule("tcp", 8002, 8002, ["0.0.0.0/0"])],
               "egress": [ALL_OUT]},
      "sg-b": {"ingress": [rule("tcp", 8003, 8003, groups=["sg-a"]), rule("tcp", 8001, 8001, groups=["sg-b"])],
               "egress": [ALL_OUT]},
      "sg-c": {"ingress": [rule("tcp", 8001, 8003, groups=["sg-c"]), rule("tcp", 8002, 8002, groups=["sg-b"])],
               "egress": [rule("tcp", 8001, 8003, groups=["sg-c"])]}}
V2 = {"sg-a": {"ingress": [rule("tcp", 8001, 8001, groups=["sg-a"]), rule("tcp", 8003, 8003, groups=["sg-b"])],
               "egress": [ALL_OUT]},
      "sg-b": {"ingress": [rule("tcp", 8001, 8001, ["172.16.3.0/24"]), rule("tcp", 8001, 8001, groups=["sg-b"])],
               "egress": [ALL_OUT]},
      "sg-c": {"ingress": [rule("tcp", 8001, 8003, groups=["sg-c"])], "egress": [ALL_OUT]}}


def six_instances(c: ManagedCloud, prefix: str = "172.16") -> None:
    for g, third in (("A", 1), ("B", 2), ("C", 3)):
        for node in (1, 2):
            c.add(f"{g}{node}", f"sg-{g.lower()}", node, f"{prefix}.{third}.{16 + node}")


DHCP_OFFERS = """
import random, socket, struct, sys, json, time
iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
xid = random.getrandbits(32)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 68))
pkt = struct.pack("!BBBBIHHIIII16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0, mac, b"", b"", 0x63825363)
pkt += bytes([53, 1, 1, 55, 4, 1, 3, 26, 54, 255])
s.sendto(pkt, ("255.255.255.255", 67))
offers, deadline = [], time.monotonic() + 3
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        break
    if struct.unpack("!I", data[4:8])[0] != xid or data[0] != 2:
        continue
    opts, i = {}, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1; continue
        opts[data[i]] = data[i + 2:i + 2 + data[i + 1]]; i += 2 + data[i + 1]
    offers.append({"yiaddr": socket.inet_ntoa(data[16:20]), "server": socket.inet_ntoa(opts[54]),
                   "router": socket.inet_ntoa(opts[3][:4]) if 3 in opts else None,
                   "mtu": struct.unpack("!H", opts[26])[0] if 26 in opts else None})
print(json.dumps(offers))
"""


def frames_of(frames: list[dict], ips: set[str], macs: set[str]) -> list[dict]:
    """Frames (or VXLAN inner frames) that carry one of these addresses."""
    def hit(f):
        return bool({f.get("ip_src"), f.get("ip_dst"), f.get("arp_sender"), f.get("arp_target")} & ips) or \
            bool({f.get("src"), f.get("dst")} & macs)
    return [f for f in frames if hit(f.get("inner", f))]


@needs_root
def test_managed_two_nodes_three_groups_six_instances(tmp_path, fabric, image, ic_walrus, system_bucket):
    c = ManagedCloud(fabric, tmp_path, "managed", ("az-a", "az-a"), ONE_ZONE, ic_walrus, system_bucket)
    try:
        six_instances(c)
        a1 = c.insts[0]
        assert a1.record["bridge"] == f"{c.bridge}-11" and a1.record["network"]["segment"] == 11
        # 0. Launched before any policy: locked down (DHCP and metadata only), as on EC2.
        assert c.matrix() == set()
        # 1. Policy 1, on both nodes: exactly what the rules allow, across the nodes too.
        c.push(1, V1)
        v1 = expected(c.insts, V1)
        assert {(s[0], d[0]) for s, d, _ in v1} >= {("A", "A"), ("A", "B"), ("C", "C"), ("B", "C")}  # a real mix
        assert any(s[1] != d[1] for s, d, _ in v1)  # and some of it between the nodes
        assert c.matrix() == v1

        # The metadata service answers from any segment (DNAT to the node's flat gateway),
        # to the caller's own record: even C1, whose egress rules allow only sg-c.
        for label in ("A1", "C1"):
            inst = next(i for i in c.insts if i.label == label)
            assert guest_get(c.guest_ns[label], "/latest/meta-data/instance-id", inst.ip) == (200, inst.instance_id)

        # DHCP on A's segment: one offer, from A1's own node, with its gateway and MTU 1450.
        offers = json.loads(ns_python(c.guest_ns["A1"], DHCP_OFFERS, "eth0", a1.record["mac"]))
        assert offers == [{"yiaddr": a1.ip, "server": "172.16.1.1", "router": "172.16.1.1", "mtu": 1450}]

        # Segment tagging: every VXLAN frame on the underlay carries its group's segment id;
        # a host on B's segment (a plain port of node 2's B bridge) sees none of A's frames.
        observer = fabric.add_ns("euobs")
        fabric.underlay(c.node_ns[1], observer, "obs", "eth0")
        sh("ip", "-n", c.node_ns[1], "link", "set", "obs", "master", f"{c.bridge}-12")
        under, seen = Capture(c.node_ns[0], "under"), Capture(observer, "eth0")
        for label in ("A1", "B1"):  # fresh ARP (broadcast) and TCP to the other node's member
            in_ns(c.guest_ns[label], "ip", "neigh", "flush", "dev", "eth0")
        assert probe(c.guest_ns["A1"], ["172.16.1.18:8001", "172.16.1.99:8001"])["172.16.1.18:8001"] == \
            "A2:8001:172.16.1.17"
        assert probe(c.guest_ns["B1"], ["172.16.2.18:8001", "172.16.2.99:8001"])["172.16.2.18:8001"] == \
            "B2:8001:172.16.2.17"
        underlay, observed = under.stop(), seen.stop()
        vxlan = [f for f in underlay if "vni" in f]
        a_ips, b_ips = {"172.16.1.17", "172.16.1.18", "172.16.1.99"}, {"172.16.2.17", "172.16.2.18", "172.16.2.99"}
        a_macs = {i.record["mac"] for i in c.insts if i.group == "sg-a"}
        b_macs = {i.record["mac"] for i in c.insts if i.group == "sg-b"}
        assert frames_of(vxlan, a_ips, a_macs) and frames_of(vxlan, b_ips, b_macs)
        assert {f["vni"] for f in frames_of(vxlan, a_ips, a_macs)} == {11}
        assert {f["vni"] for f in frames_of(vxlan, b_ips, b_macs)} == {12}
        assert not [f for f in underlay if "vni" not in f and f.get("type") == 0x0800
                    and frames_of([f], a_ips | b_ips, set())]  # nothing of theirs untunnelled
        assert frames_of(observed, b_ips, b_macs), "the observer on B's segment saw nothing at all"
        assert frames_of(observed, a_ips, a_macs) == []

        # 2. Rules change on both nodes; a stale push is refused.
        c.push(2, V2)
        assert "older" in c.api(1, "PUT", "/node/v1/network-policy", c.policy(1, 1, V1), status=409)
        assert c.matrix() == expected(c.insts, V2) != v1

        # 3. Agent restart on node 1: segments and rules come back from LMDB, no push.
        c.restart(1)
        assert c.matrix() == expected(c.insts, V2)
        # terminate B1: its rules and (no member left on node 1) nothing else go
        c.api(1, "DELETE", f"/node/v1/instances/{c.insts[2].instance_id}")
        assert f"{c.bridge}-12" in in_ns(c.node_ns[0], "ip", "-br", "link")  # still in the cloud's policy
        # an agent stopping with instances left keeps their segments (qemu:///system
        # domains outlive it) and removes its tables
        assert c.nodes[0].stop() == 0
        assert f"{c.bridge}-11" in in_ns(c.node_ns[0], "ip", "-br", "link")
        assert in_ns(c.node_ns[0], "nft", "list", "tables").strip() == ""
    finally:
        c.stop()


@needs_root
def test_managed_novlan_rules_alone_separate_the_groups(tmp_path, fabric, image, ic_walrus, system_bucket):
    c = ManagedCloud(fabric, tmp_path, "managed-novlan", ("az-a", "az-a"), ONE_ZONE, ic_walrus, system_bucket)
    try:
        six_instances(c)
        assert {i.record["bridge"] for i in c.insts} == {c.bridge}
        assert in_ns(c.node_ns[0], "ip", "-d", "link", "show", f"{c.bridge}v1").count("vxlan id 1 ") == 1
        c.push(1, V1)
        assert c.matrix() == expected(c.insts, V1)
        c.push(2, V2)
        assert c.matrix() == expected(c.insts, V2)
    finally:
        c.stop()


OUTSIDE_IP, EIP = "198.51.100.1", "198.51.100.50"


@needs_root
def test_elastic_ip_moves_between_nodes_on_the_public_lan(tmp_path, fabric, image, ic_walrus, system_bucket):
    """The nodes hold their instances' elastic IPs on --public-interface: an outside host
    on that LAN reaches A1 (node 1) on it, then A2 (node 2) once it moves (gratuitous ARP,
    no wait for the outside's ARP cache), and nothing once it is released."""
    c = ManagedCloud(fabric, tmp_path, "managed", ("az-a", "az-a"), ONE_ZONE, ic_walrus, system_bucket, public=True)
    try:
        c.add("A1", "sg-a", 1, "172.16.1.17")
        c.add("A2", "sg-a", 2, "172.16.1.18")
        fabric.listen(c.outside, "outside", [9000])

        def from_outside(port=8002):
            return probe(c.outside, [f"{EIP}:{port}"])[f"{EIP}:{port}"]

        def seen_by_outside(label):
            return probe(c.guest_ns[label], [f"{OUTSIDE_IP}:9000"])[f"{OUTSIDE_IP}:9000"]

        c.push(1, V1)
        assert from_outside() is None
        c.push(2, V1, {"A1": EIP})
        assert from_outside() == f"A1:8002:{OUTSIDE_IP}"
        assert from_outside(8001) is None  # sg-a lets the outside in on 8002 only
        assert seen_by_outside("A1") == f"outside:9000:{EIP}"       # its own traffic leaves as the EIP
        assert seen_by_outside("A2") == "outside:9000:198.51.100.3"  # masqueraded as its node
        c.push(3, V1, {"A2": EIP})
        assert f"{EIP}/32" not in in_ns(c.node_ns[0], "ip", "-br", "addr", "show", "dev", "pub")
        assert from_outside() == f"A2:8002:{OUTSIDE_IP}"
        assert seen_by_outside("A2") == f"outside:9000:{EIP}"
        c.push(4, V1)
        assert from_outside() is None
        assert f"{EIP}/32" not in in_ns(c.node_ns[1], "ip", "-br", "addr", "show", "dev", "pub")
    finally:
        c.stop()


TWO_ZONES = {"sg-a": {"segment": 11, "az-a": "172.16.1.0/24", "az-b": "172.17.1.0/24"},
             "sg-b": {"segment": 12, "az-a": "172.16.2.0/24", "az-b": "172.17.2.0/24"}}
CROSS = {"sg-a": {"ingress": [rule("tcp", 8001, 8003, groups=["sg-a"])], "egress": [ALL_OUT]},
         "sg-b": {"ingress": [rule("tcp", 8001, 8003, groups=["sg-b"])], "egress": [ALL_OUT]}}


@needs_root
def test_cross_cluster_same_group_reaches_through_the_tunnel(tmp_path, fabric, image, ic_walrus, system_bucket):
    c = ManagedCloud(fabric, tmp_path, "managed", ("az-a", "az-b"), TWO_ZONES, ic_walrus, system_bucket)
    try:
        c.add("A1", "sg-a", 1, "172.16.1.17")
        c.add("A2", "sg-a", 2, "172.17.1.18")
        c.add("B1", "sg-b", 1, "172.16.2.17")
        c.add("B2", "sg-b", 2, "172.17.2.18")
        c.push(1, CROSS)
        reached = c.matrix()
        assert reached == expected(c.insts, CROSS)
        assert {(s, d) for s, d, _ in reached} == {("A1", "A2"), ("A2", "A1"), ("B1", "B2"), ("B2", "B1")}
        routes = in_ns(c.node_ns[0], "ip", "route", "show", "dev", f"{c.bridge}-11")
        assert "172.17.1.0/24" in routes  # the other zone's slice, on-link on the segment
    finally:
        c.stop()


def _vlan_supported() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    ns = f"euvq-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "t0", "type", "veth", "peer", "name", "t1")
        return subprocess.run(["ip", "-n", ns, "link", "add", "link", "t0", "name", "t0.5", "type", "vlan", "id", "5"],
                              capture_output=True).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


@needs_root
@pytest.mark.skipif(not _vlan_supported(), reason="802.1Q TEST SKIPPED: this kernel has no 802.1Q VLAN "
                                                   "devices (CONFIG_VLAN_8021Q); segments travel as VXLAN here")
def test_vlan_mode_frames_are_tagged_on_the_trunk(tmp_path, fabric, image, ic_walrus, system_bucket):
    c = ManagedCloud(fabric, tmp_path, "managed", ("az-a", "az-a"), ONE_ZONE, ic_walrus, system_bucket)
    try:
        fabric.underlay(c.node_ns[0], c.node_ns[1], "trunk", "trunk")
        for n in (1, 2):  # the same nodes with a trunk: their segments get 802.1Q ports too
            c.nodes[n - 1].stop()
            c.args[n - 1] += ["--uplink", "trunk"]
            c.nodes[n - 1] = NetnsNode(c.node_ns[n - 1], c.data[n - 1], c.args[n - 1])
        c.add("A1", "sg-a", 1, "172.16.1.17")
        c.add("A2", "sg-a", 2, "172.16.1.18")
        c.add("B1", "sg-b", 1, "172.16.2.17")
        c.push(1, V1)
        trunk = Capture(c.node_ns[0], "trunk")
        assert probe(c.guest_ns["A1"], ["172.16.1.18:8001"])["172.16.1.18:8001"] == "A2:8001:172.16.1.17"
        frames = trunk.stop()
        a = frames_of(frames, {"172.16.1.17", "172.16.1.18"}, set())
        assert a and {f.get("vlan") for f in a} == {11}
    finally:
        c.stop()
