"""Instance records, their life cycle, placement and reconciliation with the nodes.

Trees (store.py): ``instances`` A/INSTANCEID -> record, ``instance_ids`` INSTANCEID -> A,
``node_instances`` NODEID/INSTANCEID -> A for every *live* instance control placed on a
node (capacity and "missing on the node" both read it), ``private_ips`` SUBNET/IP ->
INSTANCEID, ``client_tokens`` A/TOKEN -> the reservation a token created.

Record (JSON)::

    {"id", "account", "reservation_id", "launch_index", "image_id", "kernel_id", "ramdisk_id",
     "instance_type", "vcpus", "memory_mib", "disk_gb", "key_name", "public_key",
     "groups": [{"id", "name"}], "user_data": base64 | null, "zone", "node_id",
     "subnet", "private_ip", "public_ip", "allocation_id", "association_id",
     "state", "state_reason": {"code", "message"} | null, "transition_reason",
     "launch_time", "client_token", "root_device_name", "architecture",
     "launch": "queued" | "sent" | "confirmed", "confirmed_at", "terminated_at"}

Life cycle (EC2 names and codes)::

    pending(0) -> running(16) -> shutting-down(32) -> terminated(48)
    pending -> terminated                 (a failed launch: stateReason Server.InternalError)

``launch`` says how far the node call went: "queued" (committed, not sent yet), "sent"
(a node call is or was in flight: after a restart it is re-driven, the node answers
409 if it has the instance already), "confirmed" (the node said it runs it, directly or
in a heartbeat). Only a confirmed instance the node stops reporting is declared lost.

Reconciliation (``reconcile_node``, on every heartbeat), for the instances placed on the
node: node "running" -> running; node "failed" -> terminated, stateReason
"Server.InternalError: <the node's reason>"; a domain that shut itself off ->
terminated (Client.InstanceInitiatedShutdown, as EC2 does for instance-store); a
confirmed instance the node no longer lists (after one interval of grace) -> terminated
with that reason; shutting-down and gone -> terminated. What the node still holds but
control has finished with comes back as a "terminate" follow-up for the launcher. A
pending launch whose node went unreachable may move to another node (``move_launch``).

Every function here runs inside a transaction and does no I/O; launcher.py talks to nodes.
"""

from __future__ import annotations

import ipaddress
import secrets

from . import netmodes, policy, public_ips
from .scheduler import NodeCapacity
from .store import get_json, get_text, put_json, put_text, scan_json
from . import nodes as nodes_mod

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
LIVE = ("pending", "running", "shutting-down", "stopping", "stopped")
VANISHED = "Server.InternalError"


# ---- ids and records ------------------------------------------------------------------------

def new_instance_id(txn) -> str:
    while True:
        instance_id = "i-" + secrets.token_hex(9)[:17]
        if txn.get("instance_ids", instance_id.encode()) is None:
            return instance_id


def new_reservation_id() -> str:
    return "r-" + secrets.token_hex(9)[:17]


def owner_of(txn, instance_id: str) -> str | None:
    return get_text(txn, "instance_ids", instance_id)


def get_instance(txn, account_id: str, instance_id: str) -> dict | None:
    return get_json(txn, "instances", f"{account_id}/{instance_id}")


def find_instance(txn, instance_id: str) -> dict | None:
    account = owner_of(txn, instance_id)
    return None if account is None else get_instance(txn, account, instance_id)


def account_instances(txn, account_id: str) -> list[dict]:
    return [r for _, r in scan_json(txn, "instances", f"{account_id}/")]


def all_instances(txn) -> list[dict]:
    return [r for _, r in scan_json(txn, "instances")]


def put_instance(txn, record: dict) -> None:
    put_json(txn, "instances", f"{record['account']}/{record['id']}", record)


def create_instance(txn, record: dict) -> None:
    put_instance(txn, record)
    put_text(txn, "instance_ids", record["id"], record["account"])
    if record.get("node_id"):
        put_text(txn, "node_instances", f"{record['node_id']}/{record['id']}", record["account"])
    policy.bump(txn)


def set_state(txn, record: dict, state: str, now: float, *, reason_code: str | None = None,
              reason: str | None = None) -> dict:
    """Move an instance to ``state`` (and write it); terminated frees its node share,
    private IP and elastic IP. Entering or leaving pending/running is a policy change."""
    if (record["state"] in policy.POLICY_STATES) != (state in policy.POLICY_STATES):
        policy.bump(txn)
    record["state"] = state
    if reason_code is not None:
        record["state_reason"] = {"code": reason_code, "message": reason or reason_code}
        record["transition_reason"] = reason or reason_code
    if state == "terminated":
        record["terminated_at"] = now
        _release(txn, record)
    put_instance(txn, record)
    return record


def _release(txn, record: dict, *, keep_public: bool = False) -> None:
    if record.get("node_id"):
        txn.delete("node_instances", f"{record['node_id']}/{record['id']}".encode())
    if record.get("private_ip") and record.get("subnet"):
        key = f"{record['subnet']}/{record['private_ip']}"
        if get_text(txn, "private_ips", key) == record["id"]:
            txn.delete("private_ips", key.encode())
    if keep_public:
        return
    if public_ips.drop(txn, record.get("public_ip")):
        record.update(public_ip=None, allocation_id=None, association_id=None)
    elif record.get("public_ip"):
        address = get_json(txn, "addresses", record["public_ip"])
        if address is not None and address.get("instance_id") == record["id"]:
            address.update(instance_id=None, association_id=None, private_ip=None)
            put_json(txn, "addresses", record["public_ip"], address)
        record.update(public_ip=None, allocation_id=None, association_id=None)


def user_initiated(record: dict, now: float) -> None:
    record["transition_reason"] = f"User initiated ({_iso(now)})"
    record["state_reason"] = {"code": "Client.UserInitiatedShutdown",
                              "message": "Client.UserInitiatedShutdown: User initiated shutdown"}


def _iso(ts: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S GMT")


def purge_terminated(txn, now: float, retention: float) -> list[str]:
    """Forget instances terminated more than ``retention`` seconds ago."""
    from .api.tags import delete_all_tags

    gone = []
    for record in all_instances(txn):
        if record["state"] == "terminated" and now - (record.get("terminated_at") or now) > retention:
            txn.delete("instances", f"{record['account']}/{record['id']}".encode())
            txn.delete("instance_ids", record["id"].encode())
            delete_all_tags(txn, record["account"], record["id"])
            gone.append(record["id"])
    return gone


# ---- placement ------------------------------------------------------------------------------

def placed_usage(txn, node_id: str) -> tuple[int, int, int]:
    """(cores, memory MiB, disk GiB) of the live instances control placed on a node."""
    cores = memory = disk = 0
    prefix = f"{node_id}/".encode()
    for key, account in txn.scan("node_instances", prefix=prefix):
        record = get_instance(txn, account.decode(), key[len(prefix):].decode())
        if record is not None and record["state"] in LIVE:
            cores += record["vcpus"]
            memory += record["memory_mib"]
            disk += record["disk_gb"]
    return cores, memory, disk


def capacities(txn, zone: str, now: float, interval: float,
               plan: netmodes.NetworkPlan | None = None) -> list[NodeCapacity]:
    """Free capacity of each reachable node of a zone: what it offers minus what control
    placed; in a managed network mode only nodes that can host its instances count."""
    out = []
    several = len(nodes_mod.list_nodes(txn)) > 1 if plan is not None and plan.managed else False
    for node in nodes_mod.list_nodes(txn, zone):
        if not nodes_mod.reachable(node, now, interval):
            continue
        if plan is not None and not netmodes.can_host(plan, node, several):
            continue
        total = nodes_mod.totals(node)
        used = placed_usage(txn, node["node_id"])
        out.append(NodeCapacity(node["node_id"], total[0] - used[0], total[1] - used[1], total[2] - used[2],
                                frozenset(node.get("images") or ())))
    return out


def allocate_private_ip(txn, network: dict, instance_id: str) -> tuple[str | None, str | None]:
    """(subnet, ip) for an instance on a node with this network, or (None, None) when the
    node reported no subnet. Skips the network, broadcast and gateway addresses."""
    subnet = (network or {}).get("subnet")
    if not subnet:
        return None, None
    net = ipaddress.ip_network(subnet, strict=False)
    gateway = network.get("gateway")
    for host in net.hosts():
        ip = str(host)
        if ip == gateway:
            continue
        key = f"{net}/{ip}"
        if txn.get("private_ips", key.encode()) is None:
            put_text(txn, "private_ips", key, instance_id)
            return str(net), ip
    return str(net), None


# ---- reconciliation with a node's heartbeat ---------------------------------------------------

def reconcile_node(txn, node: dict, docs: tuple[dict, ...] | list[dict], now: float, *,
                   grace: float) -> list[tuple[str, str, str]]:
    """Bring control's records of the instances on ``node`` in line with the node's own
    documents; returns follow-up calls for the compute worker: ("terminate", node_id,
    instance_id) for what the node still holds but control no longer wants."""
    node_id = node["node_id"]
    by_id = {d["instance_id"]: d for d in docs}
    actions: list[tuple[str, str, str]] = []
    placed = set()
    prefix = f"{node_id}/".encode()
    for key, account in list(txn.scan("node_instances", prefix=prefix)):
        instance_id = key[len(prefix):].decode()
        record = get_instance(txn, account.decode(), instance_id)
        if record is None:
            txn.delete("node_instances", key)
            continue
        placed.add(instance_id)
        doc = by_id.get(instance_id)
        if doc is None:
            _missing_on_node(txn, record, node_id, now, grace)
        else:
            actions += _apply_doc(txn, record, doc, node_id, now)
    for instance_id, doc in by_id.items():
        if instance_id in placed:
            continue
        record = find_instance(txn, instance_id)
        # The node holds an instance control has finished with (terminated while the node
        # was away, or a failed launch already reported), or one control moved to another
        # node while this one was unreachable: ask the node to drop it. Ids control never
        # issued are left alone (another cloud's, or an operator's).
        if record is not None and (record["state"] == "terminated" or record.get("node_id") != node_id):
            actions.append(("terminate", node_id, instance_id))
    return actions


def _missing_on_node(txn, record: dict, node_id: str, now: float, grace: float) -> None:
    state = record["state"]
    if state == "shutting-down":
        set_state(txn, record, "terminated", now)
    elif state in ("pending", "running") and record.get("launch") == "confirmed" and \
            now - (record.get("confirmed_at") or now) > grace:
        set_state(txn, record, "terminated", now, reason_code=VANISHED,
                  reason=f"{VANISHED}: the instance is no longer on its node {node_id}")


def _apply_doc(txn, record: dict, doc: dict, node_id: str, now: float) -> list[tuple[str, str, str]]:
    node_state, state = doc.get("state"), record["state"]
    if state not in ("pending", "running"):  # shutting-down: the launcher's terminate call is on it
        return []
    if node_state == "failed":
        reason = doc.get("reason") or "the launch failed on the node"
        set_state(txn, record, "terminated", now, reason_code=VANISHED, reason=f"{VANISHED}: {reason}")
        return [("terminate", node_id, record["id"])]  # the node keeps failed records until told
    if node_state == "running":
        domain = doc.get("domain_state")
        if domain == "missing":
            set_state(txn, record, "terminated", now, reason_code=VANISHED,
                      reason=f"{VANISHED}: the instance's domain vanished from node {node_id}")
            return [("terminate", node_id, record["id"])]
        if domain in ("shutoff", "crashed"):
            # An instance-store instance that shut itself down is terminated, as in EC2.
            code = "Client.InstanceInitiatedShutdown" if domain == "shutoff" else VANISHED
            message = "Client.InstanceInitiatedShutdown: Instance initiated shutdown" if domain == "shutoff" \
                else f"{VANISHED}: the instance crashed"
            set_state(txn, record, "terminated", now, reason_code=code, reason=message)
            return [("terminate", node_id, record["id"])]
        changed = record.get("launch") != "confirmed" or state != "running"
        if changed:
            record["launch"] = "confirmed"
            record["confirmed_at"] = record.get("confirmed_at") or now
            record["mac"] = doc.get("mac") or record.get("mac")
            set_state(txn, record, "running", now)
        return []
    if node_state == "stopped":
        set_state(txn, record, "terminated", now, reason_code="Client.InstanceInitiatedShutdown",
                  reason="Client.InstanceInitiatedShutdown: Instance initiated shutdown")
        return [("terminate", node_id, record["id"])]
    return []  # "pending" on the node: the launch is under way


def place_network(txn, plan: netmodes.NetworkPlan | None, record: dict, node: dict) -> None:
    """The instance's subnet, private IP and (managed modes) network on `node`."""
    if plan is not None and plan.managed:
        netmodes.instance_network(txn, plan, record, node)
    else:
        record["subnet"], record["private_ip"] = allocate_private_ip(txn, node.get("network") or {}, record["id"])
        record["network"] = None


def move_launch(txn, account_id: str, instance_id: str, now: float, interval: float,
                plan: netmodes.NetworkPlan | None = None) -> tuple[dict, dict] | None:
    """Place a pending instance whose node became unreachable before it confirmed the
    launch on another node of its zone: (record, node), or None if nothing fits (or it is
    no longer a pending launch). Should the old node come back holding it after all,
    reconciliation asks it to drop its copy."""
    from .scheduler import place

    record = get_instance(txn, account_id, instance_id)
    if record is None or record["state"] != "pending" or record.get("launch") == "confirmed":
        return None
    old = record.get("node_id")
    options = [c for c in capacities(txn, record["zone"], now, interval, plan) if c.node_id != old]
    images = tuple(i for i in (record["image_id"], record.get("kernel_id"), record.get("ramdisk_id")) if i)
    chosen = place(options, 1, cores=record["vcpus"], memory_mib=record["memory_mib"], disk_gb=record["disk_gb"],
                   images=images)
    if not chosen:
        return None
    _release(txn, record, keep_public=True)
    node = nodes_mod.get_node(txn, chosen[0])
    record["node_id"] = chosen[0]
    place_network(txn, plan, record, node)
    record["launch"] = "sent"
    put_instance(txn, record)
    put_text(txn, "node_instances", f"{chosen[0]}/{instance_id}", account_id)
    policy.bump(txn)  # another node, another private IP
    if record.get("public_ip"):
        address = get_json(txn, "addresses", record["public_ip"])
        if address is not None and address.get("instance_id") == instance_id:
            address["private_ip"] = record["private_ip"]
            put_json(txn, "addresses", record["public_ip"], address)
    return record, node


def confirm_launch(txn, account_id: str, instance_id: str, doc: dict | None, now: float) -> dict | None:
    """The node answered the launch call: running (doc) or it already had it (doc None)."""
    record = get_instance(txn, account_id, instance_id)
    if record is None:
        return None
    if record["state"] == "pending":
        record["launch"] = "confirmed"
        record["confirmed_at"] = now
        if doc is not None:
            record["mac"] = doc.get("mac") or record.get("mac")
            if doc.get("state") == "running":
                record["state"] = "running"
        put_instance(txn, record)
    return record


def fail_launch(txn, account_id: str, instance_id: str, reason: str, now: float) -> dict | None:
    record = get_instance(txn, account_id, instance_id)
    if record is None or record["state"] != "pending":
        return record
    return set_state(txn, record, "terminated", now, reason_code=VANISHED, reason=f"{VANISHED}: {reason}")
