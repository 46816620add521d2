"""Network policy: what each node must enforce for security groups and elastic IPs (#8).

Control owns the desired state; a node only enforces it. ``node_policy`` computes, inside
one read transaction and without I/O, the complete document of docs/node-protocol.md
("Network policy") for one node:

    {"version", "instances": {id: {"private_ip", "groups", "public_ip"}},
     "groups": {sg: {"ingress": [RULE], "egress": [RULE]}}, "members": {sg: [private ips]}}

Policy counter (tree ``policy``, key ``version``): every transaction that changes what
any node's document would say calls ``bump`` (rules authorized or revoked, instances
placed, moved, entering or leaving pending/running, elastic IPs associated or
detached), so the counter and the change commit together; a pusher that later reads
version V and the records in one snapshot sends a document that is at least as new as
V. Being durable, the counter keeps increasing across restarts, which the node needs:
it refuses a version older than the one it applied.

Translation from control's stored grants (api/groups.py keeps one grant per source:
``{"proto", "from", "to", "cidr" | "cidr6" | "group_id"...}``) to RULEs: grants with the
same (protocol, from, to) become one RULE listing their CIDRs and source groups, in the
order first authorized. IPv6 ranges are left out: instances have IPv4 addresses only,
so a ``cidr6`` grant can match nothing on the node. Protocols are stored already in the
protocol's spelling ("tcp", "udp", "icmp", "-1", or a number); ICMP keeps type and code
in from/to with -1 for "any"; "all" (-1) and numbered protocols carry null ports.

Only instances that are pending or running count (``POLICY_STATES``): a shutting-down
instance is on its way out and gets no traffic, and one without a private IP (its node
reported no subnet) has nothing to enforce on. ``members`` lists, for every group a RULE
names, the private IPs of such instances cloud-wide -- on every node, in every account
(a rule may name another account's group, as in EC2-Classic).
"""

from __future__ import annotations

from collections.abc import Iterable

from .netmodes import NetworkPlan, policy_network
from .store import get_json, get_text, scan_json

POLICY_TREE = "policy"
VERSION_KEY = b"version"
POLICY_STATES = ("pending", "running")


# ---- the counter ----------------------------------------------------------------------------

def current_version(txn) -> int:
    raw = txn.get(POLICY_TREE, VERSION_KEY)
    return int(raw) if raw is not None else 0


def bump(txn) -> int:
    """Count one policy change in this (write) transaction; the new version."""
    version = current_version(txn) + 1
    txn.put(POLICY_TREE, VERSION_KEY, str(version).encode())
    return version


def raise_above(txn, version: int) -> int:
    """Make the counter exceed ``version``; the counter after. For a node that reports
    applying a version control never issued (control's state is older than the node's,
    e.g. restored from a backup): pushes must be newer than that to be accepted, and an
    equal version could be taken for the document the node already has."""
    current = current_version(txn)
    if current <= version:
        current = version + 1
        txn.put(POLICY_TREE, VERSION_KEY, str(current).encode())
    return current


def ensure_started(txn) -> int:
    """Version 1 at least, so that a node that never had a policy (it reports 0) gets one,
    even from a store that predates the counter."""
    return raise_above(txn, 0)


# ---- the document ---------------------------------------------------------------------------

def enforced(record: dict) -> bool:
    return record["state"] in POLICY_STATES and bool(record.get("private_ip"))


def rules_of(grants: Iterable[dict]) -> list[dict]:
    """Control's stored grants as the protocol's RULEs (see the module doc)."""
    by_key: dict[tuple, dict] = {}
    for grant in grants:
        if "cidr" not in grant and "group_id" not in grant:
            continue  # cidr6: nothing an IPv4-only instance could match
        key = (grant["proto"], grant.get("from"), grant.get("to"))
        rule = by_key.setdefault(key, {"protocol": grant["proto"], "from_port": grant.get("from"),
                                       "to_port": grant.get("to"), "cidrs": [], "groups": []})
        if "cidr" in grant:
            if grant["cidr"] not in rule["cidrs"]:
                rule["cidrs"].append(grant["cidr"])
        elif grant["group_id"] not in rule["groups"]:
            rule["groups"].append(grant["group_id"])
    return list(by_key.values())


def _group(txn, group_id: str) -> dict | None:
    owner = get_text(txn, "group_ids", group_id)
    return get_json(txn, "groups", f"{owner}/{group_id}") if owner is not None else None


def live_members(txn) -> dict[str, list[str]]:
    """Group id -> private IPs of the enforced instances in it, cloud-wide (sorted)."""
    members: dict[str, set[str]] = {}
    for _, record in scan_json(txn, "instances"):
        if enforced(record):
            for group in record["groups"]:
                members.setdefault(group["id"], set()).add(record["private_ip"])
    return {g: sorted(ips, key=_ip_order) for g, ips in members.items()}


def _ip_order(ip: str) -> tuple:
    return tuple(int(p) for p in ip.split("."))


def node_instances(txn, node_id: str) -> list[dict]:
    """The enforced instances control placed on a node."""
    out = []
    prefix = f"{node_id}/".encode()
    for key, account in txn.scan("node_instances", prefix=prefix):
        record = get_json(txn, "instances", f"{account.decode()}/{key[len(prefix):].decode()}")
        if record is not None and record.get("node_id") == node_id and enforced(record):
            out.append(record)
    return out


def node_policy(txn, node_id: str, version: int, *, members: dict[str, list[str]] | None = None,
                plan: NetworkPlan | None = None, region: str | None = None) -> dict:
    """The complete network policy of one node at ``version``. ``members`` (live_members)
    may be passed in when computing the documents of many nodes from one snapshot. In a
    managed network mode (``plan``) the document says which segments the node must have;
    with ``region`` the public host names are given for the metadata service."""
    if members is None:
        members = live_members(txn)
    instances, groups = {}, {}
    for record in sorted(node_instances(txn, node_id), key=lambda r: r["id"]):
        group_ids = [g["id"] for g in record["groups"]]
        public_ip = record.get("public_ip") or None
        instances[record["id"]] = {"private_ip": record["private_ip"], "groups": group_ids, "public_ip": public_ip}
        if public_ip and region:
            instances[record["id"]]["public_hostname"] = f"euca-{public_ip.replace('.', '-')}.{region}.compute"
        for group_id in group_ids:
            if group_id not in groups:
                # A group gone from the store (it cannot be deleted while in use, but an
                # instance record could outlive it) allows nothing.
                stored = _group(txn, group_id) or {"ingress": [], "egress": []}
                groups[group_id] = {"ingress": rules_of(stored["ingress"]), "egress": rules_of(stored["egress"])}
    named = sorted({g for doc in groups.values() for rule in doc["ingress"] + doc["egress"] for g in rule["groups"]})
    doc = {"version": version, "instances": instances, "groups": groups,
           "members": {g: list(members.get(g, ())) for g in named}}
    if plan is not None and plan.managed:
        node = get_json(txn, "nodes", node_id)
        if node is not None:
            doc["network"] = policy_network(txn, plan, node, members.keys(), [n for _, n in scan_json(txn, "nodes")])
    return doc


def policy_nodes(txn) -> list[str]:
    """Every registered node: each gets a document, an empty one where nothing runs (so the
    rules of its last instance go when it goes)."""
    return [node_id for node_id, _ in scan_json(txn, "nodes")]
