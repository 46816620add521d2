"""Our signers: identical output to botocore for the same input, and verifiable by our verifier."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import urlsplit

import botocore.auth
import pytest
from authhelpers import AK, NOW, SK, botocore_request, creds, freeze_botocore, to_http

from eucalypt.auth import HttpRequest, checksum_b64, crc32_b64, crc32c_b64, parse, presign_v4, sign_v2_s3, sign_v4, verify
from eucalypt.auth.checksums import crc32c


@pytest.fixture(autouse=True)
def _frozen(monkeypatch):
    freeze_botocore(monkeypatch)


CASES = [
    ("GET", "http://walrus.example:8774/bucket/key%20with%20space", {"prefix": "a b~c", "list-type": "2"}),
    ("PUT", "http://bucket.walrus.example/unicod%C3%A9/%2B/~", {}),
    ("DELETE", "http://walrus.example/services/objectstorage/b/k", {"uploadId": "abc=="}),
]


@pytest.mark.parametrize("method,url,params", CASES)
@pytest.mark.parametrize("region", ["us-east-1", "moon-1"])
def test_sign_v4_equals_botocore(method, url, params, region):
    body = b"payload"
    req = botocore_request(method, url, params=params, data=body, headers={"Content-Type": "x/y", "x-amz-meta-k": "v  w"})
    unsigned = to_http(req)
    botocore.auth.S3SigV4Auth(creds(), "s3", region).add_auth(req)
    ours = sign_v4(unsigned, access_key=AK, secret=SK, region=region, service="s3", now=NOW, payload_sha256=hashlib.sha256(body).hexdigest())
    assert ours["Authorization"] == req.headers["Authorization"]
    assert ours["X-Amz-Date"] == req.headers["X-Amz-Date"]
    signed = HttpRequest(unsigned.method, unsigned.path, unsigned.query, {**unsigned.headers, **ours})
    verify(parse(signed, service="s3"), signed, SK, now=NOW)


def test_sign_v4_ec2_equals_botocore():
    form = b"Action=DescribeInstances&Version=2016-11-15"
    req = botocore_request("POST", "http://control.example:8773/", data=form, headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    unsigned = to_http(req)
    botocore.auth.SigV4Auth(creds(), "ec2", "eucalyptus").add_auth(req)
    ours = sign_v4(unsigned, access_key=AK, secret=SK, region="eucalyptus", service="ec2", now=NOW, payload_sha256=hashlib.sha256(form).hexdigest())
    # botocore's plain SigV4Auth does not send x-amz-content-sha256 (nor sign it); we do
    signed = HttpRequest("POST", "/", "", {**unsigned.headers, **ours})
    verify(parse(signed, service="ec2"), signed, SK, now=NOW, body_sha256=hashlib.sha256(form).hexdigest())


@pytest.mark.parametrize("method,url,params", CASES)
def test_presign_v4_equals_botocore(method, url, params):
    req = botocore_request(method, url, params=params)
    unsigned = to_http(req)
    botocore.auth.S3SigV4QueryAuth(creds(), "s3", "moon-1", expires=900).add_auth(req)
    query = presign_v4(unsigned, access_key=AK, secret=SK, region="moon-1", service="s3", now=NOW, expires=900)
    assert query.rsplit("X-Amz-Signature=", 1)[1] == urlsplit(req.url).query.rsplit("X-Amz-Signature=", 1)[1]
    presigned = HttpRequest(method, unsigned.path, query, unsigned.headers)
    verify(parse(presigned, service="s3"), presigned, SK, now=NOW + timedelta(seconds=899))


def test_sign_v2_s3_equals_botocore():
    req = botocore_request("PUT", "http://bucket.walrus.example/k%20y", params={"acl": ""}, headers={"x-amz-acl": "private"}, auth_path="/bucket/k%20y")
    botocore.auth.HmacV1Auth(creds()).add_auth(req)
    http = to_http(req)
    unsigned = HttpRequest(http.method, http.path, http.query, {k: v for k, v in http.headers.items() if k != "authorization"})
    ours = sign_v2_s3(unsigned, access_key=AK, secret=SK, resource="/bucket/k%20y?acl=")  # botocore sent "?acl="
    assert ours["Authorization"] == http.header("authorization")


def test_checksums():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32_b64(b"") == "AAAAAA=="
    assert crc32_b64(b"123456789") == "y/Q5Jg=="  # 0xCBF43926, the CRC-32 check value
    assert crc32c_b64(b"123456789") == "4waSgw=="
    assert checksum_b64("SHA256", b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
