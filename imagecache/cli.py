"""`eucalypt imagecache prepare|ls|evict|verify`: the operator's view of the image cache.

Talks to a Walrus (or any S3) endpoint as the cloud's system identity:

    eucalypt imagecache [--endpoint URL] [-I KEY -S SECRET] [--bucket eucalypt-images] \\
        prepare BUCKET/PREFIX.manifest.xml IMAGE_ID --cloud-key cloud-pk.pem --user-cert cert.pem
        ls                       images, sizes, last launch, pins; usage totals
        evict --cap 20G          LRU eviction down to the cap, then garbage collection
        evict --image ID ...     evict these images (unless pinned or being prepared)
        evict --gc-only          only collect packs no image references
        verify IMAGE_ID [--out FILE]   read every chunk back and check all digests

Credentials: flags, else S3_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (as euca2ools).
Exit status: 0 ok, 1 the operation failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

from bundletools import keys as bt_keys
from bundletools import s3 as bt_s3
from bundletools.errors import BundleError

from .cache import DEFAULT_BUCKET, CacheConfig, ImageCache
from .errors import ImageCacheError, PrepareFailed

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 20G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", "-U", help="S3 endpoint URL (default $S3_URL)")
    parser.add_argument("--access-key", "-I", help="system identity access key (default $AWS_ACCESS_KEY_ID)")
    parser.add_argument("--secret-key", "-S", help="system identity secret key (default $AWS_SECRET_ACCESS_KEY)")
    parser.add_argument("--region", help="signing region")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="system bucket (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `imagecache` and its sub-commands on an argparse subparsers object."""
    parser = subparsers.add_parser("imagecache", help="prepare, list, evict and verify decrypted images",
                                   description=__doc__.split("\n\n")[0])
    _fill(parser)
    parser.set_defaults(func=run)  # eucalypt.cli calls args.func(args)
    return parser


def _fill(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    sub = parser.add_subparsers(dest="imagecache_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("prepare", help="decrypt a registered bundle into the cache")
    p.add_argument("bundle", help="BUCKET/PREFIX.manifest.xml")
    p.add_argument("image_id")
    p.add_argument("--cloud-key", required=True, help="the cloud's private key (PEM)")
    p.add_argument("--user-cert", required=True, help="the registering user's certificate (PEM)")
    p.add_argument("--force", action="store_true", help="prepare again even if the image is cached")
    p.add_argument("--pack-size", type=parse_size, default=None, help="largest pack object (default 256M)")
    p.add_argument("--progress", action="store_true", help="print progress to stderr")
    p.set_defaults(run=_prepare)

    p = sub.add_parser("ls", help="list cached images and usage")
    p.set_defaults(run=_ls)

    p = sub.add_parser("evict", help="evict images (LRU down to --cap, or --image) and collect garbage")
    p.add_argument("--cap", type=parse_size, help="size cap for referenced packs, e.g. 20G")
    p.add_argument("--image", action="append", dest="images", help="evict this image (repeatable)")
    p.add_argument("--gc-only", action="store_true", help="only delete packs no image references")
    p.add_argument("--grace", type=float, default=None, help="seconds before an orphan pack is collected")
    p.set_defaults(run=_evict)

    p = sub.add_parser("verify", help="read an image back and check every digest")
    p.add_argument("image_id")
    p.add_argument("--out", help="also write the reassembled image here")
    p.set_defaults(run=_verify)

    p = sub.add_parser("touch", help="record a launch of an image (debugging)")
    p.add_argument("image_id")
    p.set_defaults(run=_touch)

    for p in sub.choices.values():  # --json also after the sub-command
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")


def _cache(args, cloud_key=None, **config) -> ImageCache:
    endpoint = bt_s3.endpoint_from_env(args.endpoint, args.access_key, args.secret_key, args.region)
    return ImageCache(endpoint, cloud_key, CacheConfig(bucket=args.bucket, **config))


def _print(args, doc: dict, text: str) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else text)


async def _prepare(args) -> int:
    cloud_key = bt_keys.load_private_key(args.cloud_key)
    user_cert = bt_keys.load_certificate(args.user_cert)
    config = {"pack_size": args.pack_size} if args.pack_size else {}

    def progress(stats) -> None:
        print(f"imagecache: read {human(stats.bytes_read)}, decrypted {human(stats.bytes_decrypted)}, "
              f"published {human(stats.bytes_published)}", file=sys.stderr, flush=True)

    async with _cache(args, cloud_key, **config) as cache:
        result = await cache.prepare(args.bundle, args.image_id, user_cert=user_cert, force=args.force,
                                     progress=progress if args.progress else None)
    m, s = result.manifest, result.stats
    doc = {"image_id": m.image_id, "kind": m.kind, "size": m.size, "sha256": m.sha256,
           "chunks": len(m.chunks), "packs": len(m.packs), "already_prepared": result.already_prepared,
           "stats": s.to_json()}
    if result.already_prepared:
        text = f"{m.image_id}: already prepared ({m.kind}, {human(m.size)})"
    else:
        rate = s.bytes_decrypted / s.seconds / 1e6 if s.seconds else 0
        text = (f"{m.image_id}: prepared {m.kind} image, {human(m.size)}, sha256 {m.sha256}\n"
                f"  chunks {s.chunks} (new {s.new_chunks}, dedup {s.dedup_chunks}, zero {s.zero_chunks}); "
                f"published {human(s.bytes_published)} in {s.packs} pack(s); {s.seconds:.1f}s, {rate:.0f} MB/s")
    _print(args, doc, text)
    return 0


async def _ls(args) -> int:
    async with _cache(args) as cache:
        images = await cache.list_images()
        usage = await cache.usage()
    rows = []
    for i in images:
        launched = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(i.last_launched)) if i.last_launched else "-"
        flags = ",".join(filter(None, ["pinned" if i.pinned_by else "", "preparing" if i.preparing else ""]))
        rows.append(f"{i.image_id:<24} {i.kind:<8} {human(i.size):>10} {human(i.stored_bytes):>10}  "
                    f"{launched:<20} {flags}")
    text = "\n".join([f"{'IMAGE':<24} {'KIND':<8} {'SIZE':>10} {'STORED':>10}  {'LAST LAUNCHED':<20} FLAGS",
                      *rows, f"usage: {human(usage.referenced_bytes)} referenced, "
                             f"{human(usage.garbage_bytes)} garbage, {usage.packs} pack(s), {usage.images} image(s)"])
    doc = {"images": [{"image_id": i.image_id, "kind": i.kind, "size": i.size, "stored_bytes": i.stored_bytes,
                       "created": i.created, "last_launched": i.last_launched, "pinned_by": list(i.pinned_by),
                       "preparing": i.preparing} for i in images],
           "usage": {"pack_bytes": usage.pack_bytes, "referenced_bytes": usage.referenced_bytes,
                     "garbage_bytes": usage.garbage_bytes, "packs": usage.packs, "images": usage.images}}
    _print(args, doc, text)
    return 0


async def _evict(args) -> int:
    if not args.gc_only and args.cap is None and not args.images:
        print("imagecache evict: give --cap, --image or --gc-only", file=sys.stderr)
        return 2
    async with _cache(args) as cache:
        if args.gc_only:
            result = await cache.gc(args.grace)
        else:
            result = await cache.evict(args.cap, images=args.images, grace=args.grace)
    doc = {"evicted": list(result.evicted), "deleted_packs": list(result.deleted_packs),
           "freed_bytes": result.freed_bytes, "referenced_bytes": result.referenced_bytes,
           "gc_skipped": result.gc_skipped}
    text = (f"evicted {len(result.evicted)} image(s) {' '.join(result.evicted)}\n"
            f"deleted {len(result.deleted_packs)} pack(s), freed {human(result.freed_bytes)}; "
            f"{human(result.referenced_bytes)} referenced"
            + ("\n(packs kept: a prepare is running; run again later)" if result.gc_skipped else ""))
    _print(args, doc, text)
    return 0


async def _verify(args) -> int:
    async with _cache(args) as cache:
        if args.out:
            await cache.reassemble(args.image_id, args.out)
            manifest = await cache.manifest(args.image_id)
        else:
            manifest = await cache.verify(args.image_id)
    _print(args, {"image_id": manifest.image_id, "ok": True, "size": manifest.size, "sha256": manifest.sha256},
           f"{manifest.image_id}: ok ({human(manifest.size)}, {len(manifest.chunks)} chunks, sha256 {manifest.sha256})")
    return 0


async def _touch(args) -> int:
    async with _cache(args) as cache:
        await cache.touch(args.image_id)
    return 0


def run(args) -> int:
    """Run parsed `imagecache` arguments (what eucalypt.cli calls after parsing)."""
    try:
        return asyncio.run(args.run(args))
    except PrepareFailed as exc:
        print(f"imagecache: prepare failed ({exc.code}): {exc.reason}", file=sys.stderr)
        return 1
    except ImageCacheError as exc:
        print(f"imagecache: {exc.code}: {exc.reason}", file=sys.stderr)
        return 1
    except (BundleError, ValueError) as exc:
        print(f"imagecache: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eucalypt imagecache", description=__doc__.split("\n\n")[0])
    _fill(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
