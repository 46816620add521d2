"""The node agent without HTTP: cache + fetcher + hypervisor + instances, wired together.

`await NodeAgent(config).start()` opens the LMDB store (DATA/db), one aiobotocore client
per Walrus endpoint, the hypervisor connection (unless one is passed in: tests share one
`test:///default` connection between agents of one process, since that driver's state
lives in the connection), and rediscovers what a previous process left: cached images
and chunks from LMDB, instances reconciled with the hypervisor's domains. When the
network is managed (NodeConfig.network_managed) it then brings up the bridge and DHCP
with the live instances' entries (network.py); the NAT table needs the metadata
service's port, so NodeServer installs it once that listens, together with the network
policy stored in LMDB (security groups and elastic IPs, firewall.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from aiobotocore.session import get_session
from botocore.config import Config

from eucalypt.clock import SystemClock
from imagecache.store import BucketStore
from walrus.storage.kv import LmdbKV

from . import cachedb, firewall as firewall_mod, instances as instances_mod
from .cache import CacheLimits, NodeImageCache
from .cachedb import CacheDB
from .chunkstore import ChunkStore
from .config import NodeConfig
from .fetcher import ChunkFetcher, Sleep
from .firewall import Firewall
from .hypervisor import Hypervisor, LibvirtHypervisor
from .instances import InstanceManager
from .metrics import NodeMetrics
from .network import NodeNetwork
from .resources import host_resources

log = logging.getLogger("eucalypt.node")


class NodeAgent:
    def __init__(self, config: NodeConfig, *, hypervisor: Hypervisor | None = None, clock=None,
                 sleep: Sleep = asyncio.sleep, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = metrics or NodeMetrics()
        self._sleep = sleep
        self._given_hypervisor = hypervisor
        self.hypervisor: Hypervisor | None = hypervisor
        self._stack = contextlib.AsyncExitStack()
        self.kv = None
        self.cache: NodeImageCache | None = None
        self.instances: InstanceManager | None = None
        self.network: NodeNetwork | None = None
        self.firewall: Firewall | None = None
        self.rediscovered: dict = {}

    async def start(self) -> "NodeAgent":
        c = self.config
        data = c.data_dir
        data.mkdir(parents=True, exist_ok=True)
        try:
            self.kv = LmdbKV(data / "db", cachedb.TREES + instances_mod.TREES + firewall_mod.TREES)
            self._stack.callback(self.kv.close)
            stores = []
            for endpoint in c.walrus:
                s3 = await self._stack.enter_async_context(self._s3_client(endpoint))
                stores.append(BucketStore(s3, c.bucket))
            chunks = ChunkStore(data / "cache" / "chunks")
            db = CacheDB(self.kv)
            fetcher = ChunkFetcher(stores, chunks, db, self.metrics, c.fetch, self._sleep)
            self.cache = NodeImageCache(data, db, fetcher, chunks, CacheLimits(c.cache_limit, c.cache_high, c.cache_low),
                                        self.metrics, self.clock)
            if self.hypervisor is None:
                self.hypervisor = await asyncio.to_thread(LibvirtHypervisor, c.hypervisor_uri,
                                                          domain_type=c.domain_type)
                self._stack.push_async_callback(self.hypervisor.close)
            if c.network_managed:
                self.network = NodeNetwork(data, c.bridge, c.subnet, tunnel_ip=c.tunnel_ip, uplink=c.uplink,
                                           public_interface=c.public_interface)
            self.instances = InstanceManager(data, self.kv, self.cache, self.hypervisor, self.metrics, self.clock,
                                             bridge=c.bridge, network=self.network)
            self.firewall = Firewall(self.kv, self.instances, self.network, live_states=instances_mod.LIVE)
            self.instances.firewall = self.firewall
            self.rediscovered = await self.instances.rediscover()
            if self.network is not None:
                self._stack.push_async_callback(self._stop_network)
                await self.network.start({r.instance_id: (r.mac, r.private_ip, r.hostname)
                                          for r in self.instances.all()
                                          if r.state in instances_mod.LIVE and r.private_ip})
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("node agent: %d cached image(s); instances adopted %s, failed %s",
                 len(self.cache.db.images()), self.rediscovered.get("adopted"), self.rediscovered.get("failed"))
        return self

    def _s3_client(self, endpoint):
        config = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                        request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        retries={"max_attempts": 1, "mode": "standard"},  # our fetcher retries (with backoff)
                        connect_timeout=self.config.s3_connect_timeout, read_timeout=self.config.s3_read_timeout,
                        max_pool_connections=max(16, 2 * self.config.fetch.concurrency))
        return get_session().create_client("s3", endpoint_url=endpoint.url, region_name=endpoint.region,
                                           aws_access_key_id=endpoint.access_key,
                                           aws_secret_access_key=endpoint.secret_key, config=config)

    async def _stop_network(self) -> None:
        live = sum(1 for r in self.instances.all() if r.state in instances_mod.LIVE)
        await self.network.stop(instances_left=live)

    async def close(self) -> None:
        await self._stack.aclose()

    def resources(self) -> dict:
        c = self.config
        total = host_resources(c.data_dir, cores=c.cores, memory_mib=c.memory_mib, disk_bytes=c.disk_bytes)
        live = [r for r in self.instances.all() if r.state in instances_mod.LIVE]
        used_cores = sum(r.vcpus for r in live)
        used_mem = sum(r.memory_mib for r in live)
        return {"cluster": c.cluster, "hypervisor": getattr(self.hypervisor, "uri", None),
                "domain_type": self.hypervisor.domain_type,
                "cores": {"total": total.cores, "used": used_cores, "free": total.cores - used_cores},
                "memory_mib": {"total": total.memory_mib, "used": used_mem, "free": total.memory_mib - used_mem},
                "disk_bytes": {"total": total.disk_bytes},
                "cache_bytes": {"used": self.cache.used(), "limit": c.cache_limit},
                "instances": len(live)}

    def metadata_record(self, source_ip: str):
        """The record the metadata service serves to `source_ip`, with the public address
        the network policy in force gives it (associated, moved or released since launch)."""
        record = self.instances.by_private_ip(source_ip)
        if record is None or self.firewall is None:
            return record
        current = self.firewall.public_address(record.instance_id)
        if current is None:
            return record
        public_ip, hostname = current
        md = dict(record.metadata or {})
        if public_ip != (md.get("public-ipv4") or None):
            md["public-ipv4"], md["public-hostname"] = public_ip or "", hostname or ""
        elif hostname:
            md["public-hostname"] = hostname
        return dataclasses.replace(record, metadata=md)

    def describe_images(self) -> list[dict]:
        return [{"image_id": r.image_id, "kind": r.kind, "size": r.size, "stored_bytes": r.stored_bytes,
                 "state": r.state, "pins": r.pins, "last_used": r.last_used, "added": r.added}
                for r in self.cache.db.images()]
