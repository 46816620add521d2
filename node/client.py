"""A small aiohttp client for the node API (what control will use; the tests use it too)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from .auth import signed_headers


class NodeApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class NodeClient:
    """Calls to one node. At most `max_in_flight` at once, each signed only when it is about
    to be sent: a burst of calls (control launching thousands of instances) waits here,
    not signed in a connection queue, where its date would go stale past the node's
    5-minute skew limit."""

    def __init__(self, url: str, secret: str, *, timeout: float = 600, clock=None,
                 max_in_flight: int = 32) -> None:
        self.url, self.secret = url.rstrip("/"), secret
        self._clock = clock
        self._gate = asyncio.Semaphore(max_in_flight)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                              connector=aiohttp.TCPConnector(limit=max_in_flight))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        raw = b"" if body is None else json.dumps(body).encode()
        async with self._gate:
            now = self._clock.now() if self._clock else time.time()
            headers = signed_headers(self.secret, method, path, raw, now)
            if body is not None:
                headers["Content-Type"] = "application/json"
            async with self._session.request(method, self.url + path, data=raw, headers=headers) as reply:
                doc = await reply.json(content_type=None)
                if reply.status >= 400:
                    err = (doc or {}).get("error", {})
                    raise NodeApiError(reply.status, err.get("code", ""), err.get("message", ""))
                return doc

    async def resources(self) -> dict:
        return await self.call("GET", "/node/v1/resources")

    async def images(self) -> list[dict]:
        return (await self.call("GET", "/node/v1/images"))["images"]

    async def prefetch(self, image_id: str) -> dict:
        return await self.call("POST", f"/node/v1/images/{image_id}/prefetch")

    async def run_instance(self, instance_id: str, image_id: str, *, vcpus: int = 1, memory_mib: int = 256,
                           instance_type: str = "m1.small", kernel_id: str | None = None,
                           ramdisk_id: str | None = None, cmdline: str | None = None,
                           private_ip: str | None = None, ephemeral_gb: int = 0, swap_mb: int = 0,
                           user_data: str | None = None, metadata: dict | None = None,
                           network: dict | None = None) -> dict:
        """Launch (the body of docs/node-protocol.md); the fields after ramdisk_id are sent
        only when given, so a node that predates them sees the same body as before."""
        body = {"instance_id": instance_id, "image_id": image_id, "instance_type": instance_type,
                "vcpus": vcpus, "memory_mib": memory_mib, "kernel_id": kernel_id, "ramdisk_id": ramdisk_id}
        extra = {"cmdline": cmdline, "private_ip": private_ip, "ephemeral_gb": ephemeral_gb or None,
                 "swap_mb": swap_mb or None, "user_data": user_data, "metadata": metadata, "network": network}
        body.update({k: v for k, v in extra.items() if v is not None})
        return (await self.call("POST", "/node/v1/instances", body))["instance"]

    async def instances(self) -> list[dict]:
        return (await self.call("GET", "/node/v1/instances"))["instances"]

    async def describe(self, instance_id: str) -> dict:
        return (await self.call("GET", f"/node/v1/instances/{instance_id}"))["instance"]

    async def terminate(self, instance_id: str) -> dict:
        return (await self.call("DELETE", f"/node/v1/instances/{instance_id}"))["instance"]

    async def reboot(self, instance_id: str) -> dict:
        return (await self.call("POST", f"/node/v1/instances/{instance_id}/reboot"))["instance"]

    async def console(self, instance_id: str) -> dict:
        return await self.call("GET", f"/node/v1/instances/{instance_id}/console")

    async def network_policy(self, doc: dict) -> dict:
        """PUT the complete network policy (docs/node-protocol.md): {"version", "enforced"};
        NodeApiError 409 when the node has applied a newer version, 400 when malformed."""
        return await self.call("PUT", "/node/v1/network-policy", doc)

    async def metrics(self) -> str:
        async with self._session.get(self.url + "/_eucalypt/metrics") as reply:
            return await reply.text()
