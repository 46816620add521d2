"""Registration and heartbeat (node -> control, docs/node-protocol.md).

First the client against a small control stand-in inside the test (an aiohttp app that
checks the signature with control.internal.check and records what arrives): when
heartbeats go, what they carry, that a state change sends one at once, that refusals and
an absent control are retried without harm. Then a real `eucalypt node` process against
a real `eucalypt control`: it registers, is counted as capacity, keeps its node id
across a restart."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from aiohttp import web

from control import internal
from controltest import create_user, ec2_client, start_control
from nodetestlib import (  # noqa: F401  (fixtures)
    SECRET, alice_cert, alice_s3, bundle_bucket, cloud_key, hypervisor, ic_walrus, mixed_image, node_config,
    node_health, prepare, start_node, start_node_process, system_bucket, system_endpoint)
from node.registration import HEARTBEAT_PATH, load_node_id
from walrustest import wait_for


class FakeControl:
    """Control's heartbeat endpoint, checked the way control checks it (a test double of
    the *other* side of the protocol, not of our component)."""

    def __init__(self, *, interval: float = 0.3) -> None:
        self.interval = interval
        self.beats: list[dict] = []
        self.refuse: tuple[int, str] | None = None
        self.arrived = asyncio.Event()
        self._runner = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        why = internal.check(SECRET, request.method, request.path, request.headers, body, time.time())
        if why:
            return web.json_response({"error": why}, status=401)
        if self.refuse:
            return web.json_response({"error": self.refuse[1]}, status=self.refuse[0])
        doc = json.loads(body)
        self.beats.append(doc)
        self.arrived.set()
        return web.json_response({"node_id": doc["node_id"], "cluster": doc["cluster"] or "zone-1",
                                  "heartbeat_interval": self.interval})

    async def start(self, port: int = 0) -> "FakeControl":
        app = web.Application()
        app.router.add_post(HEARTBEAT_PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def next_beat(self, timeout: float = 10) -> dict:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), timeout)
        return self.beats[-1]


async def wait_until(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_node_id_is_made_once(tmp_path):
    first = load_node_id(tmp_path)
    assert first.startswith("nc-") and len(first) == 19 and int(first[3:], 16) >= 0
    assert load_node_id(tmp_path) == first == (tmp_path / "node-id").read_text().strip()
    (tmp_path / "node-id").write_text("garbage\n")
    assert load_node_id(tmp_path) != first


async def test_heartbeats_at_start_on_interval_and_at_once_on_change(tmp_path, ic_walrus, system_bucket,
                                                                     alice_s3, bundle_bucket, system_endpoint,
                                                                     cloud_key, alice_cert, hypervisor):
    await prepare(tmp_path, mixed_image(tmp_path / "r.img", 2, "reg"), "emi-re000001", alice_s3=alice_s3,
                  bundle_bucket=bundle_bucket, system_endpoint=system_endpoint, system_bucket=system_bucket,
                  cloud_key=cloud_key, alice_cert=alice_cert)
    control = await FakeControl(interval=30).start()  # long: only start and changes send one
    config = node_config(tmp_path / "node", ic_walrus.url, system_bucket, control_url=control.url,
                         cluster=None, subnet="10.211.0.0/24", cores=3, memory_mib=1024)
    node = await start_node(config, hypervisor)
    try:
        await wait_until(lambda: control.beats, what="the first heartbeat")
        first = control.beats[0]
        assert first["protocol"] == 1 and first["node_id"] == (tmp_path / "node" / "node-id").read_text().strip()
        assert first["url"] == node.server.url and first["cluster"] is None
        assert first["resources"]["cores"] == {"total": 3, "used": 0, "free": 3}
        assert first["images"] == [] and first["instances"] == []
        assert first["network"] == {"bridge": None, "subnet": "10.211.0.0/24", "gateway": "10.211.0.1",
                                    "modes": ["flat"], "transports": [], "tunnel_ip": None, "uplink": None}
        await wait_until(lambda: node.server.registration.registered, what="registered")
        status = (await node_health(node.client))["registration"]
        assert status["registered"] and status["cluster"] == "zone-1" and status["heartbeat_interval"] == 30

        # A launch changes state twice (pending, running): heartbeats follow at once, not
        # after the 30 s interval; the last one carries the running instance and its image.
        await node.client.call("POST", "/node/v1/instances", {
            "instance_id": "i-re000001", "image_id": "emi-re000001", "vcpus": 1, "memory_mib": 128,
            "private_ip": "10.211.0.5"})
        await wait_until(lambda: any(i["state"] == "running" for b in control.beats for i in b["instances"]),
                         what="a heartbeat with the running instance")
        last = control.beats[-1]
        assert last["cluster"] == "zone-1"  # the zone control assigned is sent back
        assert [(i["instance_id"], i["state"], i["private_ip"]) for i in last["instances"]] == \
            [("i-re000001", "running", "10.211.0.5")]
        assert last["images"] == ["emi-re000001"] and last["resources"]["cores"]["used"] == 1
        count = len(control.beats)
        await node.client.terminate("i-re000001")
        beat = await control.next_beat()
        assert len(control.beats) > count and beat["instances"] == []

        # Refused (e.g. 409 unknown cluster): logged, retried at the interval; then accepted.
        control.interval = 0.2
        node.server.registration.changed()
        await control.next_beat()  # picks up the new 0.2 s interval
        control.refuse = (409, "unknown cluster nowhere")
        await wait_until(lambda: node.server.registration.last_error, what="a refusal")
        assert "409" in node.server.registration.last_error and "unknown cluster" in node.server.registration.last_error
        control.refuse = None
        await control.next_beat()
        await wait_until(lambda: node.server.registration.last_error is None, what="recovery")
        assert node.metric("eucalypt_node_heartbeats_total", {"result": "failed"}) >= 1
        assert node.metric("eucalypt_node_heartbeats_total", {"result": "ok"}) >= 4
    finally:
        await node.stop()
        await control.stop()


async def test_control_down_at_start_then_up(tmp_path, ic_walrus, system_bucket, hypervisor):
    import socket
    with socket.socket() as s:  # a port nothing listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = node_config(tmp_path / "node", ic_walrus.url, system_bucket, control_url=f"http://127.0.0.1:{port}",
                         heartbeat_interval=0.2, advertise_url="http://node-7.example:8775")
    node = await start_node(config, hypervisor)
    control = None
    try:
        await wait_until(lambda: node.server.registration.last_error, what="a failed heartbeat")
        assert "Connect" in node.server.registration.last_error
        assert (await node.client.resources())["cores"]["total"] >= 1  # the agent serves on
        control = await FakeControl().start(port)
        beat = await control.next_beat()
        assert beat["node_id"] == load_node_id(tmp_path / "node") and beat["url"] == "http://node-7.example:8775"
        await wait_until(lambda: node.server.registration.registered and not node.server.registration.last_error,
                         what="registered")
    finally:
        await node.stop()
        if control:
            await control.stop()


# ---- against a real control -------------------------------------------------------------------

def _health(url: str) -> dict:
    with urllib.request.urlopen(url + "/_eucalypt/health", timeout=5) as reply:
        return json.load(reply)




def _m1_small(ec2) -> tuple[int, int] | None:
    for item in ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]:
        if item["ZoneName"] == "|- m1.small":
            free, _, most = item["State"].split()[:3]
            return int(free), int(most)
    return None


def test_real_node_registers_with_a_real_control(tmp_path, ic_walrus, system_bucket):
    control_dir = tmp_path / "control"
    keys = create_user(control_dir, "acme", "alice")
    control = start_control(control_dir, extra=["--heartbeat-interval", "0.5"])
    ec2 = ec2_client(control.url, keys)
    secret_file = control_dir / "service.secret"
    node = None
    try:
        args = ["--control", control.url, "--cores", "4", "--memory-mib", "4096", "--subnet", "10.211.0.0/24",
                "--service-secret-file", str(secret_file)]  # control's secret (the later flag wins)
        node = start_node_process(tmp_path, ic_walrus.url, system_bucket, *args)
        registration = wait_for(lambda: (_health(node.url).get("registration") or {}).get("registered")
                             and _health(node.url)["registration"], what="registered")
        node_id = registration["node_id"]
        assert node_id == (node.data_dir / "node-id").read_text().strip()
        assert registration["cluster"] and registration["heartbeat_interval"] == 0.5 and not registration["last_error"]
        assert wait_for(lambda: _m1_small(ec2) == (4, 4) and _m1_small(ec2), what="capacity") == (4, 4)
        beats = registration["heartbeats"]
        wait_for(lambda: _health(node.url)["registration"]["heartbeats"] >= beats + 2, what="heartbeats at 0.5 s")

        node.stop()
        wait_for(lambda: _m1_small(ec2) in (None, (0, 0)), timeout=15, what="the quiet node no longer counted")
        node = start_node_process(tmp_path, ic_walrus.url, system_bucket, *args)
        again = wait_for(lambda: _health(node.url)["registration"]["registered"] and _health(node.url)["registration"],
                      what="registered again")
        assert again["node_id"] == node_id
        assert wait_for(lambda: _m1_small(ec2) == (4, 4), what="capacity again")
    finally:
        if node:
            node.stop()
        control.stop()
