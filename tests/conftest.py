"""Shared fixtures: one real `eucalypt walrus` process per test session, with two users.
Tests that kill or restart a server start their own with walrustest.start_walrus."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from walrustest import ALICE, BOB, USERS_TOML, s3_client, start_walrus


@pytest.fixture(scope="session")
def users_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.toml"
    path.write_text(USERS_TOML)
    return path


@pytest.fixture(scope="session")
def walrus(tmp_path_factory, users_file):
    """One Walrus process for the session (tests use unique bucket names)."""
    server = start_walrus(tmp_path_factory.mktemp("walrus") / "data", users_file)
    yield server
    server.stop()



@pytest.fixture
def alice(walrus):
    return s3_client(walrus.url, ALICE)


@pytest.fixture
def bob(walrus):
    return s3_client(walrus.url, BOB)


_counter = iter(range(10**9))


@pytest.fixture
def bucket_name(request) -> str:
    """A fresh, valid bucket name per test."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return f"{base}-{os.getpid()}-{next(_counter)}"
