"""The control data dir, opened (and on first use created) the same way by server and CLI.

    DATA/state/            LMDB (store.py)
    DATA/cloud-cert.pem    the cloud CA certificate (public)
    DATA/cloud-pk.pem      its private key, mode 0600
    DATA/service.secret    the secret Walrus and other services authenticate with (0600)
    DATA/endpoints.json    the URLs the running control last announced (for credentials)
    DATA/bootstrap.lock    serialises first-start creation between processes

First use also creates the administrator: account ``eucalyptus``, user ``admin``.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .ca import CloudCA, ensure_cloud_ca, write_private
from .identity import ensure_admin
from .store import ControlStore

SERVICE_SECRET_FILE = "service.secret"
ENDPOINTS_FILE = "endpoints.json"
DEFAULT_EC2_URL = "http://127.0.0.1:8773/"
DEFAULT_S3_URL = "http://127.0.0.1:8774/"


@dataclass
class DataDir:
    path: Path
    store: ControlStore
    ca: CloudCA
    service_secret: str

    def endpoints(self) -> dict:
        """{"ec2_url", "s3_url", "region"} as last announced by a running control (or defaults)."""
        found = {"ec2_url": DEFAULT_EC2_URL, "s3_url": DEFAULT_S3_URL, "region": "eucalyptus"}
        try:
            found.update(json.loads((self.path / ENDPOINTS_FILE).read_text()))
        except (OSError, ValueError):
            pass
        return found

    def announce(self, ec2_url: str, s3_url: str, region: str) -> None:
        data = json.dumps({"ec2_url": ec2_url, "s3_url": s3_url, "region": region}).encode()
        write_private(self.path / ENDPOINTS_FILE, data, mode=0o644)

    def close(self) -> None:
        self.store.close()


def open_data_dir(path: Path, *, now: float | None = None) -> DataDir:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "bootstrap.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca = ensure_cloud_ca(path)
        secret_path = path / SERVICE_SECRET_FILE
        if not secret_path.exists():
            write_private(secret_path, secrets.token_urlsafe(32).encode())
        service_secret = secret_path.read_text().strip()
        store = ControlStore(path / "state")
        store.write_sync(lambda txn: ensure_admin(txn, now=now if now is not None else time.time()))
    return DataDir(path, store, ca, service_secret)
