"""Test support: start a real `eucalypt walrus` process on a loopback port; two users.

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

USERS_TOML = """\
[[user]]
name = "alice"
access_key = "AKIDALICE0000000000"
secret_key = "alice-secret-key/with+symbols"
display_name = "Alice"
email = "alice@example.com"

[[user]]
name = "bob"
access_key = "AKIDBOB000000000000"
secret_key = "bob-secret-key"
display_name = "Bob"
email = "bob@example.com"
"""


@dataclass
class UserKeys:
    name: str
    access_key: str
    secret_key: str


ALICE = UserKeys("alice", "AKIDALICE0000000000", "alice-secret-key/with+symbols")
BOB = UserKeys("bob", "AKIDBOB000000000000", "bob-secret-key")


@dataclass
class ServiceProcess:
    """A `eucalypt SERVICE` process started by a test; stop() it (or kill() it) by PID."""

    process: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

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


def start_service(service: str, data_dir: Path, args: list[str], *, port: int = 0,
                  timeout: float = 30) -> ServiceProcess:
    """Start `eucalypt SERVICE --host 127.0.0.1 --port PORT --data-dir DIR ARGS...` and
    wait until it prints `listening on URL`; its stderr goes to DIR.log beside DIR."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    cmd = [sys.executable, "-m", "eucalypt.cli", service, "--host", "127.0.0.1",
           "--port", str(port), "--data-dir", str(data_dir), *args]
    with open(log_path, "ab") as log:
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
        raise RuntimeError(f"{service} did not start: {''.join(lines)}\n{log_path.read_text()}")
    # Keep draining stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return ServiceProcess(process, url, data_dir, log_path)


@dataclass
class WalrusProcess(ServiceProcess):
    users_file: Path | None = None


def start_walrus(data_dir: Path, users_file: Path | None, *, port: int = 0,
                 extra: list[str] | None = None, timeout: float = 30) -> WalrusProcess:
    """Start `eucalypt walrus` (users from users_file, or a generated admin)."""
    args = (["--users", str(users_file)] if users_file is not None else []) + (extra or [])
    started = start_service("walrus", data_dir, args, port=port, timeout=timeout)
    return WalrusProcess(started.process, started.url, started.data_dir, started.log_path, users_file)


def s3_client(url: str, user: UserKeys, *, signature: str = "s3v4", addressing: str = "path",
              region: str = "us-east-1", **config):
    import boto3
    from botocore.config import Config
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=user.access_key,
        aws_secret_access_key=user.secret_key, region_name=region,
        config=Config(signature_version=signature, s3={"addressing_style": addressing},
                      retries={"max_attempts": 1}, **config))


def wait_for(predicate, timeout: float = 30, what: str = "condition", interval: float = 0.1):
    """Poll `predicate` until it returns something true (which is returned), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
