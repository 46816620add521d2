"""Image records: who owns an image, who may see and launch it, and its state.

Tree ``images``: IMAGEID -> record (JSON)::

    {"image_id": "emi-0123abcd", "owner": ACCOUNT, "kind": "machine" | "kernel" | "ramdisk",
     "state": "pending" | "available" | "failed" | "deregistered",
     "state_reason": {"code", "message"} | null, "location": "bucket/key.manifest.xml",
     "name", "description", "architecture", "kernel_id", "ramdisk_id", "root_device_name",
     "virtualization_type", "public": bool, "launch_permissions": [ACCOUNT, ...],
     "created": unix time, "size": bytes of the raw image (once known), "sha256": of it}

Ids carry the kind as Eucalyptus did: ``emi-`` machine, ``eki-`` kernel, ``eri-`` ramdisk.
A private image is invisible to other accounts (as if it did not exist) unless its owner
granted them launch permission; a public one is visible to and launchable by all.
"""

from __future__ import annotations

import secrets

from .store import get_json, put_json, scan_json

IMAGES = "images"
PREFIX = {"machine": "emi", "kernel": "eki", "ramdisk": "eri"}
KIND_OF_PREFIX = {v: k for k, v in PREFIX.items()}
STATES = ("pending", "available", "failed", "deregistered")


def get_image(txn, image_id: str) -> dict | None:
    return get_json(txn, IMAGES, image_id)


def put_image(txn, record: dict) -> None:
    put_json(txn, IMAGES, record["image_id"], record)


def all_images(txn) -> list[dict]:
    return [record for _, record in scan_json(txn, IMAGES)]


def new_image_id(txn, kind: str) -> str:
    while True:
        image_id = f"{PREFIX[kind]}-{secrets.token_hex(4)}"
        if txn.get(IMAGES, image_id.encode()) is None:
            return image_id


def visible_to(image: dict, account_id: str) -> bool:
    """Whether `account_id` may see the image at all (DescribeImages, attributes)."""
    if image["state"] == "deregistered":
        return False
    return image["owner"] == account_id or image["public"] or account_id in image["launch_permissions"]


def can_launch(image: dict, account_id: str) -> bool:
    """Whether `account_id` may run instances of the image (it must also be available)."""
    return visible_to(image, account_id)


def launchable(txn, image_id: str | None, account_id: str) -> dict | None:
    """The image record if it exists and `account_id` may launch it, else None."""
    if not image_id:
        return None
    image = get_image(txn, image_id)
    return image if image is not None and can_launch(image, account_id) else None
