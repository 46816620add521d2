"""Security groups: Create/Describe/DeleteSecurityGroup, Authorize/Revoke Ingress/Egress.

Groups behave like VPC security groups without a VPC: every group starts with the
allow-all egress rule; each account's ``default`` group is created the first time the
account touches security groups and allows all traffic from its own members. Rules are
kept as a flat list of grants (protocol, port range, one source); the response groups
them by (protocol, from, to) as EC2 does.

``group_in_use`` is the single place that decides DependencyViolation on delete: rules
of other groups that name the group, and instances in it.

A rule change bumps the network policy counter in its transaction (control/policy.py)
and, once committed, wakes the pusher that sends the nodes their new policies.
"""

from __future__ import annotations

import ipaddress
import re
import secrets

from .. import netmodes, policy, policy_push
from ..errors import Ec2Error, invalid, missing
from ..store import get_json, get_text, put_json, put_text, scan_json
from .context import Context
from .params import Params, filters, tag_filter_matches
from .tags import delete_all_tags, tag_set, tag_specifications, tags_of, write_tags

MAX_RULES = 60
_GROUP_ID = re.compile(r"sg-[0-9a-f]{8}(?:[0-9a-f]{9})?")
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp",
              "-1": "-1", "all": "-1", "icmpv6": "58", "58": "58"}


def _new_group(txn, account_id: str, name: str, description: str, now: float, *, default: bool = False) -> dict:
    while True:
        group_id = "sg-" + secrets.token_hex(9)[:17]
        if txn.get("group_ids", group_id.encode()) is None:
            break
    group = {"id": group_id, "name": name, "description": description, "owner": account_id, "created": now,
             "ingress": [], "egress": [{"proto": "-1", "from": None, "to": None, "cidr": "0.0.0.0/0"}]}
    if default:
        group["ingress"].append({"proto": "-1", "from": None, "to": None, "group_id": group_id,
                                 "owner": account_id, "group_name": name})
    put_json(txn, "groups", f"{account_id}/{group_id}", group)
    put_text(txn, "group_names", f"{account_id}/{name}", group_id)
    put_text(txn, "group_ids", group_id, account_id)
    return group


async def ensure_default_group(ctx: Context) -> None:
    account = ctx.account_id
    with ctx.store.read() as txn:
        if get_text(txn, "group_names", f"{account}/default") is not None:
            return
    now = ctx.now()

    def mutate(txn):
        if get_text(txn, "group_names", f"{account}/default") is None:
            _new_group(txn, account, "default", "default group", now, default=True)

    await ctx.store.write(mutate)


def _check_group_id(group_id: str) -> str:
    if not _GROUP_ID.fullmatch(group_id):
        raise Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{group_id}" (expecting "sg-...")')
    return group_id


def _group_by_id(txn, account_id: str, group_id: str) -> dict:
    _check_group_id(group_id)
    group = get_json(txn, "groups", f"{account_id}/{group_id}")
    if group is None:
        raise Ec2Error("InvalidGroup.NotFound", f"The security group '{group_id}' does not exist")
    return group


def _group_by_name(txn, account_id: str, name: str) -> dict:
    group_id = get_text(txn, "group_names", f"{account_id}/{name}")
    if group_id is None:
        raise Ec2Error("InvalidGroup.NotFound", f"The security group '{name}' does not exist")
    return get_json(txn, "groups", f"{account_id}/{group_id}")


def _target(txn, ctx_account: str, params: Params) -> dict:
    group_id, name = params.get("GroupId"), params.get("GroupName")
    if group_id:
        return _group_by_id(txn, ctx_account, group_id)
    if name:
        return _group_by_name(txn, ctx_account, name)
    raise missing("GroupId")


# ---- rules ----------------------------------------------------------------------------------

def _protocol(value: str | None) -> str:
    if value is None or value == "":
        raise missing("IpProtocol")
    proto = _PROTOCOLS.get(value.lower())
    if proto is None:
        if value.isdigit() and 0 <= int(value) <= 255:
            return str(int(value))
        raise Ec2Error("InvalidParameterValue", f"Invalid value '{value}' for IP protocol. Unknown protocol.")
    return proto


def _ports(proto: str, from_port: int | None, to_port: int | None) -> tuple[int | None, int | None]:
    if proto in ("tcp", "udp"):
        if from_port is None or to_port is None:
            raise Ec2Error("InvalidParameterValue",
                           "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange")
        if not (0 <= from_port <= 65535 and 0 <= to_port <= 65535) or from_port > to_port:
            raise Ec2Error("InvalidParameterValue",
                           f"Invalid port range {from_port}-{to_port}: ports are 0-65535, from <= to")
        return from_port, to_port
    if proto in ("icmp", "58"):
        icmp_type = -1 if from_port is None else from_port
        icmp_code = -1 if to_port is None else to_port
        if not (-1 <= icmp_type <= 255 and -1 <= icmp_code <= 255):
            raise Ec2Error("InvalidParameterValue",
                           f"Invalid value for ICMP type {icmp_type} / code {icmp_code}: each is -1 to 255")
        return icmp_type, icmp_code
    return None, None


def _cidr(value: str, version: int) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"CIDR block {value} is malformed") from None
    if net.version != version:
        raise Ec2Error("InvalidParameterValue", f"CIDR block {value} is not an IPv{version} block")
    return str(net)


def _source_group(txn, account_id: str, pair: Params) -> dict:
    group_id, name, owner = pair.get("GroupId"), pair.get("GroupName"), pair.get("UserId") or account_id
    if group_id:
        _check_group_id(group_id)
        found_owner = get_text(txn, "group_ids", group_id)
        # Another account's group is reachable only by naming its owner (UserId), as in
        # EC2-Classic; an id alone never reveals that another account's group exists.
        if found_owner is None or (found_owner != account_id and found_owner != pair.get("UserId")):
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{group_id}' does not exist")
        group = get_json(txn, "groups", f"{found_owner}/{group_id}")
    elif name:
        gid = get_text(txn, "group_names", f"{owner}/{name}")
        if gid is None:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{name}' does not exist")
        group = get_json(txn, "groups", f"{owner}/{gid}")
    else:
        raise missing("Groups.N.GroupId")
    return {"group_id": group["id"], "owner": group["owner"], "group_name": group["name"]}


def _rules_from(txn, account_id: str, params: Params) -> list[dict]:
    """The grants a request names: IpPermissions.N.* or the old flat parameters."""
    rules = []
    permissions = params.items("IpPermissions")
    if permissions:
        for perm in permissions:
            proto = _protocol(perm.get("IpProtocol"))
            lo, hi = _ports(proto, perm.int("FromPort"), perm.int("ToPort"))
            base = {"proto": proto, "from": lo, "to": hi}
            sources = []
            for rng in perm.items("IpRanges"):
                sources.append({"cidr": _cidr(rng.required("CidrIp"), 4), "description": rng.get("Description")})
            for rng in perm.items("Ipv6Ranges"):
                sources.append({"cidr6": _cidr(rng.required("CidrIpv6"), 6), "description": rng.get("Description")})
            for pair in perm.items("Groups"):
                sources.append({**_source_group(txn, account_id, pair), "description": pair.get("Description")})
            if not sources:
                raise Ec2Error("MissingParameter",
                               "The request must name at least one source: IpRanges, Ipv6Ranges or Groups")
            rules += [{**base, **src} for src in sources]
        return rules
    source_name = params.get("SourceSecurityGroupName")
    if params.get("IpProtocol") is None and source_name is None:
        raise missing("IpPermissions")
    proto = _protocol(params.get("IpProtocol") or "-1")
    lo, hi = _ports(proto, params.int("FromPort"), params.int("ToPort"))
    if source_name:
        pair = Params({"GroupName": source_name, "UserId": params.get("SourceSecurityGroupOwnerId") or ""})
        return [{"proto": proto, "from": lo, "to": hi, **_source_group(txn, account_id, pair)}]
    return [{"proto": proto, "from": lo, "to": hi, "cidr": _cidr(params.get("CidrIp") or "0.0.0.0/0", 4)}]


def _identity(rule: dict) -> tuple:
    source = ("cidr", rule["cidr"]) if "cidr" in rule else ("cidr6", rule["cidr6"]) if "cidr6" in rule \
        else ("group", rule["group_id"])
    return rule["proto"], rule["from"], rule["to"], source


def _describe_rule(rule: dict) -> str:
    peer = rule.get("cidr") or rule.get("cidr6") or rule.get("group_id")
    proto = {"-1": "ALL"}.get(rule["proto"], rule["proto"].upper())
    return f'peer: {peer}, {proto}, from port: {rule["from"]}, to port: {rule["to"]}, ALLOW'


def _clean(rule: dict) -> dict:
    return {k: v for k, v in rule.items() if v is not None or k in ("from", "to")}


async def _change_rules(ctx: Context, direction: str, authorize: bool) -> dict:
    await ensure_default_group(ctx)
    account = ctx.account_id
    params = ctx.params
    if direction == "egress" and not params.get("GroupId"):
        raise missing("GroupId")

    def mutate(txn):
        group = _target(txn, account, params)
        wanted = [_clean(r) for r in _rules_from(txn, account, params)]
        current = group[direction]
        index = {_identity(r): i for i, r in enumerate(current)}
        if authorize:
            seen = set()
            for rule in wanted:
                ident = _identity(rule)
                if ident in index or ident in seen:
                    raise Ec2Error("InvalidPermission.Duplicate",
                                   f'the specified rule "{_describe_rule(rule)}" already exists')
                seen.add(ident)
            if len(current) + len(wanted) > MAX_RULES:
                raise Ec2Error("RulesPerSecurityGroupLimitExceeded",
                               f"The maximum number of rules per security group ({MAX_RULES}) has been reached.")
            group[direction] = current + wanted
        else:
            drop = set()
            for rule in wanted:
                ident = _identity(rule)
                if ident not in index:
                    raise Ec2Error("InvalidPermission.NotFound",
                                   "The specified rule does not exist in this security group.")
                drop.add(index[ident])
            group[direction] = [r for i, r in enumerate(current) if i not in drop]
        put_json(txn, "groups", f"{account}/{group['id']}", group)
        policy.bump(txn)

    await ctx.store.write(mutate)
    policy_push.notify(ctx.service)
    return {"return": True}


async def authorize_ingress(ctx: Context) -> dict:
    return await _change_rules(ctx, "ingress", True)


async def authorize_egress(ctx: Context) -> dict:
    return await _change_rules(ctx, "egress", True)


async def revoke_ingress(ctx: Context) -> dict:
    return await _change_rules(ctx, "ingress", False)


async def revoke_egress(ctx: Context) -> dict:
    return await _change_rules(ctx, "egress", False)


# ---- groups ---------------------------------------------------------------------------------

async def create_security_group(ctx: Context) -> dict:
    name = ctx.params.required("GroupName")
    description = ctx.params.required("GroupDescription")
    if len(name) > 255 or not name.isascii() or not name.isprintable():
        raise invalid("GroupName", name, "group names are 1-255 printable ASCII characters")
    if name.lower().startswith("sg-"):
        raise invalid("GroupName", name, "group names may not start with sg-")
    if len(description) > 255 or not description.isascii() or not description.isprintable():
        raise invalid("GroupDescription", description, "descriptions are 1-255 printable ASCII characters")
    if ctx.params.get("VpcId"):
        raise Ec2Error("InvalidVpcID.NotFound", f"The vpc ID '{ctx.params.get('VpcId')}' does not exist")
    tags = tag_specifications(ctx.params, "security-group")
    await ensure_default_group(ctx)
    account, now = ctx.account_id, ctx.now()

    def mutate(txn):
        if get_text(txn, "group_names", f"{account}/{name}") is not None:
            raise Ec2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        group = _new_group(txn, account, name, description, now)
        write_tags(txn, account, group["id"], tags)
        return group["id"]

    group_id = await ctx.store.write(mutate)
    return {"return": True, "groupId": group_id, "tagSet": tag_set(dict(tags))}


def group_in_use(txn, account_id: str, group_id: str) -> str | None:
    """Why the group cannot be deleted (a message), or None: a rule of another group names
    it, or an instance that is not terminated yet is in it (as in EC2). So a group a
    node's policy refers to never disappears under it."""
    for _, other in scan_json(txn, "groups"):
        if other["id"] == group_id:
            continue
        for rule in other["ingress"] + other["egress"]:
            if rule.get("group_id") == group_id:
                return f"resource {group_id} has a dependent object"
    for _, record in scan_json(txn, "instances", f"{account_id}/"):
        if record["state"] != "terminated" and any(g["id"] == group_id for g in record["groups"]):
            return f"resource {group_id} has a dependent object"
    return None


async def delete_security_group(ctx: Context) -> dict:
    await ensure_default_group(ctx)
    account = ctx.account_id
    params = ctx.params

    def mutate(txn):
        group = _target(txn, account, params)
        if group["name"] == "default":
            raise Ec2Error("CannotDelete", 'the specified group: "default" name cannot be deleted')
        why = group_in_use(txn, account, group["id"])
        if why:
            raise Ec2Error("DependencyViolation", why)
        txn.delete("groups", f"{account}/{group['id']}".encode())
        txn.delete("group_names", f"{account}/{group['name']}".encode())
        txn.delete("group_ids", group["id"].encode())
        delete_all_tags(txn, account, group["id"])
        netmodes.free_group_index(txn, group["id"])  # its segment and slices, for another group
        return group["id"]

    group_id = await ctx.store.write(mutate)
    return {"return": True, "groupId": group_id}


_RULE_FILTERS = ("cidr", "from-port", "to-port", "protocol", "group-id", "group-name", "user-id", "ipv6-cidr")
DESCRIBE_FILTERS = frozenset({"description", "group-id", "group-name", "owner-id", "vpc-id"}
                             | {f"ip-permission.{f}" for f in _RULE_FILTERS}
                             | {f"egress.ip-permission.{f}" for f in _RULE_FILTERS})
_RULE_FIELD = {"cidr": "cidr", "ipv6-cidr": "cidr6", "group-id": "group_id", "group-name": "group_name",
               "user-id": "owner", "protocol": "proto", "from-port": "from", "to-port": "to"}


def _filter_values(group: dict, name: str) -> list:
    plain = {"description": group["description"], "group-id": group["id"], "group-name": group["name"],
             "owner-id": group["owner"]}
    if name in plain:
        return [plain[name]]
    if name == "vpc-id":
        return []
    direction, _, field = ("egress" if name.startswith("egress.") else "ingress"), None, name.rsplit(".", 1)[1]
    values = [r.get(_RULE_FIELD[field]) for r in group[direction]]
    return [v for v in values if v is not None]


def _permissions(rules: list[dict]) -> list[dict]:
    grouped: dict[tuple, dict] = {}
    for rule in rules:
        key = (rule["proto"], rule["from"], rule["to"])
        perm = grouped.setdefault(key, {"ipProtocol": rule["proto"], "fromPort": rule["from"],
                                        "toPort": rule["to"], "groups": [], "ipRanges": [],
                                        "ipv6Ranges": [], "prefixListIds": []})
        if "cidr" in rule:
            perm["ipRanges"].append({"cidrIp": rule["cidr"], "description": rule.get("description")})
        elif "cidr6" in rule:
            perm["ipv6Ranges"].append({"cidrIpv6": rule["cidr6"], "description": rule.get("description")})
        else:
            perm["groups"].append({"userId": rule["owner"], "groupId": rule["group_id"],
                                   "groupName": rule.get("group_name"), "description": rule.get("description")})
    return list(grouped.values())


async def describe_security_groups(ctx: Context) -> dict:
    await ensure_default_group(ctx)
    account = ctx.account_id
    names = ctx.params.list("GroupName")
    ids = [_check_group_id(g) for g in ctx.params.list("GroupId")]
    flts = filters(ctx.params, DESCRIBE_FILTERS)
    out = []
    with ctx.store.read() as txn:
        chosen = None
        if names or ids:
            chosen = {}
            for name in names:
                group = _group_by_name(txn, account, name)
                chosen[group["id"]] = group
            for group_id in ids:
                chosen[group_id] = _group_by_id(txn, account, group_id)
        groups = list(chosen.values()) if chosen is not None else \
            [g for _, g in scan_json(txn, "groups", f"{account}/")]
        for group in sorted(groups, key=lambda g: (g["name"] != "default", g["created"], g["name"])):
            tags = tags_of(txn, account, group["id"])
            ok = True
            for f in flts:
                verdict = tag_filter_matches(f, tags)
                if verdict is None:
                    verdict = f.matches(_filter_values(group, f.name))
                ok = ok and verdict
            if not ok:
                continue
            out.append({"ownerId": group["owner"], "groupId": group["id"], "groupName": group["name"],
                        "groupDescription": group["description"],
                        "ipPermissions": _permissions(group["ingress"]),
                        "ipPermissionsEgress": _permissions(group["egress"]),
                        "tagSet": tag_set(tags)})
    return {"securityGroupInfo": out}


ACTIONS = {
    "CreateSecurityGroup": create_security_group,
    "DeleteSecurityGroup": delete_security_group,
    "DescribeSecurityGroups": describe_security_groups,
    "AuthorizeSecurityGroupIngress": authorize_ingress,
    "AuthorizeSecurityGroupEgress": authorize_egress,
    "RevokeSecurityGroupIngress": revoke_ingress,
    "RevokeSecurityGroupEgress": revoke_egress,
}
