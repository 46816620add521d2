"""euca-download-bundle: fetch a bundle's manifest and parts from S3/Walrus, checked."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..progress import progress_bar
from ..s3 import BundleLocation, download_bundle
from .common import add_quiet, add_s3_options, run, s3_endpoint

PROG = "euca-download-bundle"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Download a bundle from the cloud's object store")
    p.add_argument("-b", "--bucket", required=True, metavar="BUCKET[/PREFIX]", help="bucket holding the bundle")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-m", "--manifest", metavar="NAME", help="the manifest's object name")
    g.add_argument("-p", "--prefix", help="the bundle's file name prefix")
    p.add_argument("-d", "--directory", default=".", metavar="DIR", help="where to write the files")
    add_s3_options(p)
    add_quiet(p)
    args = p.parse_args(argv)

    def body() -> int:
        # total size is unknown until the manifest arrives: the bar counts without a total
        with progress_bar(0, "Downloading", args.quiet) as advance:
            path = asyncio.run(download_bundle(
                s3_endpoint(args), BundleLocation.parse(args.bucket), args.directory,
                manifest_name=args.manifest, prefix=args.prefix, progress=advance,
            ))
        print(f"Wrote {path}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
