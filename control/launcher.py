"""The launcher: control's side of the node calls, run as background tasks.

RunInstances commits instances as "pending" (placed on a node, launch "queued") and
returns; the launcher then marks each launch "sent" (a durable write, so that after a
crash control knows a node call may have happened), calls ``POST /node/v1/instances``
with the full launch body (docs/node-protocol.md), and records the answer: running, or
terminated with the node's reason. TerminateInstances commits "shutting-down"; the
launcher calls the node's DELETE and records "terminated".

A periodic sweep (every ``tick`` seconds) re-drives whatever has no task in flight:
pending launches (after a restart: the node answers 409 Conflict for an instance it has
already, which counts as launched; heartbeats then converge the state), shutting-down
instances, and the follow-up calls heartbeats ask for; it also records nodes that went
quiet and purges instances terminated longer ago than the retention.

Nothing here decides state from memory alone: every decision is a transaction over the
records (instances.py), so a kill -9 between any two steps leaves a state the next
sweep continues from.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from node.client import NodeApiError, NodeClient

from . import instances as inst
from . import nodes as nodes_mod
from .policy_push import notify as policy_changed

log = logging.getLogger("eucalypt.control.launcher")

NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
# Terminate, reboot and console answer at once on a healthy node; a hung one (its process
# stopped, the host swapping) must not hold an instance in shutting-down for the client's
# 10-minute launch timeout.
CALL_TIMEOUT = 30.0


def dns_name(ip: str | None, region: str, *, public: bool = False) -> str:
    if not ip:
        return ""
    return f"euca-{ip.replace('.', '-')}.{region}.{'compute' if public else 'internal'}"


def launch_body(record: dict, region: str) -> dict:
    """The keyword arguments of NodeClient.run_instance for an instance record."""
    private_ip, public_ip = record.get("private_ip"), record.get("public_ip")
    root = record.get("root_device_name") or "/dev/vda"
    metadata = {
        "instance-id": record["id"], "ami-id": record["image_id"],
        "ami-launch-index": str(record["launch_index"]), "reservation-id": record["reservation_id"],
        "instance-type": record["instance_type"],
        "hostname": dns_name(private_ip, region), "local-hostname": dns_name(private_ip, region),
        "local-ipv4": private_ip or "", "public-hostname": dns_name(public_ip, region, public=True),
        "public-ipv4": public_ip or "", "kernel-id": record.get("kernel_id") or "",
        "ramdisk-id": record.get("ramdisk_id") or "",
        "placement/availability-zone": record["zone"],
        "security-groups": [g["name"] for g in record["groups"]],
        "public-keys": {record["key_name"]: record["public_key"]} if record.get("key_name") else {},
        "block-device-mapping": {"ami": "/dev/vda", "root": root},
    }
    return {"instance_id": record["id"], "image_id": record["image_id"],
            "instance_type": record["instance_type"], "vcpus": record["vcpus"],
            "memory_mib": record["memory_mib"], "kernel_id": record.get("kernel_id"),
            "ramdisk_id": record.get("ramdisk_id"), "private_ip": private_ip, "network": record.get("network"),
            "ephemeral_gb": 0, "swap_mb": 0, "user_data": record.get("user_data"), "metadata": metadata}


class Launcher:
    def __init__(self, service, *, tick: float = 1.0, retry_delay: float = 1.0) -> None:
        self.service = service
        self.tick = tick
        self.retry_delay = retry_delay
        self._clients: dict[str, NodeClient] = {}
        self._inflight: set[tuple[str, str]] = set()   # (kind, instance id)
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._stopped = False

    @property
    def store(self):
        return self.service.store

    @property
    def interval(self) -> float:
        return self.service.config.heartbeat_interval

    def now(self) -> float:
        return self.service.clock.now()

    # ---- life ----------------------------------------------------------------------------
    async def start(self) -> None:
        now = self.now()
        await self.store.write(lambda txn: nodes_mod.note_control_start(txn, now))
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        self._stopped = True  # a heartbeat answered during shutdown starts nothing new
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def _spawn(self, kind: str, instance_id: str, coro_fn, *args) -> None:
        key = (kind, instance_id)
        if key in self._inflight or self._stopped:
            return
        self._inflight.add(key)

        async def run():
            try:
                await coro_fn(*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s of %s failed", kind, instance_id)
            finally:
                self._inflight.discard(key)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self, node: dict) -> NodeClient:
        client = self._clients.get(node["url"])
        if client is None:
            client = self._clients[node["url"]] = NodeClient(node["url"], self.service.data.service_secret,
                                                             clock=self.service.clock)
        return client

    # ---- what handlers and heartbeats ask for ---------------------------------------------
    def launch(self, records: list[dict]) -> None:
        for record in records:
            self._spawn("launch", record["id"], self._launch, record["account"], record["id"])

    def terminate(self, records: list[dict]) -> None:
        for record in records:
            self._spawn("terminate", record["id"], self._terminate, record["account"], record["id"])

    def reboot(self, records: list[dict]) -> None:
        for record in records:
            self._spawn("reboot", record["id"], self._node_call, record["node_id"], "reboot", record["id"])

    def node_seen(self, node: dict, actions: list[tuple[str, str, str]]) -> None:
        for kind, node_id, instance_id in actions:
            if kind == "terminate":
                self._spawn("cleanup", instance_id, self._node_call, node_id, "terminate", instance_id)

    async def console_output(self, record: dict) -> str | None:
        """Base64 of the console's tail, or None when the node cannot be asked."""
        with self.store.read() as txn:
            node = nodes_mod.get_node(txn, record["node_id"]) if record.get("node_id") else None
        if node is None or record.get("launch") == "queued":
            return None
        try:
            reply = await asyncio.wait_for(self._client(node).console(record["id"]), 10)
        except (NodeApiError, *NETWORK_ERRORS):
            return None
        return reply.get("output") or ""

    # ---- the calls --------------------------------------------------------------------------
    async def _launch(self, account: str, instance_id: str) -> None:
        now = self.now()

        def mark_sent(txn):
            record = inst.get_instance(txn, account, instance_id)
            if record is None or record["state"] != "pending" or record.get("launch") == "confirmed":
                return None, None
            node = nodes_mod.get_node(txn, record["node_id"])
            if node is None:
                inst.fail_launch(txn, account, instance_id, f"its node {record['node_id']} is no longer registered",
                                 now)
                return None, None
            if record.get("launch") != "sent":
                record["launch"] = "sent"
                inst.put_instance(txn, record)
            return record, node

        record, node = await self.store.write(mark_sent)
        if record is None:
            return
        body = launch_body(record, self.service.config.region)
        while True:
            try:
                doc = await self._client(node).run_instance(**body)
            except NodeApiError as exc:
                if exc.status == 409:  # it has the instance already (a re-driven launch)
                    await self.store.write(lambda txn: inst.confirm_launch(txn, account, instance_id, None,
                                                                           self.now()))
                else:
                    reason = exc.message or f"{exc.status} {exc.code}"
                    log.warning("launch of %s on %s failed: %s", instance_id, node["node_id"], reason)
                    await self.store.write(lambda txn: inst.fail_launch(txn, account, instance_id, reason,
                                                                        self.now()))
                    policy_changed(self.service)
                    self._spawn("cleanup", instance_id, self._node_call, node["node_id"], "terminate", instance_id)
                break
            except NETWORK_ERRORS as exc:
                # The node is away. Once it counts as unreachable the instance moves to
                # another node of its zone if one has room; otherwise keep trying while
                # the node might come back, and fail after the launch timeout.
                with self.store.read() as txn:
                    current = nodes_mod.get_node(txn, node["node_id"])
                    record = inst.get_instance(txn, account, instance_id)
                if record is None or record["state"] != "pending":
                    break
                if current is None or not nodes_mod.reachable(current, self.now(), self.interval):
                    moved = await self.store.write(lambda txn: inst.move_launch(
                        txn, account, instance_id, self.now(), self.interval, self.service.config.network))
                    if moved is not None:
                        policy_changed(self.service)
                        log.info("moving the launch of %s from unreachable %s to %s", instance_id,
                                 node["node_id"], moved[1]["node_id"])
                        record, node = moved
                        body = launch_body(record, self.service.config.region)
                        continue
                heard = max(current["last_seen"], current.get("control_started") or 0) if current else 0
                if current is None or self.now() - heard > self.service.config.launch_timeout:
                    reason = f"node {node['node_id']} could not be reached ({type(exc).__name__})"
                    await self.store.write(lambda txn: inst.fail_launch(txn, account, instance_id, reason,
                                                                        self.now()))
                    break
                node = current
                await asyncio.sleep(self.retry_delay)
                continue
            else:
                await self.store.write(lambda txn: inst.confirm_launch(txn, account, instance_id, doc, self.now()))
                break
        with self.store.read() as txn:
            record = inst.get_instance(txn, account, instance_id)
        if record is not None and record["state"] == "shutting-down":
            self.terminate([record])  # terminated while the launch was in flight

    async def _terminate(self, account: str, instance_id: str) -> None:
        while True:
            with self.store.read() as txn:
                record = inst.get_instance(txn, account, instance_id)
                node = nodes_mod.get_node(txn, record["node_id"]) if record and record.get("node_id") else None
            if record is None or record["state"] != "shutting-down":
                return
            done = node is None
            if not done:
                try:
                    await asyncio.wait_for(self._client(node).terminate(instance_id), CALL_TIMEOUT)
                    done = True
                except NodeApiError as exc:
                    done = exc.status == 404
                    if exc.status not in (404, 409):
                        log.warning("terminating %s on %s: %s", instance_id, node["node_id"], exc)
                except NETWORK_ERRORS:
                    # An unreachable node cannot be asked: the instance is terminated for the
                    # user now; the node's next heartbeat still lists it, and reconciliation
                    # asks the node to drop it then.
                    done = not nodes_mod.reachable(node, self.now(), self.interval)
            if done:
                def finish(txn):
                    current = inst.get_instance(txn, account, instance_id)
                    if current is not None and current["state"] == "shutting-down":
                        inst.set_state(txn, current, "terminated", self.now())
                await self.store.write(finish)
                policy_changed(self.service)
                return
            await asyncio.sleep(self.retry_delay)

    async def _node_call(self, node_id: str, what: str, instance_id: str) -> None:
        with self.store.read() as txn:
            node = nodes_mod.get_node(txn, node_id)
        if node is None:
            return
        try:
            await asyncio.wait_for(getattr(self._client(node), what)(instance_id), CALL_TIMEOUT)
        except NodeApiError as exc:
            if exc.status == 409:  # mid-launch on the node: the next heartbeat asks again
                log.info("%s %s on %s: %s", what, instance_id, node_id, exc)
            elif exc.status != 404:
                log.warning("%s %s on %s: %s", what, instance_id, node_id, exc)
        except NETWORK_ERRORS as exc:
            log.info("%s %s on %s: node not reachable (%s)", what, instance_id, node_id, type(exc).__name__)

    # ---- the sweep --------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.tick)

    async def sweep(self) -> None:
        now, interval = self.now(), self.interval
        retention = self.service.config.terminated_retention
        with self.store.read() as txn:
            quiet = any(n.get("unreachable_since") is None and not nodes_mod.reachable(n, now, interval)
                        for n in nodes_mod.list_nodes(txn))
            records = inst.all_instances(txn)
        expired = any(r["state"] == "terminated" and now - (r.get("terminated_at") or now) > retention
                      for r in records)
        if quiet:
            marked = await self.store.write(lambda txn: nodes_mod.mark_unreachable(txn, now, interval))
            for node_id in marked:
                log.warning("node %s is unreachable (no heartbeat for %d intervals)", node_id,
                            nodes_mod.MISSED_INTERVALS)
        if expired:
            await self.store.write(lambda txn: inst.purge_terminated(txn, now, retention))
        self.launch([r for r in records if r["state"] == "pending" and r.get("launch") != "confirmed"])
        self.terminate([r for r in records if r["state"] == "shutting-down"])
