"""Elastic IPs: AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress,
DescribeAddresses, from the pool in ControlConfig.public_ips (``--public-ips``).

Records (tree ``addresses``, PUBLICIP -> record; ``address_ids`` ALLOCATIONID -> PUBLICIP)::

    {"public_ip", "allocation_id", "account", "domain": "standard" | "vpc",
     "instance_id" | null, "association_id" | null, "private_ip" | null, "allocated"}

An association is recorded on both sides (the instance's ``public_ip``) and bumps the
network policy counter in the same transaction, as does undoing one: the pusher
(control/policy_push.py) then moves the 1:1 NAT to the instance's node. The address
shows as the instance's publicIp and in the metadata of instances launched afterwards. Terminating an instance releases
its association (instances.set_state). As in EC2, a "vpc" address must be disassociated
before it is released, and reassociated only with AllowReassociation; a "standard" one
moves freely.
"""

from __future__ import annotations

import ipaddress
import secrets

from .. import instances as inst
from .. import policy, policy_push, public_ips
from ..errors import Ec2Error, invalid, missing
from ..store import get_json, get_text, put_json, put_text, scan_json
from . import tags as tags_mod
from .context import Context
from .params import filters, tag_filter_matches
from .tags import delete_all_tags, tag_set, tag_specifications, tags_of, write_tags

MAX_POOL = 1 << 16


def parse_pool(specs) -> list[str]:
    """The addresses of "A.B.C.D-A.B.C.E" ranges and CIDRs (comma-separated strings or a
    list of them), in order, without duplicates. ValueError for a bad one."""
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, None] = {}
    for spec in specs:
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            if "-" in part:
                first, last = (ipaddress.IPv4Address(x.strip()) for x in part.split("-", 1))
                if last < first:
                    raise ValueError(f"address range {part} ends before it starts")
                addresses = (ipaddress.IPv4Address(i) for i in range(int(first), int(last) + 1))
            elif "/" in part:
                net = ipaddress.IPv4Network(part, strict=False)
                addresses = net.hosts() if net.num_addresses > 2 else iter(net)
            else:
                addresses = iter([ipaddress.IPv4Address(part)])
            for address in addresses:
                out[str(address)] = None
                if len(out) > MAX_POOL:
                    raise ValueError(f"the public IP pool is limited to {MAX_POOL} addresses")
    return list(out)


def _allocation_exists(txn, account_id: str, resource_id: str) -> bool:
    ip = get_text(txn, "address_ids", resource_id)
    record = get_json(txn, "addresses", ip) if ip else None
    return record is not None and record["account"] == account_id


tags_mod.RESOURCE_TYPES.setdefault("eipalloc", ("elastic-ip", _allocation_exists, "InvalidAllocationID.NotFound"))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def _by_allocation(txn, account_id: str, allocation_id: str) -> dict:
    ip = get_text(txn, "address_ids", allocation_id)
    record = get_json(txn, "addresses", ip) if ip else None
    if record is None or record["account"] != account_id:
        raise Ec2Error("InvalidAllocationID.NotFound", f"The allocation ID '{allocation_id}' does not exist")
    return record


def _by_ip(txn, account_id: str, public_ip: str) -> dict:
    record = get_json(txn, "addresses", public_ip)
    if record is None or record["account"] != account_id:
        raise Ec2Error("InvalidAddress.NotFound", f"Address '{public_ip}' not found.")
    return record


def _target(txn, ctx: Context) -> dict:
    allocation_id, public_ip = ctx.params.get("AllocationId"), ctx.params.get("PublicIp")
    if allocation_id:
        return _by_allocation(txn, ctx.account_id, allocation_id)
    if public_ip:
        return _by_ip(txn, ctx.account_id, public_ip)
    raise missing("AllocationId")


def _detach(txn, address: dict, ctx: Context | None = None) -> None:
    """Undo an address's association on both sides. With --auto-public-ips (ctx given)
    the instance gets a fresh automatic address in its place, as in EC2-Classic."""
    record = None
    if address.get("instance_id"):
        record = inst.find_instance(txn, address["instance_id"])
        if record is not None and record.get("public_ip") == address["public_ip"]:
            record.update(public_ip=None, allocation_id=None, association_id=None)
            inst.put_instance(txn, record)
        else:
            record = None
    if public_ips.drop(txn, address["public_ip"]):
        return
    address.update(instance_id=None, association_id=None, private_ip=None)
    put_json(txn, "addresses", address["public_ip"], address)
    policy.bump(txn)
    if ctx is not None and ctx.service.config.auto_public_ips and record is not None \
            and record["state"] in ("pending", "running"):
        public_ips.assign(txn, parse_pool(ctx.service.config.public_ips), record, ctx.now())
        inst.put_instance(txn, record)


async def allocate_address(ctx: Context) -> dict:
    domain = ctx.params.get("Domain") or "standard"
    if domain not in ("standard", "vpc"):
        raise invalid("Domain", domain, "expected standard or vpc")
    tags = tag_specifications(ctx.params, "elastic-ip")
    try:
        pool = parse_pool(ctx.service.config.public_ips)
    except ValueError as exc:
        raise Ec2Error("InternalError", f"the public IP pool is misconfigured: {exc}") from None
    account, now = ctx.account_id, ctx.now()

    def mutate(txn):
        for ip in pool:
            if txn.get("addresses", ip.encode()) is None:
                record = {"public_ip": ip, "allocation_id": _new_id("eipalloc"), "account": account,
                          "domain": domain, "instance_id": None, "association_id": None, "private_ip": None,
                          "allocated": now}
                put_json(txn, "addresses", ip, record)
                put_text(txn, "address_ids", record["allocation_id"], ip)
                if tags:
                    write_tags(txn, account, record["allocation_id"], tags)
                return record
        raise Ec2Error("AddressLimitExceeded", "The maximum number of addresses has been reached."
                       if pool else "This cloud has no public IP addresses to allocate (no --public-ips pool).")

    record = await ctx.store.write(mutate)
    return {"publicIp": record["public_ip"], "domain": domain, "allocationId": record["allocation_id"],
            "publicIpv4Pool": "eucalypt", "networkBorderGroup": ctx.service.config.region}


async def associate_address(ctx: Context) -> dict:
    instance_id = ctx.params.get("InstanceId")
    if not instance_id:
        if ctx.params.get("NetworkInterfaceId"):
            raise Ec2Error("UnsupportedOperation", "Network interfaces are not supported; give InstanceId")
        raise missing("InstanceId")
    allow = ctx.params.bool("AllowReassociation")
    account = ctx.account_id

    def mutate(txn):
        address = _target(txn, ctx)
        record = inst.get_instance(txn, account, instance_id)
        if record is None or record["state"] == "terminated":
            raise Ec2Error("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        if record["state"] not in ("pending", "running"):
            raise Ec2Error("IncorrectInstanceState",
                           f"The instance '{instance_id}' is not in a valid state for this operation.")
        if address.get("instance_id") and address["instance_id"] != instance_id:
            if address["domain"] == "vpc" and not allow:
                raise Ec2Error("Resource.AlreadyAssociated",
                               f"resource {address['allocation_id']} is already associated with associate-id "
                               f"{address['association_id']}")
            _detach(txn, address, ctx)
        if record.get("public_ip") and record["public_ip"] != address["public_ip"]:
            other = get_json(txn, "addresses", record["public_ip"])
            if other is not None:
                _detach(txn, other)
            record = inst.get_instance(txn, account, instance_id)
        association_id = address.get("association_id") if address.get("instance_id") == instance_id \
            else _new_id("eipassoc")
        address.update(instance_id=instance_id, association_id=association_id, private_ip=record.get("private_ip"))
        put_json(txn, "addresses", address["public_ip"], address)
        record.update(public_ip=address["public_ip"], allocation_id=address["allocation_id"],
                      association_id=association_id)
        inst.put_instance(txn, record)
        policy.bump(txn)
        return association_id

    association_id = await ctx.store.write(mutate)
    policy_push.notify(ctx.service)
    return {"return": True, "associationId": association_id}


async def disassociate_address(ctx: Context) -> dict:
    association_id, public_ip = ctx.params.get("AssociationId"), ctx.params.get("PublicIp")
    account = ctx.account_id

    def mutate(txn):
        if association_id:
            found = next((a for _, a in scan_json(txn, "addresses")
                          if a["account"] == account and a.get("association_id") == association_id), None)
            if found is None:
                raise Ec2Error("InvalidAssociationID.NotFound",
                               f"The association ID '{association_id}' does not exist")
        elif public_ip:
            found = _by_ip(txn, account, public_ip)
        else:
            raise missing("AssociationId")
        if found.get("instance_id"):
            _detach(txn, found, ctx)

    await ctx.store.write(mutate)
    policy_push.notify(ctx.service)
    return {"return": True}


async def release_address(ctx: Context) -> dict:
    account = ctx.account_id

    def mutate(txn):
        address = _target(txn, ctx)
        if address.get("instance_id"):
            if address["domain"] == "vpc":
                raise Ec2Error("InvalidIPAddress.InUse", f"Address '{address['public_ip']}' is in use.")
            _detach(txn, address, ctx)
        txn.delete("addresses", address["public_ip"].encode())
        txn.delete("address_ids", address["allocation_id"].encode())
        delete_all_tags(txn, account, address["allocation_id"])

    await ctx.store.write(mutate)
    policy_push.notify(ctx.service)
    return {"return": True}


ADDRESS_FILTERS = frozenset({"domain", "public-ip", "allocation-id", "association-id", "instance-id",
                             "private-ip-address", "network-border-group", "public-ipv4-pool"})


async def describe_addresses(ctx: Context) -> dict:
    account = ctx.account_id
    ips, allocations = ctx.params.list("PublicIp"), ctx.params.list("AllocationId")
    flts = filters(ctx.params, ADDRESS_FILTERS)
    region = ctx.service.config.region
    items = []
    with ctx.store.read() as txn:
        if ips or allocations:
            chosen = {}
            for ip in ips:
                chosen[ip] = _by_ip(txn, account, ip)
            for allocation_id in allocations:
                record = _by_allocation(txn, account, allocation_id)
                chosen[record["public_ip"]] = record
            records = list(chosen.values())
        else:
            records = [a for _, a in scan_json(txn, "addresses") if a["account"] == account]
        for record in sorted(records, key=lambda a: ipaddress.IPv4Address(a["public_ip"])):
            tags = tags_of(txn, account, record["allocation_id"])
            row = {"domain": record["domain"], "public-ip": record["public_ip"],
                   "allocation-id": record["allocation_id"], "association-id": record.get("association_id"),
                   "instance-id": record.get("instance_id"), "private-ip-address": record.get("private_ip"),
                   "network-border-group": region, "public-ipv4-pool": "eucalypt"}
            ok = True
            for f in flts:
                verdict = tag_filter_matches(f, tags)
                ok = ok and (verdict if verdict is not None else f.matches(row[f.name]))
            if ok:
                items.append({"publicIp": record["public_ip"], "allocationId": record["allocation_id"],
                              "domain": record["domain"], "instanceId": record.get("instance_id"),
                              "associationId": record.get("association_id"),
                              "privateIpAddress": record.get("private_ip"), "publicIpv4Pool": "eucalypt",
                              "networkBorderGroup": region, "tagSet": tag_set(tags)})
    return {"addressesSet": items}


ACTIONS = {
    "AllocateAddress": allocate_address,
    "AssociateAddress": associate_address,
    "DisassociateAddress": disassociate_address,
    "ReleaseAddress": release_address,
    "DescribeAddresses": describe_addresses,
}
