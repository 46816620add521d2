"""Helpers for the node tests: images prepared by the real imagecache into a real
Walrus, node agents on loopback over libvirt's test driver, a latency proxy."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "imagecache"))

from bundletools import keys  # noqa: E402
from bundletools.writer import BundleSpec, bundle_image  # noqa: E402
from imagecache import CacheConfig, ImageCache  # noqa: E402
from imagecache_testlib import (  # noqa: E402,F401  (fixtures re-exported)
    ALICE_CERT, ALICE_PK, CLOUD_CERT, SYSTEM, USERS, alice_cert, alice_s3, bundle_bucket, cloud_key, ic_walrus,
    system_bucket, system_endpoint, system_s3, upload_bundle_dir)

from node.client import NodeClient  # noqa: E402
from node.config import NodeConfig, WalrusEndpoint  # noqa: E402
from node.fetcher import FetchPolicy  # noqa: E402
from node.hypervisor import LibvirtHypervisor  # noqa: E402
from node.server import NodeServer  # noqa: E402

from latencyproxy import LatencyProxy, ProxyProcess  # noqa: E402,F401

SECRET = "node-test-service-secret"


def random_bytes(seed: str, size: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def mixed_image(path: Path, mib: int, seed: str) -> Path:
    """Random MiBs with zero MiBs between (so zero chunks exist)."""
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(bytes(1 << 20) if i % 4 == 3 else random_bytes(f"{seed}:{i}", 1 << 20))
    return path


def bundle(tmp_path: Path, image: Path, prefix: str, image_type: str = "machine"):
    return bundle_image(image, tmp_path / f"bundle-{prefix}",
                        BundleSpec(user="123456789012", prefix=prefix, part_size=4 << 20, image_type=image_type),
                        cloud_cert=keys.load_certificate(CLOUD_CERT), user_cert=keys.load_certificate(ALICE_CERT),
                        private_key=keys.load_private_key(ALICE_PK))


async def prepare(tmp_path: Path, image: Path, image_id: str, *, alice_s3, bundle_bucket, system_endpoint,
                  system_bucket, cloud_key, alice_cert, image_type: str = "machine"):
    """Bundle, upload and imagecache-prepare `image`; the PrepareResult."""
    b = bundle(tmp_path, image, image_id, image_type)
    location = upload_bundle_dir(alice_s3, bundle_bucket, b.manifest_path.parent, b.manifest_path.name)
    async with ImageCache(system_endpoint, cloud_key, CacheConfig(bucket=system_bucket)) as cache:
        return await cache.prepare(location, image_id, user_cert=alice_cert)


@pytest.fixture
def hypervisor():
    """A test:///default connection. With libvirt 9.0 the driver's state is shared by the
    connections of one process, so the domains a test made are removed afterwards."""
    hv = LibvirtHypervisor("test:///default")
    yield hv
    for dom in hv._conn.listAllDomains():
        if dom.name() != "test":  # the driver's built-in domain
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    hv._conn.close()


def node_config(data_dir: Path, walrus_url: str | list[str], bucket: str, **options) -> NodeConfig:
    urls = [walrus_url] if isinstance(walrus_url, str) else walrus_url
    fetch = options.pop("fetch", FetchPolicy())
    options.setdefault("metadata_port", 0)  # never the shared default port 8776
    return NodeConfig(data_dir=data_dir, service_secret=SECRET, port=0,
                      walrus=tuple(WalrusEndpoint(u, SYSTEM.access_key, SYSTEM.secret_key) for u in urls),
                      bucket=bucket, hypervisor_uri="test:///default", fetch=fetch, **options)


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


class Node:
    """A started NodeServer plus a signed client."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self.client = NodeClient(server.url, SECRET)

    @property
    def agent(self):
        return self.server.agent

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.server.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    @property
    def fetched(self) -> float:
        return self.metric("eucalypt_node_chunk_fetched_bytes_total")

    async def stop(self) -> None:
        await self.client.close()
        await self.server.stop()


async def start_node(config: NodeConfig, hypervisor, **options) -> Node:
    options.setdefault("sleep", no_sleep)
    server = NodeServer(config, hypervisor=hypervisor, **options)
    await server.start()
    return Node(server)


def node_process_args(base: Path, walrus_url: str, bucket: str, *extra: str) -> list[str]:
    """The arguments of a `eucalypt node` process on the test driver against the test
    Walrus (its secret and credentials files written under `base`); metadata port 0."""
    secret = base / "service.secret"
    secret.write_text(SECRET + "\n")
    creds = base / "walrus.toml"
    creds.write_text(f'access_key = "{SYSTEM.access_key}"\nsecret_key = "{SYSTEM.secret_key}"\n')
    return ["--hypervisor", "test:///default", "--walrus", walrus_url, "--bucket", bucket,
            "--service-secret-file", str(secret), "--walrus-credentials", str(creds), "--metadata-port", "0",
            *extra]


def start_node_process(base: Path, walrus_url: str, bucket: str, *extra: str, data_dir: Path | None = None):
    """A real `eucalypt node` process (walrustest.start_service); stop() it."""
    from walrustest import start_service
    base.mkdir(parents=True, exist_ok=True)
    return start_service("node", data_dir or base / "node", node_process_args(base, walrus_url, bucket, *extra))


async def node_health(client: NodeClient) -> dict:
    async with client._session.get(client.url + "/_eucalypt/health") as reply:
        return await reply.json()


def warm_cache(base: Path, walrus_url: str, bucket: str, image_id: str, data_dir: Path) -> None:
    """Fetch `image_id` into the cache at `data_dir` with a node in this (root) namespace,
    for a node that will run later inside a namespace that cannot reach Walrus."""
    warm = start_node_process(base, walrus_url, bucket, "--no-manage-network", data_dir=data_dir)
    try:
        async def prefetch():
            async with NodeClient(warm.url, SECRET) as client:
                return await client.prefetch(image_id)
        assert asyncio.run(prefetch())["image"]["state"] == "ready"
    finally:
        warm.stop()
