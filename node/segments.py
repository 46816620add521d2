"""The managed network modes on the node (issue #8; docs/node-protocol.md, "Managed
networks"): one L2 segment per security group, a gateway address of this node in each,
and the segments carried between nodes as VXLAN (or 802.1Q where the kernel has it).

    parse_launch_network / parse_network   the launch body's / policy's "network", checked
    plan_segments(...)                     pure: the bridges, ports, addresses, routes and
                                           DHCP contexts wanted on this node
    Segments                               makes the host match a plan (ip, bridge), and
                                           removes what an earlier plan created and this
                                           one no longer names

Why one segment (bridge) per group and not one bridge with VLAN filtering: this kernel
family has bridges everywhere but 802.1Q and vlan_filtering only sometimes (the test
machines have neither), and a bridge per segment works the same over both transports:
its VXLAN port (VNI = segment id) or its 802.1Q port (`<uplink>.S`) joins it to the other
nodes. In managed-novlan every group shares the node bridge (one VXLAN port, VNI 1).

Why a node has a gateway in *every* segment the cloud uses, not only those of its own
instances: traffic between groups is routed by the sender's node, which therefore needs
to be on the destination's segment; the per-instance rules on both nodes decide what may
pass. Every node's address in a slice is distinct (slice + node index), so nodes sharing
a segment never answer ARP for one address, and arp_ignore=1 keeps each node from
answering on a segment for its addresses on the others.

What this module created is recorded in DATA/network/segments.json, so a restarted agent
removes what the new plan drops, and never touches devices an operator made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadRequest
from .tools import NetworkError, run_tool

log = logging.getLogger("eucalypt.node.segments")

MODES = ("managed", "managed-novlan")
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50                  # outer Ethernet + IPv4 + UDP + VXLAN headers
NOVLAN_VNI = 1
FLOOD_MAC = "00:00:00:00:00:00"      # a VXLAN fdb entry with this MAC: flood to that peer
_SEGMENT_MAX = 4094
IFNAMSIZ = 15


# the documents -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GroupNet:
    """A group's network as seen from this node."""
    segment: int | None                 # None: managed-novlan (the node bridge)
    subnet: str                         # the group's slice in this node's zone
    gateway: str                        # this node's address in it
    peer_subnets: tuple[str, ...] = ()  # the group's slices in the other zones


@dataclass(frozen=True, slots=True)
class Peer:
    tunnel_ip: str
    same_zone: bool


@dataclass(frozen=True, slots=True)
class ManagedNetwork:
    """The policy's "network": every group the cloud uses, and the other nodes."""
    mode: str
    groups: dict[str, GroupNet] = field(default_factory=dict)
    private_ranges: tuple[str, ...] = ()
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True, slots=True)
class LaunchNetwork:
    """The launch body's "network": the segment of the instance's (first) group."""
    mode: str
    net: GroupNet


def _net(value, what: str) -> ipaddress.IPv4Network:
    if not isinstance(value, str):  # IPv4Network takes integers too; the protocol says CIDR text
        raise BadRequest(f"{what}: {value!r} is not an IPv4 network (CIDR text)")
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError):
        raise BadRequest(f"{what}: {value!r} is not an IPv4 network (CIDR, no host bits)") from None


def _mode(value, what: str) -> str:
    if value not in MODES:
        raise BadRequest(f"{what}: {value!r} is not one of {', '.join(MODES)}")
    return value


def parse_group_net(doc, what: str, mode: str) -> GroupNet:
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be an object")
    segment = doc.get("segment")
    if mode == "managed-novlan":
        if segment is not None:
            raise BadRequest(f"{what}.segment must be null in managed-novlan")
    elif isinstance(segment, bool) or not isinstance(segment, int) or not 1 <= segment <= _SEGMENT_MAX:
        raise BadRequest(f"{what}.segment: {segment!r} is not a segment id in 1..{_SEGMENT_MAX}")
    net = _net(doc.get("subnet"), f"{what}.subnet")
    if net.num_addresses < 4:
        raise BadRequest(f"{what}.subnet {net} is too small")
    try:
        gateway = ipaddress.IPv4Address(doc.get("gateway"))
    except (ValueError, TypeError):
        raise BadRequest(f"{what}.gateway: {doc.get('gateway')!r} is not an IPv4 address") from None
    if gateway not in net or gateway in (net.network_address, net.broadcast_address):
        raise BadRequest(f"{what}.gateway {gateway} is not a host address of {net}")
    peers = doc.get("peer_subnets", [])
    if not isinstance(peers, list):
        raise BadRequest(f"{what}.peer_subnets must be a list")
    peer_nets = [_net(p, f"{what}.peer_subnets") for p in peers]
    for p in peer_nets:
        if p.overlaps(net):
            raise BadRequest(f"{what}.peer_subnets: {p} overlaps the group's own subnet {net}")
    return GroupNet(segment, str(net), str(gateway), tuple(sorted(map(str, peer_nets))))


def parse_launch_network(doc) -> LaunchNetwork | None:
    """The launch body's "network" (None or absent: flat)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise BadRequest("network must be an object or null")
    mode = _mode(doc.get("mode"), "network.mode")
    return LaunchNetwork(mode, parse_group_net(doc, "network", mode))


def parse_network(doc) -> ManagedNetwork | None:
    """The policy's "network" (None, absent or mode "flat": flat)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise BadRequest("network must be an object")
    if doc.get("mode") == "flat":
        return None
    mode = _mode(doc.get("mode"), "network.mode")
    raw_groups = doc.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise BadRequest("network.groups must be an object")
    groups = {gid: parse_group_net(spec, f"network.groups.{gid}", mode) for gid, spec in raw_groups.items()}
    by_segment: dict[int, str] = {}
    for gid, g in groups.items():
        if g.segment is not None:
            if g.segment in by_segment:
                raise BadRequest(f"network.groups: {by_segment[g.segment]} and {gid} share segment {g.segment}")
            by_segment[g.segment] = gid
    ranges = doc.get("private_ranges", [])
    if not isinstance(ranges, list):
        raise BadRequest("network.private_ranges must be a list")
    private = tuple(str(_net(r, "network.private_ranges")) for r in ranges)
    raw_peers = doc.get("peers", [])
    if not isinstance(raw_peers, list):
        raise BadRequest("network.peers must be a list")
    peers = []
    for i, p in enumerate(raw_peers):
        if not isinstance(p, dict) or not isinstance(p.get("same_zone", False), bool):
            raise BadRequest(f"network.peers[{i}] must be an object with tunnel_ip and same_zone")
        try:
            ip = str(ipaddress.IPv4Address(p.get("tunnel_ip")))
        except (ValueError, TypeError):
            raise BadRequest(f"network.peers[{i}].tunnel_ip: {p.get('tunnel_ip')!r} is not an IPv4 address") \
                from None
        peers.append(Peer(ip, p.get("same_zone", False)))
    return ManagedNetwork(mode, groups, private, tuple(peers))


def group_net_to_json(g: GroupNet) -> dict:
    return {"segment": g.segment, "subnet": g.subnet, "gateway": g.gateway, "peer_subnets": list(g.peer_subnets)}


def network_to_json(n: ManagedNetwork | None) -> dict | None:
    if n is None:
        return None
    return {"mode": n.mode, "groups": {gid: group_net_to_json(g) for gid, g in n.groups.items()},
            "private_ranges": list(n.private_ranges),
            "peers": [{"tunnel_ip": p.tunnel_ip, "same_zone": p.same_zone} for p in n.peers]}


# device names ---------------------------------------------------------------------------------

def segment_bridge(bridge: str, segment: int | None) -> str:
    return bridge if segment is None else f"{bridge}-{segment}"


def vxlan_port(bridge: str, segment: int | None) -> str:
    return f"{bridge}v{segment if segment is not None else NOVLAN_VNI}"


def vlan_port(uplink: str, segment: int) -> str:
    return f"{uplink}.{segment}"


def check_bridge_name(bridge: str) -> None:
    """The segment devices' names must fit the kernel's 15 characters."""
    if len(segment_bridge(bridge, _SEGMENT_MAX)) > IFNAMSIZ:
        raise ValueError(f"bridge name {bridge!r} is too long for the managed modes: {bridge}-{_SEGMENT_MAX} "
                         f"must fit {IFNAMSIZ} characters (use at most {IFNAMSIZ - 5})")


# the plan --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One bridge this node wants, with what hangs on it."""
    bridge: str
    segment: int | None
    addresses: tuple[str, ...]          # "gateway/prefix", this node's
    routes: tuple[str, ...]             # on-link subnets of other zones
    contexts: tuple[tuple[str, str], ...]  # (subnet, gateway) served by DHCP here
    vxlan: str | None                   # port name (None: no tunnel endpoint)
    vni: int
    vlan: str | None                    # 802.1Q port name (None: none)
    flood: tuple[str, ...]              # VXLAN peers to flood unknown/broadcast frames to

    @property
    def fabric(self) -> tuple[str, ...]:
        return tuple(p for p in (self.vxlan, self.vlan) if p)

    @property
    def mtu(self) -> int | None:
        """The MTU DHCP gives instances here (VXLAN costs 50 bytes of the underlay's 1500)."""
        return 1500 - VXLAN_OVERHEAD if self.vxlan else None


def plan_segments(bridge: str, mode: str, groups: dict[str, GroupNet], peers: tuple[Peer, ...], *,
                  tunnel_ip: str | None, uplink: str | None, vlan_capable: bool) -> list[SegmentPlan]:
    """What this node's managed network should be: one SegmentPlan per bridge (managed:
    one per segment, novlan: the node bridge with every group's subnet). Pure."""
    use_vlan = mode == "managed" and bool(uplink) and vlan_capable
    # With an 802.1Q uplink the zone's nodes already share each segment, so VXLAN floods
    # only to the other zones' nodes (the two fabric ports are isolated: no loop).
    flood = tuple(sorted({p.tunnel_ip for p in peers if not (use_vlan and p.same_zone)} - {tunnel_ip}))
    by_bridge: dict[str, list[GroupNet]] = {}
    for g in groups.values():
        by_bridge.setdefault(segment_bridge(bridge, g.segment), []).append(g)
    plans = []
    for name in sorted(by_bridge):
        nets = by_bridge[name]
        segment = nets[0].segment
        addresses = sorted({f"{g.gateway}/{ipaddress.IPv4Network(g.subnet).prefixlen}" for g in nets})
        own = [ipaddress.IPv4Network(g.subnet) for g in nets]
        routes = sorted({p for g in nets for p in g.peer_subnets
                         if not any(ipaddress.IPv4Network(p).overlaps(o) for o in own)})
        contexts = tuple(sorted({(g.subnet, g.gateway) for g in nets}))
        plans.append(SegmentPlan(
            bridge=name, segment=segment, addresses=tuple(addresses), routes=tuple(routes), contexts=contexts,
            vxlan=vxlan_port(bridge, segment) if tunnel_ip else None,
            vni=segment if segment is not None else NOVLAN_VNI,
            vlan=vlan_port(uplink, segment) if use_vlan and segment is not None else None,
            flood=flood if tunnel_ip else ()))
    return plans


# the host ---------------------------------------------------------------------------------------

async def _links() -> dict[str, dict]:
    _, out, _ = await run_tool("ip", "-d", "-j", "link", "show")
    return {link["ifname"]: link for link in json.loads(out or "[]")}


async def _addresses(dev: str) -> set[str]:
    _, out, _ = await run_tool("ip", "-j", "addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]")
            for a in link.get("addr_info", []) if a.get("family") == "inet"}


def _kind(link: dict | None) -> str | None:
    return (link or {}).get("linkinfo", {}).get("info_kind")


def _write_sysctl(path: str, value: str) -> None:
    Path(path).write_text(value + "\n")


async def vlan_supported(uplink: str) -> bool:
    """Whether the kernel makes 802.1Q devices (CONFIG_VLAN_8021Q) on this uplink: try one."""
    probe = f"euq{os.getpid() % 100000}"
    code, _, err = await run_tool("ip", "link", "add", "link", uplink, "name", probe, "type", "vlan", "id", "4094",
                              check=False)
    if code == 0:
        await run_tool("ip", "link", "del", probe, check=False)
        return True
    log.info("network: no 802.1Q on %s (%s); segments travel as VXLAN", uplink, err)
    return False


class Segments:
    """The node's segments. reconcile() is idempotent and all-or-error: on an error the
    host may be half-way, and the next reconcile (the next policy or launch) continues."""

    def __init__(self, data_dir: Path, bridge: str, *, tunnel_ip: str | None, uplink: str | None) -> None:
        self.bridge = bridge
        self.tunnel_ip, self.uplink = tunnel_ip, uplink
        self.state_file = Path(data_dir) / "network" / "segments.json"
        self.vlan_capable = False
        self.plans: list[SegmentPlan] = []

    async def probe(self) -> None:
        if self.uplink:
            self.vlan_capable = await vlan_supported(self.uplink)

    def transports(self) -> list[str]:
        return (["vxlan"] if self.tunnel_ip else []) + (["vlan"] if self.vlan_capable else [])

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, self.state_file)

    def plan(self, mode: str, groups: dict[str, GroupNet], peers: tuple[Peer, ...]) -> list[SegmentPlan]:
        return plan_segments(self.bridge, mode, groups, peers, tunnel_ip=self.tunnel_ip, uplink=self.uplink,
                             vlan_capable=self.vlan_capable)

    async def reconcile(self, plans: list[SegmentPlan]) -> None:
        state = self._state()
        created: set[str] = set(state.get("devices", []))      # bridges and ports we made
        ours: dict[str, list] = state.get("addresses", {})      # dev -> addresses we added
        routed: dict[str, list] = state.get("routes", {})       # dev -> routes we added
        links = await _links()
        wanted_devs = {self.bridge}
        for plan in plans:
            wanted_devs.add(plan.bridge)
            wanted_devs.update(plan.fabric)
            if plan.bridge not in links:
                await run_tool("ip", "link", "add", plan.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
                created.add(plan.bridge)
                self._save({**state, "devices": sorted(created)})
            elif _kind(links[plan.bridge]) != "bridge":
                raise NetworkError(f"{plan.bridge} exists and is not a bridge")
            await run_tool("ip", "link", "set", plan.bridge, "type", "bridge", "nf_call_iptables", "1")
            await asyncio.to_thread(_write_sysctl, f"/proc/sys/net/ipv4/conf/{plan.bridge}/arp_ignore", "1")
            if plan.vxlan:
                await self._ensure_vxlan(plan, links.get(plan.vxlan), created)
            if plan.vlan:
                if plan.vlan not in links:
                    await run_tool("ip", "link", "add", "link", self.uplink, "name", plan.vlan, "type", "vlan",
                               "id", str(plan.segment))
                    created.add(plan.vlan)
                await run_tool("ip", "link", "set", plan.vlan, "master", plan.bridge, "up")
            for port in plan.fabric:
                if len(plan.fabric) > 1:  # VXLAN and 802.1Q both: never bridge one into the other
                    await run_tool("bridge", "link", "set", "dev", port, "isolated", "on")
            await run_tool("ip", "link", "set", plan.bridge, "up")
            have = await _addresses(plan.bridge)
            for addr in plan.addresses:
                if addr not in have:
                    await run_tool("ip", "addr", "add", addr, "dev", plan.bridge)
            for addr in set(ours.get(plan.bridge, [])) - set(plan.addresses):
                await run_tool("ip", "addr", "del", addr, "dev", plan.bridge, check=False)
            ours[plan.bridge] = list(plan.addresses)
            for route in plan.routes:
                await run_tool("ip", "route", "replace", route, "dev", plan.bridge, "scope", "link")
            for route in set(routed.get(plan.bridge, [])) - set(plan.routes):
                await run_tool("ip", "route", "del", route, "dev", plan.bridge, check=False)
            routed[plan.bridge] = list(plan.routes)
            self._save({"devices": sorted(created), "addresses": ours, "routes": routed})
        # what an earlier plan made and this one drops: ports first, then the bridges
        planned = {p.bridge for p in plans}
        for dev in sorted(created - wanted_devs, key=lambda d: _kind(links.get(d)) == "bridge"):
            if dev in links:
                code, _, err = await run_tool("ip", "link", "del", dev, check=False)
                if code != 0:
                    log.warning("network: removing %s: %s", dev, err)
                    continue
            created.discard(dev)
        for dev in list(ours):
            if dev not in planned:
                if dev in links and dev not in created:  # e.g. the node bridge after novlan
                    for addr in ours[dev]:
                        await run_tool("ip", "addr", "del", addr, "dev", dev, check=False)
                    for route in routed.get(dev, []):
                        await run_tool("ip", "route", "del", route, "dev", dev, check=False)
                ours.pop(dev)
                routed.pop(dev, None)
        self._save({"devices": sorted(created), "addresses": ours, "routes": routed})
        self.plans = list(plans)

    async def _ensure_vxlan(self, plan: SegmentPlan, link: dict | None, created: set[str]) -> None:
        data = (link or {}).get("linkinfo", {}).get("info_data", {})
        if link is not None and (_kind(link) != "vxlan" or data.get("id") != plan.vni
                                 or data.get("local") != self.tunnel_ip):
            if plan.vxlan not in created:
                raise NetworkError(f"{plan.vxlan} exists and is not our VXLAN port (VNI {plan.vni}, local {self.tunnel_ip})")
            await run_tool("ip", "link", "del", plan.vxlan)
            link = None
        if link is None:
            await run_tool("ip", "link", "add", plan.vxlan, "type", "vxlan", "id", str(plan.vni), "local",
                       self.tunnel_ip, "dstport", str(VXLAN_PORT))
            created.add(plan.vxlan)
        await run_tool("ip", "link", "set", plan.vxlan, "master", plan.bridge, "up")
        _, out, _ = await run_tool("bridge", "-j", "fdb", "show", "dev", plan.vxlan)
        flooding = {e.get("dst") for e in json.loads(out or "[]") if e.get("mac") == FLOOD_MAC and e.get("dst")}
        for peer in sorted(set(plan.flood) - flooding):
            await run_tool("bridge", "fdb", "append", FLOOD_MAC, "dev", plan.vxlan, "dst", peer)
        for peer in sorted(flooding - set(plan.flood)):
            await run_tool("bridge", "fdb", "del", FLOOD_MAC, "dev", plan.vxlan, "dst", peer, check=False)

    async def remove_all(self) -> None:
        """At agent stop with no instance left: everything we made goes."""
        await self.reconcile([])
