"""Fixtures for bundle-tools: the euca2ools vectors and their TEST-ONLY keys."""

from __future__ import annotations

import pytest
from bundle_testlib import KEYS, VectorKeys


@pytest.fixture(scope="session")
def test_keys() -> VectorKeys:
    return VectorKeys(
        KEYS / "test-only-alice-cert.pem",
        KEYS / "test-only-alice-pk.pem",
        KEYS / "test-only-cloud-cert.pem",
        KEYS / "test-only-cloud-pk.pem",
    )


@pytest.fixture
def bundle_env(test_keys, monkeypatch):
    """The euca2ools environment variables a sourced eucarc would set."""
    monkeypatch.setenv("EC2_CERT", str(test_keys.alice_cert_path))
    monkeypatch.setenv("EC2_PRIVATE_KEY", str(test_keys.alice_pk_path))
    monkeypatch.setenv("EUCALYPTUS_CERT", str(test_keys.cloud_cert_path))
    monkeypatch.setenv("EC2_USER_ID", "123456789012")
    return test_keys
