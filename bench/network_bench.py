"""Network benchmark (issue #8): how long a security-group rule change takes to be enforced
on every node, and what enforcing the rules costs a bulk TCP transfer between two
instances on one node.

    sudo .venv/bin/python bench/network_bench.py [--instances 500] [--updates 20] [--mib 1024] [--reps 3]

Everything runs inside network namespaces this bench creates and deletes at the end (also
on errors): one "cloud" namespace holding a real `eucalypt control` + Walrus and two real
`eucalypt node` processes on libvirt's test:///default, each node managing its own bridge
and subnet there, so every policy is really applied with nft (the nodes' health reports
"enforced"); and two guest namespaces joined to node 1's bridge by veths whose node ends
carry two instances' tap names and whose guest ends carry their MACs and private IPs --
what qemu's taps would be (as in tests/node/test_node_firewall.py). No packet is sent to
an address outside these namespaces; every process started is stopped by its PID.

1. Rule update latency: N times AuthorizeSecurityGroupIngress / RevokeSecurityGroupIngress
   (alternating) through boto3 -> until BOTH nodes' GET /_eucalypt/health report a
   policy_version newer than before the call (a node sets it after a successful nft
   apply). p50/p99, and the ratio to a DescribeRegions round trip in the same run.
2. Throughput guest A -> guest B (Python sockets, one connection, --mib MiB): with no
   filter table on the bridge (what a node has before any policy) and with the node's
   policy applied (a rule of the instances' group admits the port; per-instance chains
   reached by verdict maps, conntrack). Interleaved, --reps times each, median; the ratio
   (target >= 0.9x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bundle-tools", ROOT / "tests"):
    sys.path.insert(0, str(p))

TARGET_RATIO = 0.9
GROUPS = 4
PORT = 5001                      # the transfer's port; each group admits it from its own members
TOGGLE_PORT = 6000               # the rule the latency loop authorizes and revokes
SUBNETS = ("10.231.0.0/22", "10.232.0.0/22")  # room for 500 instances on either node
BATCH = 125


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.returncode} {result.stderr}")
    return result.stdout


# ---- the outer process: namespaces, created and deleted here -------------------------------

def outer(args: argparse.Namespace) -> int:
    missing = [t for t in ("ip", "nft", "dnsmasq") if shutil.which(t) is None]
    if missing:
        print(f"network_bench: needs {', '.join(missing)} (apt-get install iproute2 nftables dnsmasq-base)")
        return 2
    tag = secrets.token_hex(3)
    cloud_ns, guest_a, guest_b = f"eubc-{tag}", f"euga-{tag}", f"eugb-{tag}"
    made: list[str] = []
    try:
        for ns in (cloud_ns, guest_a, guest_b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        inner = subprocess.run(["ip", "netns", "exec", cloud_ns, sys.executable, __file__, "--inner", tag,
                                *sys.argv[1:]], cwd=ROOT)
        return inner.returncode
    finally:
        for ns in made:
            for pid in sh("ip", "netns", "pids", ns, check=False).split():  # only what ran in our namespaces
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)


# ---- the inner process: runs in the cloud namespace -----------------------------------------

RECEIVE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); view = memoryview(buf); total = 0
started = time.perf_counter()
while True:
    n = c.recv_into(view)
    if not n:
        break
    total += n
print(total, time.perf_counter() - started, flush=True)
"""

SEND = """
import socket, sys
host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
chunk = b"\\xa5" * (1 << 20)
for _ in range(mib):
    s.sendall(chunk)
s.close()
"""


def transfer(guest_a: str, guest_b: str, dst_ip: str, mib: int) -> float:
    """MiB/s of one connection A -> B, timed by the receiver (first byte accepted -> EOF)."""
    receiver = subprocess.Popen(["ip", "netns", "exec", guest_b, sys.executable, "-c", RECEIVE, str(PORT)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", guest_a, sys.executable, "-c", SEND, dst_ip, str(PORT), str(mib)],
                       check=True, timeout=600)
        total, seconds = receiver.stdout.readline().split()
        receiver.wait(60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    if int(total) != mib << 20:
        raise RuntimeError(f"received {total} bytes of {mib << 20}")
    return mib / float(seconds)


def inner(args: argparse.Namespace) -> int:
    from controltest import create_user, ec2_client, register_image, start_cloud, user_environment
    from walrustest import start_service
    from node.client import NodeClient

    tag = args.inner
    guest_a, guest_b = f"euga-{tag}", f"eugb-{tag}"
    bridges = (f"eubr{tag}1", f"eubr{tag}2")
    per_node = args.instances  # capacity: either node could take all of them
    with tempfile.TemporaryDirectory(prefix="network-bench-") as d:
        tmp = args.keep or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        cloud = start_cloud(tmp)
        nodes = []
        try:
            user = create_user(cloud.control_dir, "bench", "user")
            env = user_environment(cloud.control_dir, "bench", "user", tmp / "creds")
            ec2 = ec2_client(cloud.control.url, user)
            image = tmp / "bench.img"
            image.write_bytes(b"\xa5" * (1 << 20))
            image_id = register_image(ec2, env, image, tmp / "bundle", "bench-images", name="bench image")
            admin_env = user_environment(cloud.control_dir, "eucalyptus", "admin", tmp / "admin")
            creds = tmp / "walrus-credentials.toml"
            creds.write_text(f'access_key = "{admin_env["AWS_ACCESS_KEY_ID"]}"\n'
                             f'secret_key = "{admin_env["AWS_SECRET_ACCESS_KEY"]}"\n')
            secret_file = cloud.control_dir / "service.secret"
            secret = secret_file.read_text().strip()
            for i, (bridge, subnet) in enumerate(zip(bridges, SUBNETS), start=1):
                nodes.append(start_service("node", tmp / f"node{i}", [
                    "--control", cloud.control.url, "--service-secret-file", str(secret_file),
                    "--walrus", cloud.walrus.url, "--walrus-credentials", str(creds),
                    "--hypervisor", "test:///default", "--bridge", bridge, "--subnet", subnet,
                    "--manage-network", "--metadata-port", "0",
                    "--cores", str(per_node), "--memory-mib", str(per_node * 256), "--disk-gb", str(per_node * 5),
                    "--heartbeat-interval", "5"], timeout=60))

            def health(node) -> dict:
                import urllib.request
                with urllib.request.urlopen(node.url + "/_eucalypt/health", timeout=10) as reply:
                    return json.loads(reply.read())

            def wait_for(what: str, check, timeout: float, interval: float = 0.5):
                deadline = time.monotonic() + timeout
                while True:
                    value = check()
                    if value:
                        return value
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"timed out waiting for {what}")
                    time.sleep(interval)

            def free_small() -> int:
                zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
                return sum(int(z["State"].split("/")[0]) for z in zones if z["ZoneName"] == "|- m1.small")

            wait_for("both nodes' capacity", lambda: free_small() >= 2 * per_node, 90)

            groups = []
            for g in range(GROUPS):
                gid = ec2.create_security_group(GroupName=f"bench{g}", Description=f"bench group {g}")["GroupId"]
                ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[{
                    "IpProtocol": "tcp", "FromPort": PORT, "ToPort": PORT, "UserIdGroupPairs": [{"GroupId": gid}]}])
                groups.append(gid)
            started = time.perf_counter()
            launched = 0
            while launched < args.instances:
                n = min(BATCH, args.instances - launched)
                ec2.run_instances(ImageId=image_id, MinCount=n, MaxCount=n, InstanceType="m1.small",
                                  SecurityGroupIds=[groups[(launched // BATCH) % GROUPS]])
                launched += n

            def running() -> int:
                pages = ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
                return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])

            wait_for(f"{args.instances} instances running", lambda: running() >= args.instances, 900, 2)
            print(f"{args.instances} instances in {GROUPS} groups running after "
                  f"{time.perf_counter() - started:.1f} s", flush=True)

            async def node_instances(url: str) -> list[dict]:
                async with NodeClient(url, secret) as client:
                    return await client.instances()

            placed = [asyncio.run(node_instances(n.url)) for n in nodes]
            print("placement: " + ", ".join(f"node {i + 1}: {len(p)}" for i, p in enumerate(placed)), flush=True)

            def settled() -> list[int] | None:
                """Both nodes on the same version, and it enforced."""
                hs = [health(n) for n in nodes]
                versions = [h["policy_version"] for h in hs]
                return versions if len(set(versions)) == 1 and versions[0] > 0 else None

            wait_for("both nodes on one policy version", settled, 120)
            hs = [health(n) for n in nodes]
            enforced = [h.get("network") is not None for h in hs]  # a managed network: policies applied by nft
            rules = [len(sh("nft", "list", "table", "bridge", f"eucalypt_{b}").splitlines()) for b in bridges]

            # 1. Rule update latency -------------------------------------------------------
            toggle = {"IpProtocol": "tcp", "FromPort": TOGGLE_PORT, "ToPort": TOGGLE_PORT,
                      "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}

            def change(i: int, gid: str) -> None:
                if i % 2 == 0:
                    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[toggle])
                else:
                    ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[toggle])

            latencies, calls, first = [], [], []
            for i in range(args.updates):
                before = wait_for("both nodes settled", settled, 60, 0.05)[0]
                t0 = time.perf_counter()
                change(i, groups[0])
                calls.append(time.perf_counter() - t0)
                seen: dict[int, float] = {}
                while len(seen) < len(nodes):
                    for k, n in enumerate(nodes):
                        if k not in seen and health(n)["policy_version"] > before:
                            seen[k] = time.perf_counter() - t0
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError(f"update {i}: nodes {sorted(seen)} applied, before {before}")
                    time.sleep(0.005)
                latencies.append(max(seen.values()))
                first.append(min(seen.values()))
            # reference: nft itself loading the same ruleset both nodes hold (in our namespace)
            ruleset = tmp / "ruleset.nft"
            ruleset.write_text("flush ruleset\n" + sh("nft", "list", "ruleset"))
            ruleset_lines = len(ruleset.read_text().splitlines())
            nft_load = []
            for _ in range(5):
                t0 = time.perf_counter()
                sh("nft", "-f", str(ruleset))
                nft_load.append(time.perf_counter() - t0)
            regions = []
            for _ in range(30):
                t0 = time.perf_counter()
                ec2.describe_regions()
                regions.append(time.perf_counter() - t0)

            # 2. Throughput on node 1 --------------------------------------------------------
            by_id = {}
            for page in ec2.get_paginator("describe_instances").paginate():
                for r in page["Reservations"]:
                    for inst in r["Instances"]:
                        by_id[inst["InstanceId"]] = (inst["PrivateIpAddress"],
                                                     {g["GroupId"] for g in inst["SecurityGroups"]})
            on_node1 = [rec for rec in placed[0] if rec.get("tap")]
            same = [rec for rec in on_node1 if groups[0] in by_id[rec["instance_id"]][1]]
            if len(same) < 2:  # any two sharing a group will do
                first = by_id[on_node1[0]["instance_id"]][1]
                same = [on_node1[0]] + [r for r in on_node1[1:] if by_id[r["instance_id"]][1] & first][:1]
            a, b = same[0], same[1]
            ips = {g: by_id[rec["instance_id"]][0] for g, rec in (("A", a), ("B", b))}
            gateway = SUBNETS[0].split("/")[0].rsplit(".", 1)[0] + ".1"
            for g, ns, rec in (("A", guest_a, a), ("B", guest_b, b)):
                peer = f"g{g}{tag}"
                sh("ip", "link", "add", rec["tap"], "type", "veth", "peer", "name", peer)
                sh("ip", "link", "set", peer, "netns", ns)
                sh("ip", "-n", ns, "link", "set", peer, "name", "eth0")
                sh("ip", "link", "set", rec["tap"], "master", bridges[0], "up")
                sh("ip", "-n", ns, "link", "set", "eth0", "address", rec["mac"], "up")
                sh("ip", "-n", ns, "addr", "add", f"{ips[g]}/22", "dev", "eth0")
                sh("ip", "-n", ns, "route", "add", "default", "via", gateway)

            def restore_policy() -> None:
                """A rule change on the last group: every node re-applies its whole ruleset."""
                before = wait_for("both nodes settled", settled, 60, 0.05)[0] if settled() else health(nodes[0])[
                    "policy_version"]
                change(restore_policy.count, groups[-1])
                restore_policy.count += 1
                wait_for("the policy re-applied", lambda: all(health(n)["policy_version"] > before for n in nodes),
                         60, 0.05)
            restore_policy.count = 0

            table = f"eucalypt_{bridges[0]}"
            without, with_rules = [], []
            for rep in range(args.reps):
                sh("nft", "delete", "table", "bridge", table)  # node 1 as before any policy: nothing filtered
                without.append(transfer(guest_a, guest_b, ips["B"], args.mib))
                restore_policy()
                assert table in sh("nft", "list", "tables")
                with_rules.append(transfer(guest_a, guest_b, ips["B"], args.mib))
                print(f"  rep {rep + 1}: without rules {without[-1]:.0f} MiB/s, with rules {with_rules[-1]:.0f} MiB/s",
                      flush=True)
            # the rules really filter: a port no group admits is dropped between A and B
            blocked = subprocess.run(["ip", "netns", "exec", guest_a, sys.executable, "-c",
                                      "import socket,sys; socket.create_connection((sys.argv[1], 7999), timeout=2)",
                                      ips["B"]], capture_output=True, text=True, timeout=30)
            dropped = "timed out" in blocked.stderr
        finally:
            for n in nodes:
                n.stop()
            cloud.stop()

    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    r50 = statistics.median(regions)
    print(f"nodes: 2 ({'nft enforced' if all(enforced) else 'network managed: ' + str(enforced)}), "
          f"bridge filter tables of {rules[0]} and {rules[1]} lines")
    print(f"rule update latency (Authorize/Revoke -> applied on both nodes), {args.updates} updates, "
          f"{args.instances} instances: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print(f"  of which the Authorize/Revoke call itself: p50 {statistics.median(calls) * 1000:.0f} ms; "
          f"first node applied: p50 {statistics.median(first) * 1000:.0f} ms; "
          f"nft -f of both nodes' rulesets at once ({ruleset_lines} lines): p50 {statistics.median(nft_load) * 1000:.0f} ms")
    print(f"DescribeRegions (reference, same server): p50 {r50 * 1000:.1f} ms; "
          f"ratio p50 {p50 / r50:.1f}x, p99 {p99 / r50:.1f}x")
    w, r = statistics.median(without), statistics.median(with_rules)
    print(f"throughput guest A -> guest B on node 1, {args.mib} MiB, median of {args.reps}: "
          f"without rules {w:.0f} MiB/s, with rules {r:.0f} MiB/s, ratio {r / w:.2f}x")
    print(f"  (a port no rule admits, A -> B: {'dropped' if dropped else 'NOT dropped: ' + blocked.stderr[-200:]})")
    print(f"target throughput with rules >= {TARGET_RATIO}x: {'met' if r / w >= TARGET_RATIO else 'MISSED'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, state)")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args)
    if os.geteuid() != 0:
        # `make bench` as a normal user runs the other benchmarks; say loudly what was not run.
        print("network_bench: SKIPPED, not run: it must run as root (it creates network namespaces, bridges "
              "and nft tables): sudo .venv/bin/python bench/network_bench.py")
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
