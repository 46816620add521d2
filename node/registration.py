"""Registration with control and the heartbeat (docs/node-protocol.md, node -> control).

When NodeConfig.control_url is set, the node POSTs a signed heartbeat to
{control}/_eucalypt/internal/nodes/heartbeat when it starts, every heartbeat_interval
seconds (control's answer sets it; 5 s until then), and at once after an instance's
state changes (InstanceManager.on_change sets an event; changes that come while a
heartbeat is in flight are coalesced into one more). The first heartbeat registers the
node; later ones re-register it after a restart, under the same node id, which is
generated once and kept in DATA/node-id.

A failure (control down, 4xx, a malformed answer) is logged -- once per distinct reason,
so a long outage does not flood the log -- and retried at the interval; it never stops
the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from pathlib import Path

import aiohttp

from control.internal import signed_headers

log = logging.getLogger("eucalypt.node.registration")

PROTOCOL = 1
HEARTBEAT_PATH = "/_eucalypt/internal/nodes/heartbeat"
MIN_INTERVAL, MAX_INTERVAL = 0.2, 300.0


def load_node_id(data_dir: Path) -> str:
    """The node's id, "nc-<16 hex>": read from DATA/node-id, made (atomically) the first time."""
    path = Path(data_dir) / "node-id"
    try:
        node_id = path.read_text().strip()
        if node_id.startswith("nc-") and len(node_id) == 19:
            return node_id
        log.warning("%s holds %r, not a node id; making a new one", path, node_id)
    except FileNotFoundError:
        pass
    node_id = "nc-" + secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(node_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


class HeartbeatRejected(Exception):
    pass


class Registration:
    """The heartbeat loop of one agent. `start()` after the agent API listens (the url
    it reports must answer); `stop()` before the agent closes."""

    def __init__(self, agent, control_url: str, node_url: str, *, interval: float) -> None:
        self.agent = agent
        self.control_url = control_url.rstrip("/")
        self.node_url = node_url
        self.interval = interval
        self.node_id = load_node_id(agent.config.data_dir)
        self.cluster = agent.config.cluster
        self.started = agent.clock.now()
        self.registered = False
        self.last_error: str | None = None
        self.beats = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    def changed(self) -> None:
        """Ask for a heartbeat now (cheap, synchronous: InstanceManager calls it)."""
        self._wake.set()

    def status(self) -> dict:
        return {"control": self.control_url, "node_id": self.node_id, "registered": self.registered,
                "cluster": self.cluster, "heartbeat_interval": self.interval, "heartbeats": self.beats,
                "last_error": self.last_error}

    async def start(self) -> "Registration":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.agent.instances.on_change(self.changed)
        self._task = asyncio.create_task(self._loop(), name="node-heartbeat")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def body(self) -> dict:
        agent = self.agent
        network = agent.network.describe() if agent.network is not None else {
            "bridge": agent.config.bridge, "subnet": agent.config.subnet, "gateway": agent.config.gateway,
            "modes": ["flat"], "transports": [], "tunnel_ip": None, "uplink": None}
        return {"protocol": PROTOCOL, "node_id": self.node_id, "url": self.node_url, "cluster": self.cluster,
                "started": self.started, "resources": agent.resources(),
                "images": [i["image_id"] for i in agent.describe_images() if i["state"] == "ready"],
                "instances": await agent.instances.describe_all(), "network": network,
                "policy_version": agent.firewall.version}

    async def beat(self) -> bool:
        """One heartbeat; True if control took it. Never raises (but CancelledError)."""
        try:
            answer = await self._send(await self.body())
            interval = float(answer.get("heartbeat_interval") or self.interval)
            self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, interval))
            self.cluster = answer.get("cluster") or self.cluster
            if not self.registered or self.last_error:
                log.info("registered with %s as %s (cluster %s, heartbeat every %g s)", self.control_url,
                         self.node_id, self.cluster, self.interval)
            self.registered, self.last_error = True, None
            self.beats += 1
            self.agent.metrics.heartbeats.labels("ok").inc()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- any failure is retried, none may end the agent
            reason = str(exc) if isinstance(exc, HeartbeatRejected) else f"{type(exc).__name__}: {exc}"
            if reason != self.last_error:
                log.warning("heartbeat to %s failed (retrying every %g s): %s", self.control_url,
                            self.interval, reason)
            self.last_error = reason
            self.agent.metrics.heartbeats.labels("failed").inc()
            return False

    async def _send(self, body: dict) -> dict:
        raw = json.dumps(body).encode()
        headers = signed_headers(self.agent.config.service_secret, HEARTBEAT_PATH, raw, self.agent.clock.now())
        async with self._session.post(self.control_url + HEARTBEAT_PATH, data=raw, headers=headers) as reply:
            text = await reply.text()
            try:
                doc = json.loads(text) if text else {}
            except ValueError:
                doc = None
            if reply.status != 200:
                why = doc.get("error") if isinstance(doc, dict) else None
                if isinstance(why, dict):
                    why = why.get("message") or why.get("code")
                raise HeartbeatRejected(f"control answered {reply.status}: {why or text[:200]}")
            if not isinstance(doc, dict):
                raise HeartbeatRejected(f"control's answer is not a JSON object: {text[:200]!r}")
            return doc
