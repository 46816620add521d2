"""Hosts of a managed-mode test, all network namespaces the test creates (issue #8).

    Fabric(tag)                 names; add_ns() creates a namespace (lo up), close() kills
                                what ran in them (by PID, from `ip netns pids`) and deletes them
    fabric.underlay(a, b, ...)  a veth between two node namespaces with addresses: the
                                network between the nodes (VXLAN endpoints), or no
                                addresses: an 802.1Q trunk
    fabric.guest(...)           a guest namespace joined to a node bridge by a veth whose node
                                end carries the instance's tap name (what qemu's tap would
                                be) and whose guest end carries its MAC and private IP
    fabric.listen / probe       TCP listeners answering "<name>:<port>:<peer address>";
    probe_many                  bounded-timeout probes of many targets at once (from many
                                namespaces at once)
    Capture                     AF_PACKET capture in a namespace (frames, decoded: VXLAN VNI
                                or 802.1Q tag, the inner MACs and IPv4 addresses)

Nothing here routes out of the namespaces: every address is on a veth between two of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_node_network import delete_namespace, ns_python, sh

LISTEN = """
import asyncio, sys
name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
async def main():
    async def serve(port, reader, writer):
        writer.write(f"{name}:{port}:{writer.get_extra_info('peername')[0]}\\n".encode())
        await writer.drain(); writer.close()
    for port in ports:
        await asyncio.start_server(lambda r, w, port=port: serve(port, r, w), "0.0.0.0", port)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

PROBE = """
import asyncio, json, sys
async def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
        line = await asyncio.wait_for(reader.readline(), 2)
        writer.close()
        return line.decode().strip() or None
    except (OSError, asyncio.TimeoutError):
        return None
async def main(targets):
    print(json.dumps(dict(zip(targets, await asyncio.gather(*map(probe, targets))))))
asyncio.run(main(sys.argv[1:]))
"""

# Frames on one interface until stdin closes, as JSON lines on stdout at the end. Decodes
# Ethernet (with one 802.1Q tag), IPv4, ARP, and VXLAN (UDP 4789) down to the inner frame.
CAPTURE = r"""
import json, select, socket, struct, sys
iface = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
print("ready", flush=True)
def frame(data):
    out = {"dst": data[0:6].hex(":"), "src": data[6:12].hex(":")}
    etype, rest = struct.unpack("!H", data[12:14])[0], data[14:]
    if etype == 0x8100:
        out["vlan"] = struct.unpack("!H", rest[0:2])[0] & 0xfff
        etype, rest = struct.unpack("!H", rest[2:4])[0], rest[4:]
    out["type"] = etype
    if etype == 0x0806 and len(rest) >= 28:
        out["arp_sender"], out["arp_target"] = socket.inet_ntoa(rest[14:18]), socket.inet_ntoa(rest[24:28])
    elif etype == 0x0800 and len(rest) >= 20:
        ihl = (rest[0] & 15) * 4
        out["ip_src"], out["ip_dst"], out["proto"] = socket.inet_ntoa(rest[12:16]), socket.inet_ntoa(rest[16:20]), rest[9]
        if rest[9] == 17 and len(rest) >= ihl + 16:
            dport = struct.unpack("!H", rest[ihl + 2:ihl + 4])[0]
            out["dport"] = dport
            if dport == 4789:
                vx = rest[ihl + 8:ihl + 16]
                out["vni"] = int.from_bytes(vx[4:7], "big")
                out["inner"] = frame(rest[ihl + 16:])
    return out
frames = []
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [], 5)
    if sys.stdin in ready:
        break
    if s in ready:
        data, addr = s.recvfrom(65535)
        frames.append({**frame(data), "outgoing": addr[2] == socket.PACKET_OUTGOING})
for f in frames:
    print(json.dumps(f))
"""


class Capture:
    """Frames seen on `iface` in `ns` between start and stop()."""

    def __init__(self, ns: str, iface: str) -> None:
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CAPTURE, iface],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.process.stdout.readline().strip() == b"ready", self.process.stderr.read()

    def stop(self) -> list[dict]:
        out, err = self.process.communicate(b"", timeout=30)
        assert self.process.returncode == 0, err
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


class Fabric:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.namespaces: list[str] = []
        self.listeners: list[subprocess.Popen] = []

    def add_ns(self, name: str) -> str:
        ns = f"{name}-{self.tag}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def underlay(self, ns_a: str, ns_b: str, name_a: str, name_b: str, addr_a: str | None = None,
                 addr_b: str | None = None) -> None:
        sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
            if addr:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", name)
            sh("ip", "-n", ns, "link", "set", name, "up")

    def guest(self, node_ns: str, guest_ns: str, record: dict, prefix: int, gateway: str, label: str) -> None:
        """Join `guest_ns` to the instance's bridge as its tap would be; static address
        (what the node's DHCP gives, which the tests check separately)."""
        peer = f"g{label}{self.tag}"[:15]
        sh("ip", "-n", node_ns, "link", "add", record["tap"], "type", "veth", "peer", "name", peer)
        sh("ip", "-n", node_ns, "link", "set", peer, "netns", guest_ns)
        sh("ip", "-n", guest_ns, "link", "set", peer, "name", "eth0")
        sh("ip", "-n", node_ns, "link", "set", record["tap"], "master", record["bridge"], "up")
        sh("ip", "-n", guest_ns, "link", "set", "eth0", "address", record["mac"], "mtu", "1450", "up")
        sh("ip", "-n", guest_ns, "addr", "add", f"{record['private_ip']}/{prefix}", "dev", "eth0")
        sh("ip", "-n", guest_ns, "route", "add", "default", "via", gateway)

    def listen(self, ns: str, name: str, ports) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN, name, *map(str, ports)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.listeners.append(p)
        assert p.stdout.readline().strip() == b"ready"

    def close(self) -> None:
        for p in self.listeners:
            p.kill()
            p.wait()
        for ns in self.namespaces:
            delete_namespace(ns)


def probe(ns: str, targets: list[str]) -> dict[str, str | None]:
    return json.loads(ns_python(ns, PROBE, *targets))


def probe_many(targets: dict[str, list[str]]) -> dict[str, dict[str, str | None]]:
    """probe() from several namespaces at once (a matrix costs one timeout, not one per source)."""
    procs = {ns: subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, *t],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for ns, t in targets.items()}
    out = {}
    for ns, p in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr.decode()[-2000:]
        out[ns] = json.loads(stdout)
    return out
