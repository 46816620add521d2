"""The node's managed network, for real, inside network namespaces this test creates: a
real `eucalypt node` process (libvirt's test driver) runs in namespace eut-XXXX with
--bridge/--subnet, and makes the bridge, the gateway address, dnsmasq and the nftables
table there. A second namespace plays the guest: a veth pair whose far end carries the
instance's MAC and IP, attached to the bridge. The guest asks DHCP for its address (a
minimal DHCPDISCOVER from this file) and reads its own instance id from
169.254.169.254:80, through the DNAT, from the node's metadata service.

Needs root, `ip`, `nft` and `dnsmasq`; otherwise it is skipped, saying why. No packet
leaves the namespaces: the subnet is private, nothing routes out of eut-XXXX (it has no
link but loopback, the bridge and the veth), and both namespaces are deleted afterwards.

The node in the namespace cannot reach the test's Walrus (loopback of the root
namespace), so the image is fetched first by a node process in the root namespace on
the same data directory; the namespaced node then launches from its local cache."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodetestlib import (  # noqa: F401  (fixtures)
    SECRET, alice_cert, alice_s3, bundle_bucket, cloud_key, ic_walrus, mixed_image, node_process_args, prepare,
    start_node_process, system_bucket, system_endpoint, warm_cache)
from node.client import NodeClient
from node.config import NodeConfig
from node.network import dhcp_hosts_text, host_dns_servers, nft_ruleset, nft_table_name

ROOT = Path(__file__).resolve().parents[2]
SUBNET, GATEWAY, GUEST_IP, STRANGER_IP = "10.213.0.0/24", "10.213.0.1", "10.213.0.23", "10.213.0.99"

_missing = [t for t in ("ip", "nft", "dnsmasq") if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason="NODE NETWORK TEST SKIPPED: needs root and ip/nft/dnsmasq "
           f"(euid {os.geteuid()}, missing: {', '.join(_missing) or 'none'}; apt-get install dnsmasq-base nftables)")


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.returncode} {result.stderr}")
    return result.stdout


def in_ns(ns: str, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def ns_python(ns: str, code: str, *args: str) -> str:
    return in_ns(ns, sys.executable, "-c", code, *args)


API_CALL = """
import asyncio, json, sys
from node.client import NodeClient
from node.config import NodeConfig
from node.network import dhcp_hosts_text, host_dns_servers, nft_ruleset, nft_table_name
async def main(url, secret, method, path, body):
    async with NodeClient(url, secret) as c:
        print(json.dumps(await c.call(method, path, json.loads(body) if body else None)))
asyncio.run(main(*sys.argv[1:]))
"""

HTTP_GET = """
import sys, urllib.request, urllib.error, socket
url, source = sys.argv[1], sys.argv[2]
class Source(urllib.request.HTTPHandler):
    def http_open(self, req):
        import http.client
        return self.do_open(lambda host, **kw: http.client.HTTPConnection(host, source_address=(source, 0), **kw), req)
try:
    with urllib.request.build_opener(Source).open(url, timeout=10) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def node_api(ns: str, url: str, method: str, path: str, body=None, *, status: int = 200, secret: str = SECRET):
    """One signed node API call from inside `ns`: the JSON answer, or (status given, not
    200) the error text, which must name that status."""
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", API_CALL, url, secret, method, path,
                             json.dumps(body) if body is not None else ""], capture_output=True, text=True, timeout=60)
    if status == 200:
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)
    assert result.returncode != 0 and f"{status} " in result.stderr, result.stderr[-2000:]
    return result.stderr


def delete_namespace(ns: str) -> None:
    """Kill what still runs in `ns` (only what ran in our namespace, by PID) and delete it."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    sh("ip", "netns", "del", ns, check=False)


def guest_get(ns: str, path: str, source: str) -> tuple[int, str]:
    out = ns_python(ns, HTTP_GET, f"http://169.254.169.254{path}", source)
    status, _, body = out.partition("\n")
    return int(status), body


DHCP_DISCOVER = """
import random, socket, struct, sys, json
iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
xid = random.getrandbits(32)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("0.0.0.0", 68))
s.settimeout(10)
pkt = struct.pack("!BBBBIHHIIII16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0, mac, b"", b"", 0x63825363)
pkt += bytes([53, 1, 1, 55, 3, 1, 3, 6, 255])
s.sendto(pkt, ("255.255.255.255", 67))
while True:
    data, _ = s.recvfrom(4096)
    if struct.unpack("!I", data[4:8])[0] == xid and data[0] == 2:
        break
opts, i = {}, 240
while i < len(data) and data[i] != 255:
    if data[i] == 0:
        i += 1; continue
    opts[data[i]] = data[i + 2:i + 2 + data[i + 1]]; i += 2 + data[i + 1]
print(json.dumps({"yiaddr": socket.inet_ntoa(data[16:20]), "type": opts[53][0],
                  "router": socket.inet_ntoa(opts[3][:4]) if 3 in opts else None,
                  "mask": socket.inet_ntoa(opts[1]) if 1 in opts else None}))
"""


class NetnsNode:
    """A `eucalypt node` process inside a namespace (ip netns exec; stop() by PID)."""

    def __init__(self, ns: str, data_dir: Path, args: list[str]) -> None:
        self.data_dir = data_dir
        log = open(data_dir.parent / f"{data_dir.name}-{ns}.log", "ab")
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "eucalypt.cli", "node", "--host", "127.0.0.1",
               "--port", "0", "--data-dir", str(data_dir), *args]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        self.url = None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if not line:
                break
            self.lines.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ")[1].strip()
                break
        if self.url is None:
            self.stop()
            raise AssertionError(f"node in {ns} did not start: {''.join(self.lines)}\n"
                                 f"{Path(log.name).read_text()[-3000:]}")
        threading.Thread(target=lambda: [self.lines.append(x.decode()) for x in self.process.stdout],
                         daemon=True).start()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def namespaces():
    tag = secrets.token_hex(3)
    node_ns, guest_ns = f"eut-{tag}", f"eug-{tag}"
    for ns in (node_ns, guest_ns):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    yield node_ns, guest_ns, f"eubr{tag}"
    for ns in (node_ns, guest_ns):
        delete_namespace(ns)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@needs_root
def test_bridge_dhcp_and_metadata_through_the_dnat(tmp_path, namespaces, ic_walrus, alice_s3, bundle_bucket,
                                                    system_endpoint, system_bucket, cloud_key, alice_cert):
    node_ns, guest_ns, bridge = namespaces
    asyncio.run(prepare(tmp_path, mixed_image(tmp_path / "n.img", 2, "net"), "emi-ne000001", alice_s3=alice_s3,
                        bundle_bucket=bundle_bucket, system_endpoint=system_endpoint, system_bucket=system_bucket,
                        cloud_key=cloud_key, alice_cert=alice_cert))
    data = tmp_path / "node"

    # 1. Fetch the image into the node's cache from the root namespace (no network managed).
    warm_cache(tmp_path, ic_walrus.url, system_bucket, "emi-ne000001", data)

    # 2. The node in its namespace, managing bridge + DHCP + NAT.
    args = node_process_args(tmp_path, ic_walrus.url, system_bucket, "--bridge", bridge, "--subnet", SUBNET)
    node = NetnsNode(node_ns, data, args)
    table = f"eucalypt_{bridge}"

    def api(method, path, body=None):
        return json.loads(ns_python(node_ns, API_CALL, node.url, SECRET, method, path,
                                    json.dumps(body) if body is not None else ""))

    try:
        health = api("GET", "/node/v1/resources")
        assert health["cores"]["total"] >= 1
        launched = api("POST", "/node/v1/instances", {
            "instance_id": "i-ne000001", "image_id": "emi-ne000001", "vcpus": 1, "memory_mib": 128,
            "private_ip": GUEST_IP, "metadata": {"local-hostname": "guest-one.internal"}})["instance"]
        assert launched["state"] == "running"
        mac = launched["mac"]

        addrs = json.loads(sh("ip", "-n", node_ns, "-j", "addr", "show", "dev", bridge))
        assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"] if a["family"] == "inet"] == \
            [(GATEWAY, 24)]
        assert "UP" in addrs[0]["flags"]
        assert in_ns(node_ns, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"

        pid = int((data / "network" / "dnsmasq.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert f"--interface={bridge}" in cmdline and "--bind-interfaces" in cmdline and "--port=0" in cmdline
        assert sh("ip", "netns", "identify", str(pid)).strip() == node_ns
        sockets = in_ns(node_ns, "ss", "-H", "-ulpn", "sport = :67")
        assert "dnsmasq" in sockets and bridge in sockets, sockets
        hosts = (data / "network" / "dhcp-hosts").read_text()
        assert hosts == f"{mac},{GUEST_IP},guest-one\n"

        ruleset = json.loads(in_ns(node_ns, "nft", "-j", "list", "table", "ip", table))["nftables"]
        rules = [r["rule"] for r in ruleset if "rule" in r]
        chains = {c["chain"]["name"]: c["chain"] for c in ruleset if "chain" in c}
        assert set(chains) == {"prerouting", "postrouting", "forward"}
        assert chains["forward"]["hook"] == "forward" and chains["forward"]["type"] == "filter"
        dnat = [r for r in rules if r["chain"] == "prerouting"]
        assert len(dnat) == 1
        text = json.dumps(dnat[0]["expr"])
        assert "169.254.169.254" in text and bridge in text and GATEWAY in text
        md_port = next(e["dnat"]["port"] for e in dnat[0]["expr"] if "dnat" in e)
        assert f"metadata service on http://{GATEWAY}:{md_port}" in "".join(node.lines)
        masq = [r for r in rules if r["chain"] == "postrouting"]
        assert len(masq) == 1 and "masquerade" in json.dumps(masq[0]["expr"])

        # 3. The guest: a veth into a second namespace, with the instance's MAC, on the bridge.
        host_end, guest_end = f"veh{bridge[4:]}", f"veg{bridge[4:]}"
        sh("ip", "-n", node_ns, "link", "add", host_end, "type", "veth", "peer", "name", guest_end)
        sh("ip", "-n", node_ns, "link", "set", guest_end, "netns", guest_ns)
        sh("ip", "-n", node_ns, "link", "set", host_end, "master", bridge, "up")
        sh("ip", "-n", guest_ns, "link", "set", guest_end, "address", mac, "up")

        offer = json.loads(ns_python(guest_ns, DHCP_DISCOVER, guest_end, mac))
        assert offer == {"yiaddr": GUEST_IP, "type": 2, "router": GATEWAY, "mask": "255.255.255.0"}

        sh("ip", "-n", guest_ns, "addr", "add", f"{GUEST_IP}/24", "dev", guest_end)
        sh("ip", "-n", guest_ns, "addr", "add", f"{STRANGER_IP}/24", "dev", guest_end)
        sh("ip", "-n", guest_ns, "route", "add", "default", "via", GATEWAY)
        assert guest_get(guest_ns, "/latest/meta-data/instance-id", GUEST_IP) == (200, "i-ne000001")
        assert guest_get(guest_ns, "/latest/meta-data/local-ipv4", GUEST_IP) == (200, GUEST_IP)
        assert guest_get(guest_ns, "/latest/meta-data/instance-id", STRANGER_IP)[0] == 404

        # 4. An agent restart keeps the bridge (an instance is still recorded) and replaces
        # dnsmasq and the table, once each.
        assert node.stop() == 0
        assert not alive(pid)
        assert sh("ip", "-n", node_ns, "link", "show", "dev", bridge)  # kept
        assert in_ns(node_ns, "nft", "list", "tables").strip() == ""
        node = NetnsNode(node_ns, data, args)
        new_pid = int((data / "network" / "dnsmasq.pid").read_text())
        assert new_pid != pid and alive(new_pid)
        addrs = json.loads(sh("ip", "-n", node_ns, "-j", "addr", "show", "dev", bridge))
        assert [a["local"] for a in addrs[0]["addr_info"] if a["family"] == "inet"] == [GATEWAY]
        ruleset = json.loads(in_ns(node_ns, "nft", "-j", "list", "table", "ip", table))["nftables"]
        assert len([r for r in ruleset if "rule" in r and r["rule"]["chain"] == "prerouting"]) == 1
        # test:///default lost the domain with the old process: the record failed, and its
        # DHCP entry went with it; its metadata is still served until it is terminated.
        assert api("GET", "/node/v1/instances/i-ne000001")["instance"]["state"] == "failed"
        assert (data / "network" / "dhcp-hosts").read_text() == ""
        assert guest_get(guest_ns, "/latest/meta-data/instance-id", GUEST_IP) == (200, "i-ne000001")
        api("DELETE", "/node/v1/instances/i-ne000001")
        assert guest_get(guest_ns, "/latest/meta-data/instance-id", GUEST_IP)[0] == 404

        relaunched = api("POST", "/node/v1/instances", {
            "instance_id": "i-ne000002", "image_id": "emi-ne000001", "vcpus": 1, "memory_mib": 128,
            "private_ip": GUEST_IP})["instance"]
        assert (data / "network" / "dhcp-hosts").read_text() == f"{relaunched['mac']},{GUEST_IP},ip-10-213-0-23\n"
        bad = subprocess.run(["ip", "netns", "exec", node_ns, sys.executable, "-c", API_CALL, node.url, SECRET,
                              "POST", "/node/v1/instances", json.dumps({
                                  "instance_id": "i-ne000003", "image_id": "emi-ne000001", "vcpus": 1,
                                  "memory_mib": 128, "private_ip": GATEWAY})], capture_output=True, text=True)
        assert bad.returncode != 0 and "400" in bad.stderr and "subnet" in bad.stderr
        # dnsmasq dying is noticed at the next DHCP change: another is started, reading the file.
        os.kill(new_pid, signal.SIGKILL)  # the dnsmasq the node started in our namespace
        deadline = time.monotonic() + 10
        while alive(new_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        api("DELETE", "/node/v1/instances/i-ne000002")
        assert (data / "network" / "dhcp-hosts").read_text() == ""
        new_pid = int((data / "network" / "dnsmasq.pid").read_text())
        assert alive(new_pid) and sh("ip", "netns", "identify", str(new_pid)).strip() == node_ns

        # 5. Stopped with no instance left: dnsmasq, the table and the bridge it made are gone.
        assert node.stop() == 0
        assert not alive(new_pid)
        assert in_ns(node_ns, "nft", "list", "tables").strip() == ""
        assert subprocess.run(["ip", "-n", node_ns, "link", "show", "dev", bridge],
                              capture_output=True).returncode != 0
    finally:
        node.stop()



def test_settings_gateway_and_when_the_network_is_managed():
    base = dict(data_dir=Path("/x"), service_secret="s", walrus=())
    c = NodeConfig(**base, bridge="eubr0", subnet="10.211.0.0/24", manage_network=True)
    assert c.network_managed and c.gateway == "10.211.0.1" and c.metadata_bind_host == "10.211.0.1"
    assert not NodeConfig(**base, subnet="10.211.0.0/24", manage_network=True).network_managed  # no bridge
    off = NodeConfig(**base, bridge="eubr0", subnet="10.211.0.0/24", manage_network=False)
    assert not off.network_managed and off.metadata_bind_host == "127.0.0.1"
    assert NodeConfig(**base, bridge="b", subnet="10.1.0.0/24", manage_network=False,
                      metadata_host="10.1.0.1").metadata_bind_host == "10.1.0.1"
    assert NodeConfig(**base, bridge="b", subnet="10.1.0.0/24").network_managed == (os.geteuid() == 0)
    with pytest.raises(ValueError):
        NodeConfig(**base, subnet="10.211.0.1/24")  # host bits set
    with pytest.raises(ValueError):
        NodeConfig(**base, subnet="10.211.0.0/31")


def test_ruleset_hosts_file_and_name_servers(tmp_path):
    assert nft_table_name("br-eu.0") == "eucalypt_br_eu_0"
    text = nft_ruleset("eubr0", "10.211.0.0/24", "10.211.0.1", 8776)
    assert text.startswith("table ip eucalypt_eubr0 {}\ndelete table ip eucalypt_eubr0\n")
    assert 'iifname "eubr0" ip daddr 169.254.169.254 tcp dport 80 dnat to 10.211.0.1:8776' in text
    assert 'ip saddr 10.211.0.0/24 oifname != "eubr0" masquerade' in text
    assert "type filter hook forward" in text and "issue #8" in text
    assert dhcp_hosts_text({"i-2": ("d0:0d:00:00:00:02", "10.0.0.3", "b"),
                            "i-1": ("d0:0d:00:00:00:01", "10.0.0.2", "a")}) == \
        "d0:0d:00:00:00:01,10.0.0.2,a\nd0:0d:00:00:00:02,10.0.0.3,b\n"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch x\n")
    assert host_dns_servers(resolv) == ["192.0.2.53"]
    assert host_dns_servers(tmp_path / "missing") == []
