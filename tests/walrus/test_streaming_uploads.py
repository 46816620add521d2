"""aws-chunked uploads (STREAMING-* payloads) end to end, with per-chunk signature checks,
plus Expect: 100-continue. Bodies are framed here with our signer (tested equal to
botocore's) and sent over a raw connection so every byte is under the test's control."""

import base64
import hashlib
import http.client
import zlib
from datetime import datetime, timezone

import pytest

from walrustest import ALICE
from eucalypt.auth import HttpRequest, sign_v4
from eucalypt.auth._sigv4 import signing_key
from eucalypt.auth.chunked import chunk_signature, trailer_signature

REGION = "eucalyptus"


def _frame_signed(chunks, key, amz_date, scope, seed, trailers=None):
    out, previous = [], seed
    for data in list(chunks) + [b""]:
        sig = chunk_signature(key, amz_date, scope, previous, hashlib.sha256(data).hexdigest())
        out.append(f"{len(data):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n")
        previous = sig
    if trailers is not None:
        out[-1] = out[-1][:-2]  # the final chunk's CRLF is followed by the trailers
        lines = "".join(f"{k}:{v}\r\n" for k, v in trailers.items())
        tsig = trailer_signature(key, amz_date, scope, previous, trailers)
        out.append(lines.encode() + f"x-amz-trailer-signature:{tsig}\r\n\r\n".encode())
    return b"".join(out)


def _frame_unsigned(chunks, trailers):
    out = [f"{len(d):x}\r\n".encode() + d + b"\r\n" for d in chunks]
    out.append(b"0\r\n" + "".join(f"{k}:{v}\r\n" for k, v in trailers.items()).encode() + b"\r\n")
    return b"".join(out)


def _put(walrus, path, mode, payload_chunks, *, tamper=None, trailers=None, expect=False):
    host = f"127.0.0.1:{walrus.port}"
    decoded = sum(len(c) for c in payload_chunks)
    headers = {"host": host, "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(decoded)}
    if trailers is not None:
        headers["x-amz-trailer"] = ",".join(trailers)
    now = datetime.now(timezone.utc)
    signed = sign_v4(HttpRequest("PUT", path, "", headers), access_key=ALICE.access_key,
                     secret=ALICE.secret_key, region=REGION, service="s3", now=now, payload_sha256=mode)
    amz_date = signed["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    seed = signed["Authorization"].rsplit("Signature=", 1)[1]
    key = signing_key(ALICE.secret_key, amz_date[:8], REGION, "s3")
    if mode == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
        body = _frame_unsigned(payload_chunks, trailers)
    else:
        body = _frame_signed(payload_chunks, key, amz_date, scope, seed, trailers)
    if tamper:
        body = tamper(body)
    headers.update(signed)
    headers["content-length"] = str(len(body))
    if expect:
        headers["expect"] = "100-continue"
    conn = http.client.HTTPConnection("127.0.0.1", walrus.port, timeout=30)
    conn.request("PUT", path, body=body, headers=headers)
    response = conn.getresponse()
    result = response.status, response.read()
    conn.close()
    return result


@pytest.fixture
def bucket(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    return bucket_name


CHUNKS = [b"a" * 65536, bytes(range(256)) * 100, b"tail"]


def test_streaming_signed_payload(walrus, alice, bucket):
    status, body = _put(walrus, f"/{bucket}/streamed", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", CHUNKS)
    assert status == 200, body
    got = alice.get_object(Bucket=bucket, Key="streamed")
    assert got["Body"].read() == b"".join(CHUNKS)
    assert got.get("ContentEncoding") is None  # aws-chunked is not stored


def test_streaming_tampered_chunk_rejected(walrus, alice, bucket):
    def flip(body):
        at = body.index(b"\r\n") + 100
        return body[:at] + bytes([body[at] ^ 1]) + body[at + 1:]
    status, body = _put(walrus, f"/{bucket}/tampered", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", CHUNKS, tamper=flip)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_streaming_truncated_rejected(walrus, alice, bucket):
    status, body = _put(walrus, f"/{bucket}/short", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", CHUNKS,
                        tamper=lambda b: b[: len(b) - 120])
    assert status in (400, 403), body
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_streaming_signed_trailer_with_crc32(walrus, alice, bucket):
    data = b"".join(CHUNKS)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    status, body = _put(walrus, f"/{bucket}/trailer", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", CHUNKS,
                        trailers={"x-amz-checksum-crc32": crc})
    assert status == 200, body
    got = alice.get_object(Bucket=bucket, Key="trailer", ChecksumMode="ENABLED")
    assert got["Body"].read() == data and got["ChecksumCRC32"] == crc


def test_unsigned_trailer_checksum_verified(walrus, alice, bucket):
    data = b"".join(CHUNKS)
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    status, body = _put(walrus, f"/{bucket}/unsigned", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", CHUNKS,
                        trailers={"x-amz-checksum-crc32": good}, expect=True)
    assert status == 200, body
    assert alice.get_object(Bucket=bucket, Key="unsigned")["Body"].read() == data
    bad = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    status, body = _put(walrus, f"/{bucket}/unsigned-bad", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", CHUNKS,
                        trailers={"x-amz-checksum-crc32": bad})
    assert status == 400 and b"BadDigest" in body
    keys = [o["Key"] for o in alice.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["unsigned"]


def test_expect_100_continue_with_boto3(alice, bucket):
    # botocore sends Expect: 100-continue on every PutObject with a body.
    seen = []
    alice.meta.events.register("before-send.s3.PutObject",
                               lambda request, **kw: seen.append(request.headers.get("Expect")))
    alice.put_object(Bucket=bucket, Key="expect", Body=b"x" * 100_000)
    assert seen == [b"100-continue"] or seen == ["100-continue"]
    assert alice.get_object(Bucket=bucket, Key="expect")["Body"].read() == b"x" * 100_000


def _head_only_put(walrus, path, headers):
    """Send only the request head of a PUT with Expect: 100-continue; return the first
    status line the server answers with."""
    import socket
    lines = [f"PUT {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", walrus.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(65536).split(b"\r\n", 1)[0].decode()


def _signed_put_headers(walrus, path, secret):
    host = f"127.0.0.1:{walrus.port}"
    headers = {"host": host, "content-length": "5", "expect": "100-continue"}
    signed = sign_v4(HttpRequest("PUT", path, "", headers), access_key=ALICE.access_key, secret=secret,
                     region=REGION, service="s3", now=datetime.now(timezone.utc))
    return {**headers, **signed}


def test_expect_continue_only_after_authentication(walrus, alice, bucket):
    path = f"/{bucket}/early"
    assert _head_only_put(walrus, path, _signed_put_headers(walrus, path, ALICE.secret_key)) \
        == "HTTP/1.1 100 Continue"
    # A request that will be refused is refused before the client sends its body.
    assert _head_only_put(walrus, path, _signed_put_headers(walrus, path, "wrong-secret")) \
        == "HTTP/1.1 403 Forbidden"
