"""Instances on this node: launch, terminate, reboot, console; their records in LMDB.

Tree `instances`: instance id -> InstanceRecord JSON. A launch writes its record
("pending") first, then ensures the images (fetch + assemble, single-flight per image),
pins them in the cache, creates the qcow2 overlay, defines and starts the domain, and
records "running". A failure at any step undoes what the launch made (domain, overlay,
pins) and leaves the record "failed" with the reason, until terminated.

Restart (`rediscover`): a "pending" record is a launch the previous process did not
finish -- its domain (if any) is removed and the record fails; a "running" record whose
domain still exists is adopted (qemu:///system keeps domains across agent restarts);
one whose domain vanished fails with that reason (test:///default keeps nothing across
processes). Image pins are then recomputed from the live records.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from walrus.storage.kv import KV

from .cache import NodeImageCache
from .disks import create_overlay
from .domainxml import DomainSpec, domain_xml, mac_address, tap_name
from .errors import BadRequest, Conflict, NodeError, NotFound
from .hypervisor import DomainState, Hypervisor
from .metrics import NodeMetrics

log = logging.getLogger("eucalypt.node.instances")

INSTANCES = "instances"
TREES = (INSTANCES,)
_ID = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONSOLE_MAX = 64 << 10
LIVE = ("pending", "running", "stopped")


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

    @classmethod
    def from_json(cls, doc) -> "LaunchRequest":
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object")
        try:
            req = cls(instance_id=str(doc["instance_id"]), image_id=str(doc["image_id"]),
                      instance_type=str(doc.get("instance_type", "custom")),
                      vcpus=int(doc["vcpus"]), memory_mib=int(doc["memory_mib"]),
                      kernel_id=doc.get("kernel_id") or None, ramdisk_id=doc.get("ramdisk_id") or None,
                      cmdline=doc.get("cmdline") or None)
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

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "InstanceRecord":
        return cls(**json.loads(raw))


class InstanceManager:
    def __init__(self, data_dir: Path, kv: KV, cache: NodeImageCache, hypervisor: Hypervisor,
                 metrics: NodeMetrics, clock, *, bridge: str | None = None) -> None:
        self.dir = Path(data_dir) / "instances"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kv, self.cache, self.hv, self.metrics, self.clock = kv, cache, hypervisor, metrics, clock
        self.bridge = bridge
        self._launching: set[str] = set()

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
        self.metrics.instances.set(sum(1 for r in self.all() if r.state in LIVE))
        return record

    def _delete(self, instance_id: str) -> None:
        with self.kv.write() as txn:
            txn.delete(INSTANCES, instance_id.encode())
        self.metrics.instances.set(sum(1 for r in self.all() if r.state in LIVE))

    def paths(self, instance_id: str) -> tuple[Path, Path]:
        d = self.dir / instance_id
        return d / "disk.qcow2", d / "console.log"

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
        self._launching.add(req.instance_id)
        try:
            return await self._run(req)
        finally:
            self._launching.discard(req.instance_id)

    async def _run(self, req: LaunchRequest) -> InstanceRecord:
        images = req.images()
        record = self._put(InstanceRecord(req.instance_id, req.instance_type, req.vcpus, req.memory_mib,
                                          images, "pending", "", self.clock.now(), tap_name(req.instance_id),
                                          mac_address(req.instance_id)))
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
            timings["overlay"] = time.monotonic() - started

            spec = DomainSpec(
                name=req.instance_id, vcpus=req.vcpus, memory_mib=req.memory_mib, disk_path=str(disk),
                console_log=str(console), domain_type=self.hv.domain_type,
                kernel=str(by_role["kernel"].path) if "kernel" in by_role else None,
                ramdisk=str(by_role["ramdisk"].path) if "ramdisk" in by_role else None,
                cmdline=req.cmdline or "root=/dev/vda console=ttyS0", bridge=self.bridge,
                mac=record.mac, tap=record.tap, images=tuple(images.items()))
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
        for image_id in pinned:
            self.cache.unpin(image_id)

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
        self._delete(instance_id)
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
