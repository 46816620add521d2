"""`eucalypt up`: the all-in-one cloud -- control, Walrus and one node on this host,
supervised by one process, with the administrator's credentials written ready to use.

    STATE/control/       control's data dir (cloud CA, accounts, service.secret)
    STATE/walrus/        Walrus's data dir (users come from control)
    STATE/node/          the node's data dir; walrus-credentials.toml (the admin's key, 0600)
    STATE/credentials/admin/   eucarc, iamrc, cert.pem, pk.pem, ... (control/credentials.py)
    STATE/logs/NAME.log  each service's output
    STATE/run/NAME.pid   each running service's PID; up.pid, up.lock for the supervisor
    STATE/hostsetup/     the libvirt daemons node.hostsetup started (stopped again on exit)

Order matters: control first (on first start it creates the CA, the administrator and
the service secret everything else authenticates with), then Walrus (it authenticates
users against control), then the node (it reads images from Walrus as the administrator,
who owns the system bucket, and registers with control). A second `eucalypt up` on the
same state dir finds all of that and creates nothing new.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from .supervisor import ChildSpec, RestartPolicy, StartFailed, Stopped, Supervisor

ADMIN_CREDENTIALS = Path("credentials") / "admin"
NODE_WALRUS_CREDENTIALS = "walrus-credentials.toml"
HOSTSETUP_DIR = "hostsetup"
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}   # listen on all -> reach via


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "up", help="run the whole cloud on this host: control, Walrus and a node",
        description="Start control (EC2, port 8773), Walrus (S3, port 8774) and a node (port 8775) on "
                    "this host, restart any that dies, and stop them all on Ctrl-C or SIGTERM. On first "
                    "start it writes the administrator's credentials to STATE/credentials/admin/ "
                    "(`source STATE/credentials/admin/eucarc`). A port of 0 picks a free one.")
    p.add_argument("--state-dir", type=Path, default=Path("./var"), help="where everything lives [./var]")
    p.add_argument("--host", default="127.0.0.1", help="address the services listen on [127.0.0.1]")
    p.add_argument("--hypervisor", help="libvirt URI for the node [qemu:///system, set up when possible; "
                                        "else the test driver, with a warning]")
    p.add_argument("--no-install", action="store_true",
                   help="never install Debian packages for the hypervisor (only done as root)")
    p.add_argument("--control-port", type=int, default=8773, help="control's (EC2) port [8773]")
    p.add_argument("--walrus-port", type=int, default=8774, help="Walrus's (S3) port [8774]")
    p.add_argument("--node-port", type=int, default=8775, help="the node's port [8775]")
    p.add_argument("--metadata-port", type=int,
                   help="port of the node's instance metadata service [the node's default, 8776]")
    p.add_argument("--subnet", default="10.211.0.0/24",
                   help="the instances' subnet (used as root with a real hypervisor) [10.211.0.0/24]")
    p.add_argument("--bridge", default="eubr0",
                   help="the instances' bridge (used as root with a real hypervisor) [eubr0]")
    p.add_argument("--network-mode", choices=["flat", "managed", "managed-novlan"], default="flat",
                   help="flat: one subnet, rules per instance; managed: a subnet slice and an L2 segment per "
                        "security group; managed-novlan: slices on one segment [flat]")
    p.add_argument("--public-ips", help="an elastic IP pool for control (A.B.C.D-A.B.C.E ranges or CIDRs, "
                                        "comma-separated) [none]")
    p.add_argument("--max-fast-crashes", type=int, default=5,
                   help="give up when a service crashes this many times in a row, each soon after "
                        "starting [5]")
    p.set_defaults(func=run_up)


# ---- pieces ---------------------------------------------------------------------------------

def free_port(host: str) -> int:
    """A port nobody listens on right now (the supervisor fixes every port before starting
    anything: control needs Walrus's URL before Walrus runs, and a restarted service must
    come back where the others expect it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_for(host: str, port: int) -> str:
    """The URL clients use: a wildcard listen address is reached through loopback."""
    host = WILDCARD_HOSTS.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def admin_key(control_dir: Path) -> tuple[str, str]:
    """The administrator's first access key (the one control's image cache uses to write
    the system bucket), read from control's store."""
    from control.datadir import open_data_dir
    from control.identity import ADMIN_ACCOUNT, ADMIN_USER, account_by_name, get_user, user_keys

    data = open_data_dir(control_dir)
    try:
        with data.store.read() as txn:
            account = account_by_name(txn, ADMIN_ACCOUNT)
            keys = user_keys(txn, get_user(txn, account.id, ADMIN_USER))
    finally:
        data.close()
    if not keys:
        raise SystemExit(f"eucalypt up: the administrator has no access key; create one with "
                         f"`eucalypt admin --data-dir {control_dir} user keys create {ADMIN_USER}`")
    return keys[0].access_key, keys[0].secret_key


def write_node_credentials(path: Path, access_key: str, secret_key: str) -> None:
    from control.ca import write_private
    # A JSON string of printable ASCII is a valid TOML basic string.
    text = f"access_key = {json.dumps(access_key)}\nsecret_key = {json.dumps(secret_key)}\n"
    if not path.exists() or path.read_text() != text:
        write_private(path, text.encode(), mode=0o600)


def _eucarc_urls(eucarc: Path) -> dict[str, str]:
    found = {}
    try:
        for line in eucarc.read_text().splitlines():
            for name in ("EC2_URL", "S3_URL"):
                if line.startswith(f"export {name}="):
                    found[name] = line.split("=", 1)[1].strip()
    except OSError:
        pass
    return found


def ensure_admin_credentials(control_dir: Path, out: Path, ec2_url: str, s3_url: str) -> str:
    """Write the administrator's credentials directory unless it is there already with
    these endpoints; "written", "rewritten" (endpoints changed) or "kept". Rewriting
    issues a fresh certificate but never a new key."""
    from control.credentials import write_credentials
    from control.datadir import open_data_dir
    from control.identity import ADMIN_ACCOUNT, ADMIN_USER

    current = _eucarc_urls(out / "eucarc")
    if current == {"EC2_URL": ec2_url, "S3_URL": s3_url} and (out / "pk.pem").exists():
        return "kept"
    data = open_data_dir(control_dir)
    try:
        write_credentials(data, ADMIN_ACCOUNT, ADMIN_USER, out, ec2_url=ec2_url, s3_url=s3_url)
    finally:
        data.close()
    return "rewritten" if current else "written"


def node_options() -> set[str]:
    """The long options `eucalypt node` accepts (the node grows flags; pass only known ones)."""
    from node.cli import add_parser as add_node_parser
    parser = argparse.ArgumentParser()
    add_node_parser(parser.add_subparsers())
    node = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["node"]
    return {s for action in node._actions for s in action.option_strings}


def _lock(run_dir: Path):
    """Hold STATE/run/up.lock for the supervisor's life: one `eucalypt up` per state dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / "up.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        try:
            other = (run_dir / "up.pid").read_text().strip()
        except OSError:
            other = "?"
        raise SystemExit(f"eucalypt up: another `eucalypt up` (pid {other}) runs on this state dir") from None
    (run_dir / "up.pid").write_text(f"{os.getpid()}\n")
    return lock


def _leftover(run_dir: Path, name: str, data_dir: Path) -> int | None:
    """A service from an earlier `eucalypt up` that is still running on our data dir."""
    try:
        pid = int((run_dir / f"{name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(data_dir).encode() in cmdline and name.encode() in cmdline else None


# ---- the command ----------------------------------------------------------------------------

def _say(text: str) -> None:
    print(f"eucalypt up: {text}", flush=True)


def _loud(text: str) -> str:
    bar = "!" * 78
    return f"{bar}\n!! WARNING: {text}\n{bar}"


def run_up(args) -> int:
    state = args.state_dir.resolve()
    run_dir, log_dir = state / "run", state / "logs"
    lock = _lock(run_dir)
    try:
        return _up(args, state, run_dir, log_dir)
    finally:
        (run_dir / "up.pid").unlink(missing_ok=True)
        lock.close()


def _up(args, state: Path, run_dir: Path, log_dir: Path) -> int:
    from node.hostsetup import choose_hypervisor, stop_started_daemons

    dirs = {name: state / name for name in ("control", "walrus", "node")}
    for name, data_dir in dirs.items():
        data_dir.mkdir(parents=True, exist_ok=True)
        pid = _leftover(run_dir, name, data_dir)
        if pid is not None:
            _say(f"a {name} from an earlier `eucalypt up` still runs on {data_dir} (pid {pid}); stop it first")
            return 1
    host = args.host
    ports = {"control": args.control_port, "walrus": args.walrus_port, "node": args.node_port}
    ports = {name: port or free_port(host) for name, port in ports.items()}
    urls = {name: url_for(host, port) for name, port in ports.items()}
    wildcard = host in WILDCARD_HOSTS
    secret_file = dirs["control"] / "service.secret"
    node_creds = dirs["node"] / NODE_WALRUS_CREDENTIALS
    cli = (sys.executable, "-m", "eucalypt.cli")

    supervisor = Supervisor(run_dir, log_dir, say=_say,
                            policy=RestartPolicy(max_fast_crashes=max(1, args.max_fast_crashes)))
    supervisor.install_signal_handlers()
    hostsetup_dir = state / HOSTSETUP_DIR
    is_root = os.geteuid() == 0
    try:
        choice = choose_hypervisor(args.hypervisor, install=is_root and not args.no_install, log=_say,
                                   state_dir=hostsetup_dir)
        if supervisor.stopping:
            raise Stopped()

        supervisor.start(ChildSpec("control", (
            *cli, "control", "--host", host, "--port", str(ports["control"]), "--data-dir", str(dirs["control"]),
            "--walrus", urls["walrus"], *(["--public-url", urls["control"]] if wildcard else []),
            "--network-mode", args.network_mode, *(["--public-ips", args.public_ips] if args.public_ips else [])),
            urls["control"] + "_eucalypt/health"))
        supervisor.start(ChildSpec("walrus", (
            *cli, "walrus", "--host", host, "--port", str(ports["walrus"]), "--data-dir", str(dirs["walrus"]),
            "--control", urls["control"], "--service-secret-file", str(secret_file)),
            urls["walrus"] + "_eucalypt/health"))

        write_node_credentials(node_creds, *admin_key(dirs["control"]))
        creds_dir = state / ADMIN_CREDENTIALS
        how = ensure_admin_credentials(dirs["control"], creds_dir, urls["control"], urls["walrus"])

        known = node_options()
        node_argv = [*cli, "node", "--host", host, "--port", str(ports["node"]), "--data-dir", str(dirs["node"]),
                     "--control", urls["control"], "--service-secret-file", str(secret_file),
                     "--walrus", urls["walrus"].rstrip("/"), "--walrus-credentials", str(node_creds),
                     "--hypervisor", choice.uri]
        if wildcard and "--advertise-url" in known:   # control must not be told http://0.0.0.0:...
            node_argv += ["--advertise-url", urls["node"].rstrip("/")]
        real = not choice.uri.startswith("test://")
        if is_root and real:
            for flag, value in (("--bridge", args.bridge), ("--subnet", args.subnet)):
                if flag in known:
                    node_argv += [flag, value]
        if real and choice.domain_type and "--domain-type" in known:
            node_argv += ["--domain-type", choice.domain_type]
        if args.metadata_port is not None and "--metadata-port" in known:
            node_argv += ["--metadata-port", str(args.metadata_port)]
        node_env = {"EUCALYPT_DOMAIN_TYPE": choice.domain_type} if real and choice.domain_type else {}
        supervisor.start(ChildSpec("node", tuple(node_argv), urls["node"] + "_eucalypt/health", node_env))

        _ready(state, urls, choice, creds_dir, how, log_dir)
        code = supervisor.run()
    except Stopped:
        _say("stopping")
        supervisor.stop_all()
        code = 0
    except StartFailed as exc:
        _say(str(exc))
        supervisor.stop_all()
        code = 1
    except BaseException:
        supervisor.stop_all()
        raise
    finally:
        stopped = stop_started_daemons(hostsetup_dir)
        if stopped:
            _say(f"stopped {', '.join(stopped)} (started for this cloud)")
    _say("stopped" if code == 0 else f"exiting with status {code}")
    return code


def _ready(state: Path, urls: dict, choice, creds_dir: Path, how: str, log_dir: Path) -> None:
    hypervisor = choice.uri + (f", domain type {choice.domain_type}" if choice.domain_type else "")
    creds_note = {"written": "written now", "rewritten": "rewritten for the new endpoints",
                  "kept": "as before"}[how]
    # The fallback warning again, where it cannot scroll away unseen.
    warning = _loud(choice.warning) + "\n" if choice.warning else ""
    print(f"""\
eucalypt up: ready
  EC2 (control)  {urls['control']}
  S3 (Walrus)    {urls['walrus']}
  node           {urls['node']}  (hypervisor {hypervisor})
  web console    {urls['control'].rstrip('/')}/console/  (admin password: eucalypt admin --state-dir {state} user password admin)
  credentials    {creds_dir}/  (account eucalyptus, user admin; {creds_note})
  logs           {log_dir}/
  state          {state}/
To use the cloud:
  source {creds_dir}/eucarc
  aws --endpoint-url $EC2_URL ec2 describe-availability-zones
{warning}Ctrl-C stops it.""", flush=True)


__all__ = ["add_parser", "run_up"]
