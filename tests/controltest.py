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
