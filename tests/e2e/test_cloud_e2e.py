"""The mission end to end: `eucalypt up`, the demo guest bundled, uploaded and registered
with the standard tools, run with a key pair and user data, booted for real (qemu through
libvirt), its console showing what it read from the metadata service; a second launch
moving no chunk bytes, whose pings to the first are dropped by security groups until a
rule lets them through; control killed with -9 and the instance still there after.

Everything runs inside a network namespace this test creates (only its loopback and the
node's bridge exist there: nothing can route off the machine). The demo guest is built
outside it first, since that downloads Debian packages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from walrustest import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WALKTHROUGH = ROOT / "demo" / "walkthrough.sh"

pytestmark = pytest.mark.e2e


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, libvirtd)"
    for tool in ("ip", "qemu-system-x86_64", "dnsmasq", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0:
        return "a libvirtd is already running on this host; the test needs its own inside its namespace"
    return None


class Namespace:
    """A network namespace with only loopback; every command of the test runs inside it."""

    def __init__(self) -> None:
        self.name = f"eut-e2e-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def argv(self, *cmd) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, cmd)]

    def run(self, *cmd, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*cmd), env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        for pid in self.pids():  # whatever we started in there and is still alive (qemu, dnsmasq)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _environment(state: Path) -> dict[str, str]:
    """What `source STATE/credentials/admin/eucarc` gives, plus the venv on PATH."""
    out = subprocess.run(["bash", "-c", f"source {state}/credentials/admin/eucarc && env -0"],
                         capture_output=True, check=True).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    env["PATH"] = f"{BIN}:{env.get('PATH', os.environ.get('PATH', ''))}"
    return env


def _demo_lines(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        if line.startswith("DEMO: "):
            for pair in line[6:].split():
                key, _, value = pair.partition("=")
                found[key] = value
    return found


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _openssh_public(pem_path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(f"E2E SKIPPED: {why}")
    out = tmp_path_factory.mktemp("demo-image")
    result = subprocess.run([BIN / "eucalypt", "demo-image", out], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"eucalypt demo-image failed:\n{result.stderr[-4000:]}")
    return out




@pytest.mark.parametrize("mode", ["flat", "managed"])
def test_bundle_register_run_boot_end_to_end(demo_images, tmp_path, mode):
    """In managed mode the two instances' groups ("default", "probe") are two segments with
    subnet slices of their own: the guests' DHCP, metadata and the probe's pings cross
    the node's routing between them (and the kill -9 of step 6 is the flat run's alone)."""
    ns = Namespace()
    state = tmp_path / "state"
    up = None
    up_log = open(tmp_path / "up.log", "w")
    try:
        up = subprocess.Popen(ns.argv(BIN / "eucalypt", "up", "--state-dir", state, "--network-mode", mode),
                              stdout=up_log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

        def ready():
            if up.poll() is not None:
                raise AssertionError(f"eucalypt up exited {up.returncode}:\n{(tmp_path / 'up.log').read_text()}")
            return (state / "credentials" / "admin" / "eucarc").exists() and ns.run(
                "curl", "-sf", "http://127.0.0.1:8775/_eucalypt/health", check=False).returncode == 0
        wait_for(ready, 240, "eucalypt up to be ready", 1)
        log_text = (tmp_path / "up.log").read_text()
        assert "test:///" not in log_text, f"no real hypervisor was set up:\n{log_text}"
        env = _environment(state)

        def ec2(*args, check=True):
            result = ns.run("aws", "--endpoint-url", env["EC2_URL"], "ec2", *args, "--output", "json", env=env,
                            check=check)
            return json.loads(result.stdout) if check and result.stdout.strip() else result

        # Steps 2-4: bundle, upload, register (eki, eri, emi), key pair, run with user data,
        # running, console shows marker + instance id + public key + token.
        token = f"token-{uuid.uuid4().hex[:10]}"
        demo_env = dict(env, DEMO_IMAGES=str(demo_images), DEMO_WORK=str(tmp_path / "work"), DEMO_TOKEN=token,
                        DEMO_KEEP="1", DEMO_TIMEOUT="300")
        walk = ns.run("bash", WALKTHROUGH, state, env=demo_env, timeout=900)
        demo = _demo_lines(walk.stdout)
        instance, image = demo["instance"], demo["image"]
        console = ec2("get-console-output", "--instance-id", instance)["Output"]  # the cli decodes base64
        assert "EUCALYPT-GUEST-READY" in console
        assert f"instance-id {instance}" in console or f"instance-id={instance}" in console
        public_key = _openssh_public(Path(demo["private_key"]))
        assert public_key.split()[1] in console, console[-3000:]
        assert f"user-data says {token}" in console
        # ... and is reachable on its private address (from the node's side of the bridge,
        # inside the namespace).
        described = ec2("describe-instances", "--instance-ids", instance)["Reservations"][0]["Instances"][0]
        private_ip = described["PrivateIpAddress"]
        assert private_ip and private_ip in console
        if mode == "managed":  # the default group's slice (index 1) in the zone's 172.16.0.0/16
            assert private_ip == "172.16.1.17", private_ip
        ping = ns.run("ping", "-c", "3", "-W", "2", private_ip, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr

        # Step 5: a second instance of the same image moves no chunk bytes. It runs in a
        # security group of its own and pings the first (in "default", which admits only
        # its own members) once a second: unreachable until "default" lets "probe" in.
        def node_metric(name):
            return _metric(ns.run("curl", "-sf", "http://127.0.0.1:8775/_eucalypt/metrics").stdout, name)
        fetched = node_metric("eucalypt_node_chunk_fetched_bytes_total")
        assert fetched > 0
        ec2("create-security-group", "--group-name", "probe", "--description", "pings the first instance")
        probe = tmp_path / "probe.sh"
        probe.write_text("#!/bin/sh\n(for i in $(seq 1 150); do\n"
                         f"  if ping -c 1 -W 1 {private_ip} >/dev/null 2>&1; then echo \"probe $i: reachable\";\n"
                         "  else echo \"probe $i: unreachable\"; fi; sleep 1\ndone) &\n")
        second = ec2("run-instances", "--image-id", image, "--instance-type", "m1.small", "--security-groups",
                     "probe", "--user-data", f"file://{probe}")["Instances"][0]["InstanceId"]

        def state_of(instance_id):
            doc = ec2("describe-instances", "--instance-ids", instance_id)
            return doc["Reservations"][0]["Instances"][0]["State"]["Name"]
        wait_for(lambda: state_of(second) == "running", 300, f"{second} to run", 2)
        assert node_metric("eucalypt_node_chunk_fetched_bytes_total") == fetched
        if mode == "managed":
            second_ip = ec2("describe-instances", "--instance-ids", second)["Reservations"][0]["Instances"][0]
            assert second_ip["PrivateIpAddress"] == "172.16.2.17"  # probe's own slice

        def probes() -> list[str]:
            out = ec2("get-console-output", "--instance-id", second).get("Output") or ""
            return [line.split(": ", 1)[1].strip() for line in out.splitlines() if line.startswith("probe ")]
        wait_for(lambda: probes().count("unreachable") >= 3, 120, "three refused probes", 2)
        assert "reachable" not in probes()
        ec2("authorize-security-group-ingress", "--group-name", "default", "--protocol", "icmp", "--port", "-1",
            "--source-group", "probe")
        wait_for(lambda: "reachable" in probes(), 60, "a probe let through by the new rule", 2)
        ec2("terminate-instances", "--instance-ids", second)
        wait_for(lambda: state_of(second) == "terminated", 120, f"{second} to terminate", 2)

        if mode != "flat":
            return
        # Step 6: kill -9 control while the first instance runs; after the restart it is
        # still running and can be terminated.
        pid_file = state / "run" / "control.pid"
        old_pid = int(pid_file.read_text())
        os.kill(old_pid, signal.SIGKILL)

        def restarted():
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                return False
            return pid != old_pid and ec2("describe-regions", check=False).returncode == 0
        wait_for(restarted, 120, "the supervisor to restart control", 1)
        assert state_of(instance) == "running"
        ec2("terminate-instances", "--instance-ids", instance)
        wait_for(lambda: state_of(instance) == "terminated", 120, f"{instance} to terminate", 2)
    finally:
        if up is not None and up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        ns.delete()
        up_log.close()
