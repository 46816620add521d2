"""What every command shares: euca2ools environment variables, error reporting, S3 flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..errors import BundleError, KeyFileError
from .. import keys


def env_default(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def require_file(path: str | None, what: str, flag: str, env: str) -> str:
    if not path:
        raise KeyFileError(f"missing {what}: give {flag} or set {env}")
    if not os.path.isfile(path):
        raise KeyFileError(f"{what} {path} does not exist")
    return path


def load_cert(path: str | None, what: str, flag: str, env: str):
    return keys.load_certificate(require_file(path, what, flag, env))


def load_key(path: str | None, flag: str = "-k", env: str = "EC2_PRIVATE_KEY"):
    return keys.load_private_key(require_file(path, "private key", flag, env))


def add_s3_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("S3 connection")
    g.add_argument("-U", "--url", default=None, help="S3 endpoint URL (default: $S3_URL, or AWS)")
    g.add_argument("-I", "--access-key-id", default=None, help="default: $AWS_ACCESS_KEY_ID / $AWS_ACCESS_KEY")
    g.add_argument("-S", "--secret-key", default=None, help="default: $AWS_SECRET_ACCESS_KEY / $AWS_SECRET_KEY")
    g.add_argument("--region", default=None, help="signing region (default: $AWS_DEFAULT_REGION or eucalyptus)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar")


def s3_endpoint(args):
    from ..s3 import endpoint_from_env

    return endpoint_from_env(args.url, args.access_key_id, args.secret_key, args.region)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command body; BundleErrors become 'prog: error: message' and exit 1."""
    try:
        return body() or 0
    except BundleError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
