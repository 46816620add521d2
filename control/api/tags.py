"""Tags: CreateTags, DeleteTags, DescribeTags, and the tag helpers other areas use.

Tags live in the ``tags`` tree under ACCOUNT/RESOURCEID/KEY, so an account only ever sees
(and can only ever write) its own. A resource type registers how to check that an id
names one of the account's resources (``RESOURCE_TYPES``).
"""

from __future__ import annotations

import re

from ..errors import Ec2Error, invalid, missing
from ..images import get_image, visible_to
from ..store import get_text, put_text
from .context import Context
from .params import Params, filters

MAX_TAGS = 50


def _group_exists(txn, account_id: str, resource_id: str) -> bool:
    return txn.get("groups", f"{account_id}/{resource_id}".encode()) is not None


def _keypair_exists(txn, account_id: str, resource_id: str) -> bool:
    where = get_text(txn, "keypair_ids", resource_id)
    return where is not None and where.startswith(account_id + "/")


def _image_exists(txn, account_id: str, resource_id: str) -> bool:
    # Any image the account can see may carry the account's own tags.
    image = get_image(txn, resource_id)
    return image is not None and visible_to(image, account_id)


# id prefix -> (resource-type as EC2 names it, existence check, NotFound code)
RESOURCE_TYPES = {
    "sg": ("security-group", _group_exists, "InvalidGroup.NotFound"),
    "key": ("key-pair", _keypair_exists, "InvalidKeyPair.NotFound"),
    "emi": ("image", _image_exists, "InvalidAMIID.NotFound"),
    "eki": ("image", _image_exists, "InvalidAMIID.NotFound"),
    "eri": ("image", _image_exists, "InvalidAMIID.NotFound"),
}
_ID = re.compile(r"([a-z]+)-[0-9a-f]{8,17}")


def resource_type(resource_id: str) -> str:
    match = _ID.fullmatch(resource_id)
    if not match or match.group(1) not in RESOURCE_TYPES:
        raise Ec2Error("InvalidID", f"The ID '{resource_id}' is not valid")
    return RESOURCE_TYPES[match.group(1)][0]


def check_resource(txn, account_id: str, resource_id: str) -> str:
    """The resource type of an id that names one of the account's resources."""
    rtype = resource_type(resource_id)
    _, exists, not_found = RESOURCE_TYPES[resource_id.split("-", 1)[0]]
    if not exists(txn, account_id, resource_id):
        raise Ec2Error(not_found, f"The ID '{resource_id}' does not exist")
    return rtype


def tags_of(txn, account_id: str, resource_id: str) -> dict[str, str]:
    prefix = f"{account_id}/{resource_id}/".encode()
    return {k[len(prefix):].decode(): v.decode() for k, v in txn.scan("tags", prefix=prefix)}


def tag_set(tags: dict[str, str]) -> list[dict] | None:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())] or None


def delete_all_tags(txn, account_id: str, resource_id: str) -> None:
    prefix = f"{account_id}/{resource_id}/".encode()
    for key in [k for k, _ in txn.scan("tags", prefix=prefix)]:
        txn.delete("tags", key)


def _validated_tags(items: list[Params], *, need_value: bool) -> list[tuple[str, str | None]]:
    out = []
    for item in items:
        key = item.get("Key")
        if key is None or key == "":
            raise missing("Tag.N.Key")
        value = item.get("Value")
        if len(key) > 128:
            raise invalid("Tag.Key", key, "tag keys are at most 128 characters")
        if key.lower().startswith("aws:"):
            raise invalid("Tag.Key", key, "tag keys may not start with 'aws:'")
        if value is not None and len(value) > 256:
            raise invalid("Tag.Value", value, "tag values are at most 256 characters")
        out.append((key, value if value is not None else ("" if need_value else None)))
    return out


def write_tags(txn, account_id: str, resource_id: str, tags: list[tuple[str, str]]) -> None:
    current = tags_of(txn, account_id, resource_id)
    for key, value in tags:
        current[key] = value
        put_text(txn, "tags", f"{account_id}/{resource_id}/{key}", value)
    if len(current) > MAX_TAGS:
        raise Ec2Error("TagLimitExceeded", f"The maximum number of tags per resource ({MAX_TAGS}) was exceeded")


def tag_specifications(params: Params, resource_type_name: str) -> list[tuple[str, str]]:
    """Tags asked for with TagSpecification.N on a create call, for ``resource_type_name``."""
    tags = []
    for spec in params.items("TagSpecification"):
        rtype = spec.get("ResourceType")
        if rtype != resource_type_name:
            raise invalid("TagSpecification.ResourceType", rtype, f"expected '{resource_type_name}'")
        tags += _validated_tags(spec.items("Tag"), need_value=True)
    return tags


async def create_tags(ctx: Context) -> dict:
    resources = ctx.params.list("ResourceId")
    if not resources:
        raise missing("ResourceId")
    tags = _validated_tags(ctx.params.items("Tag"), need_value=True)
    if not tags:
        raise missing("Tag")
    account = ctx.account_id

    def mutate(txn):
        for rid in resources:
            check_resource(txn, account, rid)
            write_tags(txn, account, rid, tags)

    await ctx.store.write(mutate)
    return {"return": True}


async def delete_tags(ctx: Context) -> dict:
    resources = ctx.params.list("ResourceId")
    if not resources:
        raise missing("ResourceId")
    wanted = _validated_tags(ctx.params.items("Tag"), need_value=False)
    account = ctx.account_id

    def mutate(txn):
        for rid in resources:
            check_resource(txn, account, rid)
        for rid in resources:
            current = tags_of(txn, account, rid)
            # No Tag.N at all deletes every tag; a Value deletes only if it matches.
            for key, value in wanted or [(k, None) for k in current]:
                if key in current and (value is None or current[key] == value):
                    txn.delete("tags", f"{account}/{rid}/{key}".encode())

    await ctx.store.write(mutate)
    return {"return": True}


DESCRIBE_TAGS_FILTERS = frozenset({"resource-id", "resource-type", "key", "value"})


async def describe_tags(ctx: Context) -> dict:
    flts = filters(ctx.params, DESCRIBE_TAGS_FILTERS, tags=False)
    prefix = f"{ctx.account_id}/".encode()
    items = []
    with ctx.store.read() as txn:
        for raw_key, raw_value in txn.scan("tags", prefix=prefix):
            rid, _, key = raw_key[len(prefix):].decode().partition("/")
            value = raw_value.decode()
            row = {"resource-id": rid, "resource-type": resource_type(rid), "key": key, "value": value}
            if all(f.matches(row[f.name]) for f in flts):
                items.append({"resourceId": rid, "resourceType": row["resource-type"], "key": key,
                              "value": value})
    max_results = ctx.params.int("MaxResults")
    if max_results is not None and not 5 <= max_results <= 1000:
        raise invalid("MaxResults", max_results, "must be between 5 and 1000")
    token = ctx.params.int("NextToken", 0)
    if max_results is not None:
        page = items[token:token + max_results]
        more = token + max_results < len(items)
        return {"tagSet": page, "nextToken": str(token + max_results) if more else None}
    return {"tagSet": items}


ACTIONS = {"CreateTags": create_tags, "DeleteTags": delete_tags, "DescribeTags": describe_tags}
