"""euca-unbundle: recreate an image from its bundle files on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..progress import progress_bar
from ..reader import read_manifest, unbundle
from .common import add_quiet, env_default, load_cert, load_key, run

PROG = "euca-unbundle"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Recreate an image from its bundled parts")
    p.add_argument("-m", "--manifest", required=True, metavar="FILE", help="the bundle's manifest")
    p.add_argument("-s", "--source", metavar="DIR", help="directory of the parts (default: the manifest's)")
    p.add_argument("-d", "--destination", default=".", metavar="DIR", help="where to write the image")
    p.add_argument("-k", "--privatekey", default=env_default("EC2_PRIVATE_KEY"),
                   help="your private key or the cloud's (default: $EC2_PRIVATE_KEY)")
    p.add_argument("-c", "--cert", default=None,
                   help="check the manifest signature against this certificate")
    add_quiet(p)
    args = p.parse_args(argv)

    def body() -> int:
        private_key = load_key(args.privatekey)
        cert = load_cert(args.cert, "certificate", "-c", "EC2_CERT") if args.cert else None
        manifest = read_manifest(args.manifest)
        with progress_bar(manifest.bundled_size, f"Unbundling {manifest.name}", args.quiet) as advance:
            target, _ = unbundle(Path(args.manifest), args.destination, private_key,
                                 source_dir=args.source, certificate=cert, progress=advance)
        print(f"Wrote {target}")
        return 0

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
