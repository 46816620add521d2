"""The hypervisor seam: libvirt-python behind one small interface.

`Hypervisor` is what the instance manager needs and nothing more. `LibvirtHypervisor`
keeps ONE connection for the agent's lifetime (cheaper, and safe with the test driver,
whose state lives in the process: with libvirt 9.0 connections of one process to
`test:///default` share it, other libvirt versions start each connection fresh; either
way no domain survives the process). libvirt calls block, so they run in a worker thread,
one at a time (a libvirt connection may be used from several threads, but serialising
keeps error reporting per call unambiguous).
"""

from __future__ import annotations

import abc
import asyncio
import enum
from dataclasses import dataclass

from .domainxml import NAMESPACE, parse_metadata
from .errors import HypervisorError
from .hostsetup import choose_domain_type


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class DomainInfo:
    name: str
    state: DomainState
    images: dict            # role -> image id, from our metadata ({} for foreign domains)

    @property
    def ours(self) -> bool:
        return bool(self.images)


class Hypervisor(abc.ABC):
    """Contract: names are instance ids. `define` fails if the name exists; `destroy`
    and `undefine` of an unknown name are no-ops (idempotent); `state` is None for an
    unknown name. Every failure of the hypervisor is HypervisorError."""

    domain_type: str

    @abc.abstractmethod
    async def define(self, xml: str) -> str: ...
    @abc.abstractmethod
    async def start(self, name: str) -> None: ...
    @abc.abstractmethod
    async def reboot(self, name: str) -> None: ...
    @abc.abstractmethod
    async def destroy(self, name: str) -> None: ...
    @abc.abstractmethod
    async def undefine(self, name: str) -> None: ...
    @abc.abstractmethod
    async def state(self, name: str) -> DomainState | None: ...
    @abc.abstractmethod
    async def list(self) -> list[DomainInfo]: ...
    @abc.abstractmethod
    async def close(self) -> None: ...


class LibvirtHypervisor(Hypervisor):
    def __init__(self, uri: str, *, domain_type: str | None = None) -> None:
        import libvirt
        self._libvirt = libvirt
        # libvirt prints every error to stderr by default, even those we expect and handle
        # (a domain without our metadata); errors still reach us as libvirtError.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.uri = uri
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to {uri}: {exc}") from exc
        # kvm only where guests really run under it (node/hostsetup.py says how that is told).
        self.domain_type = domain_type or choose_domain_type(self._conn.getCapabilities())
        self._lock = asyncio.Lock()

    async def _call(self, what: str, fn, *args):
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, *args)
            except self._libvirt.libvirtError as exc:
                raise HypervisorError(f"{what}: {exc.get_error_message() or exc}") from exc

    def _lookup(self, name: str):
        try:
            return self._conn.lookupByName(name)
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _state(self, dom) -> DomainState:
        code = dom.state()[0]
        lv = self._libvirt
        return {lv.VIR_DOMAIN_RUNNING: DomainState.RUNNING, lv.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
                lv.VIR_DOMAIN_PAUSED: DomainState.PAUSED, lv.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,
                lv.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF, lv.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
                }.get(code, DomainState.OTHER)

    async def define(self, xml: str) -> str:
        def run():
            return self._conn.defineXML(xml).name()
        return await self._call("define domain", run)

    async def start(self, name: str) -> None:
        def run():
            dom = self._lookup(name)
            if dom is None:
                raise HypervisorError(f"start {name}: no such domain")
            if not dom.isActive():
                dom.create()
        await self._call(f"start {name}", run)

    async def reboot(self, name: str) -> None:
        def run():
            dom = self._lookup(name)
            if dom is None:
                raise HypervisorError(f"reboot {name}: no such domain")
            if dom.isActive():
                try:
                    dom.reboot(0)
                except self._libvirt.libvirtError:  # no guest agent/ACPI answer: hard reset
                    dom.reset(0)
            else:
                dom.create()
        await self._call(f"reboot {name}", run)

    async def destroy(self, name: str) -> None:
        def run():
            dom = self._lookup(name)
            if dom is not None and dom.isActive():
                dom.destroy()
        await self._call(f"destroy {name}", run)

    async def undefine(self, name: str) -> None:
        def run():
            dom = self._lookup(name)
            if dom is not None:
                dom.undefine()
        await self._call(f"undefine {name}", run)

    async def state(self, name: str) -> DomainState | None:
        def run():
            dom = self._lookup(name)
            return None if dom is None else self._state(dom)
        return await self._call(f"state of {name}", run)

    async def list(self) -> list[DomainInfo]:
        def run():
            out = []
            for dom in self._conn.listAllDomains():
                try:
                    meta = dom.metadata(self._libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
                except self._libvirt.libvirtError:
                    meta = None
                out.append(DomainInfo(dom.name(), self._state(dom), parse_metadata(meta)))
            return out
        return await self._call("list domains", run)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._conn.close)
