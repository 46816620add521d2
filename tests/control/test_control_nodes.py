"""The node registry of a real control process: the signed heartbeat endpoint (what it
accepts and refuses), cluster assignment, and a real `eucalypt node` (libvirt's test
driver) registering itself and showing up as capacity in DescribeAvailabilityZones
verbose, then going quiet (unreachable) and coming back.

The helpers here (a cloud with a registered image, node processes) are shared with
test_control_instances.py and test_control_addresses.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controltest import admin, create_user, ec2_client, register_image, start_cloud, user_environment
from walrustest import ServiceProcess, start_service, wait_for

from control import internal
from control.scheduler import NodeCapacity, how_many_fit, place

HEARTBEAT_PATH = "/_eucalypt/internal/nodes/heartbeat"
INTERVAL = 0.5  # control's --heartbeat-interval in these tests: unreachable after 1.5 s


# ---- shared helpers -------------------------------------------------------------------------

def image_file(path: Path, size: int, seed: int) -> Path:
    import random
    rng = random.Random(seed)
    path.write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))
    return path


def walrus_credentials(control_dir: Path, out: Path) -> Path:
    """The cloud administrator's keys as a node's --walrus-credentials file (the node reads
    the image cache in the system bucket, which the administrator owns)."""
    admin(control_dir, "credentials", "admin", "--account", "eucalyptus", "--out", str(out / "admin-creds"))
    text = (out / "admin-creds" / "eucarc").read_text()
    values = dict(re.findall(r"^export (AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY)=['\"]?([^'\"\n]*)", text, re.M))
    path = out / "walrus-creds.toml"
    path.write_text(f'access_key = "{values["AWS_ACCESS_KEY_ID"]}"\nsecret_key = "{values["AWS_SECRET_ACCESS_KEY"]}"\n')
    return path


def start_node(root: Path, cloud, name: str, *, cores: int = 16, memory_mib: int = 8192,
               subnet: str | None = "10.211.0.0/24", cluster: str | None = None,
               extra: list[str] | None = None, wait: bool = True) -> ServiceProcess:
    """A real `eucalypt node` on libvirt's test driver, heartbeating to the cloud's control;
    returns once control has registered it (with ``wait``)."""
    creds = root / "walrus-creds.toml"
    if not creds.exists():
        walrus_credentials(cloud.control_dir, root)
    args = ["--control", cloud.control.url, "--hypervisor", "test:///default", "--walrus", cloud.walrus.url,
            "--service-secret-file", str(cloud.control_dir / "service.secret"), "--walrus-credentials", str(creds),
            "--cores", str(cores), "--memory-mib", str(memory_mib), "--metadata-port", "0",
            *(["--subnet", subnet] if subnet else []), *(["--cluster", cluster] if cluster else []), *(extra or [])]
    node = start_service("node", root / name, args)
    if wait:
        wait_registered(node)
    return node


def node_health(node: ServiceProcess) -> dict:
    with urllib.request.urlopen(node.url.rstrip("/") + "/_eucalypt/health", timeout=5) as reply:
        return json.load(reply)


def wait_registered(node: ServiceProcess, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = node_health(node)
        registration = health.get("registration") or {}
        if registration.get("registered"):
            return registration
        if time.monotonic() > deadline:
            raise AssertionError(f"node did not register: {health}\n{node.log_path.read_text()[-3000:]}")
        time.sleep(0.1)




def vm_types(ec2, zone: str | None = None) -> dict[str, tuple[int, int]]:
    """DescribeAvailabilityZones verbose: instance type -> (free, max), for a zone (or the first)."""
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    out, current = {}, None
    for item in zones:
        name = item["ZoneName"]
        if not name.startswith("|- "):
            current = name
        elif name != "|- vm types" and (zone is None and current == zones[0]["ZoneName"] or current == zone):
            free, _, most = item["State"].split()[:3]
            out[name[3:]] = (int(free), int(most))
    return out


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def make_cloud(root: Path, *, control_extra: list[str] | None = None) -> dict:
    """control + Walrus, accounts A (acme/alice) and B (globex/bob), A's registered image."""
    cloud = start_cloud(root, control_extra=["--heartbeat-interval", str(INTERVAL), *(control_extra or [])])
    a = create_user(cloud.control_dir, "acme", "alice")
    b = create_user(cloud.control_dir, "globex", "bob")
    env_a = user_environment(cloud.control_dir, "acme", "alice", root / "creds-a")
    ec2_a, ec2_b = ec2_client(cloud.control.url, a), ec2_client(cloud.control.url, b)
    image_id = register_image(ec2_a, env_a, image_file(root / "root.img", 1 << 20, 7), root / "bundle",
                              "acme-images", name="tiny root")
    return {"cloud": cloud, "root": root, "a": a, "b": b, "env_a": env_a, "ec2_a": ec2_a, "ec2_b": ec2_b,
            "image_id": image_id}


# ---- the scheduler (pure) --------------------------------------------------------------------

def test_scheduler_prefers_cached_images_then_free_memory_and_never_overbooks():
    nodes = [NodeCapacity("nc-a", cores=4, memory_mib=1024, disk_gb=100),
             NodeCapacity("nc-b", cores=4, memory_mib=4096, disk_gb=100),
             NodeCapacity("nc-c", cores=2, memory_mib=512, disk_gb=100, images=frozenset({"emi-1", "eki-1"}))]
    # The node with the image first (until it is full), then the most free memory.
    assert place(nodes, 3, cores=1, memory_mib=256, disk_gb=5, images=("emi-1", "eki-1")) == \
        ["nc-c", "nc-c", "nc-b"]
    # Without the kernel in its cache nc-c is no better than the others.
    assert place(nodes, 1, cores=1, memory_mib=256, disk_gb=5, images=("emi-1", "eki-2")) == ["nc-b"]
    # Never more than fits: 4 + 4 + 2 cores.
    assert len(place(nodes, 50, cores=1, memory_mib=128, disk_gb=1)) == 10
    assert place(nodes, 1, cores=8, memory_mib=256, disk_gb=1) == []
    assert place(nodes, 2, cores=1, memory_mib=256, disk_gb=60) == ["nc-b", "nc-a"]  # disk: one per node
    assert how_many_fit(nodes[1], cores=1, memory_mib=1024, disk_gb=5) == 4
    assert how_many_fit(NodeCapacity("nc-x", cores=-1, memory_mib=0, disk_gb=0), cores=1, memory_mib=1,
                        disk_gb=1) == 0


# ---- the heartbeat endpoint on its own -------------------------------------------------------

def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url.rstrip("/") + HEARTBEAT_PATH, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _beat(url: str, secret: str, doc: dict, *, now: float | None = None) -> tuple[int, dict]:
    body = json.dumps(doc).encode()
    return _post(url, body, internal.signed_headers(secret, HEARTBEAT_PATH, body, now or time.time()))


def _doc(node_id: str, **changes) -> dict:
    doc = {"protocol": 1, "node_id": node_id, "url": "http://127.0.0.1:9", "cluster": None, "started": time.time(),
           "resources": {"cores": {"total": 4, "used": 0, "free": 4},
                         "memory_mib": {"total": 2048, "used": 0, "free": 2048},
                         "disk_bytes": {"total": 200 << 30}},
           "images": [], "instances": [], "network": {"bridge": None, "subnet": None, "gateway": None}}
    doc.update(changes)
    return doc


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    from controltest import start_control
    data = tmp_path_factory.mktemp("nodes") / "control"
    keys = create_user(data, "acme", "alice")
    server = start_control(data, extra=["--heartbeat-interval", str(INTERVAL), "--zone", "zone-a",
                                        "--zone", "zone-b"])
    secret = (data / "service.secret").read_text().strip()
    yield server, secret, ec2_client(server.url, keys)
    server.stop()


def test_heartbeat_registers_and_assigns_the_first_zone(control):
    server, secret, ec2 = control
    status, answer = _beat(server.url, secret, _doc("nc-00000000000000a1"))
    assert status == 200
    assert answer == {"node_id": "nc-00000000000000a1", "cluster": "zone-a", "heartbeat_interval": INTERVAL}
    status, answer = _beat(server.url, secret, _doc("nc-00000000000000b1", cluster="zone-b"))
    assert (status, answer["cluster"]) == (200, "zone-b")
    # 4 cores / 2 GiB per node: 4 m1.small (1 core, 256 MiB) fit, 2 c1.medium (2 cores).
    assert vm_types(ec2, "zone-a")["m1.small"] == (4, 4)
    assert vm_types(ec2, "zone-b")["c1.medium"] == (2, 2)


def test_heartbeat_refusals(control):
    server, secret, _ = control
    body = json.dumps(_doc("nc-00000000000000c1")).encode()
    status, answer = _post(server.url, body, internal.signed_headers("wrong secret", HEARTBEAT_PATH, body,
                                                                     time.time()))
    assert status == 401 and "signature" in answer["error"]
    status, answer = _post(server.url, body, internal.signed_headers(secret, HEARTBEAT_PATH, body,
                                                                     time.time() - 3600))
    assert status == 401
    assert _beat(server.url, secret, _doc("nc-00000000000000c1", cluster="nowhere"))[0] == 409
    assert _beat(server.url, secret, _doc("node-1"))[0] == 400
    assert _beat(server.url, secret, _doc("nc-00000000000000c1", protocol=2))[0] == 400
    assert _beat(server.url, secret, _doc("nc-00000000000000c1", instances=["i-1"]))[0] == 400
    status, answer = _post(server.url, b"{", internal.signed_headers(secret, HEARTBEAT_PATH, b"{", time.time()))
    assert status == 400 and "JSON" in answer["error"]


def test_quiet_node_stops_counting_as_capacity(control):
    server, secret, ec2 = control
    assert _beat(server.url, secret, _doc("nc-00000000000000d1", cluster="zone-b"))[0] == 200
    before = vm_types(ec2, "zone-b")["m1.small"]
    # Another node of zone-b that keeps beating keeps its 4; this one goes quiet.
    wait_for(lambda: vm_types(ec2, "zone-b")["m1.small"][1] < before[1] or None, timeout=10,
             what="the quiet node to drop out")
    assert _beat(server.url, secret, _doc("nc-00000000000000d1", cluster="zone-b"))[0] == 200
    assert vm_types(ec2, "zone-b")["m1.small"][1] >= 4


# ---- a real node ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    env = make_cloud(tmp_path_factory.mktemp("nodes-cloud"))
    yield env
    env["cloud"].stop()


def test_real_node_registers_reports_capacity_goes_quiet_and_returns(cloud):
    ec2 = cloud["ec2_a"]
    node = start_node(cloud["root"], cloud["cloud"], "node-1", cores=6, memory_mib=3072)
    try:
        registration = wait_registered(node)
        assert registration["cluster"] == "eucalyptusa" and registration["node_id"].startswith("nc-")
        assert vm_types(ec2)["m1.small"] == (6, 6)
        assert vm_types(ec2)["c1.xlarge"] == (1, 1)  # 2 cores, 2048 MiB
        os.kill(node.process.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: vm_types(ec2)["m1.small"] == (0, 0), timeout=10, what="node unreachable")
        finally:
            os.kill(node.process.pid, signal.SIGCONT)
        wait_for(lambda: vm_types(ec2)["m1.small"] == (6, 6), timeout=10, what="node back")
    finally:
        node.stop()


def test_node_restart_fails_lost_domains_and_keeps_serving_at_its_new_url(cloud):
    ec2 = cloud["ec2_a"]
    node = start_node(cloud["root"], cloud["cloud"], "node-2", cores=4, memory_mib=2048)
    try:
        node_id = wait_registered(node)["node_id"]
        instance_id = ec2.run_instances(ImageId=cloud["image_id"], MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"]

        def state():
            return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        wait_for(lambda: state()["State"]["Name"] == "running", what="running")
        node.stop()
        # test:///default keeps no domains across processes: the restarted agent fails the
        # instance, and control terminates it with the node's reason.
        node = start_node(cloud["root"], cloud["cloud"], "node-2", cores=4, memory_mib=2048)
        assert wait_registered(node)["node_id"] == node_id
        wait_for(lambda: state()["State"]["Name"] == "terminated", what="terminated")
        reason = state()["StateReason"]
        assert reason["Code"] == "Server.InternalError" and "vanished" in reason["Message"], reason
        # ... and tells the node to drop its failed record.
        secret = (cloud["cloud"].control_dir / "service.secret").read_text().strip()
        wait_for(lambda: instance_id not in {d["instance_id"] for d in _node_instances(node, secret)},
                 what="the node's failed record dropped")
        again = ec2.run_instances(ImageId=cloud["image_id"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        wait_for(lambda: ec2.describe_instances(InstanceIds=[again])["Reservations"][0]["Instances"][0][
            "State"]["Name"] == "running", what="a launch at the new url")
        ec2.terminate_instances(InstanceIds=[again])
    finally:
        node.stop()


def test_node_of_an_unknown_cluster_is_refused(cloud):
    node = start_node(cloud["root"], cloud["cloud"], "node-3", cluster="nowhere", wait=False)
    try:
        def refused():
            registration = node_health(node).get("registration") or {}
            return registration if registration.get("last_error") else None
        registration = wait_for(refused, timeout=15, what="a refused heartbeat")
        assert not registration["registered"] and "409" in registration["last_error"]
        assert "unknown cluster" in registration["last_error"]
    finally:
        node.stop()


def _node_instances(node: ServiceProcess, secret: str) -> list[dict]:
    import asyncio

    from node.client import NodeClient

    async def call():
        async with NodeClient(node.url, secret) as client:
            return await client.instances()
    return asyncio.run(call())


# ---- reconciliation rules, on control's own store (no node needed) -----------------------------

def test_reconcile_rules(tmp_path):
    from control import instances as inst
    from control import nodes as nodes_mod
    from control.store import ControlStore
    from eucalypt.clock import FakeClock

    clock = FakeClock()
    store = ControlStore(tmp_path / "state")
    hb = nodes_mod.parse_heartbeat(_doc("nc-00000000000000e1", network={"subnet": "10.9.0.0/29",
                                                                        "gateway": "10.9.0.1"}))

    def record(instance_id: str, state: str, launch: str) -> dict:
        return {"id": instance_id, "account": "111122223333", "node_id": hb.node_id, "state": state,
                "launch": launch, "confirmed_at": clock.now() if launch == "confirmed" else None,
                "vcpus": 1, "memory_mib": 256, "disk_gb": 5, "subnet": None, "private_ip": None,
                "public_ip": None, "zone": "zone-a"}

    ids = {name: f"i-{n:017x}" for n, name in enumerate(
        ["runs", "fails", "lost", "recent", "launching", "stopping-self"], start=1)}

    def setup(txn):
        nodes_mod.record_heartbeat(txn, hb, "zone-a", clock.now())
        subnet, ip = inst.allocate_private_ip(txn, hb.network, ids["runs"])
        assert (subnet, ip) == ("10.9.0.0/29", "10.9.0.2")  # not the network, not the gateway
        for name, instance_id in ids.items():
            inst.create_instance(txn, record(instance_id, "running" if name in ("lost", "stopping-self") else
                                             "pending", "confirmed" if name == "lost" else "sent"))
        assert [c.cores for c in inst.capacities(txn, "zone-a", clock.now(), 5)] == [4 - len(ids)]
    store.write_sync(setup)
    clock.advance(6)  # past the grace for "lost"
    store.write_sync(lambda txn: inst.confirm_launch(txn, "111122223333", ids["recent"], None, clock.now()))
    docs = [{"instance_id": ids["runs"], "state": "running", "domain_state": "running"},
            {"instance_id": ids["fails"], "state": "failed", "reason": "CacheFull: no room"},
            {"instance_id": ids["launching"], "state": "pending"},
            {"instance_id": ids["stopping-self"], "state": "running", "domain_state": "shutoff"},
            {"instance_id": "i-0123456789abcdef0", "state": "running"}]  # not control's
    node = {"node_id": hb.node_id}
    actions = store.write_sync(lambda txn: inst.reconcile_node(txn, node, docs, clock.now(), grace=5))
    with store.read() as txn:
        got = {name: inst.get_instance(txn, "111122223333", i) for name, i in ids.items()}
        free = inst.capacities(txn, "zone-a", clock.now(), 5)
    assert got["runs"]["state"] == "running" and got["runs"]["launch"] == "confirmed"
    assert got["fails"]["state"] == "terminated"
    assert got["fails"]["state_reason"]["message"] == "Server.InternalError: CacheFull: no room"
    assert got["lost"]["state"] == "terminated" and "no longer on its node" in got["lost"]["state_reason"]["message"]
    assert got["recent"]["state"] == "pending"        # confirmed just now: within the grace
    assert got["launching"]["state"] == "pending"
    assert got["stopping-self"]["state_reason"]["code"] == "Client.InstanceInitiatedShutdown"
    assert sorted(actions) == sorted([("terminate", hb.node_id, ids["fails"]),
                                      ("terminate", hb.node_id, ids["stopping-self"])])
    assert [c.cores for c in free] == [4 - 3]  # runs, recent, launching still hold a core
    # A node that stops beating is no capacity; once terminated, an instance the node still
    # reports is sent back to it to drop.
    clock.advance(16)
    with store.read() as txn:
        assert inst.capacities(txn, "zone-a", clock.now(), 5) == []
    again = store.write_sync(lambda txn: inst.reconcile_node(txn, node, docs[1:2], clock.now(), grace=5))
    assert again == [("terminate", hb.node_id, ids["fails"])]
    store.close()
