"""Test support: run a real `eucalypt control` process and its admin CLI; EC2 clients.

A module of its own (not conftest.py) so every test directory can import it by one name.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from walrustest import ServiceProcess, start_service

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@dataclass
class Keys:
    account: str
    user: str
    access_key: str
    secret_key: str


ControlProcess = ServiceProcess


def _cli() -> list[str]:
    return [sys.executable, "-m", "eucalypt.cli"]


def admin(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `eucalypt admin --data-dir DATA ARGS...`."""
    result = subprocess.run(_cli() + ["admin", "--data-dir", str(data_dir), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"admin {' '.join(args)} failed: {result.stderr}")
    return result


def create_user(data_dir: Path, account: str, user: str, *, create_account: bool = True) -> Keys:
    if create_account:
        admin(data_dir, "account", "create", account)
    name, access_key, secret = admin(data_dir, "user", "create", user, "--account", account).stdout.split()
    return Keys(account, name, access_key, secret)


def start_control(data_dir: Path, *, port: int = 0, extra: list[str] | None = None,
                  timeout: float = 30) -> ControlProcess:
    """Start `eucalypt control` and wait until it prints its URL."""
    return start_service("control", data_dir, extra or [], port=port, timeout=timeout)


def ec2_client(url: str, keys: Keys, *, region: str = "eucalyptus", signature: str | None = None, **config):
    import boto3
    from botocore.config import Config
    extra = {"signature_version": signature} if signature else {}
    return boto3.client("ec2", endpoint_url=url, aws_access_key_id=keys.access_key,
                        aws_secret_access_key=keys.secret_key, region_name=region,
                        config=Config(retries={"max_attempts": 1}, **extra, **config))


# ---- a cloud of control + Walrus, users with credentials, registered images --------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cloud:
    control: ControlProcess
    walrus: ServiceProcess
    control_dir: Path

    def stop(self) -> None:
        self.walrus.stop()
        self.control.stop()


def start_cloud(root: Path, *, control_extra: list[str] | None = None) -> Cloud:
    """control (its image cache on this Walrus) + Walrus authenticating against control."""
    walrus_port = free_port()
    control_dir = root / "control"
    control = start_control(control_dir, extra=["--walrus", f"http://127.0.0.1:{walrus_port}/",
                                                *(control_extra or [])])
    walrus = start_service("walrus", root / "walrus", ["--control", control.url, "--service-secret-file",
                                                       str(control_dir / "service.secret")], port=walrus_port)
    return Cloud(control, walrus, control_dir)


def user_environment(control_dir: Path, account: str, user: str, out: Path) -> dict[str, str]:
    """`eucalypt admin credentials` for the user, and the environment `source eucarc` gives."""
    import os
    import re
    admin(control_dir, "credentials", user, "--account", account, "--out", str(out))
    env = dict(os.environ)
    for line in (out / "eucarc").read_text().splitlines():
        m = re.match(r"^export (\w+)=(.*)$", line.strip())
        if m:
            value = m.group(2).strip().strip("'\"")
            env[m.group(1)] = value.replace("${EUCA_KEY_DIR}", str(out)).replace("$EUCA_KEY_DIR", str(out))
    env.pop("AWS_PROFILE", None)
    return env


def bundle_and_upload(env: dict[str, str], image: Path, workdir: Path, bucket: str, *, kind: str = "machine",
                      extra: list[str] | None = None) -> str:
    """euca-bundle-image + euca-upload-bundle (our bundle-tools, run as a user would);
    returns the manifest location BUCKET/NAME.manifest.xml."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["-i", str(image), "-d", str(workdir), "-r", "x86_64", "-q"]
    if kind != "machine":
        args += ["--" + kind, "true"]
    subprocess.run([str(VENV_BIN / "euca-bundle-image"), *args, *(extra or [])], env=env, check=True,
                   capture_output=True, text=True, timeout=300)
    manifest = workdir / f"{image.name}.manifest.xml"
    subprocess.run([str(VENV_BIN / "euca-upload-bundle"), "-b", bucket, "-m", str(manifest), "-q"], env=env,
                   check=True, capture_output=True, text=True, timeout=300)
    return f"{bucket}/{manifest.name}"


def wait_image(ec2, image_id: str, *, states=("available", "failed"), timeout: float = 120) -> dict:
    import time
    deadline = time.monotonic() + timeout
    while True:
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        if image["State"] in states or time.monotonic() > deadline:
            return image
        time.sleep(0.2)


def register_image(ec2, env: dict[str, str], image: Path, workdir: Path, bucket: str, *, kind: str = "machine",
                   name: str | None = None, wait: bool = True, **register) -> str:
    """Bundle, upload and register `image`; with `wait`, until it is available."""
    location = bundle_and_upload(env, image, workdir, bucket, kind=kind)
    image_id = ec2.register_image(ImageLocation=location, Name=name or f"{image.name}-{kind}",
                                  **register)["ImageId"]
    if wait:
        state = wait_image(ec2, image_id)
        assert state["State"] == "available", state
    return image_id
