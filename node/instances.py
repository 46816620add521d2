"""Instances on this node: launch, terminate, reboot, console; their records in LMDB.

Tree `instances`: instance id -> InstanceRecord JSON. A launch writes its record
("pending") first, then ensures the images (fetch + assemble, single-flight per image),
pins them in the cache, creates the qcow2 overlay and the scratch disks (ephemeral,
swap), registers the instance's MAC and address with the node network (DHCP), defines
and starts the domain, and records "running". A failure at any step undoes what the
launch made (domain, disks, DHCP entry, pins) and leaves the record "failed" with the
reason, until terminated. The record keeps what the metadata service serves (the
launch's `metadata` and `user_data`), so it answers after an agent restart. The
firewall (firewall.py) re-renders its rules before the domain starts and after a
terminate, so a new tap is never unfiltered once a policy is in force.

Every change of a record (written or deleted) calls the `on_change` listeners at once
(synchronously, so they must be cheap: the heartbeat sets an event).

Restart (`rediscover`): a "pending" record is a launch the previous process did not
finish -- its domain (if any) is removed and the record fails; a "running" record whose
domain still exists is adopted (qemu:///system keeps domains across agent restarts);
one whose domain vanished fails with that reason (test:///default keeps nothing across
processes). Image pins are then recomputed from the live records.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from walrus.storage.kv import KV

from .cache import NodeImageCache
from .disks import create_overlay, create_scratch_disk
from .domainxml import DomainSpec, domain_xml, mac_address, tap_name
from .errors import BadRequest, Conflict, NodeError, NotFound
from .hypervisor import DomainState, Hypervisor
from .metrics import NodeMetrics
from .segments import LaunchNetwork, group_net_to_json, parse_launch_network, segment_bridge

log = logging.getLogger("eucalypt.node.instances")

INSTANCES = "instances"
TREES = (INSTANCES,)
_ID = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONSOLE_MAX = 64 << 10
LIVE = ("pending", "running", "stopped")
USER_DATA_MAX = 16 << 10          # EC2's limit, on the decoded bytes
EPHEMERAL_GB_MAX = 1 << 14
SWAP_MB_MAX = 1 << 20


class InstanceNetwork(Protocol):
    """What the instance manager needs of the node network (network.py): DHCP entries."""

    bridge: str

    def check_address(self, ip: str, subnet: str | None = None, gateway: str | None = None) -> None:
        """Raise BadRequest unless `ip` may be given to an instance (in the node's subnet,
        or the managed `subnet`; not the network, gateway or broadcast address)."""

    async def add_host(self, instance_id: str, mac: str, ip: str, hostname: str) -> None:
        """Serve `ip` to `mac` by DHCP from now on (idempotent)."""

    async def remove_host(self, instance_id: str) -> None:
        """Forget the instance's DHCP entry (no-op if none)."""


def _optional_ip(value) -> str | None:
    if value in (None, ""):
        return None
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise BadRequest(f"private_ip {value!r} is not an IPv4 address") from None


def _user_data(value) -> str | None:
    """The base64 text of the user data, checked (decodable, at most 16 KiB decoded)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest("user_data must be base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("user_data is not valid base64") from None
    if len(raw) > USER_DATA_MAX:
        raise BadRequest(f"user_data is {len(raw)} bytes; the limit is {USER_DATA_MAX} (16 KiB)")
    return base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    instance_id: str
    image_id: str
    instance_type: str
    vcpus: int
    memory_mib: int
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    cmdline: str | None = None
    private_ip: str | None = None
    ephemeral_gb: int = 0
    swap_mb: int = 0
    user_data: str | None = None        # base64, checked
    metadata: dict = field(default_factory=dict)
    network: LaunchNetwork | None = None  # managed modes: the group's segment (None: flat)

    @classmethod
    def from_json(cls, doc) -> "LaunchRequest":
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object")
        try:
            req = cls(instance_id=str(doc["instance_id"]), image_id=str(doc["image_id"]),
                      instance_type=str(doc.get("instance_type", "custom")),
                      vcpus=int(doc["vcpus"]), memory_mib=int(doc["memory_mib"]),
                      kernel_id=doc.get("kernel_id") or None, ramdisk_id=doc.get("ramdisk_id") or None,
                      cmdline=doc.get("cmdline") or None, private_ip=_optional_ip(doc.get("private_ip")),
                      ephemeral_gb=int(doc.get("ephemeral_gb") or 0), swap_mb=int(doc.get("swap_mb") or 0),
                      user_data=_user_data(doc.get("user_data")), metadata=doc.get("metadata") or {},
                      network=parse_launch_network(doc.get("network")))
        except KeyError as exc:
            raise BadRequest(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"bad field: {exc}") from None
        if not _ID.match(req.instance_id):
            raise BadRequest(f"instance id {req.instance_id!r} is malformed (i-XXXXXXXX)")
        for image_id in filter(None, (req.image_id, req.kernel_id, req.ramdisk_id)):
            if not _IMAGE_ID.match(image_id):
                raise BadRequest(f"image id {image_id!r} is malformed")
        if req.ramdisk_id and not req.kernel_id:
            raise BadRequest("a ramdisk needs a kernel")
        if not 1 <= req.vcpus <= 1024 or not 16 <= req.memory_mib <= 1 << 24:
            raise BadRequest("vcpus must be 1..1024 and memory_mib 16..16777216")
        if not 0 <= req.ephemeral_gb <= EPHEMERAL_GB_MAX or not 0 <= req.swap_mb <= SWAP_MB_MAX:
            raise BadRequest(f"ephemeral_gb must be 0..{EPHEMERAL_GB_MAX} and swap_mb 0..{SWAP_MB_MAX}")
        if not isinstance(req.metadata, dict):
            raise BadRequest("metadata must be a JSON object")
        if req.network is not None and not req.private_ip:
            raise BadRequest("a managed network launch needs a private_ip in the group's subnet")
        return req

    def images(self) -> dict[str, str]:
        out = {"machine": self.image_id}
        if self.kernel_id:
            out["kernel"] = self.kernel_id
        if self.ramdisk_id:
            out["ramdisk"] = self.ramdisk_id
        return out


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    instance_id: str
    instance_type: str
    vcpus: int
    memory_mib: int
    images: dict = field(default_factory=dict)   # role -> image id
    state: str = "pending"                       # pending | running | stopped | failed
    reason: str = ""
    launched: float = 0.0
    tap: str = ""
    mac: str = ""
    timings: dict = field(default_factory=dict)  # phase -> seconds
    fetched_bytes: int = 0
    private_ip: str = ""
    ephemeral_gb: int = 0
    swap_mb: int = 0
    user_data: str | None = None                 # base64, as launched
    metadata: dict = field(default_factory=dict)  # what the metadata service serves
    bridge: str = ""                             # the bridge its tap is on ("": the node's)
    network: dict | None = None                  # managed: {"mode", "segment", "subnet", ...}

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "InstanceRecord":
        doc = json.loads(raw)  # records of older agents lack the newer fields: defaults
        return cls(**{k: v for k, v in doc.items() if k in _RECORD_FIELDS})

    @property
    def hostname(self) -> str:
        """The short host name given by DHCP: the metadata's local-hostname, else EC2's ip-A-B-C-D."""
        name = str(self.metadata.get("local-hostname") or "").split(".")[0]
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", name):
            return name
        return "ip-" + self.private_ip.replace(".", "-") if self.private_ip else self.instance_id


_RECORD_FIELDS = {f.name for f in dataclasses.fields(InstanceRecord)}


class InstanceFirewall(Protocol):
    """What the instance manager needs of the firewall (firewall.py)."""

    async def refresh(self) -> None:
        """Make the rules match the live records now (never raises)."""

    async def prepare(self) -> None:
        """Before a launch's domain starts: the segments and rules of the live records,
        the pending one included (raises NodeError when that cannot be done)."""


class InstanceManager:
    def __init__(self, data_dir: Path, kv: KV, cache: NodeImageCache, hypervisor: Hypervisor,
                 metrics: NodeMetrics, clock, *, bridge: str | None = None,
                 network: InstanceNetwork | None = None) -> None:
        self.dir = Path(data_dir) / "instances"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kv, self.cache, self.hv, self.metrics, self.clock = kv, cache, hypervisor, metrics, clock
        self.bridge = bridge
        self.network = network
        self.firewall: InstanceFirewall | None = None  # set by the agent
        self._launching: set[str] = set()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of a record (see the module doc)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not fail a launch
                log.exception("instance change listener failed")

    # records ---------------------------------------------------------------------------

    def get(self, instance_id: str) -> InstanceRecord | None:
        with self.kv.read() as txn:
            raw = txn.get(INSTANCES, instance_id.encode())
        return None if raw is None else InstanceRecord.from_bytes(raw)

    def all(self) -> list[InstanceRecord]:
        with self.kv.read() as txn:
            return [InstanceRecord.from_bytes(v) for _, v in txn.scan(INSTANCES)]

    def _put(self, record: InstanceRecord) -> InstanceRecord:
        with self.kv.write() as txn:
            txn.put(INSTANCES, record.instance_id.encode(), record.to_bytes())
        self._changed()
        return record

    def _delete(self, instance_id: str) -> None:
        with self.kv.write() as txn:
            txn.delete(INSTANCES, instance_id.encode())
        self._changed()

    def refresh_gauges(self) -> None:
        """At scrape time, not on every record change (that made each launch O(instances))."""
        self.metrics.instances.set(sum(1 for r in self.all() if r.state in LIVE))

    def by_private_ip(self, ip: str) -> InstanceRecord | None:
        """The record holding `ip` (a live one first: a failed record keeps its address
        until terminated, and control may already have given it to a new instance)."""
        found = [r for r in self.all() if r.private_ip == ip]
        found.sort(key=lambda r: (r.state not in LIVE, -r.launched))
        return found[0] if found else None

    def paths(self, instance_id: str) -> tuple[Path, Path]:
        d = self.dir / instance_id
        return d / "disk.qcow2", d / "console.log"

    def scratch_paths(self, instance_id: str) -> dict[str, Path]:
        d = self.dir / instance_id
        return {"ephemeral": d / "ephemeral.raw", "swap": d / "swap.raw"}

    def image_pins(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.all():
            if r.state in LIVE:
                for image_id in r.images.values():
                    counts[image_id] = counts.get(image_id, 0) + 1
        return counts

    # launch ----------------------------------------------------------------------------

    async def run(self, req: LaunchRequest) -> InstanceRecord:
        if req.instance_id in self._launching:
            raise Conflict(f"{req.instance_id} is already being launched")
        existing = self.get(req.instance_id)
        if existing is not None:
            raise Conflict(f"{req.instance_id} already exists on this node ({existing.state})")
        if req.network is not None and self.network is None:
            raise BadRequest(f"this node does not manage its network, so it cannot launch into "
                             f"{req.network.mode} mode (start it as root with --bridge and --subnet)")
        if req.private_ip:
            if self.network is not None:
                net = req.network.net if req.network else None
                self.network.check_address(req.private_ip, net and net.subnet, net and net.gateway)
            holder = self.by_private_ip(req.private_ip)
            if holder is not None and holder.state in LIVE:
                raise Conflict(f"{req.private_ip} is held by {holder.instance_id} on this node")
        self._launching.add(req.instance_id)
        try:
            return await self._run(req)
        finally:
            self._launching.discard(req.instance_id)

    async def _run(self, req: LaunchRequest) -> InstanceRecord:
        images = req.images()
        network, bridge = None, self.bridge or ""
        if req.network is not None:
            network = {"mode": req.network.mode, **group_net_to_json(req.network.net)}
            bridge = segment_bridge(self.network.bridge, req.network.net.segment)
        record = self._put(InstanceRecord(req.instance_id, req.instance_type, req.vcpus, req.memory_mib,
                                          images, "pending", "", self.clock.now(), tap_name(req.instance_id),
                                          mac_address(req.instance_id), private_ip=req.private_ip or "",
                                          ephemeral_gb=req.ephemeral_gb, swap_mb=req.swap_mb,
                                          user_data=req.user_data, metadata=req.metadata, bridge=bridge,
                                          network=network))
        disk, console = self.paths(req.instance_id)
        pinned: list[str] = []
        defined = False
        timings: dict[str, float] = {}
        try:
            with contextlib.ExitStack() as busy:  # no eviction between ensure and pin
                for image_id in images.values():
                    busy.enter_context(self.cache.busy(image_id))
                results = await asyncio.gather(*(self.cache.ensure(i) for i in images.values()))
                for image_id in images.values():
                    self.cache.pin(image_id)
                    pinned.append(image_id)
            by_role = dict(zip(images, results))
            for role, result in by_role.items():
                if role == "machine" and result.manifest.kind != "machine" or \
                        role != "machine" and result.manifest.kind != role:
                    raise BadRequest(f"{result.manifest.image_id} is a {result.manifest.kind} image, "
                                     f"not a {role} image")
            timings["fetch"] = max(r.fetch_seconds for r in results)
            timings["assemble"] = max(r.assemble_seconds for r in results)
            fetched = sum(r.fetched_bytes for r in results)

            started = time.monotonic()
            await create_overlay(by_role["machine"].path, disk)
            console.touch()
            scratch = []
            sizes = {"ephemeral": req.ephemeral_gb << 30, "swap": req.swap_mb << 20}
            for kind, path in self.scratch_paths(req.instance_id).items():
                if sizes[kind]:
                    await create_scratch_disk(path, sizes[kind], kind)
                    scratch.append(str(path))
            timings["overlay"] = time.monotonic() - started
            if self.firewall is not None:  # its segment, and the tap's rules (locked down until
                await self.firewall.prepare()  # the policy names it), before DHCP and the domain
            if self.network is not None and record.private_ip:
                await self.network.add_host(record.instance_id, record.mac, record.private_ip, record.hostname)

            spec = DomainSpec(
                name=req.instance_id, vcpus=req.vcpus, memory_mib=req.memory_mib, disk_path=str(disk),
                console_log=str(console), domain_type=self.hv.domain_type,
                kernel=str(by_role["kernel"].path) if "kernel" in by_role else None,
                ramdisk=str(by_role["ramdisk"].path) if "ramdisk" in by_role else None,
                cmdline=req.cmdline or "root=/dev/vda console=ttyS0", bridge=record.bridge or None,
                mac=record.mac, tap=record.tap, images=tuple(images.items()), scratch_disks=tuple(scratch))
            started = time.monotonic()
            await self.hv.define(domain_xml(spec))
            defined = True
            timings["define"] = time.monotonic() - started
            started = time.monotonic()
            await self.hv.start(req.instance_id)
            timings["start"] = time.monotonic() - started
        except BaseException as exc:
            reason = exc.message if isinstance(exc, NodeError) else f"{type(exc).__name__}: {exc}"
            log.warning("launch of %s failed: %s", req.instance_id, reason)
            await self._undo(req.instance_id, defined, pinned)
            self.metrics.launches.labels("failed").inc()
            self._put(replace(record, state="failed", reason=reason or type(exc).__name__))
            if self.firewall is not None:
                await self.firewall.refresh()
            raise
        for phase in ("fetch", "assemble", "define", "start"):
            self.metrics.launch_phase.labels(phase).observe(timings[phase])
        self.metrics.launches.labels("ok").inc()
        return self._put(replace(record, state="running", timings=timings, fetched_bytes=fetched))

    async def _undo(self, instance_id: str, defined: bool, pinned: list[str]) -> None:
        if defined:
            try:
                await self.hv.destroy(instance_id)
                await self.hv.undefine(instance_id)
            except NodeError as exc:
                log.error("cleaning up domain %s: %s", instance_id, exc.message)
        shutil.rmtree(self.dir / instance_id, ignore_errors=True)
        await self._forget_address(instance_id)
        for image_id in pinned:
            self.cache.unpin(image_id)

    async def _forget_address(self, instance_id: str) -> None:
        if self.network is not None:
            try:
                await self.network.remove_host(instance_id)
            except NodeError as exc:
                log.error("removing the DHCP entry of %s: %s", instance_id, exc.message)

    # the rest of the life cycle --------------------------------------------------------------

    def _require(self, instance_id: str) -> InstanceRecord:
        record = self.get(instance_id)
        if record is None:
            raise NotFound(f"no instance {instance_id} on this node")
        return record

    async def describe(self, instance_id: str) -> dict:
        record = self._require(instance_id)
        return await self._describe(record)

    async def _describe(self, record: InstanceRecord) -> dict:
        doc = asdict(record)
        user_data = doc.pop("user_data")  # up to 16 KiB, and the metadata service's business
        doc["user_data_bytes"] = len(base64.b64decode(user_data)) if user_data else 0
        if record.state in ("running", "stopped"):
            state = await self.hv.state(record.instance_id)
            doc["domain_state"] = state.value if state else "missing"
        return doc

    async def describe_all(self) -> list[dict]:
        return [await self._describe(r) for r in self.all()]

    async def terminate(self, instance_id: str) -> InstanceRecord:
        if instance_id in self._launching:
            raise Conflict(f"{instance_id} is being launched; terminate it once that ends")
        record = self._require(instance_id)
        await self.hv.destroy(instance_id)
        await self.hv.undefine(instance_id)
        shutil.rmtree(self.dir / instance_id, ignore_errors=True)
        await self._forget_address(instance_id)
        self._delete(instance_id)
        if self.firewall is not None:
            await self.firewall.refresh()
        if record.state in LIVE:
            for image_id in record.images.values():
                self.cache.unpin(image_id)
        return replace(record, state="terminated")

    async def reboot(self, instance_id: str) -> InstanceRecord:
        record = self._require(instance_id)
        if record.state not in ("running", "stopped"):
            raise Conflict(f"{instance_id} is {record.state}")
        await self.hv.reboot(instance_id)
        return self._put(replace(record, state="running"))

    def console_output(self, instance_id: str) -> dict:
        self._require(instance_id)
        _, console = self.paths(instance_id)
        try:
            with open(console, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - CONSOLE_MAX))
                data = f.read()
        except FileNotFoundError:
            data = b""
        return {"instance_id": instance_id, "timestamp": self.clock.now(),
                "encoding": "base64", "output": base64.b64encode(data).decode()}

    # restart ---------------------------------------------------------------------------

    async def rediscover(self) -> dict[str, list[str]]:
        """Reconcile records with the hypervisor's domains (see module doc); returns
        {"adopted": [...], "failed": [...]}. Image pins are reset afterwards."""
        adopted, failed = [], []
        domains = {d.name: d for d in await self.hv.list()}
        for record in self.all():
            if record.state == "pending":
                if record.instance_id in domains:
                    await self.hv.destroy(record.instance_id)
                    await self.hv.undefine(record.instance_id)
                shutil.rmtree(self.dir / record.instance_id, ignore_errors=True)
                self._put(replace(record, state="failed", reason="launch interrupted by a node agent restart"))
                failed.append(record.instance_id)
            elif record.state in ("running", "stopped"):
                dom = domains.get(record.instance_id)
                if dom is None:
                    self._put(replace(record, state="failed",
                                      reason="domain vanished while the node agent was down"))
                    failed.append(record.instance_id)
                else:
                    state = "running" if dom.state in (DomainState.RUNNING, DomainState.PAUSED) else "stopped"
                    self._put(replace(record, state=state))
                    adopted.append(record.instance_id)
        self.cache.rediscover(self.image_pins())
        return {"adopted": adopted, "failed": failed}
