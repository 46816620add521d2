"""The instance metadata service: the EC2 metadata tree, served to each instance from
its own record (docs/node-protocol.md).

Instances reach it at 169.254.169.254:80, which the node's nftables table redirects to
metadata_host:metadata_port (network.py). The caller is told apart by its source
address alone, the record's private_ip: there is no other credential, as in EC2 (the
DNAT keeps the source address). An unknown source gets 404.

    GET /                                  the versions, one a line
    GET /<version>/                        meta-data/ and (when there is some) user-data
    GET /<version>/meta-data/              the listing: one name a line, directories end in "/"
    GET /<version>/meta-data/<name>        a value (text/plain, no trailing newline)
    GET /<version>/meta-data/public-keys/  "0=<key name>"; public-keys/0/ lists "openssh-key"
    GET /<version>/user-data               the raw bytes given at launch (404 when none)
    PUT /latest/api/token                  an IMDSv2 session token (accepted, not required:
                                           cloud-init asks for one first)

<version> is "latest" or one of EC2's dated versions; all serve the same tree. A
directory answers with or without its trailing slash, as EC2's does. The tree is built
per request from the record (`metadata_tree`, pure), so it changes with the record.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Callable

from aiohttp import web

from .instances import InstanceRecord

log = logging.getLogger("eucalypt.node.metadata")

VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
            "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12", "2014-02-25", "2014-11-05",
            "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02", "latest")

NOT_FOUND_BODY = """\
<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>404 - Not Found</title>
 </head>
 <body>
  <h1>404 - Not Found</h1>
 </body>
</html>
"""

Tree = dict  # name -> str (a value) | Tree (a directory)


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def metadata_tree(record: InstanceRecord) -> Tree:
    """The meta-data/ directory of one instance: the launch's `metadata` (EC2 names; a
    name with "/" is a path; dicts are directories, lists are lines), with the few
    values the node knows itself filled in where control gave none."""
    md = dict(record.metadata or {})
    known = {"instance-id": record.instance_id, "instance-type": record.instance_type,
             "ami-id": record.images.get("machine"), "kernel-id": record.images.get("kernel"),
             "ramdisk-id": record.images.get("ramdisk"), "local-ipv4": record.private_ip or None,
             "mac": record.mac or None, "ami-launch-index": "0"}
    if record.private_ip:
        known["local-hostname"] = known["hostname"] = record.hostname
    for name, value in known.items():
        if md.get(name) in (None, "") and value:
            md[name] = value
    tree: Tree = {}
    for name, value in md.items():
        if value is None or value == "" or value == [] or value == {}:
            continue  # EC2 lists no name it has no value for (public-ipv4 of a private instance)
        if name == "public-keys":
            keys = value if isinstance(value, dict) else {}
            tree["public-keys"] = {f"{i}={key_name}": {"openssh-key": _text(key)}
                                   for i, (key_name, key) in enumerate(sorted(keys.items()))}
            continue
        *dirs, leaf = [p for p in str(name).split("/") if p]
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = ({k: _text(v) for k, v in value.items() if v not in (None, "")}
                          if isinstance(value, dict) else _text(value))
    return tree


def listing(tree: Tree) -> str:
    return "\n".join(name + "/" if isinstance(tree[name], dict) else name for name in sorted(tree))


def _public_keys_dir(tree: Tree) -> tuple[str, Tree]:
    """public-keys/ lists "0=name" but is addressed by index ("public-keys/0/")."""
    keys = tree["public-keys"]
    return "\n".join(sorted(keys)), {name.split("=", 1)[0]: entry for name, entry in keys.items()}


def resolve(record: InstanceRecord, path: str) -> tuple[bytes, str] | None:
    """The body and content type for GET `path` by this instance; None for 404. Pure."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "\n".join(VERSIONS).encode(), "text/plain"
    if parts[0] not in VERSIONS:
        return None
    if len(parts) == 1:
        entries = ["meta-data/"] + (["user-data"] if record.user_data else [])
        return "\n".join(entries).encode(), "text/plain"
    if parts[1] == "user-data" and len(parts) == 2:
        if not record.user_data:
            return None
        return base64.b64decode(record.user_data), "application/octet-stream"
    if parts[1] != "meta-data":
        return None
    node: Tree | str = metadata_tree(record)
    for i, part in enumerate(parts[2:]):
        if not isinstance(node, dict):
            return None
        if part == "public-keys" and i == 0 and part in node:
            text, by_index = _public_keys_dir(node)
            if len(parts) == 3:
                return text.encode(), "text/plain"
            node = by_index
            continue
        if part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return listing(node).encode(), "text/plain"
    if path.endswith("/"):
        return None  # a value, not a directory
    return node.encode(), "text/plain"


class MetadataServer:
    """The HTTP side: `lookup(source address)` gives the caller's record (or None)."""

    def __init__(self, lookup: Callable[[str], InstanceRecord | None], host: str, port: int, *,
                 metrics=None) -> None:
        self.lookup, self.host, self.requested_port = lookup, host, port
        self.metrics = metrics
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "MetadataServer":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("metadata service on %s", self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.metadata_requests.labels(result).inc()

    @staticmethod
    def _not_found() -> web.Response:
        return web.Response(status=404, text=NOT_FOUND_BODY, content_type="text/html", charset="iso-8859-1",
                            headers={"Server": "EC2ws"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = self.lookup(request.remote or "")
        if record is None:
            self._count("unknown_source")
            return self._not_found()
        if request.method == "PUT" and request.path.rstrip("/") == "/latest/api/token":
            ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600 or "X-Forwarded-For" in request.headers:
                self._count("bad_request")
                return web.Response(status=400, text="Bad Request", headers={"Server": "EC2ws"})
            self._count("ok")
            return web.Response(text=secrets.token_urlsafe(42), headers={
                "Server": "EC2ws", "X-aws-ec2-metadata-token-ttl-seconds": ttl})
        if request.method not in ("GET", "HEAD"):
            self._count("bad_method")
            return web.Response(status=405, text="Method Not Allowed", headers={"Server": "EC2ws", "Allow": "GET"})
        found = resolve(record, request.path)
        if found is None:
            self._count("not_found")
            return self._not_found()
        body, content_type = found
        self._count("ok")
        return web.Response(body=body, content_type=content_type, headers={"Server": "EC2ws"})
