"""The node registry: heartbeats in, node records out (tree ``nodes``).

    POST /_eucalypt/internal/nodes/heartbeat       (docs/node-protocol.md)

A heartbeat is signed with the service secret (internal.check). The first one registers
the node, every later one refreshes its record; each is a durable write, and in the same
transaction control reconciles its view of the node's instances with what the node
reports (instances.reconcile_node). What that reconciliation asks of the node (clean up
a failed launch, terminate an instance control already terminated) is handed to the
launcher after the commit.

Node record (JSON, key NODEID):

    {"node_id", "url", "cluster", "started", "resources", "images", "network",
     "instance_ids": [ids the node reported], "policy_version": the network policy
     version it reported applying (policy_push.py), "first_seen", "last_seen",
     "unreachable_since": null | time the sweep noticed 3 missed intervals}

Reachability is a function of ``last_seen`` and the clock (``reachable``), so it is right
even between sweeps; the sweep (launcher.py's periodic task) only records when a node went
quiet, for the reason shown on its instances.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass

from aiohttp import web

from . import internal, netmodes
from .store import get_json, put_json, scan_json

log = logging.getLogger("eucalypt.control.nodes")

HEARTBEAT_PATH = "/_eucalypt/internal/nodes/heartbeat"
PROTOCOL = 1
MISSED_INTERVALS = 3
# A heartbeat carries every instance's document, user data (16 KiB) and metadata included:
# far more than the 1 MiB an EC2 request may have.
MAX_HEARTBEAT = 64 << 20
_NODE_ID = re.compile(r"nc-[0-9a-f]{16}")


class HeartbeatRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node_id: str
    url: str
    cluster: str | None
    started: float
    resources: dict
    images: tuple[str, ...]
    instances: tuple[dict, ...]
    network: dict
    policy_version: int = 0  # the network policy version the node applied (absent: 0)


def parse_heartbeat(doc) -> Heartbeat:
    """The heartbeat in a request body; HeartbeatRejected(400) says what is wrong."""
    def bad(why: str):
        return HeartbeatRejected(400, f"malformed heartbeat: {why}")

    if not isinstance(doc, dict):
        raise bad("the body must be a JSON object")
    if doc.get("protocol") != PROTOCOL:
        raise bad(f"protocol must be {PROTOCOL}")
    node_id, url, cluster = doc.get("node_id"), doc.get("url"), doc.get("cluster")
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise bad("node_id must be nc-<16 hex>")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise bad("url must be http(s)://HOST:PORT")
    if cluster is not None and not isinstance(cluster, str):
        raise bad("cluster must be a string or null")
    resources = doc.get("resources") or {}
    images = doc.get("images") or []
    instances = doc.get("instances") or []
    network = doc.get("network") or {}
    if not isinstance(resources, dict) or not isinstance(network, dict):
        raise bad("resources and network must be objects")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise bad("images must be a list of image ids")
    if not isinstance(instances, list) or not all(isinstance(i, dict) and isinstance(i.get("instance_id"), str)
                                                  for i in instances):
        raise bad("instances must be a list of instance documents")
    try:
        for what in ("cores", "memory_mib"):
            int((resources.get(what) or {}).get("total", 0))
        started = float(doc.get("started") or 0)
    except (TypeError, ValueError, AttributeError):
        raise bad("resources.cores/memory_mib.total and started must be numbers") from None
    policy_version = doc.get("policy_version") or 0
    if not isinstance(policy_version, int) or isinstance(policy_version, bool) or policy_version < 0:
        raise bad("policy_version must be a non-negative integer")
    return Heartbeat(node_id, url.rstrip("/"), cluster, started, resources, tuple(images), tuple(instances),
                     _network(network, bad), policy_version)


def _network(network: dict, bad) -> dict:
    """The heartbeat's network, checked; an older agent's (no modes) can do flat only."""
    out = {k: network.get(k) for k in ("bridge", "subnet", "gateway")}
    modes, transports = network.get("modes") or ["flat"], network.get("transports") or []
    for what, value in (("modes", modes), ("transports", transports)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"network.{what} must be a list of names")
    tunnel_ip, uplink = network.get("tunnel_ip"), network.get("uplink")
    if tunnel_ip is not None:
        try:
            tunnel_ip = str(ipaddress.IPv4Address(tunnel_ip))
        except (ValueError, TypeError):
            raise bad("network.tunnel_ip must be an IPv4 address or null") from None
    if uplink is not None and not isinstance(uplink, str):
        raise bad("network.uplink must be an interface name or null")
    return {**out, "modes": modes, "transports": transports, "tunnel_ip": tunnel_ip, "uplink": uplink}


def assign_cluster(requested: str | None, zones: tuple[str, ...]) -> str:
    if requested is None:
        return zones[0]
    if requested not in zones:
        raise HeartbeatRejected(409, f"unknown cluster {requested!r}; this cloud's zones are {', '.join(zones)}")
    return requested


def record_heartbeat(txn, hb: Heartbeat, cluster: str, now: float, plan=None) -> dict:
    """Write the node's record. In a managed network mode (``plan``) the node gets its
    index in the zone (netmodes.ZoneFull when none is left), and a new node or a changed
    tunnel endpoint is a policy change: every node's peers, this node's gateways."""
    from . import policy

    old = get_json(txn, "nodes", hb.node_id) or {}
    if plan is not None and plan.managed:
        _, new_index = netmodes.ensure_node_index(txn, plan, hb.node_id, cluster)
        if new_index or not old or (old.get("network") or {}).get("tunnel_ip") != hb.network.get("tunnel_ip"):
            policy.bump(txn)
    record = {"node_id": hb.node_id, "url": hb.url, "cluster": cluster, "started": hb.started,
              "resources": hb.resources, "images": list(hb.images), "network": hb.network,
              "instance_ids": [d["instance_id"] for d in hb.instances], "policy_version": hb.policy_version,
              "first_seen": old.get("first_seen", now), "last_seen": now, "unreachable_since": None}
    put_json(txn, "nodes", hb.node_id, record)
    return record


# ---- reading the registry -------------------------------------------------------------------

def get_node(txn, node_id: str) -> dict | None:
    return get_json(txn, "nodes", node_id)


def list_nodes(txn, zone: str | None = None) -> list[dict]:
    return [n for _, n in scan_json(txn, "nodes") if zone is None or n["cluster"] == zone]


def reachable(node: dict, now: float, interval: float) -> bool:
    """Heard from within the last 3 intervals -- or control itself only just started (a
    node cannot have reached a control that was down; its next heartbeat will tell)."""
    heard = max(node["last_seen"], node.get("control_started") or 0)
    return now - heard <= MISSED_INTERVALS * interval


def note_control_start(txn, now: float) -> None:
    """Give every known node a fresh 3 intervals to be heard from after control starts."""
    for node in list_nodes(txn):
        node["control_started"] = now
        node["unreachable_since"] = None
        put_json(txn, "nodes", node["node_id"], node)


def unreachable_reason(node: dict, now: float) -> str:
    import datetime
    since = datetime.datetime.fromtimestamp(node["last_seen"], datetime.timezone.utc)
    return (f"node {node['node_id']} is unreachable: no heartbeat for {now - node['last_seen']:.0f} s "
            f"(the last at {since:%Y-%m-%dT%H:%M:%SZ})")


def totals(node: dict) -> tuple[int, int, int]:
    """(cores, memory MiB, disk GiB) the node offers in all."""
    res = node.get("resources") or {}
    cores = int((res.get("cores") or {}).get("total", 0))
    memory = int((res.get("memory_mib") or {}).get("total", 0))
    disk = int((res.get("disk_bytes") or {}).get("total", 0)) >> 30
    return cores, memory, disk


def mark_unreachable(txn, now: float, interval: float) -> list[str]:
    """Record when quiet nodes went quiet; the ids newly marked."""
    marked = []
    for node in list_nodes(txn):
        if node.get("unreachable_since") is None and not reachable(node, now, interval):
            node["unreachable_since"] = now
            put_json(txn, "nodes", node["node_id"], node)
            marked.append(node["node_id"])
    return marked


# ---- the HTTP endpoint ----------------------------------------------------------------------

async def handle_heartbeat(service, request: web.Request) -> web.Response:
    """POST HEARTBEAT_PATH: verify, record, reconcile; answer the node its zone and interval."""
    from . import policy
    from .instances import reconcile_node

    if (request.content_length or 0) > MAX_HEARTBEAT:
        return web.json_response({"error": f"a heartbeat is at most {MAX_HEARTBEAT} bytes"}, status=413)
    body = bytearray()
    while chunk := await request.content.read(1 << 20):
        body += chunk
        if len(body) > MAX_HEARTBEAT:
            return web.json_response({"error": f"a heartbeat is at most {MAX_HEARTBEAT} bytes"}, status=413)
    body = bytes(body)
    now = service.clock.now()
    why = internal.check(service.data.service_secret, "POST", HEARTBEAT_PATH, request.headers, body, now)
    if why is not None:
        return web.json_response({"error": why}, status=401)
    try:
        try:
            doc = json.loads(body)
        except ValueError:
            raise HeartbeatRejected(400, "malformed heartbeat: the body is not JSON") from None
        hb = parse_heartbeat(doc)
        cluster = assign_cluster(hb.cluster, service.config.zones)
    except HeartbeatRejected as exc:
        log.warning("heartbeat rejected (%d): %s", exc.status, exc.message)
        return web.json_response({"error": exc.message}, status=exc.status)
    grace = service.config.heartbeat_interval

    plan = service.config.network

    def mutate(txn):
        old = get_node(txn, hb.node_id)
        node = record_heartbeat(txn, hb, cluster, now, plan)
        if hb.policy_version > policy.current_version(txn):
            policy.raise_above(txn, hb.policy_version)  # control's state is older than the node's
        return old, node, reconcile_node(txn, node, hb.instances, now, grace=grace)

    try:
        old, node, actions = await service.store.write(mutate)
    except netmodes.ZoneFull as exc:
        log.warning("heartbeat rejected (409): %s", exc)
        return web.json_response({"error": str(exc)}, status=409)
    if old is None or old["url"] != node["url"] or old["started"] != node["started"]:
        log.info("node %s registered at %s in %s", hb.node_id, hb.url, cluster)
    elif old.get("unreachable_since") is not None:
        log.info("node %s is back after %.0f s without a heartbeat", hb.node_id, now - old["last_seen"])
    if service.launcher is not None:
        service.launcher.node_seen(node, actions)
    if getattr(service, "policy", None) is not None:
        service.policy.node_reported(hb.node_id, hb.policy_version)
    return web.json_response({"node_id": hb.node_id, "cluster": cluster,
                              "heartbeat_interval": service.config.heartbeat_interval})
