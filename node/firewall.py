"""Security groups and elastic IPs on the node (issue #8): the network policy control
pushes (docs/node-protocol.md, "Network policy") turned into nftables, applied in one
`nft -f` transaction, kept in LMDB and re-applied when the agent starts.

    parse_policy(doc)       the PUT body, checked (BadRequest with the reason) -> Policy
    render_ruleset(...)     pure: (policy | None, the node's instance ports, bridge, subnet,
                            gateway, metadata port, Layout) -> the text `nft -f -` reads
    Firewall                the agent's object: install (at start, from LMDB), set_policy
                            (the PUT), prepare (before a launch's domain starts: its
                            segment too), refresh (after a launch or terminate)

In the managed modes (the policy's "network", segments.py) the Firewall first makes the
node's segments match (bridges, VXLAN/802.1Q ports, gateways, DHCP), then renders the
same chains over every segment bridge (a Layout): frames arriving from the fabric are
marked in the bridge table and skip the egress rules (the sending node ran them), and a
local instance's traffic to the cloud's private ranges beyond this node is passed on
(the receiving node runs the destination's ingress rules) -- each rule is enforced once,
on the node of the instance it belongs to.

Where the filtering happens, and why there. Instances on one bridge talk at L2, so a
`bridge` family table would see tap-to-tap frames by port name; but this kernel (and
any without CONFIG_NF_CONNTRACK_BRIDGE) refuses a `ct` expression in the bridge family
("Could not process rule: Protocol error"), and security groups are stateful: replies of
allowed connections must pass whatever the rules of the other side say. Stateless
"reverse flow" rules cannot express that exactly (a reply of an allowed TCP connection
and a fresh connection from the same port look the same to them). So bridged IPv4 is
passed through the IP hooks instead (br_netfilter; the bridge's own `nf_call_iptables`
option, set here, so no host-wide sysctl changes), where conntrack tracks it, and the
rules live in the inet-side table `ip eucalypt_<BR>` that network.py already owns:

  * table ip eucalypt_<BR>
      prerouting   metadata DNAT (network.py's) + one DNAT public_ip -> private_ip per
                   elastic IP (from outside the bridge)
      postrouting  SNAT private_ip -> public_ip per elastic IP, before the masquerade of
                   the rest of the subnet
      forward      established/related accept; from the bridge: the source instance's
                   egress chain (goto by `ip saddr`), unknown sources dropped; to the
                   bridge: the destination instance's ingress chain (by `ip daddr`),
                   unknown destinations dropped. Bridged traffic (tap to tap) passes both.
      input        from the bridge to the node itself: DHCP and the metadata service
                   always; anything else by the source's egress rules
  * table bridge eucalypt_<BR>   anti-spoofing, by tap name, so that `ip saddr` in the ip
                   table really names the instance: a frame from tap T must carry T's
                   MAC and (IPv4) T's address (or 0.0.0.0 for DHCP), ARP likewise;
                   other ethertypes (IPv6 included: groups are IPv4-only) are dropped.
                   A frame leaving by tap T must be for T's address (or broadcast).

Chains are per instance (ingress_<id>, egress_<id>), generated from the rules of all its
groups. Instances of this node that the policy does not name (launched since the last
push) get empty chains: nothing but DHCP and metadata until control pushes. Before the
first policy arrives nothing is filtered (the ruleset is network.py's NAT table alone),
so a node without a policy-speaking control behaves as before.

Elastic IPs: operators route the public range to the node (the tests' "outside"
namespace has a route via the node's uplink veth); the node answers no ARP for them.

Connections open when a rule is removed stay open until conntrack forgets them, as on
EC2 ("tracked connections are not interrupted").
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadRequest, Conflict
from .network import METADATA_ADDRESS, DhcpContext, NetworkError, nft_ruleset, nft_table_name, run_tool
from .segments import GroupNet, ManagedNetwork, network_to_json, parse_group_net, parse_network

log = logging.getLogger("eucalypt.node.firewall")

POLICY_TREE = "network_policy"
TREES = (POLICY_TREE,)
_CURRENT = b"current"
_INSTANCE_ID = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_PROTOCOL_NAMES = {"tcp": 6, "udp": 17, "icmp": 1}
_NAMES_BY_NUMBER = {v: k for k, v in _PROTOCOL_NAMES.items()}
MAX_RULES = 10000


# the document --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    protocol: str                       # "tcp" | "udp" | "icmp" | "all" | "<0..255>"
    from_port: int | None               # tcp/udp: port range (None: all); icmp: type (None: any)
    to_port: int | None                 # icmp: code (None: any)
    cidrs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupRules:
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyInstance:
    private_ip: str | None
    groups: tuple[str, ...]
    public_ip: str | None
    public_hostname: str | None = None   # for the metadata service, with public_ip


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    instances: dict[str, PolicyInstance] = field(default_factory=dict)
    groups: dict[str, GroupRules] = field(default_factory=dict)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    network: ManagedNetwork | None = None     # the managed modes' segments (None: flat)


def _ipv4(value, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise BadRequest(f"{what}: {value!r} is not an IPv4 address") from None


def _int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{what}: {value!r} is not an integer in {low}..{high}")
    return value


def _strings(value, what: str, pattern: re.Pattern) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list")
    for item in value:
        if not isinstance(item, str) or not pattern.match(item):
            raise BadRequest(f"{what}: {item!r} is not a valid id")
    return tuple(value)


def _rule(doc, what: str) -> Rule:
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be an object")
    proto = doc.get("protocol")
    if isinstance(proto, int) and not isinstance(proto, bool):
        proto = str(proto)
    if not isinstance(proto, str):
        raise BadRequest(f"{what}.protocol must be tcp, udp, icmp, -1 or a protocol number")
    proto = proto.lower()
    if proto in ("-1", "all"):
        proto = "all"
    elif proto not in _PROTOCOL_NAMES:
        if not proto.isdigit() or not 0 <= int(proto) <= 255:
            raise BadRequest(f"{what}.protocol {proto!r} is not tcp, udp, icmp, -1 or 0..255")
        proto = _NAMES_BY_NUMBER.get(int(proto), str(int(proto)))
    low, high = doc.get("from_port"), doc.get("to_port")
    if proto in ("tcp", "udp"):
        low = None if low is None or low == -1 else _int(low, f"{what}.from_port", 0, 65535)
        high = None if high is None or high == -1 else _int(high, f"{what}.to_port", 0, 65535)
        if (low is None) != (high is None):
            low, high = (low or 0), (65535 if high is None else high)
        if low is not None and low > high:
            raise BadRequest(f"{what}: from_port {low} is above to_port {high}")
        if (low, high) == (0, 65535):
            low = high = None
    elif proto == "icmp":  # type and code; -1 any
        low = None if low is None or low == -1 else _int(low, f"{what}.from_port (icmp type)", 0, 255)
        high = None if high is None or high == -1 else _int(high, f"{what}.to_port (icmp code)", 0, 255)
        if low is None:
            high = None  # a code without a type means nothing
    else:
        low = high = None
    cidrs = doc.get("cidrs", [])
    if not isinstance(cidrs, list):
        raise BadRequest(f"{what}.cidrs must be a list")
    nets = []
    for c in cidrs:
        try:
            nets.append(str(ipaddress.IPv4Network(c, strict=False)))
        except (ValueError, TypeError):
            raise BadRequest(f"{what}.cidrs: {c!r} is not an IPv4 CIDR") from None
    groups = _strings(doc.get("groups", []), f"{what}.groups", _GROUP_ID)
    return Rule(proto, low, high, tuple(nets), groups)


def parse_policy(doc) -> Policy:
    """The PUT body as a Policy, or BadRequest saying what is wrong (see the protocol)."""
    if not isinstance(doc, dict):
        raise BadRequest("the network policy must be a JSON object")
    version = _int(doc.get("version"), "version", 0, (1 << 63) - 1)
    raw_instances, raw_groups, raw_members = (doc.get(k, {}) for k in ("instances", "groups", "members"))
    for name, value in (("instances", raw_instances), ("groups", raw_groups), ("members", raw_members)):
        if not isinstance(value, dict):
            raise BadRequest(f"{name} must be an object")
    instances: dict[str, PolicyInstance] = {}
    public: dict[str, str] = {}
    for iid, spec in raw_instances.items():
        if not _INSTANCE_ID.match(iid):
            raise BadRequest(f"instances: {iid!r} is not an instance id")
        if not isinstance(spec, dict):
            raise BadRequest(f"instances.{iid} must be an object")
        private = spec.get("private_ip")
        private = None if private in (None, "") else _ipv4(private, f"instances.{iid}.private_ip")
        pub = spec.get("public_ip")
        pub = None if pub in (None, "") else _ipv4(pub, f"instances.{iid}.public_ip")
        if pub is not None:
            if private is None:
                raise BadRequest(f"instances.{iid} has a public_ip but no private_ip")
            if pub in public:
                raise BadRequest(f"public_ip {pub} is given to both {public[pub]} and {iid}")
            public[pub] = iid
        groups = _strings(spec.get("groups", []), f"instances.{iid}.groups", _GROUP_ID)
        host = spec.get("public_hostname") or None
        if host is not None and (not isinstance(host, str) or not _HOSTNAME.match(host)):
            raise BadRequest(f"instances.{iid}.public_hostname: {host!r} is not a host name")
        instances[iid] = PolicyInstance(private, groups, pub, host if pub else None)
    groups: dict[str, GroupRules] = {}
    count = 0
    for gid, spec in raw_groups.items():
        if not _GROUP_ID.match(gid):
            raise BadRequest(f"groups: {gid!r} is not a group id")
        if not isinstance(spec, dict):
            raise BadRequest(f"groups.{gid} must be an object")
        sides = {}
        for side in ("ingress", "egress"):
            rules = spec.get(side, [])
            if not isinstance(rules, list):
                raise BadRequest(f"groups.{gid}.{side} must be a list")
            count += len(rules)
            sides[side] = tuple(_rule(r, f"groups.{gid}.{side}[{i}]") for i, r in enumerate(rules))
        groups[gid] = GroupRules(**sides)
    if count > MAX_RULES:
        raise BadRequest(f"{count} rules; at most {MAX_RULES}")
    members: dict[str, tuple[str, ...]] = {}
    for gid, ips in raw_members.items():
        if not _GROUP_ID.match(gid):
            raise BadRequest(f"members: {gid!r} is not a group id")
        if not isinstance(ips, list):
            raise BadRequest(f"members.{gid} must be a list of IPv4 addresses")
        members[gid] = tuple(_ipv4(ip, f"members.{gid}") for ip in ips)
    return Policy(version, instances, groups, members, parse_network(doc.get("network")))


def policy_to_json(policy: Policy) -> dict:
    """The Policy as a document parse_policy reads back to an equal Policy (for LMDB)."""
    def rule(r: Rule) -> dict:
        return {"protocol": "-1" if r.protocol == "all" else r.protocol, "from_port": r.from_port,
                "to_port": r.to_port, "cidrs": list(r.cidrs), "groups": list(r.groups)}
    return {"version": policy.version,
            "instances": {i: {"private_ip": p.private_ip, "groups": list(p.groups), "public_ip": p.public_ip,
                              "public_hostname": p.public_hostname} for i, p in policy.instances.items()},
            "groups": {g: {"ingress": [rule(r) for r in s.ingress], "egress": [rule(r) for r in s.egress]}
                       for g, s in policy.groups.items()},
            "members": {g: list(ips) for g, ips in policy.members.items()},
            "network": network_to_json(policy.network)}


# the ruleset ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InstancePort:
    """One live instance of this node as the firewall sees it."""
    instance_id: str
    tap: str
    mac: str
    private_ip: str | None
    subnet: str | None = None   # its managed subnet (None: the node's)


@dataclass(frozen=True, slots=True)
class Layout:
    """The managed modes' additions to the ruleset: the segments' bridges besides the
    node bridge, their fabric ports (VXLAN, 802.1Q: where other nodes' frames arrive),
    and the cloud's private ranges (what a local instance may send to a remote one, and
    what is never masqueraded)."""
    bridges: tuple[str, ...] = ()
    fabric: tuple[str, ...] = ()
    private_ranges: tuple[str, ...] = ()


FABRIC_MARK = 0x00100000  # set on frames from another node: their egress rules ran there


def _chain_id(instance_id: str) -> str:
    return instance_id.replace("-", "_")


def _addresses(rule: Rule, members: dict[str, tuple[str, ...]]) -> list[str] | None:
    """The peer addresses a rule names, collapsed (None: any address; []: none at all)."""
    nets = [ipaddress.IPv4Network(c) for c in rule.cidrs]
    for g in rule.groups:
        nets.extend(ipaddress.IPv4Network(ip) for ip in members.get(g, ()))
    if any(n.prefixlen == 0 for n in nets):
        return None
    return [str(n) if n.prefixlen < 32 else str(n.network_address) for n in ipaddress.collapse_addresses(nets)]


def _match(rule: Rule, members: dict[str, tuple[str, ...]], peer: str) -> str | None:
    """The nft match of one rule (`peer` is saddr for ingress, daddr for egress), or None
    when it matches nothing (a source group without members)."""
    parts = []
    addrs = _addresses(rule, members)
    if addrs is not None:
        if not addrs:
            return None
        parts.append(f"ip {peer} {{ {', '.join(addrs)} }}")
    if rule.protocol in ("tcp", "udp"):
        parts.append(f"meta l4proto {rule.protocol}")
        if rule.from_port is not None:
            ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
            parts.append(f"th dport {ports}")
    elif rule.protocol == "icmp":
        parts.append("meta l4proto icmp")
        if rule.from_port is not None:
            parts.append(f"icmp type {rule.from_port}")
            if rule.to_port is not None:
                parts.append(f"icmp code {rule.to_port}")
    elif rule.protocol != "all":
        parts.append(f"meta l4proto {rule.protocol}")
    return " ".join(parts)


def _rules_of(policy: Policy, groups: tuple[str, ...], side: str) -> list[Rule]:
    seen, out = set(), []
    for g in groups:
        for r in getattr(policy.groups.get(g, GroupRules()), side):
            if r not in seen:
                seen.add(r)
                out.append(r)
    return out


def _names(names) -> str:
    """One interface name, or an anonymous set of several."""
    names = list(dict.fromkeys(names))
    return f'"{names[0]}"' if len(names) == 1 else "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def render_ruleset(policy: Policy | None, ports: list[InstancePort], bridge: str, subnet: str, gateway: str,
                   metadata_port: int, layout: Layout | None = None) -> str:
    """The node's whole nftables state for BR (see the module doc), as one `nft -f` text
    that replaces both tables atomically whether they exist or not. Without a policy:
    network.py's NAT table alone, and no bridge table. With a Layout (managed modes)
    the same chains cover every segment bridge, frames from the fabric skip the egress
    rules (the sending node applied them), and a local instance may send to the private
    ranges beyond this node (the receiving node applies its ingress rules)."""
    t = nft_table_name(bridge)
    net = ipaddress.IPv4Network(subnet)
    layout = layout or Layout()
    brs = _names([bridge, *layout.bridges])
    lines = [f"table ip {t} {{}}", f"delete table ip {t}",
             f"table bridge {t} {{}}", f"delete table bridge {t}"]
    ports = sorted(ports, key=lambda p: p.instance_id)
    eips: list[tuple[str, str]] = []  # (public, private) of this node's instances
    for p in ports if policy is not None else ():
        spec = policy.instances.get(p.instance_id)
        private = p.private_ip or (spec.private_ip if spec else None)
        if spec and spec.public_ip and private:
            eips.append((spec.public_ip, private))
    if policy is None:  # network.py's NAT table alone (and no bridge table)
        return "\n".join(lines[2:]) + "\n" + nft_ruleset(bridge, subnet, gateway, metadata_port)
    lines += [f"table ip {t} {{",
              "  chain prerouting {",
              "    type nat hook prerouting priority dstnat; policy accept;",
              f'    iifname {brs} ip daddr {METADATA_ADDRESS} tcp dport 80 dnat to {gateway}:{metadata_port}']
    lines += [f'    iifname != {brs} ip daddr {pub} dnat to {priv}' for pub, priv in eips]
    lines += ["  }", "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    lines += [f'    ip saddr {priv} oifname != {brs} snat to {pub}' for pub, priv in eips]
    sources = ", ".join(dict.fromkeys([subnet, *layout.private_ranges]))
    sources = sources if len(layout.private_ranges) == 0 else "{ " + sources + " }"
    lines += [f'    ip saddr {sources} oifname != {brs} masquerade', "  }"]

    addressed = [(p, p.private_ip or (policy.instances[p.instance_id].private_ip
                                      if p.instance_id in policy.instances else None)) for p in ports]
    with_ip = [(p, ip) for p, ip in addressed if ip]
    for p, ip in with_ip:
        spec = policy.instances.get(p.instance_id)
        groups = spec.groups if spec else ()
        cid = _chain_id(p.instance_id)
        lines += [f"  chain ingress_{cid} {{", f"    # {p.instance_id} ({ip}): {', '.join(groups) or 'no groups'}"]
        for r in _rules_of(policy, groups, "ingress"):
            m = _match(r, policy.members, "saddr")
            if m is not None:
                lines.append(f"    {m} accept" if m else "    accept")
        lines += ["    drop", "  }", f"  chain egress_{cid} {{"]
        for r in _rules_of(policy, groups, "egress"):
            m = _match(r, policy.members, "daddr")
            if m is not None:
                lines.append(f"    {m} return" if m else "    return")
        lines += ["    drop", "  }"]
    saddr_map = ", ".join(f"{ip} : goto egress_{_chain_id(p.instance_id)}" for p, ip in with_ip)
    daddr_map = ", ".join(f"{ip} : goto ingress_{_chain_id(p.instance_id)}" for p, ip in with_ip)
    lines += ["  chain from_instance {"]
    if saddr_map:
        lines.append(f"    ip saddr vmap {{ {saddr_map} }}")
    lines += ["    drop", "  }", "  chain to_instance {"]
    if daddr_map:
        lines.append(f"    ip daddr vmap {{ {daddr_map} }}")
    if layout.private_ranges:  # an instance on another node: its node's ingress rules decide
        lines.append(f"    ip daddr {{ {', '.join(layout.private_ranges)} }} accept")
    from_local = f"meta mark & {FABRIC_MARK:#010x} == 0 " if layout.fabric else ""
    lines += ["    drop", "  }",
              "  chain forward {",
              "    type filter hook forward priority filter; policy accept;",
              "    ct state established,related accept",
              f'    iifname {brs} {from_local}jump from_instance',
              f'    oifname {brs} jump to_instance',
              "  }",
              "  chain input {",
              "    type filter hook input priority filter; policy accept;",
              f'    iifname != {brs} accept',
              "    ct state established,related accept",
              "    udp sport 68 udp dport 67 accept",
              f"    ip daddr {gateway} tcp dport {metadata_port} accept",
              "    jump from_instance",
              "  }"]
    if layout.bridges:  # routing between segments shares one link: no redirects to the guests
        lines += ["  chain output {",
                  "    type filter hook output priority filter; policy accept;",
                  f"    oifname {brs} icmp type redirect drop",
                  "  }"]
    lines += ["}"]
    # the bridge table: anti-spoofing by tap name
    lines += [f"table bridge {t} {{"]
    for p, ip in addressed:
        cid = _chain_id(p.instance_id)
        lines += [f"  chain from_{cid} {{",
                  f"    ether saddr != {p.mac} drop"]
        if ip:
            lines += [f"    ether type arp arp saddr ip {{ {ip}, 0.0.0.0 }} return",
                      f"    ether type ip ip saddr {ip} return"]
        else:
            lines += ["    ether type arp arp saddr ip 0.0.0.0 return"]
        lines += ["    ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
                  "    drop", "  }",
                  f"  chain to_{cid} {{"]
        own = ipaddress.IPv4Network(p.subnet) if p.subnet else net
        dests = ([ip] if ip else []) + ["255.255.255.255", str(own.broadcast_address)]
        lines += [f"    ether type ip ip daddr != {{ {', '.join(dests)} }} drop", "  }"]
    in_map = ", ".join(f'"{p.tap}" : jump from_{_chain_id(p.instance_id)}' for p, _ in addressed)
    out_map = ", ".join(f'"{p.tap}" : jump to_{_chain_id(p.instance_id)}' for p, _ in addressed)
    fabric = _names(layout.fabric) if layout.fabric else None
    # DHCP never crosses the fabric: each node serves its own instances (another node's
    # dnsmasq, authoritative, would refuse their requests).
    no_dhcp = "meta protocol ip udp dport { 67, 68 } drop"
    lines += ["  chain prerouting {", "    type filter hook prerouting priority filter; policy accept;"]
    if fabric:
        lines.append(f"    iifname {fabric} meta mark set meta mark | {FABRIC_MARK:#010x}")
    if in_map:
        lines.append(f"    iifname vmap {{ {in_map} }}")
    lines += ["  }"]
    if fabric:
        lines += ["  chain input {", "    type filter hook input priority filter; policy accept;",
                  f"    iifname {fabric} {no_dhcp}", "  }"]
    for chain, hook in (("forward", "forward"), ("output", "output")):
        lines += [f"  chain {chain} {{", f"    type filter hook {hook} priority filter; policy accept;"]
        if fabric:
            lines.append(f"    oifname {fabric} {no_dhcp}")
        if out_map:
            lines.append(f"    oifname vmap {{ {out_map} }}")
        lines += ["  }"]
    lines += ["}"]
    return "\n".join(lines) + "\n"


# the agent's side ----------------------------------------------------------------------------

def _elastic_ips(policy: Policy | None, ports: list[InstancePort]) -> set[str]:
    """The public IPs the policy gives this node's instances."""
    if policy is None:
        return set()
    return {spec.public_ip for p in ports if (spec := policy.instances.get(p.instance_id)) and spec.public_ip}


class Firewall:
    """The policy of one node: kept in LMDB (tree network_policy), rendered for the live
    instances of the instance manager, applied to the node network (None: not managed;
    then the policy is kept and its version reported, but nothing is enforced).

    set_policy and refresh are serialised (one lock): each renders from the current
    policy and instance records and applies the whole ruleset, so the last one wins
    and is right."""

    def __init__(self, kv, instances, network, *, live_states=("pending", "running", "stopped")) -> None:
        self.kv, self.instances, self.network = kv, instances, network
        self._live = live_states
        self._lock = asyncio.Lock()
        self.metadata_port: int | None = None
        self.policy: Policy | None = self._load()
        self.applied_version: int = 0       # what the kernel has (0: none yet)
        self._last_text: str | None = None
        self._reconciled = False             # segments checked against the host once

    def _load(self) -> Policy | None:
        with self.kv.read() as txn:
            raw = txn.get(POLICY_TREE, _CURRENT)
        if raw is None:
            return None
        try:
            return parse_policy(json.loads(raw))
        except (ValueError, BadRequest) as exc:  # written by us, so a bug or a damaged store
            log.error("the stored network policy is unreadable (%s); waiting for control's next push", exc)
            return None

    def public_address(self, instance_id: str) -> tuple[str | None, str | None] | None:
        """(public IP, public host name) the policy in force gives the instance, for the
        metadata service (an elastic IP associated after the launch); None when no
        policy names it (then the launch's metadata stands)."""
        if self.policy is None or not self.applied_version:
            return None
        spec = self.policy.instances.get(instance_id)
        return None if spec is None else (spec.public_ip, spec.public_hostname)

    @property
    def version(self) -> int:
        """The version in force: applied (or, without a managed network, accepted); 0: none."""
        return self.applied_version

    def _live_records(self):
        return [r for r in self.instances.all() if r.state in self._live]

    @staticmethod
    def ports(records) -> list[InstancePort]:
        return [InstancePort(r.instance_id, r.tap, r.mac, r.private_ip or None, (r.network or {}).get("subnet"))
                for r in records if r.tap and r.mac]

    @staticmethod
    def wanted_segments(policy: Policy | None, records) -> tuple[str | None, dict[str, GroupNet], tuple]:
        """(mode, groups, peers) of the managed network this node should have: every
        group of the policy's network, plus the segment of each live local instance
        (launched before the policy naming its group arrived). Mode None: flat."""
        mode, groups, peers = None, {}, ()
        if policy is not None and policy.network is not None:
            mode, groups, peers = policy.network.mode, dict(policy.network.groups), policy.network.peers
        for r in records:
            if r.network and (mode is None or r.network.get("mode") == mode):
                mode = r.network["mode"]
                groups[f"instance:{r.instance_id}"] = parse_group_net(r.network, r.instance_id, mode)
        return mode, groups, peers

    def layout(self, policy: Policy | None) -> Layout | None:
        plans = self.network.segments.plans if self.network is not None else []
        if not plans:
            return None
        ranges = list(policy.network.private_ranges) if policy is not None and policy.network else []
        for plan in plans:  # the local subnets at least, before the first policy says more
            for subnet, _ in plan.contexts:
                if not any(ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network(r)) for r in ranges):
                    ranges.append(subnet)
        return Layout(tuple(p.bridge for p in plans if p.bridge != self.network.bridge),
                      tuple(port for p in plans for port in p.fabric), tuple(ranges))

    def render(self, policy: Policy | None, ports: list[InstancePort]) -> str:
        n = self.network
        return render_ruleset(policy, ports, n.bridge, n.subnet, n.gateway, self.metadata_port, self.layout(policy))

    async def _segments(self, policy: Policy | None, records) -> None:
        """Make the host's segments and DHCP match the policy and the local instances."""
        mode, groups, peers = self.wanted_segments(policy, records)
        segs = self.network.segments
        plans = segs.plan(mode, groups, peers) if mode else []
        if plans != segs.plans or not self._reconciled:
            await segs.reconcile(plans)
            self._reconciled = True
        await self.network.set_contexts(DhcpContext(p.bridge, subnet, gateway, p.mtu)
                                        for p in plans for subnet, gateway in p.contexts)

    async def _apply(self, policy: Policy | None) -> None:
        if self.network is None:
            return
        if self.metadata_port is None:
            return  # not installed yet: install() renders the policy in force
        records = self._live_records()  # one read of the records for the whole apply
        ports = self.ports(records)
        await self._segments(policy, records)
        if policy is None and self.network.segments.plans:
            policy = Policy(0)  # a managed instance before any policy: locked down, as on EC2
        if policy is not None:
            await self._bridged_ip_hooks()
        text = self.render(policy, ports)
        if text != self._last_text:
            await run_tool("nft", "-f", "-", stdin=text.encode())
            self._last_text = text
        await self.network.set_public_addresses(_elastic_ips(policy, ports))

    async def _bridged_ip_hooks(self) -> None:
        """Have bridged IPv4 pass the IP hooks (conntrack + our forward chain): the
        bridge's own nf_call_iptables, which needs br_netfilter in the kernel."""
        if not await asyncio.to_thread(Path("/proc/sys/net/bridge").exists):
            raise NetworkError("bridged traffic cannot be filtered: the kernel has no bridge netfilter "
                               "(modprobe br_netfilter)")
        await run_tool("ip", "link", "set", self.network.bridge, "type", "bridge", "nf_call_iptables", "1")

    async def install(self, metadata_port: int) -> None:
        """At agent start, once the metadata service listens: the NAT table plus the
        stored policy (if any), in one transaction. A stored policy that cannot be
        applied is logged and left for control's next push; the NAT is installed anyway."""
        async with self._lock:
            self.metadata_port = metadata_port
            self._last_text = None
            try:
                await self._apply(self.policy)
                self.applied_version = self.policy.version if self.policy else 0
            except NetworkError as exc:
                if self.policy is None:
                    raise
                log.error("re-applying network policy %d failed: %s", self.policy.version, exc.message)
                await self._apply(None)
            if self.policy is not None and self.applied_version:
                log.info("network policy %d re-applied from the store", self.applied_version)

    async def set_policy(self, doc) -> dict:
        """The PUT: check, refuse an older version (Conflict), apply, then store.
        Answers {"version", "enforced"}."""
        policy = parse_policy(doc)
        async with self._lock:
            if self.policy is not None and policy.version < self.policy.version:
                raise Conflict(f"network policy version {policy.version} is older than the applied "
                               f"version {self.policy.version}")
            await self._apply(policy)  # nft's transaction: all or nothing
            raw = json.dumps(policy_to_json(policy)).encode()
            with self.kv.write() as txn:
                txn.put(POLICY_TREE, _CURRENT, raw)
            self.policy = policy
            self.applied_version = policy.version
        log.info("network policy %d applied (%d instance(s) named, %d group(s))", policy.version,
                 len(policy.instances), len(policy.groups))
        return {"version": policy.version, "enforced": self.network is not None}

    async def prepare(self) -> None:
        """Before a launch starts its domain: segments and rules for the live records (the
        pending one included). Raises NetworkError: a managed instance must not start
        without its segment."""
        async with self._lock:
            await self._apply(self.policy if self.applied_version else None)

    async def refresh(self) -> None:
        """Re-render for the current instances (after a launch or terminate). Never raises
        but CancelledError: a failure is logged (the old rules stay)."""
        async with self._lock:
            try:
                await self._apply(self.policy if self.applied_version else None)
            except NetworkError as exc:
                log.error("updating the firewall for the node's instances failed: %s", exc.message)
