"""Node agent benchmark: cold fetch of one image with 1 vs N ranged GETs in flight
(straight to Walrus, then behind 20 ms of per-request latency), and a warm launch,
against a real Walrus on loopback and libvirt's test driver. Prints ratios against the
one-in-flight reference measured in the same run.

    .venv/bin/python bench/node_bench.py [--mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bundle-tools", ROOT / "tests", ROOT / "tests" / "imagecache", ROOT / "tests" / "node"):
    sys.path.insert(0, str(p))

from bundletools import keys  # noqa: E402
from imagecache_testlib import ALICE_IC, CLOUD_PK, SYSTEM, USERS, endpoint_for, load_gen_image  # noqa: E402,F401
from latencyproxy import ProxyProcess  # noqa: E402
from nodetestlib import mixed_image, node_config, prepare, start_node  # noqa: E402
from node.fetcher import FetchPolicy  # noqa: E402
from node.hypervisor import LibvirtHypervisor  # noqa: E402
from walrustest import s3_client, start_walrus  # noqa: E402


async def cold(tmp: Path, name: str, url: str, hv, policy: FetchPolicy) -> tuple[float, float]:
    node = await start_node(node_config(tmp / name, url, "bench-images", fetch=policy), hv)
    try:
        reply = await node.client.prefetch("emi-be000001")
        return reply["fetch_seconds"], node.fetched
    finally:
        await node.stop()


async def main(mib: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "users.toml").write_text(USERS)
        walrus = start_walrus(tmp / "walrus", tmp / "users.toml")
        proxy = None
        try:
            alice = s3_client(walrus.url, ALICE_IC)
            alice.create_bucket(Bucket="bench-bundles")
            from bundletools import keys as k
            from imagecache_testlib import ALICE_CERT
            await prepare(tmp, mixed_image(tmp / "bench.img", mib, "bench"), "emi-be000001", alice_s3=alice,
                          bundle_bucket="bench-bundles", system_endpoint=endpoint_for(walrus.url, SYSTEM),
                          system_bucket="bench-images", cloud_key=k.load_private_key(CLOUD_PK),
                          alice_cert=k.load_certificate(ALICE_CERT))
            hv = LibvirtHypervisor("test:///default")
            default = FetchPolicy().concurrency
            small = dict(min_request=256 << 10, max_gap=0, max_request=256 << 10)
            proxy = ProxyProcess(walrus.url, 0.02)
            for label, url, extra in (("direct, 16 MiB requests", walrus.url, {}),
                                      ("direct, 256 KiB requests", walrus.url, small),
                                      ("20 ms latency, 256 KiB requests", proxy.url, small)):
                t1, n = await cold(tmp, f"s-{len(label)}-{label[:3]}", url, hv, FetchPolicy(concurrency=1, **extra))
                tn, _ = await cold(tmp, f"p-{len(label)}-{label[:3]}", url, hv, FetchPolicy(**extra))
                print(f"{label:34s} {n / 2**20:6.1f} MiB: 1 in flight {n / t1 / 2**20:7.1f} MiB/s, "
                      f"{default} in flight {n / tn / 2**20:7.1f} MiB/s  ({t1 / tn:.1f}x)")
            node = await start_node(node_config(tmp / "warm", walrus.url, "bench-images"), hv)
            try:
                started = time.monotonic()
                await node.client.run_instance("i-be000001", "emi-be000001")
                cold_launch = time.monotonic() - started
                started = time.monotonic()
                await node.client.run_instance("i-be000002", "emi-be000001")
                warm = time.monotonic() - started
                print(f"launch: cold {cold_launch * 1000:.0f} ms, warm {warm * 1000:.0f} ms "
                      f"({cold_launch / warm:.0f}x), warm fetched {node.fetched / 2**20:.1f} MiB total")
            finally:
                await node.stop()
        finally:
            if proxy:
                proxy.stop()
            walrus.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    asyncio.run(main(parser.parse_args().mib))
