"""The `eucalypt` command: one entry point, a subcommand per service.

    eucalypt walrus --data-dir ./var/walrus          the S3 service, standalone
    eucalypt --help / eucalypt walrus --help         what every option means
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__


def _walrus_parser(sub) -> None:
    p = sub.add_parser(
        "walrus", help="run Walrus, the S3 service (standalone S3 server)",
        description="Run Walrus, eucalypt's S3 service. Without --users, an admin user is "
                    "generated on first start and its keys written to DATA_DIR/admin.credentials.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default=os.environ.get("WALRUS_HOST", "127.0.0.1"),
                   help="address to listen on (env WALRUS_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("WALRUS_PORT", "8774")),
                   help="port to listen on; 0 picks a free one (env WALRUS_PORT)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WALRUS_DATA_DIR", "./var/walrus")),
                   help="where objects and metadata live (env WALRUS_DATA_DIR)")
    p.add_argument("--users", type=Path, default=os.environ.get("WALRUS_USERS"),
                   help="TOML file of [[user]] tables with name, access_key, secret_key (env WALRUS_USERS)")
    p.add_argument("--domain", action="append", default=None,
                   help="domain for virtual-host style addressing (BUCKET.DOMAIN); repeatable; default localhost")
    p.add_argument("--region", default=os.environ.get("WALRUS_REGION", "us-east-1"),
                   help="region reported for buckets without a location constraint")
    p.add_argument("--control", default=None,
                   help="URL of the cloud controller to authenticate users against (not yet available)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_walrus)


async def _serve_walrus(args) -> int:
    from walrus.server import WalrusConfig, WalrusServer

    config = WalrusConfig(data_dir=args.data_dir, host=args.host, port=args.port,
                          users_file=args.users, region=args.region,
                          domains=tuple(args.domain) if args.domain else ("localhost",))
    server = WalrusServer(config)
    await server.start()
    print(f"walrus: listening on {server.url}", flush=True)
    print(f"walrus: data in {config.data_dir.resolve()}", flush=True)
    if server.admin is not None:
        state = "generated" if server.admin_created else "existing"
        print(f"walrus: {state} admin credentials in {server.admin_credentials.resolve()}", flush=True)
        print(f"walrus:   aws_access_key_id = {server.admin.access_key}", flush=True)
        if server.admin_created:
            print(f"walrus:   aws_secret_access_key = {server.admin.secret_key}", flush=True)
        print(f"walrus: try: AWS_SHARED_CREDENTIALS_FILE={server.admin_credentials.resolve()} "
              f"aws --endpoint-url {server.url} s3 ls", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("walrus: shutting down", flush=True)
    await server.stop()
    return 0


def _run_walrus(args) -> int:
    if args.control:
        print("eucalypt walrus: --control is not available yet; use --users FILE", file=sys.stderr)
        return 2
    from walrus.users import UsersFileError
    try:
        return _run(_serve_walrus(args))
    except UsersFileError as exc:
        print(f"eucalypt walrus: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eucalypt walrus: {exc}", file=sys.stderr)
        return 1


def _run(coro) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eucalypt",
        description="eucalypt: an EC2- and S3-compatible private cloud. Each subcommand runs "
                    "one service; `eucalypt SUBCOMMAND --help` explains its options.")
    parser.add_argument("--version", action="version", version=f"eucalypt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    _walrus_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
