"""Images: RegisterImage, DescribeImages, Describe/Modify/ResetImageAttribute, DeregisterImage.

RegisterImage takes an S3 bundle manifest (BUCKET/KEY.manifest.xml) and answers at once
with an id in state "pending" after the cheap checks (control/imaging.py); the image
becomes "available" once imagecache has prepared it, or "failed" with its reason in
StateReason. The kind comes from the manifest (euca-bundle-image --image-type) and gives
the prefix: emi- machine, eki- kernel, eri- ramdisk. A machine image records its default
kernel and ramdisk (RegisterImage KernelId/RamdiskId, else the manifest's); RunInstances
uses them unless it overrides them.
"""

from __future__ import annotations

import datetime
import re

from ..errors import Ec2Error, invalid, missing
from ..images import all_images, get_image, new_image_id, put_image, visible_to
from ..imaging import account_certificates, inspect_bundle
from .context import Context
from .params import filters, tag_filter_matches
from .tags import tag_set, tag_specifications, tags_of, write_tags

_IMAGE_ID = re.compile(r"^(emi|eki|eri|ami|aki|ari)-[0-9a-f]{8}(?:[0-9a-f]{9})?$")
_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./'@_-]{3,128}$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
ARCHITECTURES = ("i386", "x86_64", "arm64")
ROOT_DEVICE = "/dev/sda1"


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _check_id(image_id: str) -> str:
    if not _IMAGE_ID.match(image_id):
        raise Ec2Error("InvalidAMIID.Malformed", f"Invalid id: \"{image_id}\" (expecting \"emi-...\")")
    return image_id


def not_found(image_id: str) -> Ec2Error:
    return Ec2Error("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")


def _visible(txn, image_id: str, account_id: str) -> dict:
    image = get_image(txn, _check_id(image_id))
    if image is None or not visible_to(image, account_id):
        raise not_found(image_id)
    return image


def _owned(txn, image_id: str, account_id: str) -> dict:
    image = _visible(txn, image_id, account_id)
    if image["owner"] != account_id:
        raise Ec2Error("AuthFailure", f"Not authorized for image: {image_id}")
    return image


def _associated(txn, image_id: str | None, kind: str, account_id: str) -> str | None:
    """A kernel or ramdisk a machine image refers to: it must exist, be one, and be launchable."""
    if not image_id:
        return None
    image = get_image(txn, _check_id(image_id))
    if image is None or not visible_to(image, account_id):
        raise not_found(image_id)
    if image["kind"] != kind:
        raise Ec2Error("InvalidParameterValue", f"{image_id} is a {image['kind']} image, not a {kind} image")
    return image_id


# ---- RegisterImage ------------------------------------------------------------------------

async def register_image(ctx: Context) -> dict:
    p = ctx.params
    if p.items("BlockDeviceMapping") and any(m.sub("Ebs").values for m in p.items("BlockDeviceMapping")):
        raise Ec2Error("InvalidParameterCombination", "EBS-backed images are not supported by this cloud: "
                                                      "register an instance-store bundle (ImageLocation)")
    location = p.get("ImageLocation")
    if not location:
        raise missing("ImageLocation")
    name = p.get("Name")
    if not name:
        raise missing("Name")
    if not _NAME.match(name):
        raise invalid("Name", name, "AMI names are 3-128 characters: letters, numbers, ( ) [ ] space . / - ' @ _")
    description = p.get("Description") or ""
    if len(description) > 255:
        raise invalid("Description", description[:32] + "...", "at most 255 characters")
    architecture = p.get("Architecture")
    if architecture is not None and architecture not in ARCHITECTURES:
        raise invalid("Architecture", architecture, f"expected one of {', '.join(ARCHITECTURES)}")
    virtualization = p.get("VirtualizationType") or "paravirtual"
    if virtualization not in ("paravirtual", "hvm"):
        raise invalid("VirtualizationType", virtualization, "expected paravirtual or hvm")
    tags = tag_specifications(p, "image")
    account, user = ctx.account_id, ctx.identity.user.name
    service = ctx.service
    with ctx.store.read() as txn:
        certificates = account_certificates(txn, account, user)
    bundle = await inspect_bundle(service.walrus_url, ctx.identity.key.access_key, ctx.identity.key.secret_key,
                                  location.lstrip("/"), certificates, service.ca.key)
    manifest = bundle.manifest
    kind = manifest.image_type
    if kind not in ("machine", "kernel", "ramdisk"):
        raise Ec2Error("InvalidManifest", f"the manifest's image type {kind!r} is not machine, kernel or ramdisk")
    config = manifest.machine_configuration
    kernel_id = p.get("KernelId") or config.kernel_id
    ramdisk_id = p.get("RamdiskId") or config.ramdisk_id
    if kind != "machine" and (p.get("KernelId") or p.get("RamdiskId")):
        raise Ec2Error("InvalidParameterCombination", f"a {kind} image cannot have a kernel or ramdisk")
    if kind != "machine":
        kernel_id = ramdisk_id = None

    def mutate(txn):
        for other in all_images(txn):
            if other["owner"] == account and other["name"] == name and other["state"] != "deregistered":
                raise Ec2Error("InvalidAMIName.Duplicate",
                               f"AMI name {name} is already in use by AMI {other['image_id']}")
        record = {
            "image_id": new_image_id(txn, kind), "owner": account, "kind": kind, "state": "pending",
            "state_reason": None, "location": location.lstrip("/"), "name": name, "description": description,
            "architecture": architecture or config.architecture or "x86_64",
            "kernel_id": _associated(txn, kernel_id, "kernel", account),
            "ramdisk_id": _associated(txn, ramdisk_id, "ramdisk", account),
            "root_device_name": p.get("RootDeviceName") or ROOT_DEVICE,
            "virtualization_type": virtualization, "public": False, "launch_permissions": [],
            "created": ctx.now(), "size": manifest.size, "sha256": None, "signer_cert": bundle.signer_cert,
            "registered_by": user,
        }
        put_image(txn, record)
        write_tags(txn, account, record["image_id"], tags)
        return record["image_id"]

    image_id = await ctx.store.write(mutate)
    service.images.submit(image_id)
    return {"imageId": image_id}


# ---- DescribeImages ---------------------------------------------------------------------

DESCRIBE_FILTERS = frozenset({
    "architecture", "description", "hypervisor", "image-id", "image-type", "is-public", "kernel-id",
    "manifest-location", "name", "owner-id", "ramdisk-id", "root-device-name", "root-device-type", "state",
    "state-reason-code", "state-reason-message", "virtualization-type",
})


def _filter_fields(image: dict) -> dict:
    reason = image.get("state_reason") or {}
    return {"architecture": image["architecture"], "description": image["description"], "hypervisor": "kvm",
            "image-id": image["image_id"], "image-type": image["kind"],
            "is-public": "true" if image["public"] else "false", "kernel-id": image["kernel_id"],
            "manifest-location": image["location"], "name": image["name"], "owner-id": image["owner"],
            "ramdisk-id": image["ramdisk_id"], "root-device-name": image["root_device_name"],
            "root-device-type": "instance-store", "state": image["state"],
            "state-reason-code": reason.get("code"), "state-reason-message": reason.get("message"),
            "virtualization-type": image["virtualization_type"]}


def image_item(image: dict, tags: dict[str, str]) -> dict:
    reason = image.get("state_reason")
    return {
        "imageId": image["image_id"], "imageLocation": image["location"], "imageState": image["state"],
        "imageOwnerId": image["owner"], "creationDate": _iso(image["created"]), "isPublic": image["public"],
        "architecture": image["architecture"], "imageType": image["kind"], "kernelId": image["kernel_id"],
        "ramdiskId": image["ramdisk_id"], "name": image["name"], "description": image["description"] or None,
        "rootDeviceType": "instance-store", "rootDeviceName": image["root_device_name"],
        "blockDeviceMapping": [], "virtualizationType": image["virtualization_type"], "hypervisor": "kvm",
        "stateReason": {"code": reason["code"], "message": reason["message"]} if reason else None,
        "tagSet": tag_set(tags),
    }


def _executable_by(image: dict, who: str, caller: str) -> bool:
    if who == "all":
        return image["public"]
    account = caller if who == "self" else who
    return image["public"] or account in image["launch_permissions"] or image["owner"] == account


async def describe_images(ctx: Context) -> dict:
    p = ctx.params
    ids = [_check_id(i) for i in p.list("ImageId")]
    owners = p.list("Owner")
    executable_by = p.list("ExecutableBy")
    flts = filters(p, DESCRIBE_FILTERS)
    caller = ctx.account_id
    owner_ids = {caller if o == "self" else o for o in owners}
    with ctx.store.read() as txn:
        if ids:
            images = [_visible(txn, i, caller) for i in dict.fromkeys(ids)]
        else:
            images = [i for i in all_images(txn) if visible_to(i, caller)]
        out = []
        for image in images:
            if owners and image["owner"] not in owner_ids:
                continue
            if executable_by and not any(_executable_by(image, who, caller) for who in executable_by):
                continue
            tags = tags_of(txn, caller, image["image_id"])
            fields = _filter_fields(image)
            if not all(f.matches(fields[f.name]) if f.name in fields else tag_filter_matches(f, tags)
                       for f in flts):
                continue
            out.append(image_item(image, tags))
    out.sort(key=lambda item: item["imageId"])
    max_results = p.int("MaxResults")
    token = p.get("NextToken")
    if max_results is None and token is None:
        return {"imagesSet": out}
    if ids and max_results is not None:
        raise Ec2Error("InvalidParameterCombination", "MaxResults cannot be combined with ImageId")
    if max_results is not None and not 5 <= max_results <= 1000:
        raise invalid("MaxResults", max_results, "must be between 5 and 1000")
    page = [item for item in out if token is None or item["imageId"] > token][:max_results or 1000]
    more = bool(page) and page[-1]["imageId"] < out[-1]["imageId"]
    return {"imagesSet": page, "nextToken": page[-1]["imageId"] if more else None}


# ---- attributes ---------------------------------------------------------------------------

ATTRIBUTES = ("launchPermission", "description", "kernel", "ramdisk", "productCodes", "blockDeviceMapping")


def _attribute(name: str | None) -> str:
    if not name:
        raise missing("Attribute")
    if name not in ATTRIBUTES:
        raise invalid("Attribute", name, f"expected one of {', '.join(ATTRIBUTES)}")
    return name


async def describe_image_attribute(ctx: Context) -> dict:
    image_id = ctx.params.required("ImageId")
    attribute = _attribute(ctx.params.get("Attribute"))
    with ctx.store.read() as txn:
        image = _visible(txn, image_id, ctx.account_id)
        if attribute == "launchPermission" and image["owner"] != ctx.account_id:
            raise Ec2Error("AuthFailure", f"Not authorized for image: {image_id}")
    body: dict = {"imageId": image_id}
    if attribute == "launchPermission":
        body["launchPermission"] = ([{"group": "all"}] if image["public"] else []) + \
            [{"userId": account} for account in image["launch_permissions"]]
    elif attribute == "description":
        body["description"] = {"value": image["description"]} if image["description"] else {}
    elif attribute == "kernel":
        body["kernel"] = {"value": image["kernel_id"]} if image["kernel_id"] else {}
    elif attribute == "ramdisk":
        body["ramdisk"] = {"value": image["ramdisk_id"]} if image["ramdisk_id"] else {}
    elif attribute == "productCodes":
        body["productCodes"] = []
    else:
        body["blockDeviceMapping"] = []
    return body


def _permission_changes(p) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(add, remove) lists of ("group", "all") / ("user", ACCOUNT) from either request form."""
    changes: dict[str, list[tuple[str, str]]] = {"Add": [], "Remove": []}
    for op in changes:
        for item in p.items(f"LaunchPermission.{op}"):
            if item.get("Group") is not None:
                changes[op].append(("group", item.get("Group")))
            if item.get("UserId") is not None:
                changes[op].append(("user", item.get("UserId")))
    operation = p.get("OperationType")
    if operation is not None:
        op = {"add": "Add", "remove": "Remove"}.get(operation)
        if op is None:
            raise invalid("OperationType", operation, "expected add or remove")
        changes[op] += [("group", g) for g in p.list("UserGroup")] + [("user", u) for u in p.list("UserId")]
    for kind, value in changes["Add"] + changes["Remove"]:
        if kind == "group" and value != "all":
            raise Ec2Error("InvalidAMIAttributeItemValue", f"Invalid attribute item value \"{value}\" for "
                                                           "launchPermission item type (group must be all)")
        if kind == "user" and not _ACCOUNT.match(value):
            raise Ec2Error("InvalidAMIAttributeItemValue", f"Invalid attribute item value \"{value}\" for "
                                                           "userId item type (a 12-digit account id)")
    return changes["Add"], changes["Remove"]


async def modify_image_attribute(ctx: Context) -> dict:
    p = ctx.params
    image_id = p.required("ImageId")
    attribute = p.get("Attribute")
    add, remove = _permission_changes(p)
    description = p.get("Description.Value")
    if description is None and attribute == "description":
        description = p.get("Value")
    if not add and not remove and description is None:
        if attribute in ("kernel", "ramdisk", "productCodes", "blockDeviceMapping"):
            raise Ec2Error("InvalidParameter", f"the {attribute} attribute of an image cannot be modified")
        raise Ec2Error("MissingParameter", "The request must contain a launch permission change or a "
                                           "description (LaunchPermission.Add/Remove or Description.Value)")
    if description is not None and len(description) > 255:
        raise invalid("Description", description[:32] + "...", "at most 255 characters")
    account = ctx.account_id

    def mutate(txn):
        image = _owned(txn, image_id, account)
        public = image["public"]
        permitted = list(image["launch_permissions"])
        for kind, value in add:
            if kind == "group":
                public = True
            elif value not in permitted:
                permitted.append(value)
        for kind, value in remove:
            if kind == "group":
                public = False
            elif value in permitted:
                permitted.remove(value)
        changed = {"public": public, "launch_permissions": permitted}
        if description is not None:
            changed["description"] = description
        put_image(txn, {**image, **changed})

    await ctx.store.write(mutate)
    return {"return": True}


async def reset_image_attribute(ctx: Context) -> dict:
    image_id = ctx.params.required("ImageId")
    attribute = _attribute(ctx.params.get("Attribute"))
    if attribute != "launchPermission":
        raise invalid("Attribute", attribute, "only launchPermission can be reset")
    account = ctx.account_id

    def mutate(txn):
        image = _owned(txn, image_id, account)
        put_image(txn, {**image, "public": False, "launch_permissions": []})

    await ctx.store.write(mutate)
    return {"return": True}


async def deregister_image(ctx: Context) -> dict:
    image_id = ctx.params.required("ImageId")
    account = ctx.account_id

    def mutate(txn):
        image = _owned(txn, image_id, account)
        put_image(txn, {**image, "state": "deregistered"})

    await ctx.store.write(mutate)
    return {"return": True}


ACTIONS = {"RegisterImage": register_image, "DescribeImages": describe_images,
           "DescribeImageAttribute": describe_image_attribute, "ModifyImageAttribute": modify_image_attribute,
           "ResetImageAttribute": reset_image_attribute, "DeregisterImage": deregister_image}

