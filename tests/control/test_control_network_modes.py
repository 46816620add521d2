"""Control's side of the managed network modes and automatic public IPs (issue #8;
control/netmodes.py, control/public_ips.py): group and node indices, slices, gateways,
placement by what nodes can do, the launch body's and the policy's "network", segment
exhaustion, the CLI's checks. Control's real handlers and store, nodes as heartbeats (the
real nodes are driven by tests/node/test_node_managed.py and the e2e suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_control_policy import Cloud, cloud, heartbeat  # noqa: F401  (fixture)
from control import netmodes, policy
from control import nodes as nodes_mod
from control.errors import Ec2Error
from control.launcher import launch_body
from control.netmodes import NetworkPlan

MANAGED_NET = {"modes": ["flat", "managed", "managed-novlan"], "transports": ["vxlan"], "uplink": None}


class ManagedCloud(Cloud):
    """Cloud (test_control_policy) with a managed plan: zone-a 172.16/16, zone-b 172.17/16."""

    def __init__(self, root, mode="managed", *, vlans=(10, 4094), auto=False, nodes=True, max_nodes=16) -> None:
        self.plan = NetworkPlan.build(mode, ("zone-a", "zone-b"), vlans=vlans, max_nodes_per_zone=max_nodes)
        self._auto, self._nodes = auto, nodes
        super().__init__(root)

    def register(self, node_id, subnet, zone, *, tunnel_ip="192.0.2.", modes=None, **changes):
        if not self._nodes:
            return None
        if not getattr(self, "_configured", False):
            self.service.config.network = self.plan
            self.service.config.auto_public_ips = self._auto
            self._configured = True
        net = {"bridge": "eubr0", "subnet": subnet, "gateway": subnet.rsplit(".", 2)[0] + ".0.1", **MANAGED_NET,
               "tunnel_ip": tunnel_ip + node_id[-1] if tunnel_ip else None}
        if modes is not None:
            net["modes"] = modes
        hb = nodes_mod.parse_heartbeat(heartbeat(node_id, subnet, network=net, **changes))
        return self.store.write_sync(lambda txn: nodes_mod.record_heartbeat(txn, hb, zone, self.clock.now(),
                                                                            self.plan))

    def policy(self, node_id, version=None):
        with self.store.read() as txn:
            return policy.node_policy(txn, node_id, policy.current_version(txn) if version is None else version,
                                      plan=self.plan, region="eucalyptus")

    def record(self, instance_id):
        from control import instances as inst
        with self.store.read() as txn:
            return inst.find_instance(txn, instance_id)


@pytest.fixture
def managed(tmp_path):
    c = ManagedCloud(tmp_path)
    yield c
    c.close()


def test_plan_checks():
    plan = NetworkPlan.build("managed", ("a", "b"))
    assert plan.zone_networks == {"a": "172.16.0.0/16", "b": "172.17.0.0/16"}
    assert plan.max_index == 255 and plan.segment(1) == 11
    assert plan.group_net("b", 3, 2) == {"segment": 13, "subnet": "172.17.3.0/24", "gateway": "172.17.3.2",
                                        "peer_subnets": ["172.16.3.0/24"]}
    assert NetworkPlan.build("managed-novlan", ("a",)).segment(1) is None
    for kwargs, why in [({"zone_networks": {"a": "10.0.0.0/8", "b": "10.1.0.0/16"}}, "overlap"),
                        ({"zone_networks": {"c": "10.0.0.0/16"}}, "not one of the zones"),
                        ({"zone_networks": {"a": "8.8.0.0/16"}}, "private"),
                        ({"vlans": (20, 10)}, "vlans"), ({"group_prefix": 16}, "longer"),
                        ({"group_prefix": 29}, "no room"), ({"max_nodes_per_zone": 0}, "max-nodes")]:
        with pytest.raises(ValueError, match=why):
            NetworkPlan.build("managed", ("a", "b"), **kwargs)
    with pytest.raises(ValueError, match="network mode"):
        NetworkPlan.build("vlan", ("a",))


def test_cli_refuses_bad_network_settings(tmp_path):
    for args, why in [(["--network-mode", "managed", "--vlans", "ten"], "FIRST-LAST"),
                      (["--network-mode", "managed", "--zone-network", "eucalyptusa"], "ZONE=CIDR"),
                      (["--network-mode", "managed", "--zone-network", "eucalyptusa=172.16.0.0/33"], "zone-network"),
                      (["--network-mode", "managed", "--zone", "a", "--zone", "b", "--zone-network", "a=10.0.0.0/8",
                        "--zone-network", "b=10.9.0.0/16"], "overlap"),
                      (["--auto-public-ips"], "needs a --public-ips pool")]:
        result = subprocess.run([sys.executable, "-m", "eucalypt.cli", "control", "--port", "0",
                                 "--data-dir", str(tmp_path / "c"), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and why in result.stderr, (args, result.stderr)


def test_indices_slices_gateways_and_launch_bodies(managed):
    c = managed
    web = c.call(c.alice, "CreateSecurityGroup", GroupName="web", GroupDescription="w")["groupId"]
    a1 = c.run(c.alice, "zone-a", "web")[0]
    b1 = c.run(c.alice, "zone-b", "web")[0]
    d1 = c.run(c.alice, "zone-a")[0]  # the default group: the next index
    with c.store.read() as txn:
        k_web, k_default = netmodes.group_index(txn, web), netmodes.group_index(txn, c.group_id(c.alice, "default"))
        assert netmodes.node_index(txn, c.NODE_A, "zone-a") == 1 and netmodes.node_index(txn, c.NODE_B, "zone-b") == 1
    assert (k_web, k_default) == (1, 2)
    ra, rb, rd = c.record(a1), c.record(b1), c.record(d1)
    assert (ra["subnet"], ra["private_ip"]) == ("172.16.1.0/24", "172.16.1.17")  # after 16 node gateways
    assert (rb["subnet"], rb["private_ip"]) == ("172.17.1.0/24", "172.17.1.17")
    assert rd["private_ip"] == "172.16.2.17"
    body = launch_body(ra, "eucalyptus")
    assert body["private_ip"] == "172.16.1.17"
    assert body["network"] == {"mode": "managed", "segment": 11, "subnet": "172.16.1.0/24",
                               "gateway": "172.16.1.1", "peer_subnets": ["172.17.1.0/24"]}
    a2 = c.run(c.alice, "zone-a", "web")[0]
    assert c.record(a2)["private_ip"] == "172.16.1.18"


def test_policy_network_groups_peers_and_a_new_node(managed):
    c = managed
    web = c.call(c.alice, "CreateSecurityGroup", GroupName="web", GroupDescription="w")["groupId"]
    c.run(c.alice, "zone-a", "web")
    c.run(c.bob, "zone-b")
    doc = c.policy(c.NODE_A)
    bob_default = c.group_id(c.bob, "default")
    net = doc["network"]
    assert net["mode"] == "managed" and net["private_ranges"] == ["172.16.0.0/16", "172.17.0.0/16"]
    # every group with live instances cloud-wide, as node A (zone-a, index 1) sees it
    assert net["groups"] == {web: {"segment": 11, "subnet": "172.16.1.0/24", "gateway": "172.16.1.1",
                                   "peer_subnets": ["172.17.1.0/24"]},
                             bob_default: {"segment": 12, "subnet": "172.16.2.0/24", "gateway": "172.16.2.1",
                                           "peer_subnets": ["172.17.2.0/24"]}}
    assert net["peers"] == [{"tunnel_ip": "192.0.2.2", "same_zone": False}]
    assert c.policy(c.NODE_B)["network"]["groups"][web]["subnet"] == "172.17.1.0/24"
    # a second node in zone-a: index 2, a new version, and everyone's peers change
    before = c.version()
    c.register("nc-00000000000000a3", "10.213.0.0/24", "zone-a")
    assert c.version() > before
    assert c.policy("nc-00000000000000a3")["network"]["groups"][web]["gateway"] == "172.16.1.2"
    assert {"tunnel_ip": "192.0.2.3", "same_zone": True} in c.policy(c.NODE_A)["network"]["peers"]
    same = c.version()
    c.register("nc-00000000000000a3", "10.213.0.0/24", "zone-a")  # a heartbeat like the last: no change
    assert c.version() == same
    assert "network" not in Cloud.policy(c, c.NODE_A)  # flat callers (no plan) see no network


def test_group_index_freed_on_delete_and_durable(tmp_path):
    from control import instances as inst
    from control.datadir import open_data_dir

    c = ManagedCloud(tmp_path)
    try:
        g1 = c.call(c.alice, "CreateSecurityGroup", GroupName="g1", GroupDescription="1")["groupId"]
        i1 = c.run(c.alice, "zone-a", "g1")[0]
        with pytest.raises(Ec2Error, match="DependencyViolation|in use"):
            c.call(c.alice, "DeleteSecurityGroup", GroupId=g1)
        c.store.write_sync(lambda txn: inst.set_state(txn, c.record(i1), "terminated", c.clock.now()))
        c.call(c.alice, "DeleteSecurityGroup", GroupId=g1)
        g2 = c.call(c.alice, "CreateSecurityGroup", GroupName="g2", GroupDescription="2")["groupId"]
        c.run(c.alice, "zone-a", "g2")
        with c.store.read() as txn:
            assert netmodes.group_index(txn, g1) is None and netmodes.group_index(txn, g2) == 1  # reused
    finally:
        c.close()
    data = open_data_dir(tmp_path / "control", now=c.clock.now())  # reopened: the indices are kept
    try:
        with data.store.read() as txn:
            assert netmodes.group_index(txn, g2) == 1 and netmodes.node_index(txn, c.NODE_A, "zone-a") == 1
    finally:
        data.close()


def test_placement_needs_the_mode_and_a_transport(tmp_path):
    c = ManagedCloud(tmp_path)
    try:
        c.register(c.NODE_A, "10.211.0.0/24", "zone-a", modes=["flat"])      # an older agent
        c.register(c.NODE_B, "10.212.0.0/24", "zone-b", tunnel_ip=None)       # no way to the others
        for zone in ("zone-a", "zone-b"):
            with pytest.raises(Ec2Error) as err:
                c.run(c.alice, zone)
            assert err.value.code == "InsufficientInstanceCapacity"
        c.register(c.NODE_B, "10.212.0.0/24", "zone-b")
        assert c.record(c.run(c.alice, "zone-b")[0])["node_id"] == c.NODE_B
    finally:
        c.close()


def test_segments_run_out_and_nothing_is_created(tmp_path):
    c = ManagedCloud(tmp_path, vlans=(10, 12))  # two segments: 11 and 12
    try:
        for name in ("g1", "g2", "g3"):
            c.call(c.alice, "CreateSecurityGroup", GroupName=name, GroupDescription=name)
        c.run(c.alice, "zone-a", "g1")
        c.run(c.alice, "zone-a", "g2")
        before = c.call(c.alice, "DescribeInstances")["reservationSet"]
        with pytest.raises(Ec2Error) as err:
            c.run(c.alice, "zone-a", "g3")
        assert err.value.code == "InsufficientInstanceCapacity" and "segment" in err.value.message
        assert c.call(c.alice, "DescribeInstances")["reservationSet"] == before
    finally:
        c.close()


def test_novlan_has_no_segment_ids(tmp_path):
    c = ManagedCloud(tmp_path, "managed-novlan")
    try:
        body = launch_body(c.record(c.run(c.alice, "zone-a")[0]), "eucalyptus")
        assert body["network"]["mode"] == "managed-novlan" and body["network"]["segment"] is None
        assert body["network"]["subnet"] == "172.16.1.0/24"
    finally:
        c.close()


def test_zone_full_refuses_the_node(tmp_path):
    c = ManagedCloud(tmp_path, max_nodes=1)
    try:
        with pytest.raises(netmodes.ZoneFull, match="zone-a"):
            c.register("nc-00000000000000a3", "10.213.0.0/24", "zone-a")
    finally:
        c.close()


def test_flat_launch_body_has_no_network(cloud):
    from control import instances as inst
    instance_id = cloud.run(cloud.alice, "zone-a")[0]
    with cloud.store.read() as txn:
        body = launch_body(inst.find_instance(txn, instance_id), "eucalyptus")
    assert body["network"] is None and body["private_ip"].startswith("10.211.0.")


def test_auto_public_ips(tmp_path):
    c = ManagedCloud(tmp_path, auto=True)  # the pool: 198.51.100.10-13
    try:
        i1, i2 = c.run(c.alice, "zone-a", count=2)
        assert (c.record(i1)["public_ip"], c.record(i2)["public_ip"]) == ("198.51.100.10", "198.51.100.11")
        assert launch_body(c.record(i1), "eucalyptus")["metadata"]["public-ipv4"] == "198.51.100.10"
        assert c.policy(c.NODE_A)["instances"][i1]["public_ip"] == "198.51.100.10"
        assert c.call(c.alice, "DescribeAddresses")["addressesSet"] == []  # not the user's allocations
        # an elastic IP takes the automatic one's place; disassociated, a fresh automatic one
        eip = c.call(c.alice, "AllocateAddress")["publicIp"]
        assert eip == "198.51.100.12"
        c.call(c.alice, "AssociateAddress", InstanceId=i1, PublicIp=eip)
        assert c.record(i1)["public_ip"] == eip
        c.call(c.alice, "DisassociateAddress", PublicIp=eip)
        assert c.record(i1)["public_ip"] == "198.51.100.10"  # back from the pool
        # the pool runs dry: the instance runs without one
        c.call(c.alice, "AllocateAddress")                    # .13
        (i3,) = c.run(c.alice, "zone-a")
        assert c.record(i3)["public_ip"] is None
        # terminated: its address goes back to the pool
        from control import instances as inst
        c.store.write_sync(lambda txn: inst.set_state(txn, c.record(i2), "terminated", c.clock.now()))
        (i4,) = c.run(c.alice, "zone-a")
        assert c.record(i4)["public_ip"] == "198.51.100.11"
    finally:
        c.close()


def test_a_full_slice_refuses_the_launch(tmp_path):
    c = ManagedCloud(tmp_path)
    try:
        c.plan = NetworkPlan.build("managed", ("zone-a", "zone-b"), group_prefix=27, max_nodes_per_zone=16)
        c.service.config.network = c.plan  # a /27: slice+17 to slice+30 for instances, 14 of them
        ids = c.run(c.alice, "zone-a", count=14)
        assert c.record(ids[-1])["private_ip"] == "172.16.0.62"
        with pytest.raises(Ec2Error) as err:
            c.run(c.alice, "zone-a")
        assert err.value.code == "InsufficientFreeAddressesInSubnet"
    finally:
        c.close()
