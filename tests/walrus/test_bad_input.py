"""Bad input gets the S3 error S3 would give (code + status in the XML body), and changes
nothing: no object, bucket or ACL appears or changes, no half-stored body.

Requests that boto3 would not send are built with botocore's own signers
(S3SigV4Auth / HmacV1Auth on an AWSRequest) and sent with http.client or a raw socket, so
the test controls every byte.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from walrustest import ALICE, BOB, UserKeys, s3_client

XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
       b"<{root}><Object><Key>&x;</Key></Object></{root}>")
BILLION_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b"]>\n<{root}>&lol9;</{root}>")


def _hostile(root: str) -> list[bytes]:
    return [XXE.replace(b"{root}", root.encode()), BILLION_LAUGHS.replace(b"{root}", root.encode())]


def _malformed(root: str) -> list[bytes]:
    return [b"this is not xml", f"<{root}><Part><PartNumber>1".encode(), b"<Wrong/>",
            *_hostile(root)]


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> str | None:
        return ET.fromstring(self.body).findtext("Code") if self.body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def signed(url: str, method: str, path: str, *, body: bytes = b"", headers: dict | None = None,
           user: UserKeys = ALICE) -> AWSRequest:
    """A request signed with SigV4 by botocore (payload hash of `body` in the signature)."""
    request = AWSRequest(method=method, url=f"{url}{path}", data=body, headers=headers or {})
    S3SigV4Auth(Credentials(user.access_key, user.secret_key), "s3", "us-east-1").add_auth(request)
    return request


def send(request: AWSRequest, *, body: bytes | None = None) -> Response:
    """Send a prepared request as is (optionally with a different body of our choosing)."""
    prepared = request.prepare()
    split = urlsplit(prepared.url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=30)
    try:
        target = split.path + (f"?{split.query}" if split.query else "")
        conn.request(prepared.method, target, body=prepared.body if body is None else body,
                     headers=dict(prepared.headers))
        response = conn.getresponse()
        return Response(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def _client_error(call, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    response = err.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def _absent(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "404"
    return False


def _storage_counts(url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(f"{url}/_eucalypt/metrics", timeout=10).read().decode()
    values = [float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
              for name in ("eucalypt_walrus_storage_chunks", "eucalypt_walrus_storage_objects")]
    return values[0], values[1]


@pytest.fixture
def bucket(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    return bucket_name


# ---- malformed and hostile XML ----------------------------------------------------------

def test_complete_multipart_upload_malformed_xml(walrus, alice, bucket):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = alice.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                             Body=b"only part")["ETag"]
    for body in _malformed("CompleteMultipartUpload"):
        r = send(signed(walrus.url, "POST", f"/{bucket}/mp?uploadId={upload}", body=body))
        assert (r.status, r.code) == (400, "MalformedXML"), (body, r)
    assert _absent(alice, bucket, "mp")
    # The upload is untouched and still completes.
    assert [p["ETag"] for p in alice.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]] == [etag]
    alice.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert alice.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"only part"


def test_delete_objects_malformed_xml(walrus, alice, bucket):
    alice.put_object(Bucket=bucket, Key="keep", Body=b"still here")
    bodies = _malformed("Delete") + [b"<Delete></Delete>", b"<Delete><Object><Key></Key></Object></Delete>"]
    for body in bodies:
        r = send(signed(walrus.url, "POST", f"/{bucket}?delete", body=body,
                        headers={"Content-MD5": _md5_b64(body)}))
        assert (r.status, r.code) == (400, "MalformedXML"), (body, r)
    assert alice.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"still here"


def test_put_bucket_acl_malformed_xml(walrus, alice, bucket):
    before = alice.get_bucket_acl(Bucket=bucket)["Grants"]
    bodies = _malformed("AccessControlPolicy") + [
        b"<AccessControlPolicy><AccessControlList><Grant><Grantee/><Permission>ALL</Permission>"
        b"</Grant></AccessControlList></AccessControlPolicy>"]
    for body in bodies:
        r = send(signed(walrus.url, "PUT", f"/{bucket}?acl", body=body))
        assert (r.status, r.code) == (400, "MalformedACLError"), (body, r)
    assert alice.get_bucket_acl(Bucket=bucket)["Grants"] == before


def test_create_bucket_configuration_malformed_xml(walrus, alice, bucket_name):
    for body in _malformed("CreateBucketConfiguration"):
        r = send(signed(walrus.url, "PUT", f"/{bucket_name}", body=body))
        assert (r.status, r.code) == (400, "MalformedXML"), (body, r)
    assert _client_error(alice.head_bucket, Bucket=bucket_name)[0] == 404
    assert bucket_name not in [b["Name"] for b in alice.list_buckets()["Buckets"]]


# ---- authentication ---------------------------------------------------------------------

@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_wrong_secret(walrus, alice, bucket, signature):
    forger = s3_client(walrus.url, UserKeys("alice", ALICE.access_key, "not-the-secret"),
                       signature=signature)
    assert _client_error(forger.put_object, Bucket=bucket, Key="k", Body=b"x") == \
        (403, "SignatureDoesNotMatch")
    assert _absent(alice, bucket, "k")


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_unknown_access_key(walrus, alice, bucket, signature):
    stranger = s3_client(walrus.url, UserKeys("x", "AKIDNOBODY000000000", "whatever"),
                         signature=signature)
    assert _client_error(stranger.put_object, Bucket=bucket, Key="k", Body=b"x") == \
        (403, "InvalidAccessKeyId")
    assert _absent(alice, bucket, "k")


def _get(url: str) -> Response:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read())


def _signed_at(monkeypatch, delta: timedelta) -> None:
    """Make botocore sign as if its clock were off by delta."""
    real = datetime.now(timezone.utc).replace(tzinfo=None) + delta
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: real)
    monkeypatch.setattr(botocore.auth, "formatdate",
                        lambda *a, **k: email.utils.formatdate(time.time() + delta.total_seconds(),
                                                               usegmt=True))


def test_expired_presigned_url(walrus, alice, bucket, monkeypatch):
    alice.put_object(Bucket=bucket, Key="k", Body=b"secret body")
    fresh = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                         ExpiresIn=600)
    assert _get(fresh).body == b"secret body"
    v2 = s3_client(walrus.url, ALICE, signature="s3")
    fresh_v2 = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                         ExpiresIn=600)
    assert _get(fresh_v2).body == b"secret body"

    _signed_at(monkeypatch, timedelta(minutes=-10))
    expired = alice.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                           ExpiresIn=60)
    r = _get(expired)
    assert (r.status, r.code) == (403, "AccessDenied"), r
    monkeypatch.undo()
    expired_v2 = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                           ExpiresIn=-60)
    assert "Expires=" in expired_v2
    r = _get(expired_v2)
    assert (r.status, r.code) == (403, "AccessDenied"), r


@pytest.mark.parametrize("minutes", [-20, 20])
@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_request_time_too_skewed(walrus, alice, bucket, monkeypatch, minutes, signature):
    skewed = s3_client(walrus.url, ALICE, signature=signature)
    _signed_at(monkeypatch, timedelta(minutes=minutes))
    assert _client_error(skewed.put_object, Bucket=bucket, Key="k", Body=b"x") == \
        (403, "RequestTimeTooSkewed")
    monkeypatch.undo()
    assert _absent(alice, bucket, "k")


# ---- limits -----------------------------------------------------------------------------

def _with_headers(client, event: str, headers: dict) -> None:
    def add(request, **kwargs):
        for name, value in headers.items():
            request.headers[name] = value
    client.meta.events.register(f"before-sign.s3.{event}", add)


def test_header_section_too_large(walrus, bucket):
    client = s3_client(walrus.url, ALICE)
    _with_headers(client, "PutObject", {f"x-filler-{i}": "f" * 1000 for i in range(10)})
    assert _client_error(client.put_object, Bucket=bucket, Key="k", Body=b"x") == \
        (400, "RequestHeaderSectionTooLarge")
    ok = s3_client(walrus.url, ALICE)
    assert _absent(ok, bucket, "k")
    # Well under the limit is fine.
    _with_headers(ok, "PutObject", {f"x-filler-{i}": "f" * 1000 for i in range(5)})
    ok.put_object(Bucket=bucket, Key="k", Body=b"x")


def _raw_exchange(port: int, head: bytes) -> bytes:
    """Send a request head as is and read the whole answer (Connection: close)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer
    finally:
        sock.close()


def _s3_error(answer: bytes) -> tuple[int, str | None]:
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    assert body.startswith(b"<?xml"), answer[:300]
    return int(status_line.split()[1]), ET.fromstring(body).findtext("Code")


@pytest.mark.parametrize("field_size", [12 * 1024, 40 * 1024])
def test_single_huge_header_is_an_s3_error(walrus, alice, bucket, field_size):
    """One header field larger than the whole 8 KiB section still gets S3's answer, not
    the HTTP library's plain-text 400."""
    head = (f"PUT /{bucket}/k HTTP/1.1\r\nHost: 127.0.0.1:{walrus.port}\r\n"
            f"x-amz-meta-big: {'m' * field_size}\r\nContent-Length: 1\r\n"
            "Connection: close\r\n\r\nx").encode()
    assert _s3_error(_raw_exchange(walrus.port, head)) == (400, "RequestHeaderSectionTooLarge")
    assert _absent(alice, bucket, "k")


def test_huge_key_in_request_line(walrus, alice, bucket):
    """A request line past the HTTP parser's line limit is still S3's KeyTooLongError."""
    r = send(signed(walrus.url, "PUT", f"/{bucket}/{'k' * 20000}", body=b"x"))
    assert (r.status, r.code) == (400, "KeyTooLongError"), r
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_key_that_is_not_utf8(walrus, alice, bucket):
    """%FF and %FE are not UTF-8: S3 refuses them (InvalidURI) rather than storing both
    under U+FFFD, where they would overwrite each other."""
    for raw_key in ("%FF", "%FE", "ok%C3"):
        r = send(signed(walrus.url, "PUT", f"/{bucket}/{raw_key}", body=raw_key.encode()))
        assert (r.status, r.code) == (400, "InvalidURI"), r
    r = send(signed(walrus.url, "PUT", "/%FF%FE"))
    assert (r.status, r.code) == (400, "InvalidURI"), r
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_metadata_too_large(walrus, alice, bucket):
    assert _client_error(alice.put_object, Bucket=bucket, Key="k", Body=b"x",
                         Metadata={"big": "v" * 2046}) == (400, "MetadataTooLarge")
    assert _client_error(alice.put_object, Bucket=bucket, Key="k", Body=b"x",
                         Metadata={f"m{i}": "v" * 200 for i in range(11)}) == (400, "MetadataTooLarge")
    assert _absent(alice, bucket, "k")
    # 2 KiB exactly (names + values) is allowed.
    alice.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata={"big": "v" * 2045})
    assert alice.head_object(Bucket=bucket, Key="k")["Metadata"] == {"big": "v" * 2045}


def test_key_too_long(walrus, alice, bucket):
    for key in ("k" * 1025, "é" * 513):  # 1025 and 1026 bytes
        assert _client_error(alice.put_object, Bucket=bucket, Key=key, Body=b"x") == \
            (400, "KeyTooLongError")
        upload_error = _client_error(alice.create_multipart_upload, Bucket=bucket, Key=key)
        assert upload_error == (400, "KeyTooLongError")
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    alice.put_object(Bucket=bucket, Key="k" * 1024, Body=b"x")
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


@pytest.mark.parametrize("name", ["MyBucket", "ab", "192.168.5.4", "a..b", "-abc", "abc-",
                                  "a" * 64, "a_b", "abc.-def"])
def test_invalid_bucket_names(walrus, alice, name):
    assert _client_error(alice.create_bucket, Bucket=name) == (400, "InvalidBucketName")
    assert name not in [b["Name"] for b in alice.list_buckets()["Buckets"]]


# ---- integrity of the body --------------------------------------------------------------

@pytest.mark.parametrize("size", [100, 2 * 1024 * 1024 + 3])
def test_bad_content_md5_keeps_old_version(walrus, alice, bucket, size):
    old, new = os.urandom(size), os.urandom(size)
    alice.put_object(Bucket=bucket, Key="k", Body=old)
    before = _storage_counts(walrus.url)
    for key in ("k", "fresh"):
        assert _client_error(alice.put_object, Bucket=bucket, Key=key, Body=new,
                             ContentMD5=_md5_b64(old)) == (400, "BadDigest")
    assert alice.get_object(Bucket=bucket, Key="k")["Body"].read() == old
    assert _absent(alice, bucket, "fresh")
    assert _storage_counts(walrus.url) == before


def test_bad_upload_part_keeps_previous_part(walrus, alice, bucket):
    upload = alice.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    good = os.urandom(1000)
    etag = alice.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=good)["ETag"]
    other = os.urandom(1000)
    assert _client_error(alice.upload_part, Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                         Body=other, ContentMD5=_md5_b64(good)) == (400, "BadDigest")
    r = send(signed(walrus.url, "PUT", f"/{bucket}/mp?partNumber=1&uploadId={upload}", body=good),
             body=other)
    assert (r.status, r.code) == (400, "XAmzContentSHA256Mismatch"), r
    parts = alice.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, etag, 1000)]
    alice.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert alice.get_object(Bucket=bucket, Key="mp")["Body"].read() == good


def test_put_object_acl_malformed_xml(walrus, alice, bucket):
    alice.put_object(Bucket=bucket, Key="k", Body=b"x")
    before = alice.get_object_acl(Bucket=bucket, Key="k")["Grants"]
    for body in _malformed("AccessControlPolicy"):
        r = send(signed(walrus.url, "PUT", f"/{bucket}/k?acl", body=body))
        assert (r.status, r.code) == (400, "MalformedACLError"), (body, r)
    assert alice.get_object_acl(Bucket=bucket, Key="k")["Grants"] == before


@pytest.mark.parametrize("digest", ["not base64!!", base64.b64encode(b"ten bytes!").decode(), ""])
def test_invalid_content_md5(walrus, alice, bucket, digest):
    r = send(signed(walrus.url, "PUT", f"/{bucket}/k", body=b"data", headers={"Content-MD5": digest}))
    assert (r.status, r.code) == (400, "InvalidDigest"), r
    assert _absent(alice, bucket, "k")


@pytest.mark.parametrize("size", [100, 2 * 1024 * 1024 + 3])
def test_wrong_content_sha256_keeps_old_version(walrus, alice, bucket, size):
    old, claimed, sent = os.urandom(size), os.urandom(size), os.urandom(size)
    alice.put_object(Bucket=bucket, Key="k", Body=old)
    before = _storage_counts(walrus.url)
    for key in ("k", "fresh"):
        # Signed over `claimed` (so the signature is valid); the body that arrives differs.
        r = send(signed(walrus.url, "PUT", f"/{bucket}/{key}", body=claimed), body=sent)
        assert (r.status, r.code) == (400, "XAmzContentSHA256Mismatch"), r
    assert alice.get_object(Bucket=bucket, Key="k")["Body"].read() == old
    assert _absent(alice, bucket, "fresh")
    assert _storage_counts(walrus.url) == before


def test_wrong_content_sha256_on_xml_body(walrus, alice, bucket):
    """A tampered DeleteObjects document (same length, valid Content-MD5 of what is sent)
    must not delete anything: the signature covers the payload hash."""
    alice.put_object(Bucket=bucket, Key="aaaa", Body=b"1")
    alice.put_object(Bucket=bucket, Key="bbbb", Body=b"2")
    claimed = b"<Delete><Object><Key>aaaa</Key></Object></Delete>"
    sent = b"<Delete><Object><Key>bbbb</Key></Object></Delete>"
    r = send(signed(walrus.url, "POST", f"/{bucket}?delete", body=claimed,
                    headers={"Content-MD5": _md5_b64(sent)}), body=sent)
    assert (r.status, r.code) == (400, "XAmzContentSHA256Mismatch"), r
    assert sorted(o["Key"] for o in alice.list_objects_v2(Bucket=bucket)["Contents"]) == ["aaaa", "bbbb"]


@pytest.mark.parametrize("payload", ["signed", "unsigned"])
def test_truncated_body(walrus, alice, bucket, payload):
    full = os.urandom(1000)
    request = AWSRequest(method="PUT", url=f"{walrus.url}/{bucket}/k", data=full)
    auth = S3SigV4Auth
    if payload == "unsigned":
        class auth(S3SigV4Auth):  # noqa: N801 - botocore always hashes a body on http
            def payload(self, request):
                return "UNSIGNED-PAYLOAD"
    auth(Credentials(ALICE.access_key, ALICE.secret_key), "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    head = f"PUT /{bucket}/k HTTP/1.1\r\nHost: 127.0.0.1:{walrus.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in prepared.headers.items() if k.lower() != "host")
    sock = socket.create_connection(("127.0.0.1", walrus.port), timeout=15)
    try:
        sock.sendall(head.encode() + b"\r\n" + full[:500])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    # aiohttp closes a half-closed connection without answering; if an answer does come,
    # it must be IncompleteBody.
    if answer:
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"400", answer
        xml = rest.partition(b"\r\n\r\n")[2]
        assert ET.fromstring(xml).findtext("Code") == "IncompleteBody", answer
    assert _absent(alice, bucket, "k")


# ---- what Walrus does not implement -----------------------------------------------------

def test_unknown_subresources_are_not_implemented(walrus, alice, bucket):
    assert _client_error(alice.get_bucket_website, Bucket=bucket) == (501, "NotImplemented")
    assert _client_error(alice.get_bucket_cors, Bucket=bucket) == (501, "NotImplemented")
    assert _client_error(alice.put_bucket_lifecycle_configuration, Bucket=bucket,
                         LifecycleConfiguration={"Rules": [{"ID": "r", "Status": "Enabled",
                                                            "Filter": {"Prefix": ""},
                                                            "Expiration": {"Days": 1}}]}) == \
        (501, "NotImplemented")
    r = send(signed(walrus.url, "GET", f"/{bucket}?website"))
    assert (r.status, r.code) == (501, "NotImplemented"), r
    r = send(signed(walrus.url, "PATCH", f"/{bucket}/k", body=b"x"))
    assert (r.status, r.code) == (501, "NotImplemented"), r
    assert _absent(alice, bucket, "k")
    # Bob is told the same (routing comes before authorisation).
    assert _client_error(s3_client(walrus.url, BOB).get_bucket_website, Bucket=bucket) == \
        (501, "NotImplemented")
