"""Security groups and elastic IPs on the node (issue #8, flat mode; node/firewall.py).

First the pure parts (no root): the policy document's checks and the ruleset text. Then
the API in-process (no network managed: the policy is kept and versioned, not enforced):
400, 409, LMDB across a restart, policy_version in the heartbeat body.

Then for real, as root, in network namespaces this test creates: a `eucalypt node`
process in eut-XXXX managing a bridge; three instances launched on libvirt's test
driver, and for each a guest namespace joined to the bridge by a veth whose node end
carries the instance's tap name (the name the node's rules use) and whose guest end
carries its MAC and private IP -- what qemu's tap would be; an "outside" namespace on
an uplink veth that routes the public range (198.51.100.0/24) via the node. Listeners
in the guests answer "<guest>:<port>:<peer address>"; a reachability matrix of every
guest to every other on three TCP ports must match the rules exactly, before and after
a push that changes them, and after an agent restart (policy re-applied from LMDB).
Elastic IP: outside reaches A on its public address, then B after a re-push, then
nothing. Every probe has a bounded timeout; no address outside these namespaces is
ever sent to; all namespaces are deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodetestlib import (  # noqa: F401  (fixtures)
    SECRET, alice_cert, alice_s3, bundle_bucket, cloud_key, hypervisor, ic_walrus, mixed_image, node_config,
    node_health, node_process_args, prepare, start_node, start_node_process, system_bucket, system_endpoint, warm_cache)
from netfabric import LISTEN, probe, probe_many
from test_node_network import (DHCP_DISCOVER, NetnsNode, delete_namespace, guest_get, in_ns, node_api, ns_python,
                               sh)
from node.client import NodeApiError, NodeClient
from node.errors import BadRequest
from node.firewall import InstancePort, parse_policy, policy_to_json, render_ruleset
from node.network import nft_ruleset
from node.registration import Registration

_missing = [t for t in ("ip", "nft", "dnsmasq", "ping") if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing) or not Path("/proc/sys/net/bridge").exists(),
    reason="NODE FIREWALL TEST SKIPPED: needs root, ip/nft/dnsmasq/ping and bridge netfilter "
           f"(euid {os.geteuid()}, missing: {', '.join(_missing) or 'none'}, "
           f"/proc/sys/net/bridge {'present' if Path('/proc/sys/net/bridge').exists() else 'absent'})")


def rule(protocol, from_port=None, to_port=None, cidrs=(), groups=()):
    return {"protocol": protocol, "from_port": from_port, "to_port": to_port, "cidrs": list(cidrs),
            "groups": list(groups)}


ALL_OUT = rule("-1", cidrs=["0.0.0.0/0"])


# pure: the document ------------------------------------------------------------------------

def test_policy_document_checks():
    good = {"version": 1, "instances": {"i-1": {"private_ip": "10.0.0.5", "groups": ["sg-a"], "public_ip": None}},
            "groups": {"sg-a": {"ingress": [rule("tcp", 22, 22, ["0.0.0.0/0"]), rule("6", 80, 81),
                                            rule("icmp", -1, -1, groups=["sg-a"]), rule("-1", groups=["sg-a"]),
                                            rule(47, cidrs=["10.1.2.3/8"])],
                                "egress": [ALL_OUT]}},
            "members": {"sg-a": ["10.0.0.5"]}}
    p = parse_policy(good)
    ing = p.groups["sg-a"].ingress
    assert [r.protocol for r in ing] == ["tcp", "tcp", "icmp", "all", "47"]
    assert (ing[2].from_port, ing[2].to_port) == (None, None)
    assert ing[4].cidrs == ("10.0.0.0/8",)  # host bits dropped, as EC2 normalises
    assert parse_policy(policy_to_json(p)) == p
    bad = [
        ([], "JSON object"),
        ({**good, "version": "1"}, "version"),
        ({**good, "version": True}, "version"),
        ({**good, "instances": {"x-1": {}}}, "instance id"),
        ({**good, "instances": {"i-1": {"private_ip": "10.0.0.300"}}}, "IPv4"),
        ({**good, "instances": {"i-1": {"public_ip": "198.51.100.1"}}}, "no private_ip"),
        ({**good, "instances": {"i-1": {"private_ip": "10.0.0.5", "public_ip": "198.51.100.1"},
                                "i-2": {"private_ip": "10.0.0.6", "public_ip": "198.51.100.1"}}}, "both"),
        ({**good, "groups": {"sg-a": {"ingress": [rule("tcp", 90, 80)]}}}, "above"),
        ({**good, "groups": {"sg-a": {"ingress": [rule("tcp", 0, 70000)]}}}, "to_port"),
        ({**good, "groups": {"sg-a": {"ingress": [rule("sctp")]}}}, "protocol"),
        ({**good, "groups": {"sg-a": {"ingress": [rule("tcp", cidrs=["10.0.0.0/33"])]}}}, "CIDR"),
        ({**good, "groups": {"sg-a": {"ingress": [rule("tcp", groups=['sg"; drop'])]}}}, "valid id"),
        ({**good, "members": {"sg-a": ["nope"]}}, "IPv4"),
    ]
    for doc, why in bad:
        with pytest.raises(BadRequest, match=why):
            parse_policy(doc)


# pure: the ruleset --------------------------------------------------------------------------

PORTS = [InstancePort("i-a", "tapa", "d0:0d:00:00:00:0a", "10.9.0.2"),
         InstancePort("i-b", "tapb", "d0:0d:00:00:00:0b", "10.9.0.3"),
         InstancePort("i-new", "tapnew", "d0:0d:00:00:00:0c", "10.9.0.4")]


def render(doc):
    return render_ruleset(parse_policy(doc) if doc is not None else None, PORTS, "br0", "10.9.0.0/24",
                          "10.9.0.1", 8776)


def chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  chain {name} {{")
    end = lines.index("  }", start)
    return [line.strip() for line in lines[start + 1:end] if not line.strip().startswith("#")]


def test_ruleset_without_a_policy_is_the_nat_table_alone():
    text = render(None)
    assert text == "table bridge eucalypt_br0 {}\ndelete table bridge eucalypt_br0\n" + \
        nft_ruleset("br0", "10.9.0.0/24", "10.9.0.1", 8776)


def test_ruleset_rules_per_instance_and_elastic_ips():
    doc = {"version": 7,
           "instances": {"i-a": {"private_ip": "10.9.0.2", "groups": ["sg-a"], "public_ip": "198.51.100.7"},
                         "i-b": {"private_ip": "10.9.0.3", "groups": ["sg-a", "sg-b"], "public_ip": None},
                         "i-elsewhere": {"private_ip": "10.9.0.9", "groups": ["sg-a"]}},
           "groups": {"sg-a": {"ingress": [rule("tcp", 8001, 8001, groups=["sg-a"]),
                                           rule("tcp", 8000, 8100, cidrs=["0.0.0.0/0"]),
                                           rule("udp", groups=["sg-empty"])],
                               "egress": [ALL_OUT]},
                      "sg-b": {"ingress": [rule("icmp", 8, -1, cidrs=["10.0.0.0/8", "10.9.0.0/24"]),
                                           rule("icmp", 3, 4, cidrs=["10.9.0.0/24"]), rule("47", groups=["sg-a"])],
                               "egress": [rule("tcp", 22, 22, groups=["sg-a"])]}},
           "members": {"sg-a": ["10.9.0.2", "10.9.0.3", "10.7.0.1"], "sg-empty": []}}
    text = render(doc)
    assert text.startswith("table ip eucalypt_br0 {}\ndelete table ip eucalypt_br0\n"
                           "table bridge eucalypt_br0 {}\ndelete table bridge eucalypt_br0\n")
    pre, post = chain(text, "prerouting"), chain(text, "postrouting")
    assert 'iifname != "br0" ip daddr 198.51.100.7 dnat to 10.9.0.2' in pre
    assert post == ["type nat hook postrouting priority srcnat; policy accept;",
                    'ip saddr 10.9.0.2 oifname != "br0" snat to 198.51.100.7',  # before the masquerade
                    'ip saddr 10.9.0.0/24 oifname != "br0" masquerade']
    assert chain(text, "ingress_i_a") == [
        "ip saddr { 10.7.0.1, 10.9.0.2/31 } meta l4proto tcp th dport 8001 accept",
        "meta l4proto tcp th dport 8000-8100 accept",      # 0.0.0.0/0: no address match
        "drop"]                                            # the empty source group matches nothing
    # i-b: both groups' rules, each once; sg-b's egress after sg-a's
    assert chain(text, "ingress_i_b")[2:] == [
        "ip saddr { 10.0.0.0/8 } meta l4proto icmp icmp type 8 accept",
        "ip saddr { 10.9.0.0/24 } meta l4proto icmp icmp type 3 icmp code 4 accept",
        "ip saddr { 10.7.0.1, 10.9.0.2/31 } meta l4proto 47 accept", "drop"]
    assert chain(text, "egress_i_b") == ["return", "ip daddr { 10.7.0.1, 10.9.0.2/31 } meta l4proto tcp th dport 22 return",
                                         "drop"]
    # an instance the policy does not name yet: nothing allowed; one on another node: no chains
    assert chain(text, "ingress_i_new") == ["drop"] and chain(text, "egress_i_new") == ["drop"]
    assert "i_elsewhere" not in text and "10.9.0.9" not in text
    assert chain(text, "forward")[1:] == ["ct state established,related accept", 'iifname "br0" jump from_instance',
                                          'oifname "br0" jump to_instance']
    assert chain(text, "input")[1:5] == ['iifname != "br0" accept', "ct state established,related accept",
                                         "udp sport 68 udp dport 67 accept", "ip daddr 10.9.0.1 tcp dport 8776 accept"]
    assert chain(text, "from_instance") == [
        "ip saddr vmap { 10.9.0.2 : goto egress_i_a, 10.9.0.3 : goto egress_i_b, 10.9.0.4 : goto egress_i_new }",
        "drop"]
    # anti-spoofing by tap
    assert chain(text, "from_i_a") == ["ether saddr != d0:0d:00:00:00:0a drop",
                                       "ether type arp arp saddr ip { 10.9.0.2, 0.0.0.0 } return",
                                       "ether type ip ip saddr 10.9.0.2 return",
                                       "ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 return", "drop"]
    assert chain(text, "to_i_a") == ["ether type ip ip daddr != { 10.9.0.2, 255.255.255.255, 10.9.0.255 } drop"]
    assert 'iifname vmap { "tapa" : jump from_i_a, "tapb" : jump from_i_b, "tapnew" : jump from_i_new }' in text
    # a re-push without the elastic IP removes its NAT
    doc["instances"]["i-a"]["public_ip"] = None
    assert "198.51.100.7" not in render(doc)


# the API, in-process (nothing enforced: no network managed) ------------------------------------

def test_policy_api_versions_store_and_heartbeat(tmp_path, hypervisor):
    doc = {"version": 5, "instances": {"i-a": {"private_ip": "10.9.0.2", "groups": ["sg-a"]}},
           "groups": {"sg-a": {"ingress": [], "egress": [ALL_OUT]}}, "members": {}}

    async def main():
        config = node_config(tmp_path / "node", "http://127.0.0.1:9", "bucket")
        node = await start_node(config, hypervisor)
        try:
            assert (await node_health(node.client))["policy_version"] == 0
            assert await node.client.network_policy(doc) == {"version": 5, "enforced": False}
            assert await node.client.network_policy(doc) == {"version": 5, "enforced": False}  # repeated: fine
            with pytest.raises(NodeApiError) as exc:
                await node.client.network_policy({**doc, "version": 4})
            assert exc.value.status == 409 and "older" in exc.value.message
            with pytest.raises(NodeApiError) as exc:
                await node.client.network_policy({**doc, "version": 6, "groups": {"sg-a": {"ingress": "x"}}})
            assert exc.value.status == 400 and "groups.sg-a.ingress" in exc.value.message
            unsigned = await node.client._session.put(node.client.url + "/node/v1/network-policy", json=doc)
            assert unsigned.status == 401
            assert (await node_health(node.client))["policy_version"] == 5
        finally:
            await node.stop()
        node = await start_node(config, hypervisor)  # a restart: the version comes back from LMDB
        try:
            assert (await node_health(node.client))["policy_version"] == 5
            body = await Registration(node.agent, "http://127.0.0.1:9", node.server.url, interval=5).body()
            assert body["policy_version"] == 5
            with pytest.raises(NodeApiError) as exc:
                await node.client.network_policy({**doc, "version": 1})
            assert exc.value.status == 409
        finally:
            await node.stop()

    asyncio.run(main())


# for real, in namespaces ---------------------------------------------------------------------

SUBNET, GATEWAY = "10.214.0.0/24", "10.214.0.1"
GUESTS = {"A": ("i-fw0000a1", "10.214.0.11"), "B": ("i-fw0000b2", "10.214.0.12"), "C": ("i-fw0000c3", "10.214.0.13")}
PORTS_PROBED = (8001, 8002, 8003)
UPLINK_NODE, UPLINK_OUTSIDE, UPLINK_NET = "198.18.0.1", "198.18.0.2", "198.18.0.0/30"
PUBLIC_RANGE, PUBLIC_IP = "198.51.100.0/24", "198.51.100.7"
OUTSIDE_PORT = 9000


class Cloud:
    """The namespaces of one test: node, guests A B C, outside."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.node_ns, self.outside_ns = f"eut-{tag}", f"euo-{tag}"
        self.guest_ns = {g: f"eug{g.lower()}-{tag}" for g in GUESTS}
        self.bridge = f"eubr{tag}"
        self.listeners: list[subprocess.Popen] = []

    def all_ns(self) -> list[str]:
        return [self.node_ns, self.outside_ns, *self.guest_ns.values()]

    def matrix(self) -> set[tuple[str, str, int]]:
        """(source, destination, port) of every TCP connection that was answered, checking
        that the listener saw the source's own private address (no NAT inside)."""
        reached = set()
        targets = {src: {f"{ip}:{port}": (dst, port) for dst, (_, ip) in GUESTS.items() if dst != src
                         for port in PORTS_PROBED} for src in GUESTS}
        answers = probe_many({self.guest_ns[src]: list(t) for src, t in targets.items()})
        for src, (_, src_ip) in GUESTS.items():
            for target, answer in answers[self.guest_ns[src]].items():
                if answer is not None:
                    dst, port = targets[src][target]
                    assert answer == f"{dst}:{port}:{src_ip}", (src, target, answer)
                    reached.add((src, dst, port))
        return reached


@pytest.fixture
def cloud():
    c = Cloud(secrets.token_hex(3))
    for ns in c.all_ns():
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        yield c
    finally:
        for p in c.listeners:
            p.kill()
            p.wait()
        for ns in c.all_ns():
            delete_namespace(ns)


def listen(c: Cloud, ns: str, name: str, ports) -> None:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN, name, *map(str, ports)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    c.listeners.append(p)
    assert p.stdout.readline().strip() == b"ready"


def policy(version: int, groups: dict, eip: str | None = None) -> dict:
    members = {"sg-a": [GUESTS["A"][1], GUESTS["B"][1]], "sg-b": [GUESTS["C"][1]]}
    instances = {iid: {"private_ip": ip, "groups": ["sg-a"] if g in "AB" else ["sg-b"],
                       "public_ip": PUBLIC_IP if g == eip else None} for g, (iid, ip) in GUESTS.items()}
    return {"version": version, "instances": instances, "groups": groups, "members": members}


V1_GROUPS = {"sg-a": {"ingress": [rule("tcp", 8001, 8001, groups=["sg-a"]), rule("tcp", 8002, 8002, ["0.0.0.0/0"])],
                      "egress": [ALL_OUT]},
             "sg-b": {"ingress": [rule("tcp", 8003, 8003, groups=["sg-a"])],
                      "egress": [rule("tcp", 8001, 8002, groups=["sg-a"])]}}
V1_MATRIX = {("A", "B", 8001), ("A", "B", 8002), ("B", "A", 8001), ("B", "A", 8002),
             ("A", "C", 8003), ("B", "C", 8003),   # replies pass C's narrow egress: conntrack
             ("C", "A", 8002), ("C", "B", 8002)}   # 8001 is sg-a's own; 8003 not open on A/B
V2_GROUPS = {"sg-a": {"ingress": [rule("tcp", 8001, 8001, groups=["sg-a"]),
                                  rule("tcp", 8003, 8003, [GUESTS["C"][1] + "/32"]),
                                  rule("tcp", 8002, 8002, [UPLINK_NET])],
                      "egress": [ALL_OUT]},
             "sg-b": {"ingress": [rule("tcp", 8003, 8003, groups=["sg-a"]), rule("icmp", 8, -1, groups=["sg-a"])],
                      "egress": [ALL_OUT]}}
V2_MATRIX = {("A", "B", 8001), ("B", "A", 8001), ("A", "C", 8003), ("B", "C", 8003),
             ("C", "A", 8003), ("C", "B", 8003)}


@needs_root
def test_groups_and_elastic_ips_enforced_in_namespaces(tmp_path, cloud, ic_walrus, alice_s3, bundle_bucket,
                                                        system_endpoint, system_bucket, cloud_key, alice_cert):
    c = cloud
    asyncio.run(prepare(tmp_path, mixed_image(tmp_path / "f.img", 1, "fw"), "emi-fw000001", alice_s3=alice_s3,
                        bundle_bucket=bundle_bucket, system_endpoint=system_endpoint, system_bucket=system_bucket,
                        cloud_key=cloud_key, alice_cert=alice_cert))
    data = tmp_path / "node"
    warm_cache(tmp_path, ic_walrus.url, system_bucket, "emi-fw000001", data)

    args = node_process_args(tmp_path, ic_walrus.url, system_bucket, "--bridge", c.bridge, "--subnet", SUBNET)
    node = NetnsNode(c.node_ns, data, args)

    def api(method, path, body=None, *, status=200):
        return node_api(c.node_ns, node.url, method, path, body, status=status)

    def launch_all():
        records = {}
        for g, (iid, ip) in GUESTS.items():
            records[g] = api("POST", "/node/v1/instances", {"instance_id": iid, "image_id": "emi-fw000001",
                                                            "vcpus": 1, "memory_mib": 64, "private_ip": ip})["instance"]
            assert records[g]["state"] == "running"
        return records

    def push(doc):
        assert api("PUT", "/node/v1/network-policy", doc) == {"version": doc["version"], "enforced": True}

    def from_outside(port=8002):
        return probe(c.outside_ns, [f"{PUBLIC_IP}:{port}"])[f"{PUBLIC_IP}:{port}"]

    def seen_by_outside(g):
        return probe(c.guest_ns[g], [f"{UPLINK_OUTSIDE}:{OUTSIDE_PORT}"])[f"{UPLINK_OUTSIDE}:{OUTSIDE_PORT}"]

    def ping(src, dst):
        return subprocess.run(["ip", "netns", "exec", c.guest_ns[src], "ping", "-c", "1", "-W", "1",
                               GUESTS[dst][1]], capture_output=True, timeout=10).returncode == 0

    try:
        records = launch_all()
        # the guests: a veth per instance, its node end named as the instance's tap
        for g, rec in records.items():
            ns, ip = c.guest_ns[g], GUESTS[g][1]
            sh("ip", "-n", c.node_ns, "link", "add", rec["tap"], "type", "veth", "peer", "name", f"g{g}{c.tag}")
            sh("ip", "-n", c.node_ns, "link", "set", f"g{g}{c.tag}", "netns", ns)
            sh("ip", "-n", ns, "link", "set", f"g{g}{c.tag}", "name", "eth0")
            sh("ip", "-n", c.node_ns, "link", "set", rec["tap"], "master", c.bridge, "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", rec["mac"], "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
            listen(c, ns, g, PORTS_PROBED)
        # the outside: an uplink veth, the public range routed via the node
        sh("ip", "-n", c.node_ns, "link", "add", "uplink", "type", "veth", "peer", "name", f"o{c.tag}")
        sh("ip", "-n", c.node_ns, "link", "set", f"o{c.tag}", "netns", c.outside_ns)
        sh("ip", "-n", c.node_ns, "addr", "add", f"{UPLINK_NODE}/30", "dev", "uplink")
        sh("ip", "-n", c.node_ns, "link", "set", "uplink", "up")
        sh("ip", "-n", c.outside_ns, "addr", "add", f"{UPLINK_OUTSIDE}/30", "dev", f"o{c.tag}")
        sh("ip", "-n", c.outside_ns, "link", "set", f"o{c.tag}", "up")
        sh("ip", "-n", c.outside_ns, "route", "add", PUBLIC_RANGE, "via", UPLINK_NODE)
        listen(c, c.outside_ns, "outside", [OUTSIDE_PORT])

        # 0. No policy yet: nothing filtered (as before #8).
        full = {(s, d, p) for s in GUESTS for d in GUESTS if s != d for p in PORTS_PROBED}
        assert c.matrix() == full

        # 1. Policy 1: exactly what its rules allow; DHCP and metadata always (C's egress is narrow).
        push(policy(1, V1_GROUPS))
        assert c.matrix() == V1_MATRIX
        assert guest_get(c.guest_ns["C"], "/latest/meta-data/instance-id", GUESTS["C"][1]) == (200, GUESTS["C"][0])
        offer = json.loads(ns_python(c.guest_ns["C"], DHCP_DISCOVER, "eth0", records["C"]["mac"]))
        assert offer["yiaddr"] == GUESTS["C"][1] and offer["router"] == GATEWAY
        assert not ping("A", "C")
        assert from_outside() is None  # no elastic IP: the public address leads nowhere

        # 2. Rules change; a stale push is refused and changes nothing.
        push(policy(2, V2_GROUPS))
        assert "older" in api("PUT", "/node/v1/network-policy", policy(1, V1_GROUPS), status=409)
        assert c.matrix() == V2_MATRIX
        assert ping("A", "C") and not ping("C", "A")
        bad = api("PUT", "/node/v1/network-policy", {**policy(3, V2_GROUPS), "members": {"sg-a": ["x"]}}, status=400)
        assert "IPv4" in bad

        # 3. An elastic IP on A: reached from outside on it, and A's own traffic leaves with it.
        push(policy(3, V2_GROUPS, eip="A"))
        assert from_outside() == f"A:8002:{UPLINK_OUTSIDE}"
        assert from_outside(8001) is None  # A's groups let the outside in on 8002 only
        assert seen_by_outside("A") == f"outside:{OUTSIDE_PORT}:{PUBLIC_IP}"
        assert seen_by_outside("B") == f"outside:{OUTSIDE_PORT}:{UPLINK_NODE}"  # masqueraded as the node

        # 4. An agent restart: policy 3 comes back from LMDB with no push. test:///default
        # lost the domains with the process, so the instances are launched again under the
        # same ids (the same taps and MACs the guests' veths carry).
        assert node.stop() == 0
        node = NetnsNode(c.node_ns, data, args)
        health = json.loads(ns_python(c.node_ns, "import sys, urllib.request; print(urllib.request.urlopen("
                                      "sys.argv[1] + '/_eucalypt/health', timeout=10).read().decode())", node.url))
        assert health["policy_version"] == 3
        for g, (iid, _) in GUESTS.items():
            assert api("GET", f"/node/v1/instances/{iid}")["instance"]["state"] == "failed"
            api("DELETE", f"/node/v1/instances/{iid}")
        assert launch_all().keys() == GUESTS.keys()
        assert c.matrix() == V2_MATRIX
        assert from_outside() == f"A:8002:{UPLINK_OUTSIDE}"

        # 5. The elastic IP moves to B, then is released.
        push(policy(4, V2_GROUPS, eip="B"))
        assert from_outside() == f"B:8002:{UPLINK_OUTSIDE}"
        assert seen_by_outside("B") == f"outside:{OUTSIDE_PORT}:{PUBLIC_IP}"
        assert seen_by_outside("A") == f"outside:{OUTSIDE_PORT}:{UPLINK_NODE}"
        push(policy(5, V2_GROUPS))
        assert from_outside() is None
        assert c.matrix() == V2_MATRIX

        # 6. A terminated instance's rules go with it; stopping removes both tables.
        api("DELETE", f"/node/v1/instances/{GUESTS['C'][0]}")
        ruleset = in_ns(c.node_ns, "nft", "list", "ruleset")
        assert "i_fw0000c3" not in ruleset and "i_fw0000a1" in ruleset
        assert ("C", "A", 8003) not in c.matrix()
        assert node.stop() == 0
        assert in_ns(c.node_ns, "nft", "list", "tables").strip() == ""
    finally:
        node.stop()
