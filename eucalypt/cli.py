"""The `eucalypt` command: one entry point, a subcommand per service.

    eucalypt up --state-dir ./var                    the whole cloud on this host
    eucalypt walrus --data-dir ./var/walrus          the S3 service, standalone
    eucalypt --help / eucalypt walrus --help         what every option means
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .service import resolve_settings, run_service, serve_until_signalled


def _walrus_parser(sub) -> None:
    p = sub.add_parser(
        "walrus", help="run Walrus, the S3 service (standalone S3 server)",
        description="Run Walrus, eucalypt's S3 service. Without --users, an admin user is "
                    "generated on first start and its keys written to DATA_DIR/admin.credentials. "
                    "Settings come from --config (TOML, keys named like the long options with "
                    "underscores), then WALRUS_* environment variables, then flags.")
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    p.add_argument("--host", help="address to listen on [127.0.0.1] (env WALRUS_HOST)")
    p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one [8774] (env WALRUS_PORT)")
    p.add_argument("--data-dir", type=Path, help="where objects and metadata live [./var/walrus] (env WALRUS_DATA_DIR)")
    p.add_argument("--users", type=Path,
                   help="TOML file of [[user]] tables with name, access_key, secret_key (env WALRUS_USERS)")
    p.add_argument("--domain", action="append", dest="domains",
                   help="domain for virtual-host style addressing (BUCKET.DOMAIN); repeatable [localhost]")
    p.add_argument("--region", help="region reported for buckets without a location constraint [us-east-1]")
    p.add_argument("--multipart-expiry-hours", type=float,
                   help="abort multipart uploads left unfinished this long [168]")
    p.add_argument("--control", help="URL of the cloud controller to authenticate users against "
                                     "(instead of --users); needs --service-secret-file")
    p.add_argument("--service-secret-file", type=Path,
                   help="file holding control's service secret (control's DATA_DIR/service.secret)")
    p.add_argument("--system-user", help="the identity aws-exec-read grants READ to [eucalypt; with --control: "
                                              "the cloud administrator's account]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_walrus)


WALRUS_DEFAULTS = {"host": "127.0.0.1", "port": 8774, "data_dir": Path("./var/walrus"), "users": None,
                   "domains": ["localhost"], "region": "us-east-1", "multipart_expiry_hours": 168.0,
                   "control": None, "service_secret_file": None, "system_user": "eucalypt"}


async def _serve_walrus(args) -> int:
    from walrus.server import WalrusConfig, WalrusServer

    settings = resolve_settings(args, WALRUS_DEFAULTS, "WALRUS")
    users = None
    if settings["control"]:
        if settings["users"] is not None or settings["service_secret_file"] is None:
            print("eucalypt walrus: --control needs --service-secret-file and excludes --users",
                  file=sys.stderr)
            return 2
        from control.client import ControlUserDirectory
        secret = settings["service_secret_file"].read_text().strip()
        users = ControlUserDirectory(settings["control"], secret)
    config = WalrusConfig(data_dir=settings["data_dir"], host=settings["host"], port=int(settings["port"]),
                          users_file=settings["users"], region=settings["region"],
                          domains=tuple(settings["domains"]),
                          upload_expiry_seconds=float(settings["multipart_expiry_hours"]) * 3600,
                          upload_sweep_interval=min(3600.0, float(settings["multipart_expiry_hours"]) * 3600 / 4),
                          system_user=settings["system_user"])
    server = WalrusServer(config, users=users)
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
    return await serve_until_signalled(server, "walrus")


def _run_walrus(args) -> int:
    from walrus.users import UsersFileError
    try:
        return run_service(_serve_walrus(args))
    except UsersFileError as exc:
        print(f"eucalypt walrus: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eucalypt walrus: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eucalypt",
        description="eucalypt: an EC2- and S3-compatible private cloud. Each subcommand runs "
                    "one service; `eucalypt SUBCOMMAND --help` explains its options.")
    parser.add_argument("--version", action="version", version=f"eucalypt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    from .up import add_parser as add_up_parser
    add_up_parser(sub)
    _walrus_parser(sub)
    from control.cli import add_parser as add_control_parsers
    add_control_parsers(sub)
    from node.cli import add_parser as add_node_parser
    add_node_parser(sub)
    from imagecache.cli import add_parser as add_imagecache_parser
    add_imagecache_parser(sub)
    from .demoimage import add_parser as add_demo_image_parser
    add_demo_image_parser(sub)
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
