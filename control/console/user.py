"""A user's pages: access keys (rotate as in IAM, delete), the credentials zip, and
read-only views of the account's instances, images, key pairs, security groups and
buckets. Everything shown is the logged-in user's own account's; the bucket list comes
from Walrus itself (ListBuckets signed with the user's newest key).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

from aiohttp import web

from .. import identity as ids
from .. import images as images_mod
from .. import instances as inst
from ..credentials import write_credentials
from ..store import scan_json
from .admin import IMAGE_COLUMNS, INSTANCE_COLUMNS, image_rows, instance_rows, iso
from .app import console_of, page, redirect, require_user

log = logging.getLogger("eucalypt.control.console")
MAX_ZIP = 1 << 20  # a credentials set is ~20 KB; anything near this is a bug, not a download
RESOURCES = ("instances", "images", "keypairs", "groups", "buckets")


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/user", overview)
    r.add_post("/user/credentials.zip", credentials_zip)
    r.add_post("/user/keys/rotate", rotate_key)
    r.add_post("/user/keys/{akid}/delete", delete_key)
    r.add_get("/user/{kind:" + "|".join(RESOURCES) + "}", resources)


async def overview(request: web.Request, *, new_key: ids.AccessKey | None = None, error: str | None = None,
                   status: int = 200) -> web.Response:
    who = require_user(request)
    service = console_of(request).service
    with service.store.read() as txn:
        user = ids.get_user(txn, who.account.id, who.user.name)
        keys = [{"id": k.access_key, "created": iso(k.created), "newest": i == len(user.access_keys) - 1}
                for i, k in enumerate(ids.user_keys(txn, user))]
    return page(request, "user_overview.html", status=status, title="Your credentials", nav="user", keys=keys,
                max_keys=ids.MAX_KEYS, new_key=new_key, error=error, ec2_url=service.public_url,
                s3_url=service.walrus_url, region=service.config.region)


async def rotate_key(request: web.Request) -> web.Response:
    """A second key, as IAM's CreateAccessKey: the old one keeps working until deleted."""
    who = require_user(request)
    console = console_of(request)
    try:
        key = await console.store.write(lambda txn: ids.create_access_key(
            txn, who.account.id, who.user.name, now=console.now()))
    except ids.LimitExceeded:
        return await overview(request, status=409, error=f"You already have {ids.MAX_KEYS} access keys: "
                                                         "delete the one you no longer use first.")
    log.info("console: %s created access key %s", who.label, key.access_key)
    # The secret is shown once, in this response to the POST (never in a URL or a log).
    return await overview(request, new_key=key)


async def delete_key(request: web.Request) -> web.Response:
    who = require_user(request)
    console = console_of(request)
    akid = request.match_info["akid"]

    def delete(txn):
        user = ids.get_user(txn, who.account.id, who.user.name)
        if akid in user.access_keys and len(user.access_keys) == 1:
            raise ids.LimitExceeded("This is your only access key: create a new one before deleting it.")
        ids.delete_access_key(txn, who.account.id, who.user.name, akid)

    try:
        await console.store.write(delete)
    except ids.IdentityError as exc:
        return await overview(request, status=400, error=str(exc))
    log.info("console: %s deleted access key %s", who.label, akid)
    raise redirect("user", "key-deleted")


def _zip_credentials(service, account: str, user: str) -> bytes:
    """`eucalypt admin credentials` into a private temp dir, zipped under ACCOUNT-USER/."""
    folder = f"{account}-{user}"
    with tempfile.TemporaryDirectory(prefix="eucalypt-console-") as tmp:
        out = write_credentials(service.data, account, user, Path(tmp) / folder, ec2_url=service.public_url,
                                s3_url=service.walrus_url, region=service.config.region)
        buffer = BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                data = path.read_bytes()
                if path.name == "euca2ools.ini":
                    # Its paths name the temp dir; relative names work from the unpacked folder.
                    data = data.replace(f"{out}/".encode(), b"")
                info = zipfile.ZipInfo(f"{folder}/{path.name}", date_time=(2000, 1, 1, 0, 0, 0))
                info.external_attr = (0o100000 | (path.stat().st_mode & 0o777)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
                if buffer.tell() > MAX_ZIP:
                    raise RuntimeError("the credentials zip grew past 1 MiB")
        return buffer.getvalue()


async def credentials_zip(request: web.Request) -> web.Response:
    """POST (with the CSRF token), as it issues a fresh certificate each time."""
    who = require_user(request)
    service = console_of(request).service
    try:
        body = await asyncio.to_thread(_zip_credentials, service, who.account.name, who.user.name)
    except ids.IdentityError as exc:
        return await overview(request, status=409, error=str(exc))
    log.info("console: %s downloaded a credentials zip", who.label)
    return web.Response(body=body, content_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{who.account.name}-{who.user.name}-credentials.zip"'})


# ---- read-only views -------------------------------------------------------------------------

def _rule_text(rule: dict) -> str:
    proto = {"-1": "all"}.get(rule["proto"], rule["proto"])
    ports = "" if rule["from"] is None else f" {rule['from']}" + ("" if rule["to"] == rule["from"] else f"-{rule['to']}")
    peer = rule.get("cidr") or rule.get("cidr6") or rule.get("group_name") or rule.get("group_id")
    return f"{proto}{ports} {peer}"


async def _buckets(service, account_id: str, user_name: str) -> tuple[list[list[str]], str | None]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    with service.store.read() as txn:
        keys = ids.user_keys(txn, ids.get_user(txn, account_id, user_name))
    if not keys:
        return [], "You have no access key, so Walrus cannot be asked."
    config = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=5,
                       read_timeout=15)
    try:
        async with get_session().create_client(
                "s3", endpoint_url=service.walrus_url, region_name=service.config.region, config=config,
                aws_access_key_id=keys[-1].access_key, aws_secret_access_key=keys[-1].secret_key) as s3:
            answer = await s3.list_buckets()
    except Exception as exc:  # Walrus down or refusing: say so on the page
        log.warning("console: ListBuckets for %s failed: %s", user_name, type(exc).__name__)
        return [], f"Walrus did not answer the bucket list ({type(exc).__name__})."
    rows = [[b["Name"], b["CreationDate"].strftime("%Y-%m-%d %H:%M UTC")] for b in answer.get("Buckets", [])]
    return rows, None


async def resources(request: web.Request) -> web.Response:
    who = require_user(request)
    service = console_of(request).service
    kind, account_id = request.match_info["kind"], who.account.id
    error = None
    with service.store.read() as txn:
        names = {a.id: a.name for a in ids.list_accounts(txn)} if kind == "images" else {}
        if kind == "instances":
            columns, empty = INSTANCE_COLUMNS, "You have no instances."
            rows = instance_rows(inst.account_instances(txn, account_id), {account_id: "you"})
        elif kind == "images":
            columns, empty = IMAGE_COLUMNS, "You can see no images."
            names[account_id] = "you"
            rows = image_rows([i for i in images_mod.all_images(txn) if images_mod.visible_to(i, account_id)],
                              names)
        elif kind == "keypairs":
            columns, empty = ["Name", "Id", "Type", "Fingerprint", "Created"], "You have no key pairs."
            rows = [[p["name"], p["id"], p["type"], p["fingerprint"], iso(p.get("created"))]
                    for _, p in scan_json(txn, "keypairs", f"{account_id}/")]
        elif kind == "groups":
            columns, empty = ["Group", "Name", "Description", "Inbound", "Outbound"], "You have no security groups."
            rows = [[g["id"], g["name"], g["description"], "; ".join(map(_rule_text, g["ingress"])) or "none",
                     "; ".join(map(_rule_text, g["egress"])) or "none"]
                    for _, g in scan_json(txn, "groups", f"{account_id}/")]
    if kind == "buckets":
        columns, empty = ["Bucket", "Created"], "You have no buckets."
        rows, error = await _buckets(service, account_id, who.user.name)
    titles = {"instances": "Your instances", "images": "Images you can launch", "keypairs": "Your key pairs",
              "groups": "Your security groups", "buckets": "Your buckets"}
    return page(request, "table.html", title=titles[kind], nav=kind, columns=columns, rows=rows, empty=empty,
                error=error)
