"""The policy pusher: sends every node its network policy after a change (#8).

    PUT {node}/node/v1/network-policy   the document of policy.node_policy (docs/node-protocol.md)

What triggers a push is the durable counter (policy.py), not the event that changed it:
after a committed change the handler calls ``notify`` (a wake-up, nothing more), and the
pusher also looks at the counter every ``poll`` seconds, so changes written by anyone
(the admin CLI, a heartbeat's reconciliation, the launcher) reach the nodes too.

For each registered, reachable node whose known version is older than the counter, one
worker task sends the complete document computed from one snapshot at the current
version -- so at most one push is in flight per node, and a burst of changes while one
is in flight costs a single follow-up push of the newest version (a version read later
supersedes the one pending). A failed push is retried with exponential backoff
(``retry_min`` doubling to ``retry_max``) while the node is reachable; a node that went
away is left to its next heartbeat.

What a node is known to have: the version it acknowledged (200 {"version"}), or the
``policy_version`` of its latest heartbeat, which wins because it is the node's own word
(after a node restart, or a push lost in between). A heartbeat reporting an older
version than the counter therefore gets the node a push; one reporting a *newer* version
than control ever issued raises the counter above it (nodes.py, in the heartbeat's
transaction) so the node accepts control's documents again. A node answering 404 does
not implement the endpoint (an older agent): it is skipped until it restarts.

Pushes use their own NodeClient per node, apart from the launcher's, so a launch storm
queued on a node's client never delays a rule change.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from node.client import NodeApiError, NodeClient

from . import nodes as nodes_mod
from . import policy

log = logging.getLogger("eucalypt.control.policy")

NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)
POLICY_PATH = "/node/v1/network-policy"


def notify(service) -> None:
    """After a committed policy change: wake the service's pusher, if it runs one."""
    pusher = getattr(service, "policy", None)
    if pusher is not None:
        pusher.changed()


async def put_policy(client: NodeClient, doc: dict) -> int:
    """Send one document; the version the node says it applied."""
    method = getattr(client, "network_policy", None)
    reply = await method(doc) if method is not None else await client.call("PUT", POLICY_PATH, doc)
    if isinstance(reply, dict) and isinstance(reply.get("version"), int):
        return reply["version"]
    return doc["version"]


class PolicyPusher:
    def __init__(self, store, secret: str, clock, *, interval: float, poll: float = 1.0,
                 retry_min: float = 0.5, retry_max: float = 30.0, call_timeout: float = 30.0,
                 network=None, region: str | None = None) -> None:
        self.store, self.secret, self.clock = store, secret, clock
        self.network, self.region = network, region   # the managed modes' plan; public host names
        self.interval = interval          # the heartbeat interval: reachability
        self.poll, self.retry_min, self.retry_max = poll, retry_min, retry_max
        self.call_timeout = call_timeout
        self.pushes = 0                   # documents a node acknowledged
        self.failures = 0
        self._known: dict[str, int] = {}  # node id -> version the node has (its word or its answer)
        self._unsupported: dict[str, float] = {}  # node id -> the node's "started" when it answered 404
        self._workers: dict[str, asyncio.Task] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._clients: dict[str, NodeClient] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._stopped = False

    # ---- life ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.write(policy.ensure_started)
        with self.store.read() as txn:
            for node in nodes_mod.list_nodes(txn):
                self._known[node["node_id"]] = int(node.get("policy_version") or 0)
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._loop_task, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    # ---- what the rest of control tells it --------------------------------------------------
    def changed(self) -> None:
        self._wake.set()

    def node_reported(self, node_id: str, version: int) -> None:
        """A heartbeat (committed) said the node has applied ``version``."""
        self._known[node_id] = version
        kick = self._kicks.get(node_id)
        if kick is not None:
            kick.set()  # the node is alive: a worker waiting out a backoff tries now
        self._wake.set()

    def known(self, node_id: str) -> int | None:
        return self._known.get(node_id)

    # ---- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self._schedule()
            except Exception:
                log.exception("scheduling policy pushes failed")

    def _schedule(self) -> None:
        now = self.clock.now()
        with self.store.read() as txn:
            version = policy.current_version(txn)
            nodes = nodes_mod.list_nodes(txn)
        for node in nodes:
            node_id = node["node_id"]
            if self._known.get(node_id, -1) >= version or node_id in self._workers or self._stopped:
                continue
            if self._unsupported.get(node_id) == node.get("started"):
                continue
            if not nodes_mod.reachable(node, now, self.interval):
                continue
            self._kicks[node_id] = asyncio.Event()
            self._workers[node_id] = asyncio.create_task(self._drive(node_id))

    def _client(self, url: str) -> NodeClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = NodeClient(url, self.secret, clock=self.clock, max_in_flight=2)
        return client

    async def _drive(self, node_id: str) -> None:
        delay = self.retry_min
        try:
            while True:
                with self.store.read() as txn:
                    version = policy.current_version(txn)
                    node = nodes_mod.get_node(txn, node_id)
                    doc = policy.node_policy(txn, node_id, version, plan=self.network,
                                             region=self.region) if node is not None else None
                if node is None or self._known.get(node_id, -1) >= version:
                    return
                try:
                    applied = await asyncio.wait_for(put_policy(self._client(node["url"]), doc), self.call_timeout)
                except NodeApiError as exc:
                    self.failures += 1
                    if exc.status == 404:
                        log.warning("node %s has no %s (an older agent?): not pushing policies to it until it "
                                    "restarts", node_id, POLICY_PATH)
                        self._unsupported[node_id] = node.get("started")
                        return
                    log.warning("policy %d to node %s refused: %s", version, node_id, exc)
                except NETWORK_ERRORS as exc:
                    self.failures += 1
                    log.info("policy %d to node %s failed (%s)", version, node_id, type(exc).__name__)
                else:
                    self.pushes += 1
                    self._known[node_id] = max(self._known.get(node_id, -1), applied)
                    delay = self.retry_min
                    continue  # a newer version may have come meanwhile
                if not nodes_mod.reachable(node, self.clock.now(), self.interval):
                    return  # its heartbeat brings it back
                kick = self._kicks[node_id]
                kick.clear()
                try:
                    await asyncio.wait_for(kick.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, self.retry_max)
        finally:
            self._workers.pop(node_id, None)
            self._kicks.pop(node_id, None)
            if not self._stopped:
                self._wake.set()  # anything that changed while this worker was finishing
