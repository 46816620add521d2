"""The managed network modes, control's side (issue #8; docs/node-protocol.md, "Managed
networks"): who gets which segment, subnet slice and gateway. Pure functions over the
store, run inside the caller's transaction, no I/O.

Trees (store.py):

    group_index   GROUPID -> k          a group's durable index (1..), given with its first
    group_slots   k (8 digits) -> GROUPID   instance, freed when the group is deleted
    node_index    NODEID -> "ZONE/n"    a node's durable index in its zone (1..max)
    node_slots    ZONE/n (4 digits) -> NODEID

From k: segment id vlan_first + k (None in managed-novlan), and slice k (of prefix
group_prefix) of every zone's range. From n: the node's gateway in a slice, slice + n.
Instances take slice + max_nodes + 1 and up, so a gateway is never an instance's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import Ec2Error
from .store import get_text, put_text

MODES = ("flat", "managed", "managed-novlan")
TREES = ("group_index", "group_slots", "node_index", "node_slots")


class ZoneFull(Exception):
    """A zone has no node index left (max_nodes_per_zone nodes already)."""


@dataclass(frozen=True)
class NetworkPlan:
    mode: str = "flat"
    vlans: tuple[int, int] = (10, 4094)
    group_prefix: int = 24
    zone_networks: dict[str, str] = field(default_factory=dict)  # every zone -> its private range
    max_nodes_per_zone: int = 16

    @classmethod
    def build(cls, mode: str, zones: tuple[str, ...], *, vlans=(10, 4094), group_prefix: int = 24,
              zone_networks: dict[str, str] | None = None, max_nodes_per_zone: int = 16) -> "NetworkPlan":
        """Checked (ValueError says what is wrong); zones without a range get 172.(16+i).0.0/16."""
        if mode not in MODES:
            raise ValueError(f"network mode {mode!r} is not one of {', '.join(MODES)}")
        first, last = vlans
        if not 1 <= first < last <= 4094:
            raise ValueError(f"--vlans {first}-{last}: need 1 <= first < last <= 4094")
        given = dict(zone_networks or {})
        for zone in given:
            if zone not in zones:
                raise ValueError(f"--zone-network names {zone!r}, which is not one of the zones {', '.join(zones)}")
        nets = {}
        for i, zone in enumerate(zones):
            text = given.get(zone) or f"172.{16 + i}.0.0/16"
            try:
                net = ipaddress.IPv4Network(text, strict=True)
            except ValueError as exc:
                raise ValueError(f"--zone-network {zone}={text}: {exc}") from None
            if not net.is_private:
                raise ValueError(f"--zone-network {zone}={net}: not a private range")
            nets[zone] = net
        names = list(nets)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if nets[a].overlaps(nets[b]):
                    raise ValueError(f"the zone networks of {a} ({nets[a]}) and {b} ({nets[b]}) overlap")
        if not 1 <= max_nodes_per_zone <= 250:
            raise ValueError("--max-nodes-per-zone must be 1..250")
        for zone, net in nets.items():
            if not net.prefixlen < group_prefix <= 30:
                raise ValueError(f"--group-prefix /{group_prefix} must be longer than {zone}'s /{net.prefixlen} "
                                 "and at most /30")
            if 2 ** (32 - group_prefix) < max_nodes_per_zone + 3:
                raise ValueError(f"a /{group_prefix} slice has no room for {max_nodes_per_zone} node gateways "
                                 "and an instance")
        return cls(mode, (first, last), group_prefix, {z: str(n) for z, n in nets.items()}, max_nodes_per_zone)

    @property
    def managed(self) -> bool:
        return self.mode != "flat"

    @property
    def max_index(self) -> int:
        """The highest group index: bounded by the segment ids and by the slices of a zone."""
        slices = min(2 ** (self.group_prefix - ipaddress.IPv4Network(n).prefixlen)
                     for n in self.zone_networks.values())
        return min(self.vlans[1] - self.vlans[0], slices - 1)

    def slice(self, zone: str, k: int) -> ipaddress.IPv4Network:
        net = ipaddress.IPv4Network(self.zone_networks[zone])
        size = 2 ** (32 - self.group_prefix)
        return ipaddress.IPv4Network((int(net.network_address) + k * size, self.group_prefix))

    def segment(self, k: int) -> int | None:
        return None if self.mode == "managed-novlan" else self.vlans[0] + k

    def group_net(self, zone: str, k: int, node_index: int) -> dict:
        """A group's network as a node of `zone` with index n sees it (the protocol's shape)."""
        own = self.slice(zone, k)
        return {"segment": self.segment(k), "subnet": str(own), "gateway": str(own.network_address + node_index),
                "peer_subnets": sorted(str(self.slice(z, k)) for z in self.zone_networks if z != zone)}

    def private_ranges(self) -> list[str]:
        return sorted(self.zone_networks.values())


# ---- indices ----------------------------------------------------------------------------------

def group_index(txn, group_id: str) -> int | None:
    k = get_text(txn, "group_index", group_id)
    return int(k) if k is not None else None


def ensure_group_index(txn, plan: NetworkPlan, group_id: str) -> int:
    """The group's index, given now if it has none (the first free one)."""
    k = group_index(txn, group_id)
    if k is not None:
        return k
    for k in range(1, plan.max_index + 1):
        if txn.get("group_slots", f"{k:08d}".encode()) is None:
            put_text(txn, "group_index", group_id, str(k))
            put_text(txn, "group_slots", f"{k:08d}", group_id)
            return k
    raise Ec2Error("InsufficientInstanceCapacity",
                   f"No network segment is left for security group {group_id}: all {plan.max_index} are in use "
                   "(see control's --vlans, --group-prefix and --zone-network)")


def free_group_index(txn, group_id: str) -> None:
    k = group_index(txn, group_id)
    if k is not None:
        txn.delete("group_index", group_id.encode())
        if get_text(txn, "group_slots", f"{k:08d}") == group_id:
            txn.delete("group_slots", f"{k:08d}".encode())


def node_index(txn, node_id: str, zone: str) -> int | None:
    where = get_text(txn, "node_index", node_id)
    if where is None:
        return None
    node_zone, _, n = where.rpartition("/")
    return int(n) if node_zone == zone else None


def ensure_node_index(txn, plan: NetworkPlan, node_id: str, zone: str) -> tuple[int, bool]:
    """(the node's index in its zone, whether it is new). A node that changed zones gives
    up its old index. ZoneFull when the zone has max_nodes_per_zone nodes already."""
    n = node_index(txn, node_id, zone)
    if n is not None:
        return n, False
    old = get_text(txn, "node_index", node_id)
    if old is not None:
        old_zone, _, old_n = old.rpartition("/")
        txn.delete("node_slots", f"{old_zone}/{int(old_n):04d}".encode())
    for n in range(1, plan.max_nodes_per_zone + 1):
        if txn.get("node_slots", f"{zone}/{n:04d}".encode()) is None:
            put_text(txn, "node_index", node_id, f"{zone}/{n}")
            put_text(txn, "node_slots", f"{zone}/{n:04d}", node_id)
            return n, True
    raise ZoneFull(f"zone {zone} has {plan.max_nodes_per_zone} nodes already (control's --max-nodes-per-zone): "
                   f"node {node_id} cannot join its managed network")


# ---- placement, addresses, documents ------------------------------------------------------------

def can_host(plan: NetworkPlan, node: dict, several_nodes: bool) -> bool:
    """May managed-mode instances go on this node? It must run the mode, and with other
    nodes in the cloud it needs a way to carry segments to them."""
    if not plan.managed:
        return True
    net = node.get("network") or {}
    if plan.mode not in (net.get("modes") or ["flat"]):
        return False
    if several_nodes:
        return bool(net.get("tunnel_ip")) or "vlan" in (net.get("transports") or [])
    return True


def allocate_ip(txn, plan: NetworkPlan, zone: str, k: int, instance_id: str) -> tuple[str, str | None]:
    """(slice, ip) for an instance of group index k in `zone`; ip None when the slice is full."""
    net = plan.slice(zone, k)
    first = int(net.network_address) + plan.max_nodes_per_zone + 1
    for value in range(first, int(net.broadcast_address)):
        ip = str(ipaddress.IPv4Address(value))
        key = f"{net}/{ip}"
        if txn.get("private_ips", key.encode()) is None:
            put_text(txn, "private_ips", key, instance_id)
            return str(net), ip
    return str(net), None


def instance_network(txn, plan: NetworkPlan, record: dict, node: dict) -> dict:
    """Give an instance being placed on `node` its managed network: indices for all its
    groups, an address from its first group's slice; sets record subnet, private_ip and
    network (the launch body's "network")."""
    zone = node["cluster"]
    n, _ = ensure_node_index(txn, plan, node["node_id"], zone)
    indices = [ensure_group_index(txn, plan, g["id"]) for g in record["groups"]]
    record["subnet"], record["private_ip"] = allocate_ip(txn, plan, zone, indices[0], record["id"])
    if record["private_ip"] is None:  # a managed instance without an address could reach nothing
        raise Ec2Error("InsufficientFreeAddressesInSubnet",
                       f"The subnet {record['subnet']} of security group {record['groups'][0]['id']} in {zone} "
                       "has no free address left (see control's --group-prefix)")
    record["network"] = {"mode": plan.mode, **plan.group_net(zone, indices[0], n)}
    return record


def policy_network(txn, plan: NetworkPlan, node: dict, live_groups, nodes: list[dict]) -> dict | None:
    """The policy's "network" for one node (None in flat mode): every group with live
    instances cloud-wide as this node sees it, the private ranges, the other nodes."""
    if not plan.managed:
        return None
    zone = node["cluster"]
    n = node_index(txn, node["node_id"], zone)
    groups = {}
    if n is not None:
        for group_id in sorted(live_groups):
            k = group_index(txn, group_id)
            if k is not None:
                groups[group_id] = plan.group_net(zone, k, n)
    peers = sorted(({"tunnel_ip": other["network"]["tunnel_ip"], "same_zone": other["cluster"] == zone}
                    for other in nodes if other["node_id"] != node["node_id"]
                    and (other.get("network") or {}).get("tunnel_ip")), key=lambda p: p["tunnel_ip"])
    return {"mode": plan.mode, "groups": groups, "private_ranges": plan.private_ranges(), "peers": peers}
