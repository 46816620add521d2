"""`eucalypt up` as a user runs it: a real supervisor process starting real control,
Walrus and node processes (libvirt's test driver: nothing on the host is touched), the
admin credentials used by the aws cli exactly as eucarc says, control killed with -9 and
brought back, Ctrl-C stopping everything, and a second `up` on the same state finding
the same administrator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from walrustest import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@dataclass
class Cloud:
    process: subprocess.Popen
    state: Path
    lines: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return "".join(self.lines)

    def pid(self, name: str) -> int:
        return int((self.state / "run" / f"{name}.pid").read_text())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_up(state: Path, *extra: str, hypervisor: str = "test:///default", timeout: float = 180) -> Cloud:
    """`eucalypt up` on free ports (the test driver by default); wait for its ready banner."""
    cmd = [sys.executable, "-m", "eucalypt.cli", "up", "--state-dir", str(state), "--hypervisor",
           hypervisor, "--no-install", "--control-port", "0", "--walrus-port", "0", "--node-port", "0",
           "--metadata-port", "0", *extra]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    cloud = Cloud(process, state)
    banner_done = threading.Event()

    def drain():
        for line in process.stdout:
            cloud.lines.append(line)
            if line.startswith("Ctrl-C stops it."):
                banner_done.set()
        banner_done.set()
    threading.Thread(target=drain, daemon=True).start()
    if not banner_done.wait(timeout) or process.poll() is not None:
        process.kill()
        raise AssertionError(f"eucalypt up did not get ready:\n{cloud.output()}")
    text = cloud.output()
    for name, label in (("ec2", r"EC2 \(control\)"), ("s3", r"S3 \(Walrus\)"), ("node", "node")):
        cloud.urls[name] = re.search(rf"^  {label} +(http://\S+)", text, re.M).group(1)
    return cloud


def eucarc_env(state: Path) -> dict[str, str]:
    """What `source STATE/credentials/admin/eucarc` gives a shell (plus the venv on PATH)."""
    out = subprocess.run(["bash", "-c", f"source {state}/credentials/admin/eucarc && env -0"],
                         capture_output=True, check=True).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def aws(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "aws"), *args, "--output", "json"], env=env, capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed: {result.stderr}")
    return result


def health(url: str) -> dict | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "_eucalypt/health", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")




@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("up") / "state"


@pytest.fixture(scope="module")
def cloud(state):
    cloud = start_up(state)
    yield cloud
    cloud.stop()


def test_banner_says_where_everything_is(cloud, state):
    text = cloud.output()
    creds = state / "credentials" / "admin"
    assert f"source {creds}/eucarc" in text
    assert "aws --endpoint-url $EC2_URL ec2 describe-availability-zones" in text
    for name in ("eucarc", "iamrc", "cert.pem", "pk.pem", "cloud-cert.pem", "aws-config", "euca2ools.ini", "s3cfg"):
        assert (creds / name).is_file(), name
    node_creds = state / "node" / "walrus-credentials.toml"
    assert stat.S_IMODE(node_creds.stat().st_mode) == 0o600
    env = eucarc_env(state)
    assert env["EC2_URL"] == cloud.urls["ec2"] and env["S3_URL"] == cloud.urls["s3"]
    assert f'access_key = "{env["AWS_ACCESS_KEY_ID"]}"' in node_creds.read_text()
    for name in ("control", "walrus", "node"):
        assert alive(cloud.pid(name)), name
        assert (state / "logs" / f"{name}.log").stat().st_size > 0


def test_aws_cli_with_the_written_credentials(cloud, state):
    env = eucarc_env(state)
    zones = json.loads(aws(env, "--endpoint-url", env["EC2_URL"], "ec2", "describe-availability-zones").stdout)
    assert [z["State"] for z in zones["AvailabilityZones"]] == ["available"]
    aws(env, "--endpoint-url", env["S3_URL"], "s3", "mb", "s3://up-test-bucket")
    listing = aws(env, "--endpoint-url", env["S3_URL"], "s3", "ls").stdout
    assert "up-test-bucket" in listing


def test_node_is_healthy_and_registered(cloud):
    doc = wait_for(lambda: (h := health(cloud.urls["node"])) and (h.get("registration") or {}).get("registered")
                   and h, 60, "the node to register")
    assert doc["status"] == "ok"


def test_a_second_up_on_the_same_state_is_refused_while_one_runs(cloud, state):
    result = subprocess.run([sys.executable, "-m", "eucalypt.cli", "up", "--state-dir", str(state),
                             "--hypervisor", "test:///default"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert f"pid {cloud.process.pid}" in result.stderr + result.stdout


def test_control_killed_with_9_is_restarted(cloud, state):
    env = eucarc_env(state)
    old = cloud.pid("control")
    os.kill(old, signal.SIGKILL)

    def answered_again():
        try:
            pid = cloud.pid("control")
        except (OSError, ValueError):
            return False
        return pid != old and aws(env, "--endpoint-url", env["EC2_URL"], "ec2", "describe-availability-zones",
                                  check=False).returncode == 0
    wait_for(answered_again, 120, "control to be restarted and answer")
    assert "control: exited unexpectedly (killed by SIGKILL)" in cloud.output()
    wait_for(lambda: "control: up again" in cloud.output(), 30, "the supervisor to see control up")
    assert cloud.process.poll() is None


def test_sigint_stops_everything_and_exits_0(cloud, state):
    pids = {name: cloud.pid(name) for name in ("control", "walrus", "node")}
    cloud.process.send_signal(signal.SIGINT)
    assert cloud.process.wait(60) == 0
    for name, pid in pids.items():
        assert not alive(pid), f"{name} (pid {pid}) still runs"
    assert not any((state / "run" / f"{name}.pid").exists() for name in pids)
    assert "eucalypt up: stopped" in cloud.output()


def test_a_second_up_reuses_the_state(cloud, state):
    assert cloud.process.poll() is not None   # the module's cloud was stopped by the test above
    first = eucarc_env(state)["AWS_ACCESS_KEY_ID"]
    accounts = subprocess.run([sys.executable, "-m", "eucalypt.cli", "admin", "--state-dir", str(state),
                               "account", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    again = start_up(state)
    try:
        env = eucarc_env(state)
        assert env["AWS_ACCESS_KEY_ID"] == first
        assert env["EC2_URL"] == again.urls["ec2"]     # new free ports: eucarc follows them
        after = subprocess.run([sys.executable, "-m", "eucalypt.cli", "admin", "--state-dir", str(state),
                                "account", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert after == accounts
        listing = aws(env, "--endpoint-url", env["S3_URL"], "s3", "ls").stdout
        assert "up-test-bucket" in listing            # Walrus kept its data too

        # The supervisor killed with -9: the kernel tells its children to stop (no orphans).
        pids = [again.pid(name) for name in ("control", "walrus", "node")]
        again.process.kill()
        again.process.wait()
        wait_for(lambda: not any(alive(p) for p in pids), 60, "the orphaned services to stop")
    finally:
        again.stop()


def test_no_usable_hypervisor_falls_back_to_the_test_driver_loudly(tmp_path):
    # xen:///system is never set up by eucalypt: probing it only opens a libvirt connection.
    cloud = start_up(tmp_path / "state", hypervisor="xen:///system")
    try:
        text = cloud.output()
        assert "(hypervisor test:///default)" in text
        warning = text.split("eucalypt up: ready", 1)[1]
        assert "!! WARNING: no usable hypervisor at xen:///system" in warning
        assert "falling back to test:///default" in warning
        assert "--hypervisor test:///default" in (tmp_path / "state" / "logs" / "node.log").read_text()
    finally:
        assert cloud.stop() == 0


def test_a_service_that_keeps_crashing_makes_up_give_up_with_status_1(tmp_path):
    cloud = start_up(tmp_path / "state", "--max-fast-crashes", "2")
    try:
        first = cloud.pid("node")
        os.kill(first, signal.SIGKILL)

        def restarted():
            try:
                return (pid := cloud.pid("node")) != first and pid
            except (OSError, ValueError):
                return False
        second = wait_for(restarted, 60, "the node to be restarted")
        others = [cloud.pid("control"), cloud.pid("walrus")]
        os.kill(second, signal.SIGKILL)
        assert cloud.process.wait(60) == 1
        text = cloud.output()
        assert "node crashed 2 times in a row" in text and "giving up" in text
        assert "eucalypt up: exiting with status 1" in text
        assert not any(alive(p) for p in others)
    finally:
        cloud.stop()
