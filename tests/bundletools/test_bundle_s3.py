"""Upload, download and delete against a real `eucalypt walrus` process (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import tomllib

import boto3
import pytest
from botocore.config import Config

from bundletools import reader
from bundletools.cli import delete_bundle, download_bundle, upload_bundle
from bundletools.s3 import BundleLocation, S3Endpoint, upload_bundle as upload_api

from bundle_testlib import test_keys, bundle_env  # noqa: F401 (fixtures)
from bundle_testlib import make_bundle

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def users(users_file):
    return {u["name"]: u for u in tomllib.loads(users_file.read_text())["user"]}


@pytest.fixture
def s3_env(walrus, users, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY",
                "AWS_CREDENTIAL_FILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("S3_URL", walrus.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", users["alice"]["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", users["alice"]["secret_key"])
    return walrus


def boto(url, user):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=user["access_key"],
                        aws_secret_access_key=user["secret_key"], region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


@pytest.fixture
def bundle(tmp_path, test_keys):
    img = tmp_path / "vm.img"
    img.write_bytes(b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(20000)))
    return make_bundle(test_keys, img, tmp_path / "b", part_size=100_000), img


def test_upload_download_delete_round_trip(s3_env, users, bundle, bucket_name, tmp_path, test_keys, capsys):
    result, img = bundle
    assert upload_bundle.main(["-b", f"{bucket_name}/images/v1", "-m", str(result.manifest_path), "-q"]) == 0
    assert f"Uploaded {bucket_name}/images/v1/vm.img.manifest.xml" in capsys.readouterr().out

    client = boto(s3_env.url, users["alice"])
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket_name)["Contents"]]
    assert sorted(keys) == sorted([f"images/v1/{p.filename}" for p in result.manifest.parts]
                                  + ["images/v1/vm.img.manifest.xml"])
    acl = client.get_object_acl(Bucket=bucket_name, Key="images/v1/vm.img.manifest.xml")
    permissions = sorted(g["Permission"] for g in acl["Grants"])
    assert permissions == ["FULL_CONTROL", "READ"]  # owner + the cloud's exec identity

    assert download_bundle.main(["-b", f"{bucket_name}/images/v1", "-p", "vm.img",
                                 "-d", str(tmp_path / "dl"), "-q"]) == 0
    out, _ = reader.unbundle(tmp_path / "dl" / "vm.img.manifest.xml", tmp_path / "img", test_keys.cloud_pk,
                             certificate=test_keys.alice_cert)
    assert out.read_bytes() == img.read_bytes()

    assert delete_bundle.main(["-b", f"{bucket_name}/images/v1", "-p", "vm.img", "--clear"]) == 0
    assert bucket_name not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_upload_through_path_prefixed_endpoint(s3_env, users, bundle, bucket_name, monkeypatch):
    result, _ = bundle
    monkeypatch.setenv("S3_URL", s3_env.url + "/services/objectstorage")
    assert upload_bundle.main(["-b", bucket_name, "-m", str(result.manifest_path), "-q"]) == 0
    client = boto(s3_env.url, users["alice"])
    body = client.get_object(Bucket=bucket_name, Key="vm.img.manifest.xml")["Body"].read()
    assert body == result.manifest_path.read_bytes()


def test_older_env_names_and_credential_file(s3_env, users, bundle, bucket_name, monkeypatch, tmp_path):
    result, _ = bundle
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    cred = tmp_path / "cred"
    cred.write_text(f"AWSAccessKeyId={users['alice']['access_key']}\nAWSSecretKey={users['alice']['secret_key']}\n")
    monkeypatch.setenv("AWS_CREDENTIAL_FILE", str(cred))
    assert upload_bundle.main(["-b", bucket_name + "-cf", "-m", str(result.manifest_path), "-q"]) == 0
    monkeypatch.delenv("AWS_CREDENTIAL_FILE")
    monkeypatch.setenv("AWS_ACCESS_KEY", users["alice"]["access_key"])
    monkeypatch.setenv("AWS_SECRET_KEY", users["alice"]["secret_key"])
    assert upload_bundle.main(["-b", bucket_name + "-old", "-m", str(result.manifest_path), "-q"]) == 0


def test_bucket_not_yours(s3_env, users, bundle, bucket_name, capsys):
    result, _ = bundle
    boto(s3_env.url, users["bob"]).create_bucket(Bucket=bucket_name)
    assert upload_bundle.main(["-b", bucket_name, "-m", str(result.manifest_path), "-q"]) == 1
    assert "not yours" in capsys.readouterr().err
    assert boto(s3_env.url, users["bob"]).list_objects_v2(Bucket=bucket_name).get("KeyCount", 0) == 0


def test_missing_part_uploads_nothing(s3_env, users, bundle, bucket_name, capsys):
    result, _ = bundle
    result.part_paths[2].unlink()
    assert upload_bundle.main(["-b", bucket_name, "-m", str(result.manifest_path), "-q"]) == 1
    assert result.manifest.parts[2].filename in capsys.readouterr().err
    names = [b["Name"] for b in boto(s3_env.url, users["alice"]).list_buckets()["Buckets"]]
    assert bucket_name not in names


def test_tampered_part_in_bucket_is_caught_on_download(s3_env, users, bundle, bucket_name, tmp_path, capsys):
    result, _ = bundle
    assert upload_bundle.main(["-b", bucket_name, "-m", str(result.manifest_path), "-q"]) == 0
    part = result.manifest.parts[1].filename
    boto(s3_env.url, users["alice"]).put_object(Bucket=bucket_name, Key=part, Body=b"evil")
    assert download_bundle.main(["-b", bucket_name, "-m", "vm.img.manifest.xml", "-d", str(tmp_path / "dl"),
                                 "-q"]) == 1
    assert part in capsys.readouterr().err
    assert list((tmp_path / "dl").iterdir()) == []


async def test_library_upload_returns_location(s3_env, users, bundle, bucket_name):
    result, _ = bundle
    endpoint = S3Endpoint(s3_env.url, users["alice"]["access_key"], users["alice"]["secret_key"])
    where = await upload_api(endpoint, result.manifest_path, BundleLocation.parse(f"{bucket_name}/p"))
    assert where == f"{bucket_name}/p/vm.img.manifest.xml"


def test_install_image_bundles_and_uploads(s3_env, users, bundle_env, tmp_path, bucket_name, monkeypatch, capsys):
    monkeypatch.delenv("EC2_URL", raising=False)
    img = tmp_path / "disk.img"
    img.write_bytes(b"".join(hashlib.sha256(b"i%d" % i).digest() for i in range(5000)))
    from bundletools.cli import install_image

    assert install_image.main(["-i", str(img), "-r", "x86_64", "-b", bucket_name, "--part-size", "50000", "-q"]) == 0
    captured = capsys.readouterr()
    assert f"Uploaded {bucket_name}/disk.img.manifest.xml" in captured.out
    assert "register-image" in captured.err  # no control endpoint yet: says how to register
    client = boto(s3_env.url, users["alice"])
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket_name)["Contents"]]
    assert "disk.img.manifest.xml" in keys and "disk.img.part.00" in keys
