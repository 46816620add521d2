"""Node agent benchmark, against a real Walrus on loopback and libvirt's test driver:

* cold fetch of a 1 GiB image (hash-verified, written to the cache) as a ratio to a plain
  `aws s3 cp` of the same bytes (the image's pack objects) from the same Walrus, same run
  (issue #6 target: >= 1.5x);
* cold fetch with 1 vs N ranged GETs in flight (straight to Walrus, then behind 20 ms of
  per-request latency);
* warm launch (cache hit -> domain started; target < 1 s);
* the bytes moved for version 2 of an ext4 image after version 1.

    .venv/bin/python bench/node_bench.py [--mib 64] [--cold-mib 1024]
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


def aws_cp(walrus_url: str, user, bucket: str, keys: list[str], dest: Path) -> float:
    """Seconds for `aws s3 cp` of each key (the aws cli's defaults: 10 threads, 8 MiB parts)."""
    import os
    import subprocess
    env = dict(os.environ, AWS_ACCESS_KEY_ID=user.access_key, AWS_SECRET_ACCESS_KEY=user.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    started = time.monotonic()
    for key in keys:
        subprocess.run([str(ROOT / ".venv" / "bin" / "aws"), "--endpoint-url", walrus_url, "s3", "cp", "--quiet",
                        f"s3://{bucket}/{key}", str(dest)], env=env, check=True)
        dest.unlink()
    return time.monotonic() - started


async def version_two(tmp: Path, walrus_url: str, hv, ctx: dict) -> None:
    from test_imagecache_dedup import mkfs
    from test_node_fetch import stored_bytes, write_tree
    manifests = []
    for version in (0, 1):
        write_tree(tmp / f"tree{version}", version)
        mkfs(tmp / f"tree{version}", tmp / f"v{version}.img")
        manifests.append((await prepare(tmp, tmp / f"v{version}.img", f"emi-be00e40{version}", **ctx)).manifest)
    node = await start_node(node_config(tmp / "v2node", walrus_url, "bench-images"), hv)
    try:
        await node.client.prefetch("emi-be00e400")
        before = node.fetched
        await node.client.prefetch("emi-be00e401")
        moved = node.fetched - before
        print(f"version 2 after version 1 ({manifests[1].size >> 20} MiB ext4): {moved / 2**20:.2f} MiB moved "
              f"= {moved / manifests[1].size:.1%} of the image ({stored_bytes(manifests[1]) / 2**20:.1f} MiB "
              f"stored)")
    finally:
        await node.stop()


async def main(mib: int, cold_mib: int) -> None:
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
            ctx = dict(alice_s3=alice, bundle_bucket="bench-bundles", system_endpoint=endpoint_for(walrus.url, SYSTEM),
                       system_bucket="bench-images", cloud_key=k.load_private_key(CLOUD_PK),
                       alice_cert=k.load_certificate(ALICE_CERT))
            if cold_mib:
                big = await prepare(tmp, mixed_image(tmp / "big.img", cold_mib, "big"), "emi-be00b16", **ctx)
                (tmp / "big.img").unlink()
                packs = [p.key for p in big.manifest.packs]
                cp_seconds = aws_cp(walrus.url, SYSTEM, "bench-images", packs, tmp / "cp.out")
                packed = sum(p.size for p in big.manifest.packs)
                node = await start_node(node_config(tmp / "bignode", walrus.url, "bench-images"), hv)
                try:
                    reply = await node.client.prefetch("emi-be00b16")
                finally:
                    await node.stop()
                fetch = reply["fetch_seconds"]
                print(f"cold fetch of a {cold_mib} MiB image ({reply['fetched_bytes'] / 2**20:.0f} MiB non-zero, "
                      f"hash-verified into the cache): {fetch:.2f} s = {reply['fetched_bytes'] / fetch / 2**20:.0f} "
                      f"MiB/s; aws s3 cp of its {len(packs)} pack(s), {packed / 2**20:.0f} MiB: {cp_seconds:.2f} s "
                      f"= {packed / cp_seconds / 2**20:.0f} MiB/s; ratio {cp_seconds / fetch:.2f}x "
                      f"(target >= 1.5x: {'met' if cp_seconds / fetch >= 1.5 else 'MISSED'})", flush=True)
                import shutil
                shutil.rmtree(tmp / "bignode", ignore_errors=True)
            await version_two(tmp, walrus.url, hv, ctx)
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
    parser.add_argument("--cold-mib", type=int, default=1024, help="size of the cold-fetch image (0: skip)")
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.cold_mib))
