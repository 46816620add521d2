"""euca-delete-bundle: remove a bundle's parts and manifest, optionally the bucket."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..s3 import BundleLocation, delete_bundle
from .common import add_s3_options, run, s3_endpoint

PROG = "euca-delete-bundle"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Delete a bundle from the cloud's object store")
    p.add_argument("-b", "--bucket", required=True, metavar="BUCKET[/PREFIX]", help="bucket holding the bundle")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-m", "--manifest", metavar="NAME", help="the manifest's object name")
    g.add_argument("-p", "--prefix", help="the bundle's file name prefix")
    g.add_argument("--local-manifest", metavar="FILE", help="a local copy of the manifest")
    p.add_argument("--clear", action="store_true", help="also delete the bucket if it is then empty")
    add_s3_options(p)
    args = p.parse_args(argv)

    def body() -> int:
        asyncio.run(delete_bundle(
            s3_endpoint(args), BundleLocation.parse(args.bucket), manifest_name=args.manifest,
            prefix=args.prefix, local_manifest=args.local_manifest, clear=args.clear,
        ))
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
