"""Test support: run a real `eucalypt control` process and its admin CLI; EC2 clients.

A module of its own (not conftest.py) so every test directory can import it by one name.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@dataclass
class Keys:
    account: str
    user: str
    access_key: str
    secret_key: str


@dataclass
class ControlProcess:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    cmd = _cli() + ["control", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    cmd += extra or []
    log = open(log_path, "ab")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    url, lines = None, []
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if match := re.search(r"listening on (http://\S+)", line):
            url = match.group(1)
            break
    if url is None:
        process.kill()
        raise RuntimeError(f"control did not start: {''.join(lines)}\n{log_path.read_text()}")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return ControlProcess(process, url, data_dir, log_path)


def ec2_client(url: str, keys: Keys, *, region: str = "eucalyptus", signature: str | None = None, **config):
    import boto3
    from botocore.config import Config
    extra = {"signature_version": signature} if signature else {}
    return boto3.client("ec2", endpoint_url=url, aws_access_key_id=keys.access_key,
                        aws_secret_access_key=keys.secret_key, region_name=region,
                        config=Config(retries={"max_attempts": 1}, **extra, **config))
