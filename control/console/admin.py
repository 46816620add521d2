"""The administrator's pages: account requests (approve / reject), users (disable /
enable), the cloud (clusters, nodes, capacity per instance type), and every account's
images and instances."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .. import identity as ids
from .. import images as images_mod
from .. import instances as inst
from .. import nodes as nodes_mod
from ..scheduler import NodeCapacity, how_many_fit
from . import requests
from .app import console_of, page, redirect, require_admin

log = logging.getLogger("eucalypt.control.console")


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_get("/admin", overview)
    r.add_get("/admin/requests", request_list)
    r.add_post("/admin/requests/{id}/approve", approve)
    r.add_post("/admin/requests/{id}/reject", reject)
    r.add_get("/admin/users", user_list)
    r.add_post("/admin/users/{account}/{user}/{verb:disable|enable}", set_enabled)
    r.add_get("/admin/cloud", cloud)
    r.add_get("/admin/images", image_list)
    r.add_get("/admin/instances", instance_list)


def iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else ""


def _account_names(txn) -> dict[str, str]:
    return {a.id: a.name for a in ids.list_accounts(txn)}


async def overview(request: web.Request) -> web.Response:
    require_admin(request)
    console = console_of(request)
    with console.store.read() as txn:
        pending = len(requests.list_requests(txn, "pending"))
        accounts = len(ids.list_accounts(txn))
        users = len(ids.list_users(txn))
        node_count = len(nodes_mod.list_nodes(txn))
        live = sum(1 for r in inst.all_instances(txn) if r["state"] in inst.LIVE)
        image_count = sum(1 for i in images_mod.all_images(txn) if i["state"] != "deregistered")
    return page(request, "admin_overview.html", title="Cloud overview", nav="admin", pending=pending,
                accounts=accounts, users=users, nodes=node_count, instances=live, images=image_count,
                zones=console.service.config.zones)


async def request_list(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    require_admin(request)
    with console_of(request).store.read() as txn:
        everything = requests.list_requests(txn)
    pending = [dict(r, created_at=iso(r["created"])) for r in everything if r["state"] == "pending"]
    decided = [dict(r, decided_at=iso(r["decided"])) for r in everything if r["state"] != "pending"]
    decided.sort(key=lambda r: r["decided"] or 0, reverse=True)
    return page(request, "admin_requests.html", status=status, title="Account requests", nav="requests",
                pending=pending, decided=decided[:50], error=error)


async def _decide(request: web.Request, decide) -> web.Response:
    who = require_admin(request)
    console = console_of(request)
    request_id = request.match_info["id"]
    try:
        rec = await console.store.write(lambda txn: decide(txn, request_id, console.now(), who.label))
    except requests.RequestError as exc:
        return await request_list(request, error=str(exc), status=400)
    log.info("console: %s %s request %s (%s/%s)", who.label, rec["state"], request_id, rec["account"], rec["user"])
    raise redirect("admin/requests", rec["state"])


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, lambda txn, rid, now, by: requests.approve(txn, rid, now=now, decided_by=by))


async def reject(request: web.Request) -> web.Response:
    reason = request["form"].get("reason", "")
    return await _decide(request, lambda txn, rid, now, by: requests.reject(txn, rid, reason, now=now,
                                                                             decided_by=by))


async def user_list(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    require_admin(request)
    with console_of(request).store.read() as txn:
        accounts = {a.id: a for a in ids.list_accounts(txn)}
        rows = [{"account": accounts[u.account_id].name, "account_id": u.account_id,
                 "account_enabled": accounts[u.account_id].enabled, "name": u.name, "enabled": u.enabled,
                 "keys": len(u.access_keys), "created": iso(u.created)}
                for u in ids.list_users(txn) if u.account_id in accounts]
    rows.sort(key=lambda r: (r["account"], r["name"]))
    return page(request, "admin_users.html", status=status, title="Users", nav="users", users=rows, error=error)


async def set_enabled(request: web.Request) -> web.Response:
    who = require_admin(request)
    console = console_of(request)
    account_name, user_name = request.match_info["account"], request.match_info["user"]
    enable = request.match_info["verb"] == "enable"
    if not enable and (account_name, user_name) == (who.account.name, who.user.name):
        return await user_list(request, error="You cannot disable yourself.", status=400)

    def change(txn):
        account = ids.account_by_name(txn, account_name)
        return ids.set_user_enabled(txn, account.id, user_name, enable)

    try:
        await console.store.write(change)
    except ids.IdentityError as exc:
        return await user_list(request, error=str(exc), status=400)
    log.info("console: %s %sd user %s/%s", who.label, request.match_info["verb"], account_name, user_name)
    raise redirect("admin/users", request.match_info["verb"] + "d")


def cluster_views(service) -> list[dict]:
    """Each zone: its nodes and, per instance type, how many more fit now / on empty nodes
    (the numbers of DescribeAvailabilityZones verbose)."""
    config, now = service.config, service.clock.now()
    interval = config.heartbeat_interval
    out = []
    with service.store.read() as txn:
        for zone in config.zones:
            free = inst.capacities(txn, zone, now, interval)
            nodes, empty = [], []
            for node in nodes_mod.list_nodes(txn, zone):
                up = nodes_mod.reachable(node, now, interval)
                cores, memory, disk = nodes_mod.totals(node)
                used = inst.placed_usage(txn, node["node_id"])
                if up:
                    empty.append(NodeCapacity(node["node_id"], cores, memory, disk))
                nodes.append({"id": node["node_id"], "url": node["url"], "up": up, "last_seen": iso(node["last_seen"]),
                              "cores": f"{cores - used[0]} / {cores}", "memory": f"{memory - used[1]} / {memory}",
                              "disk": f"{disk - used[2]} / {disk}", "instances": len(node.get("instance_ids") or ())})
            types = []
            for name, spec in config.instance_types.items():
                need = dict(cores=spec.cpus, memory_mib=spec.memory_mib, disk_gb=spec.disk_gb)
                types.append({"name": name, "cpus": spec.cpus, "memory": spec.memory_mib, "disk": spec.disk_gb,
                              "free": sum(how_many_fit(n, **need) for n in free),
                              "max": sum(how_many_fit(n, **need) for n in empty)})
            out.append({"name": zone, "nodes": nodes, "types": types})
    return out


async def cloud(request: web.Request) -> web.Response:
    require_admin(request)
    return page(request, "admin_cloud.html", title="Clusters and nodes", nav="cloud",
                zones=cluster_views(console_of(request).service))


def image_rows(images: list[dict], names: dict[str, str]) -> list[list[str]]:
    return [[i["image_id"], i.get("name") or "", names.get(i["owner"], i["owner"]), i["kind"], i["state"],
             "public" if i.get("public") else "private", i.get("location") or "", iso(i.get("created"))]
            for i in sorted(images, key=lambda i: i.get("created") or 0, reverse=True)]


IMAGE_COLUMNS = ["Image", "Name", "Owner", "Kind", "State", "Visibility", "Location", "Registered"]
INSTANCE_COLUMNS = ["Instance", "Owner", "State", "Type", "Image", "Zone", "Node", "Private IP", "Public IP",
                    "Key", "Launched"]


def instance_rows(records: list[dict], names: dict[str, str]) -> list[list[str]]:
    return [[r["id"], names.get(r["account"], r["account"]), r["state"], r.get("instance_type") or "",
             r.get("image_id") or "", r.get("zone") or "", r.get("node_id") or "", r.get("private_ip") or "",
             r.get("public_ip") or "", r.get("key_name") or "", iso(r.get("launch_time"))]
            for r in sorted(records, key=lambda r: r.get("launch_time") or 0, reverse=True)]


async def image_list(request: web.Request) -> web.Response:
    require_admin(request)
    with console_of(request).store.read() as txn:
        names = _account_names(txn)
        rows = image_rows([i for i in images_mod.all_images(txn) if i["state"] != "deregistered"], names)
    return page(request, "table.html", title="Images (all accounts)", nav="images", columns=IMAGE_COLUMNS,
                rows=rows, empty="No images are registered.")


async def instance_list(request: web.Request) -> web.Response:
    require_admin(request)
    with console_of(request).store.read() as txn:
        rows = instance_rows(inst.all_instances(txn), _account_names(txn))
    return page(request, "table.html", title="Instances (all accounts)", nav="instances",
                columns=INSTANCE_COLUMNS, rows=rows, empty="No instances.")
