"""Network policies (#8, control side): the document each node gets (control/policy.py),
computed from state written through the real EC2 handlers on a real ControlStore (LMDB
in a temp dir), the durable counter, and the pusher (control/policy_push.py) against a
recording stand-in for a node's PUT /node/v1/network-policy (unit tests of the pusher:
coalescing, retries, heartbeat re-pushes); the end-to-end path with a real
`eucalypt node` is at the end."""

from __future__ import annotations

import asyncio
import time

import pytest

from control import nodes as nodes_mod
from control import policy
from control.api.context import Context
from control.api.dispatch import handler_for
from control.api.params import Params
from control.datadir import open_data_dir
from control.errors import Ec2Error
from control.identity import create_account, create_user, identity_for_key
from control.images import put_image
from control.metrics import ControlMetrics
from control.server import ControlConfig, ControlService
from eucalypt.clock import FakeClock

ALL_OUT = {"protocol": "-1", "from_port": None, "to_port": None, "cidrs": ["0.0.0.0/0"], "groups": []}


def heartbeat(node_id: str, subnet: str, **changes) -> dict:
    net = subnet.rsplit(".", 2)[0]
    doc = {"protocol": 1, "node_id": node_id, "url": "http://127.0.0.1:9", "cluster": None, "started": 1.0,
           "resources": {"cores": {"total": 16}, "memory_mib": {"total": 8192}, "disk_bytes": {"total": 200 << 30}},
           "images": [], "instances": [],
           "network": {"bridge": "eubr0", "subnet": subnet, "gateway": f"{net}.0.1"}}
    doc.update(changes)
    return doc


class Cloud:
    """control's state and handlers, no sockets: two zones with one node each."""

    NODE_A, NODE_B = "nc-00000000000000a1", "nc-00000000000000b2"

    def __init__(self, root) -> None:
        self.clock = FakeClock()
        self.data = open_data_dir(root / "control", now=self.clock.now())
        config = ControlConfig(data_dir=root / "control", zones=("zone-a", "zone-b"),
                               public_ips=("198.51.100.10-198.51.100.13",))
        self.service = ControlService(self.data, config, ControlMetrics(), self.clock)
        self.store = self.data.store
        self.register(self.NODE_A, "10.211.0.0/24", "zone-a")
        self.register(self.NODE_B, "10.212.0.0/24", "zone-b")
        self.alice, self.bob = self.user("acme", "alice"), self.user("globex", "bob")
        self.image = "emi-0000000a"
        self.store.write_sync(lambda txn: put_image(txn, {
            "image_id": self.image, "owner": self.alice.account.id, "kind": "machine", "state": "available",
            "state_reason": None, "location": "b/k.manifest.xml", "name": "img", "description": "",
            "architecture": "x86_64", "kernel_id": None, "ramdisk_id": None, "root_device_name": "/dev/vda",
            "virtualization_type": "hvm", "public": True, "launch_permissions": [], "created": 0}))

    def register(self, node_id: str, subnet: str, zone: str, **changes) -> dict:
        hb = nodes_mod.parse_heartbeat(heartbeat(node_id, subnet, **changes))
        return self.store.write_sync(lambda txn: nodes_mod.record_heartbeat(txn, hb, zone, self.clock.now()))

    def user(self, account: str, name: str):
        def make(txn):
            acct = create_account(txn, account, now=self.clock.now())
            _, key = create_user(txn, acct.id, name, now=self.clock.now())
            return key.access_key
        akid = self.store.write_sync(make)
        with self.store.read() as txn:
            return identity_for_key(txn, akid)

    def call(self, who, action: str, **params) -> dict:
        flat = {k: str(v) for k, v in params.items()}
        ctx = Context(action, Params(flat), who, "req-1", self.service)
        return asyncio.run(handler_for(action)(ctx))

    def run(self, who, zone: str, *groups: str, count: int = 1) -> list[str]:
        params = {"ImageId": self.image, "MinCount": count, "MaxCount": count, "Placement.AvailabilityZone": zone}
        params.update({f"SecurityGroup.{i}": g for i, g in enumerate(groups, start=1)})
        return [i["instanceId"] for i in self.call(who, "RunInstances", **params)["instancesSet"]]

    def ip(self, who, instance_id: str) -> str:
        (res,) = self.call(who, "DescribeInstances", **{"InstanceId.1": instance_id})["reservationSet"]
        return res["instancesSet"][0]["privateIpAddress"]

    def group_id(self, who, name: str) -> str:
        groups = self.call(who, "DescribeSecurityGroups", **{"GroupName.1": name})["securityGroupInfo"]
        return groups[0]["groupId"]

    def policy(self, node_id: str, version: int | None = None) -> dict:
        with self.store.read() as txn:
            return policy.node_policy(txn, node_id, policy.current_version(txn) if version is None else version)

    def version(self) -> int:
        with self.store.read() as txn:
            return policy.current_version(txn)

    def close(self) -> None:
        self.data.close()


@pytest.fixture
def cloud(tmp_path):
    c = Cloud(tmp_path)
    yield c
    c.close()


def perm(i: int, proto: str, lo=None, hi=None, *, cidrs=(), groups=(), cidrs6=()) -> dict:
    out = {f"IpPermissions.{i}.IpProtocol": proto}
    if lo is not None:
        out[f"IpPermissions.{i}.FromPort"] = lo
    if hi is not None:
        out[f"IpPermissions.{i}.ToPort"] = hi
    for n, cidr in enumerate(cidrs, start=1):
        out[f"IpPermissions.{i}.IpRanges.{n}.CidrIp"] = cidr
    for n, cidr in enumerate(cidrs6, start=1):
        out[f"IpPermissions.{i}.Ipv6Ranges.{n}.CidrIpv6"] = cidr
    for n, group in enumerate(groups, start=1):
        for key, value in group.items():
            out[f"IpPermissions.{i}.Groups.{n}.{key}"] = value
    return out


# ---- the document ------------------------------------------------------------------------------

def test_empty_node_and_the_default_group(cloud):
    assert cloud.policy(Cloud.NODE_A, 7) == {"version": 7, "instances": {}, "groups": {}, "members": {}}
    (instance,) = cloud.run(cloud.alice, "zone-a")
    default = cloud.group_id(cloud.alice, "default")
    ip = cloud.ip(cloud.alice, instance)
    doc = cloud.policy(Cloud.NODE_A)
    assert doc["instances"] == {instance: {"private_ip": ip, "groups": [default], "public_ip": None}}
    # EC2's default group: all traffic from its own members in, everything out.
    assert doc["groups"] == {default: {
        "ingress": [{"protocol": "-1", "from_port": None, "to_port": None, "cidrs": [], "groups": [default]}],
        "egress": [ALL_OUT]}}
    assert doc["members"] == {default: [ip]}
    # The other node has nothing of it.
    assert cloud.policy(Cloud.NODE_B)["instances"] == {}


def test_rule_shapes_are_translated(cloud):
    a = cloud.alice
    web = cloud.call(a, "CreateSecurityGroup", GroupName="web", GroupDescription="web")["groupId"]
    admin = cloud.call(a, "CreateSecurityGroup", GroupName="admin", GroupDescription="admin")["groupId"]
    (instance,) = cloud.run(a, "zone-a", "web")
    assert cloud.policy(Cloud.NODE_A)["groups"][web] == {"ingress": [], "egress": [ALL_OUT]}  # a new group
    cloud.call(a, "AuthorizeSecurityGroupIngress", GroupId=web,
               **perm(1, "tcp", 80, 80, cidrs=["0.0.0.0/0", "10.0.0.0/8"]),
               **perm(2, "tcp", 22, 23, groups=[{"GroupId": admin}]),
               **perm(3, "udp", 53, 53, cidrs=["192.0.2.0/24"]),
               **perm(4, "icmp", 8, -1, cidrs=["0.0.0.0/0"]),
               **perm(5, "icmp", cidrs=["198.51.100.0/24"]),
               **perm(6, "-1", groups=[{"GroupName": "web"}]),
               **perm(7, "47", cidrs=["203.0.113.0/24"]),
               **perm(8, "6", 443, 443, cidrs6=["::/0"]),
               **perm(9, "17", 1000, 2000, cidrs=["192.0.2.0/24"], groups=[{"GroupId": admin}]))
    # The old flat form adds to an existing (protocol, ports) rule.
    cloud.call(a, "AuthorizeSecurityGroupIngress", GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80,
               CidrIp="172.16.0.0/12")
    doc = cloud.policy(Cloud.NODE_A)
    assert doc["instances"][instance]["groups"] == [web]
    assert doc["groups"][web]["ingress"] == [
        {"protocol": "tcp", "from_port": 80, "to_port": 80, "cidrs": ["0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12"],
         "groups": []},
        {"protocol": "tcp", "from_port": 22, "to_port": 23, "cidrs": [], "groups": [admin]},
        {"protocol": "udp", "from_port": 53, "to_port": 53, "cidrs": ["192.0.2.0/24"], "groups": []},
        {"protocol": "icmp", "from_port": 8, "to_port": -1, "cidrs": ["0.0.0.0/0"], "groups": []},
        {"protocol": "icmp", "from_port": -1, "to_port": -1, "cidrs": ["198.51.100.0/24"], "groups": []},
        {"protocol": "-1", "from_port": None, "to_port": None, "cidrs": [], "groups": [web]},
        {"protocol": "47", "from_port": None, "to_port": None, "cidrs": ["203.0.113.0/24"], "groups": []},
        # (tcp 443 from ::/0 only: nothing an IPv4 instance can match, so no rule)
        {"protocol": "udp", "from_port": 1000, "to_port": 2000, "cidrs": ["192.0.2.0/24"], "groups": [admin]},
    ]
    # members: every group a rule names; admin has no live instance (yet).
    assert doc["members"] == {admin: [], web: [cloud.ip(a, instance)]}
    assert list(doc["groups"]) == [web]  # only groups the node's instances use

    # Revoking takes one source off its rule, and the last source takes the rule.
    before = cloud.version()
    cloud.call(a, "RevokeSecurityGroupIngress", GroupId=web, **perm(1, "tcp", 80, 80, cidrs=["10.0.0.0/8"]))
    cloud.call(a, "RevokeSecurityGroupIngress", GroupId=web, **perm(1, "tcp", 22, 23, groups=[{"GroupId": admin}]))
    assert cloud.version() == before + 2
    ingress = cloud.policy(Cloud.NODE_A)["groups"][web]["ingress"]
    assert ingress[0]["cidrs"] == ["0.0.0.0/0", "172.16.0.0/12"]
    assert [r["from_port"] for r in ingress if r["protocol"] == "tcp"] == [80]


def test_egress_rules_as_stored(cloud):
    a = cloud.alice
    gid = cloud.call(a, "CreateSecurityGroup", GroupName="locked", GroupDescription="x")["groupId"]
    other = cloud.call(a, "CreateSecurityGroup", GroupName="other", GroupDescription="x")["groupId"]
    cloud.run(a, "zone-a", "locked")
    cloud.call(a, "RevokeSecurityGroupEgress", GroupId=gid, **perm(1, "-1", cidrs=["0.0.0.0/0"]))
    assert cloud.policy(Cloud.NODE_A)["groups"][gid]["egress"] == []
    cloud.call(a, "AuthorizeSecurityGroupEgress", GroupId=gid, **perm(1, "tcp", 443, 443, cidrs=["192.0.2.0/24"]),
               **perm(2, "udp", 53, 53, groups=[{"GroupId": other}]))
    doc = cloud.policy(Cloud.NODE_A)
    assert doc["groups"][gid]["egress"] == [
        {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidrs": ["192.0.2.0/24"], "groups": []},
        {"protocol": "udp", "from_port": 53, "to_port": 53, "cidrs": [], "groups": [other]}]
    assert doc["members"] == {other: []}  # named by an egress rule: listed too


def test_members_across_nodes_and_accounts(cloud):
    a, b = cloud.alice, cloud.bob
    web = cloud.call(a, "CreateSecurityGroup", GroupName="web", GroupDescription="web")["groupId"]
    db = cloud.call(b, "CreateSecurityGroup", GroupName="db", GroupDescription="db")["groupId"]
    web_a = cloud.run(a, "zone-a", "web", count=2)
    web_b = cloud.run(a, "zone-b", "web")
    (db_a,) = cloud.run(b, "zone-a", "db")
    # B's db lets in A's web servers, named as EC2-Classic does (owner + group name).
    cloud.call(b, "AuthorizeSecurityGroupIngress", GroupName="db",
               **perm(1, "tcp", 5432, 5432, groups=[{"UserId": a.account.id, "GroupName": "web"}]))
    web_ips = sorted((cloud.ip(a, i) for i in web_a + web_b), key=lambda ip: tuple(map(int, ip.split("."))))
    doc = cloud.policy(Cloud.NODE_A)
    assert set(doc["instances"]) == set(web_a) | {db_a}
    assert doc["groups"][db]["ingress"] == [{"protocol": "tcp", "from_port": 5432, "to_port": 5432, "cidrs": [],
                                            "groups": [web]}]
    assert doc["members"][web] == web_ips  # both nodes, cloud-wide
    assert any(ip.startswith("10.212.") for ip in doc["members"][web])
    # Node B only hosts a web server: it learns nothing of B's db group.
    doc_b = cloud.policy(Cloud.NODE_B)
    assert set(doc_b["instances"]) == set(web_b) and list(doc_b["groups"]) == [web]
    assert doc_b["members"] == {}   # web's rules name no group

    # A terminated web server leaves the members list and its node's document.
    cloud.call(a, "TerminateInstances", **{"InstanceId.1": web_b[0]})
    assert cloud.policy(Cloud.NODE_B)["instances"] == {}
    assert cloud.policy(Cloud.NODE_A)["members"][web] == sorted(cloud.ip(a, i) for i in web_a)


def test_only_pending_and_running_instances_count(cloud):
    a = cloud.alice
    ids = cloud.run(a, "zone-a", count=3)
    default = cloud.group_id(a, "default")

    def set_state(instance_id, state):
        from control import instances as inst

        def mutate(txn):
            record = inst.get_instance(txn, a.account.id, instance_id)
            inst.set_state(txn, record, state, cloud.clock.now())
        cloud.store.write_sync(mutate)

    before = cloud.version()
    set_state(ids[0], "running")      # pending -> running: no policy change
    assert cloud.version() == before
    set_state(ids[1], "shutting-down")
    assert cloud.version() == before + 1
    doc = cloud.policy(Cloud.NODE_A)
    assert set(doc["instances"]) == {ids[0], ids[2]}
    assert doc["members"][default] == sorted(cloud.ip(a, i) for i in (ids[0], ids[2]))


def test_elastic_ips_follow_associations(cloud):
    a = cloud.alice
    first, second = cloud.run(a, "zone-a"), cloud.run(a, "zone-b")
    alloc = cloud.call(a, "AllocateAddress")
    public = alloc["publicIp"]
    v0 = cloud.version()
    cloud.call(a, "AssociateAddress", InstanceId=first[0], PublicIp=public)
    assert cloud.version() > v0
    assert cloud.policy(Cloud.NODE_A)["instances"][first[0]]["public_ip"] == public
    # A standard address moves freely: its NAT moves from node A to node B.
    v1 = cloud.version()
    cloud.call(a, "AssociateAddress", InstanceId=second[0], PublicIp=public)
    assert cloud.version() > v1
    assert cloud.policy(Cloud.NODE_A)["instances"][first[0]]["public_ip"] is None
    assert cloud.policy(Cloud.NODE_B)["instances"][second[0]]["public_ip"] == public
    v2 = cloud.version()
    cloud.call(a, "DisassociateAddress", PublicIp=public)
    assert cloud.version() > v2
    assert cloud.policy(Cloud.NODE_B)["instances"][second[0]]["public_ip"] is None
    cloud.call(a, "AssociateAddress", InstanceId=second[0], AllocationId=alloc["allocationId"])
    v3 = cloud.version()
    cloud.call(a, "ReleaseAddress", PublicIp=public)
    assert cloud.version() > v3
    assert cloud.policy(Cloud.NODE_B)["instances"][second[0]]["public_ip"] is None


def test_counter_bumps_and_is_durable(cloud, tmp_path):
    a = cloud.alice
    v0 = cloud.version()
    cloud.call(a, "DescribeSecurityGroups")
    cloud.call(a, "CreateSecurityGroup", GroupName="idle", GroupDescription="x")  # used by nothing
    assert cloud.version() == v0
    (instance,) = cloud.run(a, "zone-a")
    v1 = cloud.version()
    assert v1 > v0
    with pytest.raises(Ec2Error):  # a refused change changes nothing, the counter included
        cloud.call(a, "AuthorizeSecurityGroupIngress", GroupName="idle", IpProtocol="tcp", FromPort=9, ToPort=1,
                   CidrIp="0.0.0.0/0")
    assert cloud.version() == v1
    cloud.call(a, "TerminateInstances", **{"InstanceId.1": instance})
    assert cloud.version() > v1
    final = cloud.version()
    cloud.close()
    again = open_data_dir(tmp_path / "control")
    try:
        with again.store.read() as txn:
            assert policy.current_version(txn) == final
        again.store.write_sync(lambda txn: policy.raise_above(txn, final + 40))
        with again.store.read() as txn:
            assert policy.current_version(txn) == final + 41
        assert again.store.write_sync(policy.ensure_started) == final + 41
    finally:
        again.close()
    cloud.data = open_data_dir(tmp_path / "control")  # for the fixture's close


def test_a_group_in_use_by_an_instance_cannot_be_deleted(cloud):
    a = cloud.alice
    cloud.call(a, "CreateSecurityGroup", GroupName="busy", GroupDescription="x")
    (instance,) = cloud.run(a, "zone-a", "busy")
    with pytest.raises(Ec2Error) as e:
        cloud.call(a, "DeleteSecurityGroup", GroupName="busy")
    assert e.value.code == "DependencyViolation"
    cloud.call(a, "TerminateInstances", **{"InstanceId.1": instance})   # never reached a node: terminated
    cloud.call(a, "DeleteSecurityGroup", GroupName="busy")


def test_heartbeat_policy_version():
    assert nodes_mod.parse_heartbeat(heartbeat("nc-0000000000000001", "10.1.0.0/24")).policy_version == 0
    assert nodes_mod.parse_heartbeat(heartbeat("nc-0000000000000001", "10.1.0.0/24",
                                               policy_version=12)).policy_version == 12
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(nodes_mod.HeartbeatRejected) as e:
            nodes_mod.parse_heartbeat(heartbeat("nc-0000000000000001", "10.1.0.0/24", policy_version=bad))
        assert e.value.status == 400 and "policy_version" in e.value.message


# ---- the pusher, against a recording stand-in for the node's endpoint ---------------------------

class PolicyEndpoint:
    """PUT /node/v1/network-policy as the protocol says (200 {"version"}, 409 for an older
    version), recording what arrives; ``fail`` holds statuses to answer first."""

    def __init__(self, delay: float = 0.0) -> None:
        self.docs: list[dict] = []
        self.fail: list[int] = []
        self.delay = delay
        self.applied = 0
        self.in_flight = self.most_in_flight = 0

    async def start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_put("/node/v1/network-policy", self._put)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def _put(self, request):
        from aiohttp import web

        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            doc = await request.json()
            await asyncio.sleep(self.delay)
            if self.fail:
                status = self.fail.pop(0)
                return web.json_response({"error": {"code": "Nope", "message": f"answer {status}"}}, status=status)
            if doc["version"] < self.applied:
                return web.json_response({"error": {"code": "Conflict", "message": "older"}}, status=409)
            self.docs.append(doc)
            self.applied = doc["version"]
            return web.json_response({"version": doc["version"]})
        finally:
            self.in_flight -= 1

    async def stop(self) -> None:
        await self.runner.cleanup()


async def acall(cloud, who, action: str, **params) -> dict:
    ctx = Context(action, Params({k: str(v) for k, v in params.items()}), who, "req-1", cloud.service)
    return await handler_for(action)(ctx)


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def with_pusher(cloud, body, *, delay: float = 0.0, fail=()):
    from control.policy_push import PolicyPusher

    async def main():
        node = PolicyEndpoint(delay)
        node.fail = list(fail)
        url = await node.start()
        cloud.register(Cloud.NODE_A, "10.211.0.0/24", "zone-a", url=url)
        cloud.store.write_sync(lambda txn: txn.delete("nodes", Cloud.NODE_B.encode()))
        pusher = PolicyPusher(cloud.store, cloud.data.service_secret, cloud.clock, interval=5.0, poll=0.05,
                              retry_min=0.05, retry_max=0.2)
        cloud.service.policy = pusher
        await pusher.start()
        try:
            await body(node, pusher)
        finally:
            cloud.service.policy = None
            await pusher.stop()
            await node.stop()
    asyncio.run(main())


def test_pusher_sends_each_change(cloud):
    async def body(node, pusher):
        await until(lambda: node.docs, what="the first push")
        assert node.docs[0] == {"version": cloud.version(), "instances": {}, "groups": {}, "members": {}}
        params = {"ImageId": cloud.image, "MinCount": 1, "MaxCount": 1, "Placement.AvailabilityZone": "zone-a"}
        (made,) = (await acall(cloud, cloud.alice, "RunInstances", **params))["instancesSet"]
        await until(lambda: made["instanceId"] in node.docs[-1]["instances"], what="the instance's policy")
        assert node.docs[-1]["version"] == cloud.version() == pusher.known(Cloud.NODE_A)
        await acall(cloud, cloud.alice, "AuthorizeSecurityGroupIngress", GroupName="default", IpProtocol="tcp",
                    FromPort=22, ToPort=22, CidrIp="192.0.2.0/24")
        await until(lambda: node.docs[-1]["version"] == cloud.version(), what="the rule's push")
        default = made["groupSet"][0]["groupId"]
        assert node.docs[-1]["groups"][default]["ingress"][-1] == {
            "protocol": "tcp", "from_port": 22, "to_port": 22, "cidrs": ["192.0.2.0/24"], "groups": []}
    with_pusher(cloud, body)


def test_pusher_coalesces_a_burst_one_push_in_flight(cloud):
    async def body(node, pusher):
        await until(lambda: node.docs, what="the first push")
        first = len(node.docs)
        await acall(cloud, cloud.alice, "CreateSecurityGroup", GroupName="burst", GroupDescription="x")
        await asyncio.gather(*(acall(cloud, cloud.alice, "AuthorizeSecurityGroupIngress", GroupName="default",
                                     IpProtocol="tcp", FromPort=1000 + n, ToPort=1000 + n, CidrIp="10.0.0.0/8")
                               for n in range(20)))
        final = cloud.version()
        await until(lambda: node.applied == final and not pusher._workers, what="the burst's last version")
        assert node.most_in_flight == 1
        assert len(node.docs) - first <= 3  # the one in flight, at most one between, the newest
    with_pusher(cloud, body, delay=0.2)


def test_pusher_retries_failures_and_repushes_an_old_heartbeat(cloud):
    async def body(node, pusher):
        await until(lambda: node.docs, what="a push after two failures")
        assert pusher.failures == 2 and node.docs[-1]["version"] == cloud.version()
        pushed = len(node.docs)
        # The node restarted without its policy (or a push was lost): its heartbeat says 0.
        pusher.node_reported(Cloud.NODE_A, 0)
        await until(lambda: len(node.docs) > pushed, what="the re-push")
        assert node.docs[-1]["version"] == cloud.version()
        # Up to date: a heartbeat with the current version pushes nothing.
        pusher.node_reported(Cloud.NODE_A, cloud.version())
        await asyncio.sleep(0.3)
        assert len(node.docs) == pushed + 1
    with_pusher(cloud, body, fail=(503, 500))


def test_pusher_skips_an_agent_without_the_endpoint_and_quiet_nodes(cloud):
    async def body(node, pusher):
        await until(lambda: pusher.failures == 1, what="the 404")
        cloud.store.write_sync(policy.bump)
        pusher.changed()
        await asyncio.sleep(0.3)
        assert node.docs == [] and pusher.failures == 1   # not asked again ...
        url = node_url(cloud)
        cloud.register(Cloud.NODE_A, "10.211.0.0/24", "zone-a", url=url, started=2.0)   # ... until it restarts
        pusher.node_reported(Cloud.NODE_A, 0)
        await until(lambda: node.docs, what="the push after the restart")
        # A node that went quiet is left to its next heartbeat.
        cloud.clock.advance(60)
        cloud.store.write_sync(policy.bump)
        pusher.changed()
        await asyncio.sleep(0.3)
        assert node.applied < cloud.version()
        cloud.register(Cloud.NODE_A, "10.211.0.0/24", "zone-a", url=url, started=2.0)
        pusher.node_reported(Cloud.NODE_A, node.applied)
        await until(lambda: node.applied == cloud.version(), what="the push after the heartbeat")
    with_pusher(cloud, body, fail=(404,))


def node_url(cloud) -> str:
    with cloud.store.read() as txn:
        return nodes_mod.get_node(txn, Cloud.NODE_A)["url"]


# ---- end to end: a real control, Walrus and two `eucalypt node`s (libvirt's test driver) ----------

def node_policy_copy(node) -> dict | None:
    """The policy a node keeps (its LMDB copy, tree network_policy, key current)."""
    import json

    import lmdb

    env = lmdb.open(str(node.data_dir / "db"), readonly=True, max_dbs=16)
    try:
        with env.begin() as txn:
            db = env.open_db(b"network_policy", txn=txn, create=False)
            raw = txn.get(b"current", db=db)
    except lmdb.NotFoundError:
        return None
    finally:
        env.close()
    return json.loads(raw) if raw is not None else None


def test_policies_reach_real_nodes_and_survive_restarts(tmp_path):
    from controltest import start_control
    from test_control_nodes import make_cloud, node_health, start_node, wait_for, wait_registered

    pool = "198.51.100.10-198.51.100.20"
    env = make_cloud(tmp_path, control_extra=["--public-ips", pool])
    cloud, ec2_a, ec2_b = env["cloud"], env["ec2_a"], env["ec2_b"]
    nodes = {}
    try:
        nodes["one"] = start_node(tmp_path, cloud, "node-1", cores=2, subnet="10.211.0.0/24")
        if "policy_version" not in node_health(nodes["one"]):
            pytest.skip("this node agent does not implement PUT /node/v1/network-policy yet")
        web = ec2_a.create_security_group(GroupName="web", Description="web")["GroupId"]
        db = ec2_a.create_security_group(GroupName="db", Description="db")["GroupId"]

        def run(group):
            made = ec2_a.run_instances(ImageId=env["image_id"], MinCount=1, MaxCount=1, SecurityGroups=[group])
            return made["Instances"][0]["InstanceId"]

        first = {"web": run("web"), "db": run("db")}          # node-1 is full now
        nodes["two"] = start_node(tmp_path, cloud, "node-2", cores=2, subnet="10.212.0.0/24")
        second = {"web": run("web"), "db": run("db")}
        found = {i["InstanceId"]: i for r in ec2_a.describe_instances()["Reservations"] for i in r["Instances"]}
        assert all(found[i]["PrivateIpAddress"].startswith("10.211.") for i in first.values())
        assert all(found[i]["PrivateIpAddress"].startswith("10.212.") for i in second.values())
        wait_for(lambda: {i["State"]["Name"] for r in ec2_a.describe_instances()["Reservations"]
                          for i in r["Instances"]} == {"running"}, what="four running instances")

        ec2_a.authorize_security_group_ingress(GroupId=db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}])
        web_ips = sorted(found[i]["PrivateIpAddress"] for i in (first["web"], second["web"]))

        def has_rule(node, instances):
            doc = node_policy_copy(node)
            if not doc or set(doc["instances"]) != set(instances) or db not in doc["groups"]:
                return None
            if {"protocol": "tcp", "from_port": 5432, "to_port": 5432, "cidrs": [], "groups": [web]} not in \
                    doc["groups"][db]["ingress"]:
                return None
            return doc

        doc_one = wait_for(lambda: has_rule(nodes["one"], first.values()), what="the rule on node-1")
        doc_two = wait_for(lambda: has_rule(nodes["two"], second.values()), what="the rule on node-2")
        for doc, mine in ((doc_one, first), (doc_two, second)):
            assert sorted(doc["members"][web]) == web_ips        # web servers on both nodes
            assert doc["instances"][mine["db"]]["groups"] == [db]
            assert doc["groups"][web]["egress"] == [ALL_OUT]
        # The node reports what it applied, in its health and to control in its heartbeats.
        wait_for(lambda: node_health(nodes["one"])["policy_version"] == doc_one["version"] or
                 node_policy_copy(nodes["one"])["version"] > doc_one["version"], what="node-1's version")

        # Elastic IP: the NAT goes where the association goes.
        public = ec2_a.allocate_address()["PublicIp"]

        def public_ip_of(node, instance_id):
            return ((node_policy_copy(node) or {}).get("instances", {}).get(instance_id) or {}).get("public_ip")

        ec2_a.associate_address(InstanceId=first["web"], PublicIp=public)
        wait_for(lambda: public_ip_of(nodes["one"], first["web"]) == public, what="the public IP on node-1")
        ec2_a.associate_address(InstanceId=second["web"], PublicIp=public)
        wait_for(lambda: public_ip_of(nodes["two"], second["web"]) == public and
                 public_ip_of(nodes["one"], first["web"]) is None, what="the public IP moved to node-2")
        ec2_a.disassociate_address(PublicIp=public)
        wait_for(lambda: public_ip_of(nodes["two"], second["web"]) is None, what="the public IP gone")
        version = max(node_policy_copy(nodes["one"])["version"], node_policy_copy(nodes["two"])["version"])

        # Restart control: the counter goes on from where it was; a node that missed a
        # change (it was down) reports its older version and gets the newer one.
        port = cloud.control.port
        cloud.control.stop()
        nodes["two"].stop()
        cloud.control = start_control(cloud.control_dir, port=port, extra=[
            "--walrus", cloud.walrus.url, "--heartbeat-interval", "0.5", "--public-ips", pool])
        ec2_a.authorize_security_group_ingress(GroupId=db, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 6432, "ToPort": 6432, "IpRanges": [{"CidrIp": "192.0.2.0/24"}]}])

        def version_with_6432(node):
            doc = node_policy_copy(node) or {}
            ingress = doc.get("groups", {}).get(db, {}).get("ingress", [])
            return doc["version"] if any(r["from_port"] == 6432 for r in ingress) else None

        after = wait_for(lambda: version_with_6432(nodes["one"]), what="the new rule on node-1 after the restart")
        assert after > version
        stale = node_policy_copy(nodes["two"])["version"]
        assert stale < after
        nodes["two"] = start_node(tmp_path, cloud, "node-2", cores=2, subnet="10.212.0.0/24")
        wait_registered(nodes["two"])
        wait_for(lambda: node_policy_copy(nodes["two"])["version"] >= after, what="node-2 brought up to date")
        assert ec2_b.describe_security_groups()["SecurityGroups"][0]["GroupName"] == "default"
    finally:
        for node in nodes.values():
            node.stop()
        cloud.stop()
