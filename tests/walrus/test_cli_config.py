"""`eucalypt walrus` settings: defaults < --config TOML < WALRUS_* environment < flags;
and the generated admin of a standalone Walrus."""

import subprocess
import sys
import time

import pytest

from walrustest import ROOT, USERS_TOML, ALICE, s3_client, start_walrus
from eucalypt.cli import WALRUS_DEFAULTS, build_parser, resolve_settings


def settings(argv, env=None, monkeypatch=None):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return resolve_settings(build_parser().parse_args(["walrus", *argv]), WALRUS_DEFAULTS, "WALRUS")


def test_precedence(tmp_path, monkeypatch):
    config = tmp_path / "walrus.toml"
    config.write_text('port = 9000\nregion = "from-file"\nhost = "127.0.0.2"\ndomains = ["s3.test"]\n')
    s = settings(["--config", str(config)], {"WALRUS_REGION": "from-env"}, monkeypatch)
    assert (s["port"], s["region"], s["host"], s["domains"]) == (9000, "from-env", "127.0.0.2", ["s3.test"])
    s = settings(["--config", str(config), "--port", "0", "--region", "flag"], {}, monkeypatch)
    assert (s["port"], s["region"]) == (0, "flag")
    assert settings([], {}, monkeypatch)["port"] == 8774


def test_unknown_config_key_is_refused(tmp_path, monkeypatch):
    config = tmp_path / "walrus.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(SystemExit, match="unknown settings prot"):
        settings(["--config", str(config)], {}, monkeypatch)


def test_generated_admin_is_stable(tmp_path):
    data = tmp_path / "data"
    first = start_walrus(data, None)
    try:
        creds = (data / "admin.credentials").read_text()
        assert (data / "admin.credentials").stat().st_mode & 0o077 == 0
        keys = dict(line.split(" = ") for line in creds.splitlines() if " = " in line)
        admin = type(ALICE)("admin", keys["aws_access_key_id"], keys["aws_secret_access_key"])
        s3 = s3_client(first.url, admin)
        s3.create_bucket(Bucket="admin-bucket")
    finally:
        first.stop()
    second = start_walrus(data, None)
    try:
        assert (data / "admin.credentials").read_text() == creds
        assert [b["Name"] for b in s3_client(second.url, admin).list_buckets()["Buckets"]] == ["admin-bucket"]
    finally:
        second.stop()


def test_bad_users_file_exits_with_message(tmp_path):
    bad = tmp_path / "users.toml"
    bad.write_text("[[user]]\nname = 'x'\n")
    result = subprocess.run([sys.executable, "-m", "eucalypt.cli", "walrus", "--port", "0",
                             "--data-dir", str(tmp_path / "d"), "--users", str(bad)],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert "lacks access_key, secret_key" in result.stderr


def test_abandoned_multipart_uploads_are_aborted(tmp_path):
    users = tmp_path / "users.toml"
    users.write_text(USERS_TOML)
    # 0.0005 h = 1.8 s expiry, swept every 0.45 s.
    server = start_walrus(tmp_path / "data", users, extra=["--multipart-expiry-hours", "0.0005"])
    try:
        s3 = s3_client(server.url, ALICE)
        s3.create_bucket(Bucket="abandoned")
        uid = s3.create_multipart_upload(Bucket="abandoned", Key="k")["UploadId"]
        s3.upload_part(Bucket="abandoned", Key="k", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
        for _ in range(100):
            if not s3.list_multipart_uploads(Bucket="abandoned").get("Uploads"):
                break
            time.sleep(0.1)
        assert not s3.list_multipart_uploads(Bucket="abandoned").get("Uploads")
        s3.delete_bucket(Bucket="abandoned")  # nothing left behind
    finally:
        server.stop()
