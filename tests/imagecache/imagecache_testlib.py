"""Helpers for the imagecache tests (a plain module; conftest and tests import it)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from bundletools import s3 as bt_s3

VECTORS = Path(__file__).resolve().parents[1] / "data" / "euca2ools"
KEYS = VECTORS / "keys"
VECTOR_DATA = json.loads((VECTORS / "vectors.json").read_text())
ALICE_CERT = KEYS / "test-only-alice-cert.pem"
ALICE_PK = KEYS / "test-only-alice-pk.pem"
CLOUD_CERT = KEYS / "test-only-cloud-cert.pem"
CLOUD_PK = KEYS / "test-only-cloud-pk.pem"


@dataclass(frozen=True)
class Keys:
    name: str
    access_key: str
    secret_key: str


ALICE_IC = Keys("alice", "AKIDICALICE00000000", "alice-ic-secret")
SYSTEM = Keys("eucalypt", "AKIDEUCALYPTSYSTEM0", "eucalypt-system-secret")
USERS = f"""\
[[user]]
name = "alice"
access_key = "{ALICE_IC.access_key}"
secret_key = "{ALICE_IC.secret_key}"

[[user]]
name = "eucalypt"
access_key = "{SYSTEM.access_key}"
secret_key = "{SYSTEM.secret_key}"
"""


def endpoint_for(url: str, user: Keys) -> bt_s3.S3Endpoint:
    return bt_s3.S3Endpoint(url, user.access_key, user.secret_key, "us-east-1")


def upload_bundle_dir(s3, bucket: str, directory: Path, manifest_name: str, prefix: str = "") -> str:
    """PUT every file of a bundle (parts first, manifest last) with aws-exec-read; 'bucket/key'."""
    from bundletools import manifest as bt_manifest

    raw = (directory / manifest_name).read_bytes()
    m = bt_manifest.parse(raw)
    for part in m.parts:
        s3.put_object(Bucket=bucket, Key=prefix + part.filename, Body=(directory / part.filename).read_bytes(),
                      ACL="aws-exec-read")
    s3.put_object(Bucket=bucket, Key=prefix + manifest_name, Body=raw, ACL="aws-exec-read")
    return f"{bucket}/{prefix}{manifest_name}"


def load_gen_image():
    spec = importlib.util.spec_from_file_location("gen_image", VECTORS / "gen_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def list_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]
    except s3.exceptions.NoSuchBucket:
        return []


# --- fixtures (imported by the test modules: no conftest.py of ours, see tests/walrustest.py) ---

import itertools
import re

import pytest

from walrustest import s3_client, start_walrus

_counter = itertools.count()


def _name(request, kind: str) -> str:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:30].strip("-")
    return f"{kind}-{base}-{next(_counter)}"


@pytest.fixture(scope="module")
def ic_walrus(tmp_path_factory):
    """A Walrus of our own whose users are "alice" (owns bundles) and "eucalypt" (the cloud)."""
    base = tmp_path_factory.mktemp("ic-walrus")
    users = base / "users.toml"
    users.write_text(USERS)
    server = start_walrus(base / "data", users)
    yield server
    server.stop()


@pytest.fixture
def alice_s3(ic_walrus):
    return s3_client(ic_walrus.url, ALICE_IC)


@pytest.fixture
def system_s3(ic_walrus):
    return s3_client(ic_walrus.url, SYSTEM)


@pytest.fixture
def system_endpoint(ic_walrus):
    return endpoint_for(ic_walrus.url, SYSTEM)


@pytest.fixture
def system_bucket(request) -> str:
    """A fresh system bucket per test, so tests never see each other's images."""
    return _name(request, "sys")


@pytest.fixture
def bundle_bucket(request, alice_s3) -> str:
    name = _name(request, "bnd")
    alice_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def cloud_key():
    from bundletools import keys
    return keys.load_private_key(CLOUD_PK)


@pytest.fixture
def alice_cert():
    from bundletools import keys
    return keys.load_certificate(ALICE_CERT)
