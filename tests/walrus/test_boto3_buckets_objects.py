"""Buckets and objects through boto3 against a real Walrus process."""

import base64
import datetime
import hashlib
import os
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from walrustest import ALICE, s3_client


def code_of(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def status_of(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


# ---- buckets -------------------------------------------------------------------------

def test_bucket_lifecycle(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    assert bucket_name in [b["Name"] for b in alice.list_buckets()["Buckets"]]
    alice.head_bucket(Bucket=bucket_name)
    assert alice.get_bucket_location(Bucket=bucket_name)["LocationConstraint"] is None
    alice.delete_bucket(Bucket=bucket_name)
    with pytest.raises(ClientError) as exc:
        alice.head_bucket(Bucket=bucket_name)
    assert status_of(exc) == 404


def test_create_bucket_conflicts(alice, bob, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    with pytest.raises(ClientError) as exc:
        alice.create_bucket(Bucket=bucket_name)
    assert code_of(exc) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as exc:
        bob.create_bucket(Bucket=bucket_name)
    assert code_of(exc) == "BucketAlreadyExists"
    assert status_of(exc) == 409


def test_location_constraint_any_region(walrus, bucket_name):
    s3 = s3_client(walrus.url, ALICE, region="moon-1")
    s3.create_bucket(Bucket=bucket_name, CreateBucketConfiguration={"LocationConstraint": "moon-1"})
    assert s3.get_bucket_location(Bucket=bucket_name)["LocationConstraint"] == "moon-1"


def test_list_buckets_shows_only_own(alice, bob, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    assert bucket_name not in [b["Name"] for b in bob.list_buckets()["Buckets"]]
    assert alice.list_buckets()["Owner"]["DisplayName"] == "Alice"


def test_delete_bucket_not_empty_and_not_owner(alice, bob, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    alice.put_object(Bucket=bucket_name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as exc:
        alice.delete_bucket(Bucket=bucket_name)
    assert code_of(exc) == "BucketNotEmpty"
    with pytest.raises(ClientError) as exc:
        bob.delete_bucket(Bucket=bucket_name)
    assert code_of(exc) == "AccessDenied"
    alice.delete_object(Bucket=bucket_name, Key="k")
    alice.delete_bucket(Bucket=bucket_name)


def test_bucket_not_empty_with_pending_upload(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    upload = alice.create_multipart_upload(Bucket=bucket_name, Key="pending")
    with pytest.raises(ClientError) as exc:
        alice.delete_bucket(Bucket=bucket_name)
    assert code_of(exc) == "BucketNotEmpty"
    alice.abort_multipart_upload(Bucket=bucket_name, Key="pending", UploadId=upload["UploadId"])
    alice.delete_bucket(Bucket=bucket_name)


@pytest.mark.parametrize("name", ["ab", "UPPER", "a..b", "192.168.1.1", "-start", "end-", "a_b", "x" * 64])
def test_invalid_bucket_names(alice, name):
    with pytest.raises(ClientError) as exc:
        alice.create_bucket(Bucket=name)
    assert code_of(exc) == "InvalidBucketName"


def test_no_such_bucket(alice):
    with pytest.raises(ClientError) as exc:
        alice.list_objects_v2(Bucket="no-such-bucket-anywhere")
    assert code_of(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket="no-such-bucket-anywhere", Key="k", Body=b"x")
    assert code_of(exc) == "NoSuchBucket"


# ---- objects -------------------------------------------------------------------------

@pytest.fixture
def bucket(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    return bucket_name


@pytest.mark.parametrize("size", [0, 1, 4096, 70_000, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17])
def test_put_get_sizes(alice, bucket, size):
    body = os.urandom(size)
    put = alice.put_object(Bucket=bucket, Key=f"obj-{size}", Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = alice.get_object(Bucket=bucket, Key=f"obj-{size}")
    assert got["Body"].read() == body
    assert got["ContentLength"] == size
    assert got["ETag"] == put["ETag"]


def test_metadata_and_headers_round_trip(alice, bucket):
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    alice.put_object(Bucket=bucket, Key="doc.txt", Body=b"hi", ContentType="text/plain; charset=utf-8",
                     ContentEncoding="identity", ContentDisposition='attachment; filename="d.txt"',
                     CacheControl="max-age=60", ContentLanguage="en", Expires=expires,
                     Metadata={"color": "blue", "Mixed-Case": "Value With Spaces"})
    head = alice.head_object(Bucket=bucket, Key="doc.txt")
    assert head["ContentType"] == "text/plain; charset=utf-8"
    assert head["ContentEncoding"] == "identity"
    assert head["ContentDisposition"] == 'attachment; filename="d.txt"'
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentLanguage"] == "en"
    assert head["Expires"] == expires
    assert head["Metadata"] == {"color": "blue", "mixed-case": "Value With Spaces"}
    assert head["ContentLength"] == 2
    assert "x-amz-request-id" in head["ResponseMetadata"]["HTTPHeaders"]


def test_default_content_type(alice, bucket):
    alice.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert alice.head_object(Bucket=bucket, Key="k")["ContentType"] in ("binary/octet-stream",)


def test_unicode_and_odd_keys(alice, bucket):
    keys = ["ünïcødé/ключ.txt", "with space", "plus+sign", "a%20b", "q?x=1&y", "tilde~", "semi;colon",
            "dir//double", "emoji-\U0001f600"]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in keys:
        assert alice.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    listed = [o["Key"] for o in alice.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(keys, key=lambda k: k.encode())


def test_overwrite_replaces(alice, bucket):
    alice.put_object(Bucket=bucket, Key="k", Body=b"one" * 500_000)
    alice.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert alice.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"


def test_content_md5(alice, bucket):
    body = b"payload"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    alice.put_object(Bucket=bucket, Key="ok", Body=body, ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket=bucket, Key="bad", Body=body, ContentMD5=bad)
    assert code_of(exc) == "BadDigest"
    with pytest.raises(ClientError) as exc:
        alice.head_object(Bucket=bucket, Key="bad")
    assert status_of(exc) == 404


def test_crc32_checksum_round_trip(alice, bucket):
    body = os.urandom(100_000)
    put = alice.put_object(Bucket=bucket, Key="ck", Body=body, ChecksumAlgorithm="CRC32")
    assert "ChecksumCRC32" in put
    got = alice.get_object(Bucket=bucket, Key="ck", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumCRC32"] == put["ChecksumCRC32"]


def test_sha256_checksum_mismatch_rejected(alice, bucket):
    wrong = base64.b64encode(hashlib.sha256(b"nope").digest()).decode()
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket=bucket, Key="ck", Body=b"data", ChecksumSHA256=wrong)
    assert code_of(exc) in ("BadDigest", "InvalidRequest")
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="ck")


def test_ranges(alice, bucket):
    body = os.urandom(3 * 1024 * 1024 + 5)
    alice.put_object(Bucket=bucket, Key="r", Body=body)
    cases = {"bytes=0-0": body[:1], "bytes=10-19": body[10:20], "bytes=-7": body[-7:],
             f"bytes={len(body) - 3}-": body[-3:],
             "bytes=1048570-1048600": body[1048570:1048601],
             f"bytes=5-{len(body) + 100}": body[5:]}
    for header, expected in cases.items():
        got = alice.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == expected, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(body)}")
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body)}-")
    assert code_of(exc) == "InvalidRange"
    assert status_of(exc) == 416
    # A malformed range is ignored, as S3 does.
    assert alice.get_object(Bucket=bucket, Key="r", Range="bytes=x-y")["Body"].read() == body


def test_conditional_get(alice, bucket):
    put = alice.put_object(Bucket=bucket, Key="c", Body=b"cond")
    etag = put["ETag"]
    modified = alice.head_object(Bucket=bucket, Key="c")["LastModified"]
    assert alice.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status_of(exc) == 304
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="c", IfModifiedSince=modified + datetime.timedelta(seconds=10))
    assert status_of(exc) == 304
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=modified - datetime.timedelta(days=1))
    assert status_of(exc) == 412
    got = alice.get_object(Bucket=bucket, Key="c", IfModifiedSince=modified - datetime.timedelta(days=1))
    assert got["Body"].read() == b"cond"


def test_conditional_put_if_none_match(alice, bucket):
    alice.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert status_of(exc) == 412
    assert alice.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


def test_response_overrides(alice, bucket):
    alice.put_object(Bucket=bucket, Key="o", Body=b"x", ContentType="text/plain")
    got = alice.get_object(Bucket=bucket, Key="o", ResponseContentType="application/json",
                           ResponseContentDisposition="inline", ResponseCacheControl="no-cache")
    assert got["ContentType"] == "application/json"
    assert got["ContentDisposition"] == "inline"
    assert got["CacheControl"] == "no-cache"


def test_missing_key(alice, bob, bucket):
    with pytest.raises(ClientError) as exc:
        alice.get_object(Bucket=bucket, Key="nope")
    assert code_of(exc) == "NoSuchKey"
    # Someone who may not list the bucket learns nothing about which keys exist.
    with pytest.raises(ClientError) as exc:
        bob.get_object(Bucket=bucket, Key="nope")
    assert code_of(exc) == "AccessDenied"


def test_delete_and_multi_delete(alice, bucket):
    for i in range(5):
        alice.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    alice.delete_object(Bucket=bucket, Key="d/0")
    alice.delete_object(Bucket=bucket, Key="never-existed")  # not an error
    result = alice.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/1"}, {"Key": "d/2"},
                                                                     {"Key": "ghost"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["d/1", "d/2", "ghost"]
    quiet = alice.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/3"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert [o["Key"] for o in alice.list_objects_v2(Bucket=bucket)["Contents"]] == ["d/4"]


def test_multi_delete_by_stranger_reports_errors(alice, bob, bucket):
    alice.put_object(Bucket=bucket, Key="keep", Body=b"x")
    result = bob.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "keep"}]})
    assert result["Errors"][0]["Code"] == "AccessDenied"
    assert alice.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"


# ---- copy ------------------------------------------------------------------------------

def test_copy_object(alice, bucket, bucket_name):
    other = bucket_name + "-dst"
    alice.create_bucket(Bucket=other)
    body = os.urandom(2 * 1024 * 1024 + 3)
    alice.put_object(Bucket=bucket, Key="src", Body=body, ContentType="image/png", Metadata={"a": "1"})
    res = alice.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert res["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = alice.get_object(Bucket=other, Key="dst")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/png" and got["Metadata"] == {"a": "1"}
    alice.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                      ContentType="text/plain", Metadata={"b": "2"})
    head = alice.head_object(Bucket=bucket, Key="src")
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"b": "2"}
    with pytest.raises(ClientError) as exc:
        alice.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert code_of(exc) == "InvalidRequest"
    # The source survives deleting the copy (shared chunks are refcounted).
    alice.delete_object(Bucket=other, Key="dst")
    assert alice.get_object(Bucket=bucket, Key="src")["Body"].read() == body


def test_copy_conditions_and_errors(alice, bob, bucket):
    put = alice.put_object(Bucket=bucket, Key="s", Body=b"s")
    alice.copy_object(Bucket=bucket, Key="t1", CopySource=f"{bucket}/s", CopySourceIfMatch=put["ETag"])
    with pytest.raises(ClientError) as exc:
        alice.copy_object(Bucket=bucket, Key="t2", CopySource=f"{bucket}/s", CopySourceIfMatch='"beef"')
    assert status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        alice.copy_object(Bucket=bucket, Key="t3", CopySource=f"{bucket}/s", CopySourceIfNoneMatch=put["ETag"])
    assert status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        alice.copy_object(Bucket=bucket, Key="t4", CopySource=f"{bucket}/missing")
    assert code_of(exc) == "NoSuchKey"
    bob_bucket = bucket + "-bob"
    bob.create_bucket(Bucket=bob_bucket)
    with pytest.raises(ClientError) as exc:
        bob.copy_object(Bucket=bob_bucket, Key="stolen", CopySource=f"{bucket}/s")
    assert code_of(exc) == "AccessDenied"


# ---- presigned URLs and addressing -------------------------------------------------------

def test_presigned_v4_get_put(alice, bucket):
    put_url = alice.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    request = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    get_url = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    with urllib.request.urlopen(get_url) as response:
        assert response.read() == b"presigned body"
    tampered = get_url.replace("/p?", "/q?")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(tampered)
    assert exc.value.code == 403


def test_presigned_v2(walrus, alice, bucket):
    alice.put_object(Bucket=bucket, Key="v2", Body=b"old style")
    v2 = s3_client(walrus.url, ALICE, signature="s3")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "v2"}, ExpiresIn=60)
    assert "Signature=" in url and "AWSAccessKeyId=" in url
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"old style"


def test_sigv2_header_auth(walrus, bucket):
    v2 = s3_client(walrus.url, ALICE, signature="s3")
    v2.put_object(Bucket=bucket, Key="sigv2", Body=b"v2 body", Metadata={"m": "v"})
    assert v2.get_object(Bucket=bucket, Key="sigv2")["Body"].read() == b"v2 body"
    assert v2.list_objects(Bucket=bucket)["Contents"][0]["Key"] == "sigv2"
    bad = s3_client(walrus.url, type(ALICE)("alice", ALICE.access_key, "wrong"), signature="s3")
    with pytest.raises(ClientError) as exc:
        bad.get_object(Bucket=bucket, Key="sigv2")
    assert code_of(exc) == "SignatureDoesNotMatch"


def _connect_to_loopback(port):
    """before-send hook: *.localhost need not resolve, so send to 127.0.0.1 and keep the
    signed virtual-host Host header."""
    from urllib.parse import urlsplit, urlunsplit

    def hook(request, **kwargs):
        parts = urlsplit(request.url)
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
    return hook


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_virtual_host_style(walrus, bucket, signature):
    vhost = s3_client(f"http://localhost:{walrus.port}", ALICE, addressing="virtual", signature=signature)
    vhost.meta.events.register("before-send.s3", _connect_to_loopback(walrus.port))
    vhost.put_object(Bucket=bucket, Key="dir/vh", Body=b"virtual")
    assert vhost.get_object(Bucket=bucket, Key="dir/vh")["Body"].read() == b"virtual"
    assert [o["Key"] for o in vhost.list_objects_v2(Bucket=bucket)["Contents"]] == ["dir/vh"]
    assert vhost.get_object_acl(Bucket=bucket, Key="dir/vh")["Owner"]["DisplayName"] == "Alice"


@pytest.mark.parametrize("prefix", ["/services/objectstorage", "/services/Walrus"])
@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_service_path_prefixes(walrus, bucket, prefix, signature):
    s3 = s3_client(walrus.url + prefix, ALICE, signature=signature)
    s3.put_object(Bucket=bucket, Key="prefixed key", Body=b"euca")
    assert s3.get_object(Bucket=bucket, Key="prefixed key")["Body"].read() == b"euca"
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]] == ["prefixed key"]


def test_any_region_accepted(walrus, bucket):
    for region in ("eucalyptus", "moon-1", "us-west-2"):
        s3_client(walrus.url, ALICE, region=region).head_bucket(Bucket=bucket)


# ---- operations ----------------------------------------------------------------------

def test_health_and_metrics(walrus, alice, bucket):
    alice.put_object(Bucket=bucket, Key="m", Body=b"metrics")
    with urllib.request.urlopen(walrus.url + "/_eucalypt/health") as response:
        assert b'"ok"' in response.read()
    with urllib.request.urlopen(walrus.url + "/_eucalypt/metrics") as response:
        text = response.read().decode()
    assert 'eucalypt_walrus_requests_total{operation="PutObject",status="200"}' in text
    for name in ("eucalypt_walrus_bytes_sent_total", "eucalypt_walrus_bytes_received_total",
                 "eucalypt_walrus_storage_stored_bytes", "eucalypt_walrus_chunk_dedup_hits_total"):
        assert name in text


def test_unknown_operation_is_not_implemented(alice, bucket):
    with pytest.raises(ClientError) as exc:
        alice.get_bucket_website(Bucket=bucket)
    assert code_of(exc) == "NotImplemented"
    assert status_of(exc) == 501
