"""`eucalypt control` (run the cloud controller) and `eucalypt admin` (accounts, users,
credentials, working on control's data dir directly).

    eucalypt control --port 8773 --data-dir DIR [--walrus URL] [--host 127.0.0.1] [--config FILE]
    eucalypt admin --data-dir DIR account create NAME [--email E]
    eucalypt admin --state-dir STATE user create NAME --account ACCOUNT
    eucalypt admin --data-dir DIR credentials USER --account ACCOUNT --out DIR
    eucalypt admin --data-dir DIR user password USER --account ACCOUNT   (console password; stdin or prompt)
    eucalypt admin --data-dir DIR request list [--all] | approve ID | reject ID --reason TEXT

`--state-dir STATE` means the control data dir STATE/control (the layout of `eucalypt up`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from eucalypt.service import resolve_settings, run_service, serve_until_signalled

CONTROL_DEFAULTS = {"host": "127.0.0.1", "port": 8773, "data_dir": Path("./var/control"), "walrus": None,
                    "region": "eucalyptus", "zones": [], "public_url": None, "public_ips": [],
                    "heartbeat_interval": 5.0, "terminated_retention": 3600.0, "launch_timeout": 300.0,
                    "network_mode": "flat", "vlans": "10-4094", "group_prefix": 24, "zone_networks": [],
                    "max_nodes_per_zone": 16, "auto_public_ips": False}


def add_parser(subparsers) -> None:
    """Register the `control` and `admin` subcommands on an argparse subparsers object."""
    p = subparsers.add_parser(
        "control", help="run the cloud controller (EC2 API, accounts, credentials)",
        description="Run control, eucalypt's EC2 service. On first start it creates the cloud CA "
                    "(DATA_DIR/cloud-cert.pem, cloud-pk.pem) and the administrator (account "
                    "'eucalyptus', user 'admin'); get its credentials with `eucalypt admin credentials "
                    "admin --out DIR`. Settings: --config (TOML, keys named like the long options with "
                    "underscores) < CONTROL_* environment variables < flags.")
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    p.add_argument("--host", help="address to listen on [127.0.0.1] (env CONTROL_HOST)")
    p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one [8773] (env CONTROL_PORT)")
    p.add_argument("--data-dir", type=Path, help="where state and keys live [./var/control] (env CONTROL_DATA_DIR)")
    p.add_argument("--walrus", help="URL of Walrus, written into credentials as S3_URL [http://127.0.0.1:8774/]")
    p.add_argument("--region", help="the region's name [eucalyptus]")
    p.add_argument("--zone", action="append", dest="zones",
                   help="an availability zone (cluster); repeatable [REGIONa]")
    p.add_argument("--public-url", help="the EC2 URL to advertise [http://HOST:PORT/]")
    p.add_argument("--public-ips", action="append",
                   help="elastic IP pool: comma-separated A.B.C.D-A.B.C.E ranges or CIDRs; repeatable [none]")
    p.add_argument("--auto-public-ips", action=argparse.BooleanOptionalAction, default=None,
                   help="give every instance an address of the --public-ips pool at launch, as EC2-Classic "
                        "does (released at terminate; an elastic IP replaces it) [off]")
    p.add_argument("--network-mode", choices=["flat", "managed", "managed-novlan"],
                   help="flat: each node's own subnet; managed: a subnet slice and an L2 segment (VLAN/VXLAN) "
                        "per security group; managed-novlan: slices on one segment [flat]")
    p.add_argument("--vlans", help="managed: the segment ids groups get, FIRST-LAST [10-4094]")
    p.add_argument("--group-prefix", type=int, help="managed: the prefix length of a group's slice [24]")
    p.add_argument("--zone-network", action="append", dest="zone_networks", metavar="ZONE=CIDR",
                   help="managed: a zone's private range, cut into the groups' slices; repeatable "
                        "[172.(16+i).0.0/16 for the i-th zone]")
    p.add_argument("--max-nodes-per-zone", type=int,
                   help="managed: node gateways reserved at the start of each slice [16]")
    p.add_argument("--heartbeat-interval", type=float,
                   help="seconds between node heartbeats; a node is unreachable after 3 missed [5]")
    p.add_argument("--terminated-retention", type=float,
                   help="seconds terminated instances stay visible [3600]")
    p.add_argument("--launch-timeout", type=float,
                   help="seconds a launch waits for an unreachable node before it fails [300]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_control)
    _admin_parser(subparsers)


def _run_control(args) -> int:

    settings = resolve_settings(args, CONTROL_DEFAULTS, "CONTROL")
    try:
        return run_service(_serve(settings))
    except OSError as exc:
        print(f"eucalypt control: {exc}", file=sys.stderr)
        return 1


async def _serve(settings: dict) -> int:
    from .api.addresses import parse_pool
    from .server import ControlConfig, ControlServer

    public_ips = settings["public_ips"] or []
    public_ips = tuple([public_ips] if isinstance(public_ips, str) else public_ips)
    try:
        parse_pool(public_ips)
    except ValueError as exc:
        raise SystemExit(f"eucalypt control: --public-ips: {exc}") from None
    zones = tuple(settings["zones"] or ()) or (f"{settings['region']}a",)
    network = network_plan(settings, zones)
    auto = bool(settings["auto_public_ips"]) and str(settings["auto_public_ips"]).lower() not in ("0", "false", "no")
    if auto and not public_ips:
        raise SystemExit("eucalypt control: --auto-public-ips needs a --public-ips pool")
    config = ControlConfig(data_dir=settings["data_dir"], host=settings["host"], port=int(settings["port"]),
                           walrus_url=settings["walrus"], region=settings["region"],
                           zones=zones, public_url=settings["public_url"],
                           public_ips=public_ips, heartbeat_interval=float(settings["heartbeat_interval"]),
                           terminated_retention=float(settings["terminated_retention"]),
                           launch_timeout=float(settings["launch_timeout"]), network=network,
                           auto_public_ips=auto)
    server = ControlServer(config)
    await server.start()
    print(f"control: listening on {server.url}", flush=True)
    print(f"control: data in {config.data_dir.resolve()}", flush=True)
    print(f"control: admin credentials: eucalypt admin --data-dir {config.data_dir} credentials admin "
          f"--out DIR", flush=True)
    return await serve_until_signalled(server, "control")


def network_plan(settings: dict, zones: tuple[str, ...]):
    """The network mode's settings, checked (SystemExit says what is wrong)."""
    from .netmodes import NetworkPlan

    try:
        first, _, last = str(settings["vlans"]).partition("-")
        vlans = (int(first), int(last))
    except ValueError:
        raise SystemExit(f"eucalypt control: --vlans {settings['vlans']!r}: expected FIRST-LAST, e.g. 10-4094") \
            from None
    given = settings["zone_networks"] or []
    zone_networks = {}
    for item in [given] if isinstance(given, str) else given:
        zone, sep, cidr = str(item).partition("=")
        if not sep or not zone or not cidr:
            raise SystemExit(f"eucalypt control: --zone-network {item!r}: expected ZONE=CIDR")
        zone_networks[zone] = cidr
    try:
        return NetworkPlan.build(settings["network_mode"] or "flat", zones, vlans=vlans,
                                 group_prefix=int(settings["group_prefix"]), zone_networks=zone_networks,
                                 max_nodes_per_zone=int(settings["max_nodes_per_zone"]))
    except ValueError as exc:
        raise SystemExit(f"eucalypt control: {exc}") from None


# ---- admin ----------------------------------------------------------------------------------

def _admin_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "admin", help="manage accounts, users and credentials",
        description="Manage control's accounts, users, access keys and credentials, working on its "
                    "data dir directly (safe while control runs).")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help="control's data dir")
    where.add_argument("--state-dir", type=Path, help="the state dir of `eucalypt up` (uses STATE/control)")
    sub = p.add_subparsers(dest="what", metavar="account|user|credentials|request", required=True)

    account = sub.add_parser("account", help="accounts").add_subparsers(dest="verb", required=True)
    c = account.add_parser("create", help="create an account; prints its id")
    c.add_argument("name")
    c.add_argument("--email", default="")
    account.add_parser("list", help="list accounts")
    for verb in ("disable", "enable"):
        account.add_parser(verb, help=f"{verb} an account (all its users' keys)").add_argument("name")

    user = sub.add_parser("user", help="users and their access keys").add_subparsers(dest="verb", required=True)
    acct = argparse.ArgumentParser(add_help=False)
    acct.add_argument("--account", "-a", default="eucalyptus", help="the user's account [eucalyptus]")
    user.add_parser("create", parents=[acct], help="create a user with one access key").add_argument("name")
    user.add_parser("list", help="list users (of --account, or all)").add_argument("--account", "-a")
    for verb in ("disable", "enable"):
        user.add_parser(verb, parents=[acct], help=f"{verb} a user").add_argument("name")
    user.add_parser("password", parents=[acct],
                    help="set the user's web console password (read from stdin, or prompted twice)").add_argument("name")
    keys = user.add_parser("keys", help="access keys").add_subparsers(dest="key_verb", required=True)
    keys.add_parser("list", parents=[acct], help="list a user's keys").add_argument("name")
    keys.add_parser("create", parents=[acct], help="add an access key (at most 2)").add_argument("name")
    keys.add_parser("rotate", parents=[acct],
                    help="add a new key, deleting the oldest if there are already 2").add_argument("name")
    d = keys.add_parser("delete", parents=[acct], help="delete an access key")
    d.add_argument("name")
    d.add_argument("access_key")

    req = sub.add_parser("request", help="account requests from the web console").add_subparsers(
        dest="verb", required=True)
    req.add_parser("list", help="list pending requests").add_argument("--all", action="store_true",
                                                                       help="decided ones too")
    req.add_parser("approve", help="create the account, user and access key").add_argument("id")
    r = req.add_parser("reject", help="reject a request (the requester sees the reason)")
    r.add_argument("id")
    r.add_argument("--reason", required=True)

    cred = sub.add_parser("credentials", parents=[acct], help="write a user's credentials directory")
    cred.add_argument("name", help="user name")
    cred.add_argument("--out", type=Path, required=True)
    cred.add_argument("--ec2-url", help="EC2_URL [what the running control announced]")
    cred.add_argument("--s3-url", help="S3_URL [what the running control announced]")
    p.set_defaults(func=_run_admin)


def _run_admin(args) -> int:
    from .console.passwords import WeakPassword
    from .console.requests import RequestError
    from .datadir import open_data_dir
    from .identity import IdentityError

    if args.data_dir is not None:
        path = args.data_dir
    elif args.state_dir is not None:
        path = args.state_dir / "control"
    else:
        print("eucalypt admin: give --data-dir DIR or --state-dir DIR", file=sys.stderr)
        return 2
    data = open_data_dir(path)
    try:
        return _admin(args, data)
    except (IdentityError, RequestError, WeakPassword) as exc:
        print(f"eucalypt admin: {exc}", file=sys.stderr)
        return 1
    finally:
        data.close()


def _admin(args, data) -> int:
    from . import identity as ids
    from .credentials import write_credentials

    store, now = data.store, time.time()
    if args.what == "account":
        if args.verb == "create":
            account = store.write_sync(lambda t: ids.create_account(t, args.name, now=now, email=args.email))
            print(f"{account.id}\t{account.name}")
        elif args.verb == "list":
            with store.read() as txn:
                for a in ids.list_accounts(txn):
                    print(f"{a.id}\t{a.name}\t{'enabled' if a.enabled else 'disabled'}")
        else:
            store.write_sync(lambda t: ids.set_account_enabled(t, args.name, args.verb == "enable"))
        return 0

    def account_id(txn) -> str:
        return ids.account_by_name(txn, args.account).id

    if args.what == "request":
        return _admin_request(args, data)
    if args.what == "credentials":
        out = write_credentials(data, args.account, args.name, args.out, ec2_url=args.ec2_url, s3_url=args.s3_url)
        print(f"credentials for {args.account}/{args.name} in {out}")
        return 0
    if args.verb == "create":
        user, key = store.write_sync(lambda t: ids.create_user(t, account_id(t), args.name, now=now))
        print(f"{user.name}\t{key.access_key}\t{key.secret_key}")
    elif args.verb == "password":
        _set_password(data, args.account, args.name)
    elif args.verb == "list":
        with store.read() as txn:
            accounts = {a.id: a.name for a in ids.list_accounts(txn)}
            only = account_id(txn) if args.account else None
            for u in ids.list_users(txn, only):
                keys = ",".join(u.access_keys)
                print(f"{accounts.get(u.account_id)}\t{u.name}\t{'enabled' if u.enabled else 'disabled'}\t{keys}")
    elif args.verb in ("disable", "enable"):
        store.write_sync(lambda t: ids.set_user_enabled(t, account_id(t), args.name, args.verb == "enable"))
    elif args.key_verb == "list":
        with store.read() as txn:
            for k in ids.user_keys(txn, ids.get_user(txn, account_id(txn), args.name)):
                print(f"{k.access_key}\t{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(k.created))}")
    elif args.key_verb in ("create", "rotate"):
        if args.key_verb == "create":
            key, dropped = store.write_sync(
                lambda t: ids.create_access_key(t, account_id(t), args.name, now=now)), None
        else:
            key, dropped = store.write_sync(lambda t: ids.rotate_access_key(t, account_id(t), args.name, now=now))
        print(f"{key.access_key}\t{key.secret_key}")
        if dropped:
            print(f"deleted the oldest key {dropped}", file=sys.stderr)
    elif args.key_verb == "delete":
        store.write_sync(lambda t: ids.delete_access_key(t, account_id(t), args.name, args.access_key))
    return 0


def _read_password() -> str:
    import getpass
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("console password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("eucalypt admin: the two passwords differ")
    return first


def _set_password(data, account_name: str, user_name: str) -> None:
    from . import identity as ids
    from .console import passwords

    with data.store.read() as txn:  # the user must exist before we ask for anything
        ids.get_user(txn, ids.account_by_name(txn, account_name).id, user_name)
    password = _read_password()
    passwords.check_strength(password, names=(account_name, user_name))
    encoded = passwords.hash_password(password)
    data.store.write_sync(lambda t: passwords.set_hash(
        t, ids.account_by_name(t, account_name).id, user_name, encoded, now=time.time()))
    print(f"console password of {account_name}/{user_name} set")


def _admin_request(args, data) -> int:
    from .console import requests

    store, now, by = data.store, time.time(), "cli"
    if args.verb == "list":
        with store.read() as txn:
            for r in requests.list_requests(txn, None if args.all else "pending"):
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["created"]))
                print(f"{r['id']}\t{r['state']}\t{r['account']}\t{r['user']}\t{r['email']}\t{when}"
                      + (f"\t{r['reason']}" if r["reason"] else ""))
    elif args.verb == "approve":
        r = store.write_sync(lambda t: requests.approve(t, args.id, now=now, decided_by=by))
        print(f"approved {r['id']}: account {r['account']} ({r['account_id']}), user {r['user']}")
    else:
        r = store.write_sync(lambda t: requests.reject(t, args.id, args.reason, now=now, decided_by=by))
        print(f"rejected {r['id']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `control` or `admin` on their own (python -m control.cli ...)."""
    import logging

    parser = argparse.ArgumentParser(prog="eucalypt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
