"""`eucalypt node`: run the node agent.

    eucalypt node --port 8775 --data-dir DIR --control URL [--cluster NAME] [--hypervisor URI]
                  [--walrus URL ...] --service-secret-file FILE --walrus-credentials FILE
                  [--advertise-url URL] [--heartbeat-interval 5]
                  [--bridge BR --subnet CIDR [--manage-network | --no-manage-network]]
                  [--metadata-host ADDR] [--metadata-port 8776]
                  [--tunnel-ip ADDR] [--uplink DEV]     (managed network modes, issue #8)
                  [--public-interface DEV]               (elastic IPs held and announced there)

Settings: --config (TOML, keys named like the long options with underscores) < NODE_*
environment variables < flags. With --control the node registers and sends heartbeats
(registration.py). Walrus credentials: a file with `access_key = ...` /
`secret_key = ...` lines (TOML), or NODE_WALRUS_ACCESS_KEY / NODE_WALRUS_SECRET_KEY.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eucalypt.service import resolve_settings, run_service, serve_until_signalled

NODE_DEFAULTS = {"host": "127.0.0.1", "port": 8775, "data_dir": Path("./var/node"), "control": None,
                 "cluster": None, "hypervisor": "qemu:///system", "walrus": ["http://127.0.0.1:8774"],
                 "bucket": "eucalypt-images", "service_secret_file": None, "walrus_credentials": None,
                 "walrus_region": "us-east-1", "bridge": None, "cache_limit": "16G",
                 "fetch_concurrency": 8, "cores": 0, "memory_mib": 0, "disk_gb": 0, "subnet": None,
                 "manage_network": None, "metadata_host": None, "metadata_port": 8776, "advertise_url": None,
                 "heartbeat_interval": 5.0, "tunnel_ip": None, "uplink": None,
                 "public_interface": None}


def parse_bool(value) -> bool | None:
    """A boolean setting from TOML (a bool), the environment or a flag (text)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"eucalypt node: {value!r} is not a boolean (true/false)")


def parse_size(text: str | int) -> int:
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    return int(float(s[:-1] if scale != 1 else s) * scale)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "node", help="run the node controller (image cache, instances through libvirt)",
        description="Run the node agent: it fetches image chunks from Walrus into a local cache, "
                    "assembles base images and runs instances through libvirt.")
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    p.add_argument("--host", help="address to listen on [127.0.0.1]")
    p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one [8775]")
    p.add_argument("--data-dir", type=Path, help="cache, images, instances, state [./var/node]")
    p.add_argument("--control", help="URL of the cloud controller: the node registers there and sends "
                                     "heartbeats (none: the node runs standalone)")
    p.add_argument("--advertise-url", help="URL control reaches this node's API at [http://HOST:PORT]")
    p.add_argument("--heartbeat-interval", type=float,
                   help="seconds between heartbeats until control's answer sets it [5]")
    p.add_argument("--cluster", help="the cluster (availability zone) this node belongs to")
    p.add_argument("--hypervisor", help="libvirt URI [qemu:///system]; test:///default needs no daemon")
    p.add_argument("--walrus", action="append", help="Walrus (S3) URL to fetch images from; repeatable "
                                                     "(later ones are tried when earlier ones fail)")
    p.add_argument("--bucket", help="the system bucket holding image manifests and packs [eucalypt-images]")
    p.add_argument("--service-secret-file", type=Path, help="file holding the service secret shared with control")
    p.add_argument("--walrus-credentials", type=Path, help="TOML file with access_key and secret_key for Walrus")
    p.add_argument("--walrus-region", help="S3 region to sign for [us-east-1]")
    p.add_argument("--bridge", help="bridge for the instances' taps (none: instances get no NIC)")
    p.add_argument("--subnet", help="the instances' IPv4 subnet on the bridge, e.g. 10.211.0.0/24; its first "
                                    "host is the gateway (the bridge's address)")
    p.add_argument("--manage-network", action=argparse.BooleanOptionalAction, default=None,
                   help="create the bridge, run dnsmasq (DHCP) and install the nftables NAT table "
                        "[when --bridge and --subnet are given and running as root]")
    p.add_argument("--metadata-host", help="address of the instance metadata service [the gateway when the "
                                           "network is managed, else 127.0.0.1]")
    p.add_argument("--metadata-port", type=int, help="port of the instance metadata service; 0 picks a free "
                                                     "one [8776]")
    p.add_argument("--tunnel-ip", help="this host's address on the network between the nodes: the managed "
                                       "modes' VXLAN endpoint (none: no segment leaves this node)")
    p.add_argument("--uplink", help="the interface that trunks the managed modes' segments as 802.1Q VLANs "
                                    "to the other nodes of the zone, where the kernel has 802.1Q")
    p.add_argument("--public-interface", help="the interface on the public network: the elastic IPs of this "
                                              "node's instances are held there (/32) and announced by "
                                              "gratuitous ARP, so they move with their instances (none: "
                                              "the operator routes the public range to the nodes)")
    p.add_argument("--cache-limit", help="hard cap of the local image cache, e.g. 40G [16G]")
    p.add_argument("--fetch-concurrency", type=int, help="ranged GETs in flight per image [8]")
    p.add_argument("--cores", type=int, help="cores to offer (0: the host's)")
    p.add_argument("--memory-mib", type=int, help="memory to offer in MiB (0: the host's)")
    p.add_argument("--disk-gb", type=int, help="instance disk to offer in GiB (0: what the data dir's "
                                              "file system has)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_node)


def build_config(settings: dict):
    import tomllib

    if settings["service_secret_file"] is None:
        raise SystemExit("eucalypt node: --service-secret-file is required")
    secret = Path(settings["service_secret_file"]).read_text().strip()
    access = os.environ.get("NODE_WALRUS_ACCESS_KEY")
    secret_key = os.environ.get("NODE_WALRUS_SECRET_KEY")
    if settings["walrus_credentials"]:
        with open(settings["walrus_credentials"], "rb") as f:
            creds = tomllib.load(f)
        access, secret_key = creds.get("access_key", access), creds.get("secret_key", secret_key)
    if not access or not secret_key:
        raise SystemExit("eucalypt node: Walrus credentials are required (--walrus-credentials)")
    urls = settings["walrus"] if isinstance(settings["walrus"], list) else [settings["walrus"]]
    manage = parse_bool(settings["manage_network"])
    if manage and not (settings["bridge"] and settings["subnet"]):
        raise SystemExit("eucalypt node: --manage-network needs --bridge and --subnet")
    try:
        return _node_config(settings, secret, access, secret_key, urls, manage)
    except ValueError as exc:
        raise SystemExit(f"eucalypt node: {exc}") from None


def _node_config(settings, secret, access, secret_key, urls, manage):
    from .config import NodeConfig, WalrusEndpoint
    from .fetcher import FetchPolicy

    return NodeConfig(
        data_dir=Path(settings["data_dir"]), service_secret=secret,
        walrus=tuple(WalrusEndpoint(u, access, secret_key, settings["walrus_region"]) for u in urls),
        host=settings["host"], port=int(settings["port"]), control_url=settings["control"],
        cluster=settings["cluster"], bucket=settings["bucket"], hypervisor_uri=settings["hypervisor"],
        bridge=settings["bridge"], cache_limit=parse_size(settings["cache_limit"]),
        fetch=FetchPolicy(concurrency=int(settings["fetch_concurrency"])),
        cores=int(settings["cores"]) or None, memory_mib=int(settings["memory_mib"]) or None,
        disk_bytes=(int(settings["disk_gb"]) << 30) or None,
        subnet=settings["subnet"], manage_network=manage, metadata_host=settings["metadata_host"],
        metadata_port=int(settings["metadata_port"]), advertise_url=settings["advertise_url"],
        heartbeat_interval=float(settings["heartbeat_interval"]), tunnel_ip=settings["tunnel_ip"] or None,
        uplink=settings["uplink"] or None, public_interface=settings["public_interface"] or None)


async def _serve(config) -> int:
    from .server import NodeServer

    server = NodeServer(config)
    await server.start()
    print(f"node: listening on {server.url}", flush=True)  # first: scripts wait for this line
    print(f"node: metadata service on {server.metadata.url}", flush=True)
    if config.network_managed:
        print(f"node: network {config.subnet} on bridge {config.bridge} (gateway {config.gateway})", flush=True)
    print(f"node: data in {config.data_dir.resolve()}; hypervisor {config.hypervisor_uri}; "
          f"cache limit {config.cache_limit} bytes", flush=True)
    return await serve_until_signalled(server, "node")


def _run_node(args) -> int:

    from .errors import NodeError

    settings = resolve_settings(args, NODE_DEFAULTS, "NODE")
    config = build_config(settings)
    try:
        return run_service(_serve(config))
    except (OSError, NodeError) as exc:
        print(f"eucalypt node: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m node.cli node ...` (until `eucalypt node` is wired into eucalypt/cli.py)."""
    import logging

    parser = argparse.ArgumentParser(prog="eucalypt")
    add_parser(parser.add_subparsers(dest="command", metavar="SUBCOMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
