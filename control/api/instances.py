"""Instances: RunInstances, DescribeInstances, DescribeInstanceStatus, TerminateInstances,
RebootInstances, StopInstances, StartInstances, GetConsoleOutput.

RunInstances validates everything, places the instances on nodes of one zone and commits
them "pending" in one transaction (with the ClientToken, when given, so a retried request
returns the same reservation); the node launches happen afterwards in the launcher
(control/launcher.py). Instances are instance-store backed, so Stop/Start answer
UnsupportedOperation as EC2 does for such instances.

Instance ids (``i-`` + 17 hex) are cloud-wide unique; another account's instance is
answered exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re

from .. import instances as inst
from .. import nodes as nodes_mod
from .. import policy_push, public_ips
from ..errors import Ec2Error, invalid, missing
from ..images import can_launch, get_image
from ..launcher import dns_name
from ..scheduler import place
from ..store import get_json, get_text, put_json
from . import tags as tags_mod
from .addresses import parse_pool
from .context import Context
from .groups import ensure_default_group
from .params import Params, filters, tag_filter_matches
from .tags import tag_set, tags_of, write_tags

_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_IMAGE_ID = re.compile(r"[a-z]{3}-[0-9a-f]{8}(?:[0-9a-f]{9})?")
MAX_USER_DATA = 16384
MAX_COUNT = 1000
_KIND_NAME = {"machine": "AMI", "kernel": "kernel", "ramdisk": "ramdisk"}


def _instance_exists(txn, account_id: str, resource_id: str) -> bool:
    return get_text(txn, "instance_ids", resource_id) == account_id


# Instances carry tags (CreateTags / DescribeTags / tag filters) like any other resource.
tags_mod.RESOURCE_TYPES.setdefault("i", ("instance", _instance_exists, "InvalidInstanceID.NotFound"))


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ---- RunInstances ---------------------------------------------------------------------------

def _launchable(txn, image_id: str, account_id: str, kind: str, what: str) -> dict:
    if not _IMAGE_ID.fullmatch(image_id):
        raise Ec2Error("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "emi-...")')
    image = get_image(txn, image_id)
    # Private images of other accounts are invisible: answered as if they did not exist.
    if image is None or image["state"] == "deregistered" or not can_launch(image, account_id):
        raise Ec2Error("InvalidAMIID.NotFound", f"The {what} ID '{image_id}' does not exist")
    if image["kind"] != kind:
        raise invalid(what, image_id, f"{image_id} is a {image['kind']} image, not a {_KIND_NAME[kind]}")
    if image["state"] != "available":
        raise Ec2Error("InvalidAMIID.Unavailable", f"The {what} '{image_id}' is not available ({image['state']})")
    return image


def _user_data(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Ec2Error("InvalidUserData.Malformed", "User data must be base64 encoded") from None
    if len(raw) > MAX_USER_DATA:
        raise Ec2Error("InvalidParameterValue", f"User data is limited to {MAX_USER_DATA} bytes")
    return base64.b64encode(raw).decode()


def _security_groups(txn, account_id: str, params: Params) -> list[dict]:
    chosen: dict[str, dict] = {}
    for name in params.list("SecurityGroup"):
        group_id = get_text(txn, "group_names", f"{account_id}/{name}")
        if group_id is None:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{name}' does not exist")
        chosen[group_id] = {"id": group_id, "name": name}
    for group_id in params.list("SecurityGroupId"):
        group = get_json(txn, "groups", f"{account_id}/{group_id}")
        if group is None:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{group_id}' does not exist")
        chosen[group_id] = {"id": group_id, "name": group["name"]}
    if not chosen:
        group_id = get_text(txn, "group_names", f"{account_id}/default")
        chosen[group_id] = {"id": group_id, "name": "default"}
    return list(chosen.values())


def _instance_tags(params: Params) -> list[tuple[str, str]]:
    """Tags of TagSpecification.N with ResourceType instance (other types are refused)."""
    specs = params.items("TagSpecification")
    for spec in specs:
        if spec.get("ResourceType") != "instance":
            raise invalid("TagSpecification.ResourceType", spec.get("ResourceType"),
                          "only 'instance' resources are created by RunInstances here")
    return tags_mod.tag_specifications(params, "instance")


async def run_instances(ctx: Context) -> dict:
    p, config, account = ctx.params, ctx.service.config, ctx.account_id
    image_id = p.required("ImageId")
    min_count, max_count = p.int("MinCount", 1), p.int("MaxCount", 1)
    if min_count < 1:
        raise invalid("MinCount", min_count, "must be at least 1")
    if max_count < min_count:
        raise invalid("MaxCount", max_count, "must be at least MinCount")
    if max_count > MAX_COUNT:
        raise Ec2Error("InstanceLimitExceeded", f"You may run at most {MAX_COUNT} instances in one request")
    type_name = p.get("InstanceType") or "m1.small"
    itype = config.instance_types.get(type_name)
    if itype is None:
        raise Ec2Error("InvalidParameterValue", f"Invalid value '{type_name}' for InstanceType.")
    zone = p.get("Placement.AvailabilityZone") or None
    if zone is not None and zone not in config.zones:
        raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
    user_data = _user_data(p.get("UserData"))
    key_name = p.get("KeyName") or None
    token = p.get("ClientToken") or None
    if token is not None and len(token) > 64:
        raise invalid("ClientToken", token, "at most 64 characters")
    tags = _instance_tags(p)
    await ensure_default_group(ctx)

    with ctx.store.read() as txn:
        image = _launchable(txn, image_id, account, "machine", "image")
        kernel_id = p.get("KernelId") or image.get("kernel_id") or None
        ramdisk_id = p.get("RamdiskId") or image.get("ramdisk_id") or None
        if kernel_id:
            _launchable(txn, kernel_id, account, "kernel", "kernel")
        if ramdisk_id:
            if not kernel_id:
                raise Ec2Error("InvalidParameterCombination", "A ramdisk needs a kernel (KernelId)")
            _launchable(txn, ramdisk_id, account, "ramdisk", "ramdisk")
        public_key = None
        if key_name is not None:
            pair = get_json(txn, "keypairs", f"{account}/{key_name}")
            if pair is None:
                raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_name}' does not exist")
            public_key = pair["public_key"]
        groups = _security_groups(txn, account, p)

    wanted_images = tuple(i for i in (image_id, kernel_id, ramdisk_id) if i)
    digest = hashlib.sha256(json.dumps([image_id, min_count, max_count, type_name, zone, user_data, key_name,
                                        kernel_id, ramdisk_id, sorted(g["id"] for g in groups), tags]).encode()
                            ).hexdigest()
    now, interval = ctx.now(), config.heartbeat_interval
    pool = parse_pool(config.public_ips) if config.auto_public_ips else []

    def mutate(txn):
        if token is not None:
            prior = get_json(txn, "client_tokens", f"{account}/{token}")
            if prior is not None:
                if prior["digest"] != digest:
                    raise Ec2Error("IdempotentParameterMismatch",
                                   f"The client token '{token}' was already used with different parameters")
                return prior["reservation_id"], prior["instance_ids"], False
        placement, placed_zone = [], None
        for candidate in ([zone] if zone else config.zones):
            found = place(inst.capacities(txn, candidate, now, interval, config.network), max_count, cores=itype.cpus,
                          memory_mib=itype.memory_mib, disk_gb=itype.disk_gb, images=wanted_images)
            if len(found) > len(placement):
                placement, placed_zone = found, candidate
            if len(found) >= max_count:
                break
        if len(placement) < min_count:
            where = f"the Availability Zone you requested ({zone})" if zone else "any Availability Zone"
            raise Ec2Error("InsufficientInstanceCapacity",
                           f"We currently do not have sufficient {type_name} capacity in {where}: "
                           f"{len(placement)} of the {min_count} instances requested fit now.")
        reservation_id = inst.new_reservation_id()
        ids = []
        for index, node_id in enumerate(placement):
            instance_id = inst.new_instance_id(txn)
            node = nodes_mod.get_node(txn, node_id)
            record = {
                "id": instance_id, "account": account, "reservation_id": reservation_id, "launch_index": index,
                "image_id": image_id, "kernel_id": kernel_id, "ramdisk_id": ramdisk_id,
                "instance_type": type_name, "vcpus": itype.cpus, "memory_mib": itype.memory_mib,
                "disk_gb": itype.disk_gb, "key_name": key_name, "public_key": public_key, "groups": groups,
                "user_data": user_data, "zone": placed_zone, "node_id": node_id,
                "public_ip": None, "allocation_id": None, "association_id": None,
                "state": "pending", "state_reason": {"code": "pending", "message": "pending"},
                "transition_reason": "", "launch_time": now, "client_token": token,
                "root_device_name": image.get("root_device_name") or "/dev/vda",
                "architecture": image.get("architecture") or "x86_64", "launch": "queued",
                "confirmed_at": None, "terminated_at": None}
            inst.place_network(txn, config.network, record, node)
            if config.auto_public_ips:
                public_ips.assign(txn, pool, record, now)
            inst.create_instance(txn, record)
            if tags:
                write_tags(txn, account, instance_id, tags)
            ids.append(instance_id)
        if token is not None:
            put_json(txn, "client_tokens", f"{account}/{token}",
                     {"reservation_id": reservation_id, "instance_ids": ids, "digest": digest, "created": now})
        return reservation_id, ids, True

    reservation_id, ids, created = await ctx.store.write(mutate)
    with ctx.store.read() as txn:
        records = [r for r in (inst.get_instance(txn, account, i) for i in ids) if r is not None]
        items = [_instance_item(txn, r, ctx) for r in records]
    if created:
        policy_push.notify(ctx.service)
    if created and ctx.service.launcher is not None:
        ctx.service.launcher.launch(records)
    return {"reservationId": reservation_id, "ownerId": account,
            "groupSet": [{"groupId": g["id"], "groupName": g["name"]} for g in records[0]["groups"]] if records
            else [], "instancesSet": items}


# ---- rendering ------------------------------------------------------------------------------

def _state(record: dict) -> dict:
    return {"code": inst.STATE_CODES[record["state"]], "name": record["state"]}


def _instance_item(txn, record: dict, ctx: Context) -> dict:
    region = ctx.service.config.region
    tags = tags_of(txn, record["account"], record["id"])
    reason = record.get("state_reason")
    return {
        "instanceId": record["id"], "imageId": record["image_id"], "instanceState": _state(record),
        "privateDnsName": dns_name(record.get("private_ip"), region),
        "dnsName": dns_name(record.get("public_ip"), region, public=True),
        "reason": record.get("transition_reason") or "", "keyName": record.get("key_name"),
        "amiLaunchIndex": record["launch_index"], "productCodes": [], "instanceType": record["instance_type"],
        "launchTime": _iso(record["launch_time"]),
        "placement": {"availabilityZone": record["zone"], "groupName": "", "tenancy": "default"},
        "kernelId": record.get("kernel_id"), "ramdiskId": record.get("ramdisk_id"),
        "monitoring": {"state": "disabled"},
        "privateIpAddress": record.get("private_ip"), "ipAddress": record.get("public_ip"),
        "groupSet": [{"groupId": g["id"], "groupName": g["name"]} for g in record["groups"]],
        "stateReason": {"code": reason["code"], "message": reason["message"]}
        if reason and record["state"] != "running" else None,
        "architecture": record.get("architecture"), "rootDeviceType": "instance-store",
        "rootDeviceName": record.get("root_device_name"), "blockDeviceMapping": [],
        "virtualizationType": "paravirtual" if record.get("kernel_id") else "hvm",
        "clientToken": record.get("client_token") or "", "tagSet": tag_set(tags), "hypervisor": "kvm",
    }


INSTANCE_FILTERS = frozenset({
    "instance-id", "instance-state-name", "instance-state-code", "instance-type", "image-id",
    "availability-zone", "private-ip-address", "ip-address", "key-name", "reservation-id", "kernel-id",
    "ramdisk-id", "private-dns-name", "dns-name", "group-id", "group-name", "instance.group-id",
    "instance.group-name", "owner-id", "launch-index", "root-device-type", "client-token", "architecture",
    "placement.availability-zone"})


def _filter_values(record: dict, name: str, region: str):
    simple = {"instance-id": "id", "instance-type": "instance_type", "image-id": "image_id",
              "availability-zone": "zone", "placement.availability-zone": "zone",
              "private-ip-address": "private_ip", "ip-address": "public_ip", "key-name": "key_name",
              "reservation-id": "reservation_id", "kernel-id": "kernel_id", "ramdisk-id": "ramdisk_id",
              "owner-id": "account", "launch-index": "launch_index", "client-token": "client_token",
              "architecture": "architecture", "instance-state-name": "state"}
    if name in simple:
        return record.get(simple[name])
    if name == "instance-state-code":
        return str(inst.STATE_CODES[record["state"]])
    if name == "private-dns-name":
        return dns_name(record.get("private_ip"), region)
    if name == "dns-name":
        return dns_name(record.get("public_ip"), region, public=True)
    if name in ("group-id", "instance.group-id"):
        return [g["id"] for g in record["groups"]]
    if name in ("group-name", "instance.group-name"):
        return [g["name"] for g in record["groups"]]
    if name == "root-device-type":
        return "instance-store"
    return None


def _check_ids(ids: list[str]) -> list[str]:
    for instance_id in ids:
        if not _INSTANCE_ID.fullmatch(instance_id):
            raise Ec2Error("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
    return ids


def _not_found(ids: list[str]) -> Ec2Error:
    if len(ids) == 1:
        return Ec2Error("InvalidInstanceID.NotFound", f"The instance ID '{ids[0]}' does not exist")
    return Ec2Error("InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(ids)}' do not exist")


def _visible(record: dict, now: float, retention: float) -> bool:
    return record["state"] != "terminated" or now - (record.get("terminated_at") or now) <= retention


def _select(txn, ctx: Context, ids: list[str]) -> list[dict]:
    """The account's instances named by ``ids`` (all of them, or NotFound), or every
    visible one when ``ids`` is empty; in launch order."""
    account, now = ctx.account_id, ctx.now()
    retention = ctx.service.config.terminated_retention
    if ids:
        found = {i: inst.get_instance(txn, account, i) for i in dict.fromkeys(ids)}
        absent = [i for i, r in found.items() if r is None or not _visible(r, now, retention)]
        if absent:
            raise _not_found(absent)
        records = list(found.values())
    else:
        records = [r for r in inst.account_instances(txn, account) if _visible(r, now, retention)]
    return sorted(records, key=_order)


def _order(record: dict) -> tuple:
    return (record["launch_time"], record["reservation_id"], record["launch_index"], record["id"])


def _page(ctx: Context, records: list[dict], *, with_ids: bool) -> tuple[list[dict], str | None]:
    max_results = ctx.params.int("MaxResults")
    token = ctx.params.get("NextToken")
    if max_results is None and token is None:
        return records, None
    if with_ids and max_results is not None:
        raise Ec2Error("InvalidParameterCombination",
                       "The parameter instancesSet cannot be used with the parameter maxResults")
    if max_results is not None and not 5 <= max_results <= 1000:
        raise invalid("MaxResults", max_results, "must be between 5 and 1000")
    if token:
        try:
            after = tuple(json.loads(base64.urlsafe_b64decode(token.encode())))
        except (ValueError, binascii.Error, TypeError):
            raise invalid("NextToken", token, "not a token this service gave out") from None
        records = [r for r in records if list(_order(r)) > list(after)]
    size = max_results or 1000
    page = records[:size]
    more = len(records) > size
    next_token = base64.urlsafe_b64encode(json.dumps(list(_order(page[-1]))).encode()).decode() \
        if more and page else None
    return page, next_token


# ---- DescribeInstances ----------------------------------------------------------------------

async def describe_instances(ctx: Context) -> dict:
    ids = _check_ids(ctx.params.list("InstanceId"))
    flts = filters(ctx.params, INSTANCE_FILTERS)
    region = ctx.service.config.region
    with ctx.store.read() as txn:
        records = _select(txn, ctx, ids)
        chosen = []
        for record in records:
            tags = tags_of(txn, record["account"], record["id"])
            if all(_matches(f, record, tags, region) for f in flts):
                chosen.append(record)
        page, next_token = _page(ctx, chosen, with_ids=bool(ids))
        reservations: dict[str, dict] = {}
        for record in page:
            res = reservations.get(record["reservation_id"])
            if res is None:
                res = reservations[record["reservation_id"]] = {
                    "reservationId": record["reservation_id"], "ownerId": record["account"],
                    "groupSet": [{"groupId": g["id"], "groupName": g["name"]} for g in record["groups"]],
                    "instancesSet": []}
            res["instancesSet"].append(_instance_item(txn, record, ctx))
    return {"reservationSet": list(reservations.values()), "nextToken": next_token}


def _matches(flt, record: dict, tags: dict, region: str) -> bool:
    verdict = tag_filter_matches(flt, tags)
    if verdict is None:
        verdict = flt.matches(_filter_values(record, flt.name, region))
    return verdict


# ---- DescribeInstanceStatus -----------------------------------------------------------------

STATUS_FILTERS = frozenset({"availability-zone", "instance-state-name", "instance-state-code",
                            "instance-status.status", "system-status.status", "instance-status.reachability",
                            "system-status.reachability"})


def _health(txn, record: dict, now: float, interval: float) -> tuple[str, str | None, str | None]:
    """(status, impaired since (iso), reason) of an instance's node-side health."""
    if record["state"] not in ("pending", "running"):
        return "not-applicable", None, None
    node = nodes_mod.get_node(txn, record["node_id"]) if record.get("node_id") else None
    if node is None:
        return "impaired", None, f"the node {record.get('node_id')} of this instance is not registered"
    if not nodes_mod.reachable(node, now, interval):
        return "impaired", _iso(node["last_seen"]), nodes_mod.unreachable_reason(node, now)
    return ("ok" if record["state"] == "running" else "initializing"), None, None


async def describe_instance_status(ctx: Context) -> dict:
    ids = _check_ids(ctx.params.list("InstanceId"))
    include_all = ctx.params.bool("IncludeAllInstances")
    flts = filters(ctx.params, STATUS_FILTERS, tags=False)
    now, interval = ctx.now(), ctx.service.config.heartbeat_interval
    items = []
    with ctx.store.read() as txn:
        records = _select(txn, ctx, ids)
        rows = []
        for record in records:
            if not include_all and record["state"] != "running":
                continue
            status, since, reason = _health(txn, record, now, interval)
            reach = "failed" if status == "impaired" else "passed" if status == "ok" else status
            row = {"availability-zone": record["zone"], "instance-state-name": record["state"],
                   "instance-state-code": str(inst.STATE_CODES[record["state"]]),
                   "instance-status.status": status, "system-status.status": status,
                   "instance-status.reachability": reach, "system-status.reachability": reach}
            if all(f.matches(row[f.name]) for f in flts):
                rows.append((record, status, since, reason, reach))
    page, next_token = _page(ctx, [r[0] for r in rows], with_ids=bool(ids))
    keep = {r["id"] for r in page}
    for record, status, since, reason, reach in rows:
        if record["id"] not in keep:
            continue
        summary = {"status": status,
                   "details": [{"name": "reachability", "status": reach, "impairedSince": since}]}
        items.append({
            "instanceId": record["id"], "availabilityZone": record["zone"], "instanceState": _state(record),
            "systemStatus": summary, "instanceStatus": summary,
            # EC2 has no field for "why impaired"; the reason travels as a scheduled-event
            # description, which every client shows.
            "eventsSet": [{"code": "system-maintenance", "description": reason, "notBefore": since}]
            if reason else None})
    return {"instanceStatusSet": items, "nextToken": next_token}


# ---- state changes --------------------------------------------------------------------------

def _owned(txn, ctx: Context) -> list[dict]:
    ids = _check_ids(ctx.params.list("InstanceId"))
    if not ids:
        raise missing("InstanceId")
    return _select(txn, ctx, ids)


async def terminate_instances(ctx: Context) -> dict:
    ids = _check_ids(ctx.params.list("InstanceId"))
    if not ids:
        raise missing("InstanceId")
    account, now = ctx.account_id, ctx.now()
    with ctx.store.read() as txn:
        _select(txn, ctx, ids)  # NotFound before anything changes

    def mutate(txn):
        out = []
        for instance_id in dict.fromkeys(ids):
            record = inst.get_instance(txn, account, instance_id)
            previous = _state(record)
            if record["state"] in ("pending", "running", "stopped", "stopping"):
                inst.user_initiated(record, now)
                if record.get("launch") == "queued" or not record.get("node_id"):
                    inst.set_state(txn, record, "terminated", now)   # never reached a node
                else:
                    inst.set_state(txn, record, "shutting-down", now)
            out.append((record, previous))
        return out

    changed = await ctx.store.write(mutate)
    policy_push.notify(ctx.service)
    if ctx.service.launcher is not None:
        ctx.service.launcher.terminate([r for r, _ in changed if r["state"] == "shutting-down"])
    return {"instancesSet": [{"instanceId": r["id"], "previousState": prev, "currentState": _state(r)}
                             for r, prev in changed]}


async def reboot_instances(ctx: Context) -> dict:
    with ctx.store.read() as txn:
        records = _owned(txn, ctx)
    if ctx.service.launcher is not None:
        ctx.service.launcher.reboot([r for r in records if r["state"] == "running" and r.get("node_id")])
    return {"return": True}


async def stop_instances(ctx: Context) -> dict:
    with ctx.store.read() as txn:
        records = _owned(txn, ctx)
    raise Ec2Error("UnsupportedOperation", f"The instance '{records[0]['id']}' does not have an 'ebs' root "
                                           "device type and cannot be stopped.")


async def start_instances(ctx: Context) -> dict:
    with ctx.store.read() as txn:
        records = _owned(txn, ctx)
    raise Ec2Error("UnsupportedOperation", f"The instance '{records[0]['id']}' does not have an 'ebs' root "
                                           "device type and cannot be started.")


async def get_console_output(ctx: Context) -> dict:
    instance_id = ctx.params.required("InstanceId")
    _check_ids([instance_id])
    with ctx.store.read() as txn:
        (record,) = _select(txn, ctx, [instance_id])
    output = None
    if record["state"] in ("pending", "running") and ctx.service.launcher is not None:
        output = await ctx.service.launcher.console_output(record)
    return {"instanceId": instance_id, "timestamp": _iso(ctx.now()), "output": output}


ACTIONS = {
    "RunInstances": run_instances,
    "DescribeInstances": describe_instances,
    "DescribeInstanceStatus": describe_instance_status,
    "TerminateInstances": terminate_instances,
    "RebootInstances": reboot_instances,
    "StopInstances": stop_instances,
    "StartInstances": start_instances,
    "GetConsoleOutput": get_console_output,
}
