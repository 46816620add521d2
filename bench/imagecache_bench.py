"""imagecache prepare throughput vs `openssl enc -d | gunzip` over the same bundle.

    .venv/bin/python bench/imagecache_bench.py [--size 1G] [--work DIR] [--keep]

Makes an image (a mix of random data, text-like data and zero runs, like a filesystem
image), bundles it with our bundler (10 MiB parts), starts a Walrus with a system user
"eucalypt" and a user "alice", uploads the bundle with aws-exec-read, then times in the
same run:

* reference: `cat parts | openssl enc -d -aes-128-cbc -K .. -iv .. | gunzip > /dev/null`
  over the part files on local disk (decrypt + decompress only: no checks, no tar, no
  chunking, no network);
* imagecache: `ImageCache.prepare` from Walrus (fetch, verify, decrypt, gunzip, untar,
  CDC, SHA-256, publish to the same Walrus on this machine).

Prints both throughputs (image bytes per second) and their ratio (target >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bundle-tools")]

from bundletools import keys  # noqa: E402
from bundletools.reader import unwrap_bundle_key  # noqa: E402
from bundletools.s3 import S3Endpoint  # noqa: E402
from bundletools.writer import BundleSpec, bundle_image  # noqa: E402
from imagecache.cache import CacheConfig, ImageCache  # noqa: E402

CONFIG: dict = {}
KEYS = ROOT / "tests" / "data" / "euca2ools" / "keys"
USERS = """\
[[user]]
name = "alice"
access_key = "AKIDBENCHALICE00000"
secret_key = "bench-alice-secret"

[[user]]
name = "eucalypt"
access_key = "AKIDBENCHSYSTEM0000"
secret_key = "bench-system-secret"
"""


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(text)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def make_image(path: Path, size: int) -> None:
    """Per 4 MiB: 1.5 MiB random, 1.5 MiB text-like (numbered lines), 1 MiB zeros."""
    block = 4 << 20
    with open(path, "wb") as f:
        for i in range(size // block):
            f.write(hashlib.shake_256(b"bench%d" % i).digest(3 << 19))
            lines = b"".join(b"%08d the quick brown fox %d jumps over the lazy dog\n" % (n, n * 7919 % 10007)
                             for n in range(i * 40000, i * 40000 + 40000))
            f.write(lines[: 3 << 19].ljust(3 << 19, b"\n"))
            f.write(bytes(1 << 20))
        f.write(bytes(size % block))


def start_walrus(work: Path) -> tuple[subprocess.Popen, str]:
    (work / "users.toml").write_text(USERS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eucalypt.cli", "walrus", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(work / "walrus"), "--users", str(work / "users.toml"), "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"walrus did not start: {line!r}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, match.group(1)


def reference_seconds(bundle, cloud_pk) -> float:
    aes = unwrap_bundle_key(bundle.manifest, cloud_pk)
    parts = " ".join(str(p) for p in bundle.part_paths)
    cmd = (f"cat {parts} | openssl enc -d -aes-128-cbc -K {aes.key_hex} -iv {aes.iv_hex} "
           f"| gunzip > /dev/null")
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - start


async def prepare_seconds(url: str, location: str, image_id: str, cloud_pk, alice_cert, bucket: str):
    """Time a first prepare, then the same bundle again under another id (every chunk
    already stored: the pipeline without the publishing)."""
    endpoint = S3Endpoint(url, "AKIDBENCHSYSTEM0000", "bench-system-secret", "us-east-1")
    async with ImageCache(endpoint, cloud_pk, CacheConfig(bucket=bucket, **CONFIG)) as cache:
        start = time.perf_counter()
        result = await cache.prepare(location, image_id, user_cert=alice_cert)
        first = time.perf_counter() - start
        start = time.perf_counter()
        await cache.prepare(location, image_id + "d", user_cert=alice_cert)
        return first, time.perf_counter() - start, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30)
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each (best is reported)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="imagecache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cloud_pk = keys.load_private_key(KEYS / "test-only-cloud-pk.pem")
    alice_cert = keys.load_certificate(KEYS / "test-only-alice-cert.pem")
    proc = None
    try:
        image = work / "bench.img"
        if not image.exists() or image.stat().st_size != args.size:
            print(f"making a {args.size >> 20} MiB image ...", flush=True)
            make_image(image, args.size)
        print("bundling ...", flush=True)
        bundle = bundle_image(image, work / "bundle", BundleSpec(user="123456789012", prefix="bench.img"),
                              cloud_cert=keys.load_certificate(KEYS / "test-only-cloud-cert.pem"),
                              user_cert=alice_cert, private_key=keys.load_private_key(KEYS / "test-only-alice-pk.pem"))
        proc, url = start_walrus(work)
        import boto3
        from botocore.config import Config

        alice = boto3.client("s3", endpoint_url=url, aws_access_key_id="AKIDBENCHALICE00000",
                             aws_secret_access_key="bench-alice-secret", region_name="us-east-1",
                             config=Config(s3={"addressing_style": "path"}))
        alice.create_bucket(Bucket="bench-bundles")
        print("uploading ...", flush=True)
        for p in (*bundle.part_paths, bundle.manifest_path):
            alice.put_object(Bucket="bench-bundles", Key=p.name, Body=p.read_bytes(), ACL="aws-exec-read")
        location = f"bench-bundles/{bundle.manifest_path.name}"
        ref, ours, dedup, result = [], [], [], None
        for i in range(args.repeat):
            ref.append(reference_seconds(bundle, cloud_pk))
            seconds, again, result = asyncio.run(prepare_seconds(url, location, f"emi-bench{i:04d}", cloud_pk,
                                                                 alice_cert, f"bench-images-{i}"))
            ours.append(seconds)
            dedup.append(again)
        size = args.size
        r, o = min(ref), min(ours)
        s = result.stats
        print(f"image {size >> 20} MiB, bundle {bundle.manifest.bundled_size >> 20} MiB in "
              f"{len(bundle.manifest.parts)} parts")
        print(f"reference openssl enc -d | gunzip: {r:6.2f} s  {size / r / 1e6:7.1f} MB/s")
        print(f"imagecache prepare (from Walrus):  {o:6.2f} s  {size / o / 1e6:7.1f} MB/s  "
              f"(published {s.bytes_published >> 20} MiB in {s.packs} packs, {s.chunks} chunks, "
              f"{s.zero_chunks} zero)")
        d = min(dedup)
        print(f"imagecache re-prepare (all dedup): {d:6.2f} s  {size / d / 1e6:7.1f} MB/s  (nothing to publish)")
        print(f"ratio imagecache/reference: {r / o:.2f}x (target >= 0.8x); without publishing {r / d:.2f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
