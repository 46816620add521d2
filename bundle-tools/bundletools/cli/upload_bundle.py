"""euca-upload-bundle: upload a bundle's parts, then its manifest, to S3/Walrus."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..manifest import parse
from ..progress import progress_bar
from ..s3 import CANNED_ACLS, BundleLocation, upload_bundle
from .common import add_quiet, add_s3_options, run, s3_endpoint

PROG = "euca-upload-bundle"


def add_upload_options(p: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    p.add_argument("-b", "--bucket", required=True, metavar="BUCKET[/PREFIX]", help="destination bucket")
    p.add_argument("--acl", choices=CANNED_ACLS, default="aws-exec-read", help="canned ACL (default aws-exec-read)")
    p.add_argument("--location", help="location constraint of the bucket, if it must be created")
    add_s3_options(p)
    if quiet:
        add_quiet(p)


def upload_from_args(args, manifest_path: Path, parts_dir: Path | None = None) -> str:
    manifest = parse(manifest_path.read_bytes())
    with progress_bar(manifest.bundled_size, f"Uploading {manifest.name}", args.quiet) as advance:
        return asyncio.run(upload_bundle(
            s3_endpoint(args), manifest_path, BundleLocation.parse(args.bucket),
            acl=args.acl, region_constraint=args.location, parts_dir=parts_dir, progress=advance,
            skip_manifest=getattr(args, "skipmanifest", False),
        ))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Upload a bundle to the cloud's object store")
    p.add_argument("-m", "--manifest", required=True, metavar="FILE", help="the bundle's manifest")
    p.add_argument("-d", "--directory", metavar="DIR", help="directory of the parts (default: the manifest's)")
    p.add_argument("--skipmanifest", action="store_true", help="upload the parts but not the manifest")
    add_upload_options(p)
    args = p.parse_args(argv)

    def body() -> int:
        where = upload_from_args(args, Path(args.manifest), Path(args.directory) if args.directory else None)
        print(f"Uploaded {where}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
