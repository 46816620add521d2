"""s3cmd (SigV2 and SigV4) against a real Walrus, plus virtual-host style addressing.

Each test writes its own s3cfg: path style (host_bucket = host_base, since virtual hosting
cannot work with an IP address), plain http.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from walrustest import ALICE, s3_client, start_walrus

S3CMD = str(Path(sys.executable).with_name("s3cmd"))


def _s3cfg(path: Path, host: str, *, v2: bool, host_bucket: str | None = None) -> Path:
    path.write_text(
        "[default]\n"
        f"access_key = {ALICE.access_key}\n"
        f"secret_key = {ALICE.secret_key}\n"
        f"host_base = {host}\n"
        f"host_bucket = {host_bucket or host}\n"
        "use_https = False\n"
        f"signature_v2 = {v2}\n"
        "bucket_location = us-east-1\n"
        "check_ssl_certificate = False\n"
        "guess_mime_type = False\n"
        "progress_meter = False\n"
    )
    return path


@pytest.fixture(scope="module")
def walrus(tmp_path_factory, users_file):
    """A Walrus of this module's own: `s3cmd la` lists every bucket the user owns, and
    other modules leave buckets behind whose ACLs lock their owner out on purpose."""
    server = start_walrus(tmp_path_factory.mktemp("walrus-s3cmd") / "data", users_file)
    yield server
    server.stop()


@pytest.fixture(params=[True, False], ids=["sigv2", "sigv4"])
def s3cmd(request, walrus, tmp_path):
    config = _s3cfg(tmp_path / "s3cfg", f"127.0.0.1:{walrus.port}", v2=request.param)

    def run(*args: str, check: bool = True):
        result = subprocess.run([S3CMD, "-c", str(config), *args], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "HOME": str(tmp_path)})
        if check and result.returncode != 0:
            raise AssertionError(f"s3cmd {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run


def _anonymous_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _error_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


def test_s3cmd_workflow(s3cmd, walrus, tmp_path, bucket_name):
    s3 = f"s3://{bucket_name}"
    assert "created" in s3cmd("mb", s3).stdout
    assert s3 in s3cmd("ls").stdout

    small = b"a small object\n"
    (tmp_path / "small.txt").write_bytes(small)
    # Over s3cmd's multipart chunk size (set to its 5 MiB minimum): a multipart upload.
    big = os.urandom(11 * 1024 * 1024 + 7)
    (tmp_path / "big.bin").write_bytes(big)
    s3cmd("put", str(tmp_path / "small.txt"), f"{s3}/small.txt")
    s3cmd("put", "--multipart-chunk-size-mb=5", str(tmp_path / "big.bin"), f"{s3}/big.bin")
    head = s3_client(walrus.url, ALICE).head_object(Bucket=bucket_name, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(big)

    listing = s3cmd("ls", f"{s3}/").stdout
    assert f"{s3}/small.txt" in listing and f"{s3}/big.bin" in listing
    assert str(len(big)) in listing
    everything = s3cmd("la").stdout
    assert f"{s3}/small.txt" in everything and f"{s3}/big.bin" in everything

    s3cmd("get", "--force", f"{s3}/big.bin", str(tmp_path / "big.down"))
    assert hashlib.sha256((tmp_path / "big.down").read_bytes()).digest() == hashlib.sha256(big).digest()
    s3cmd("get", "--force", f"{s3}/small.txt", str(tmp_path / "small.down"))
    assert (tmp_path / "small.down").read_bytes() == small

    # Private by default: an anonymous GET is denied with the S3 error document.
    url = f"{walrus.url}/{bucket_name}/small.txt"
    status, body = _anonymous_get(url)
    assert (status, _error_code(body)) == (403, "AccessDenied")
    assert "ACL set to Public" in s3cmd("setacl", "--acl-public", f"{s3}/small.txt").stdout
    assert _anonymous_get(url) == (200, small)
    # The other object stays private.
    status, body = _anonymous_get(f"{walrus.url}/{bucket_name}/big.bin")
    assert (status, _error_code(body)) == (403, "AccessDenied")
    info = s3cmd("info", f"{s3}/small.txt").stdout
    assert "*anon*: READ" in info and "Alice: FULL_CONTROL" in info
    s3cmd("setacl", "--acl-private", f"{s3}/small.txt")
    status, body = _anonymous_get(url)
    assert (status, _error_code(body)) == (403, "AccessDenied")

    # sync up, nothing to do the second time, sync down.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_bytes(b"one\n")
    (src / "sub" / "two.bin").write_bytes(os.urandom(40_000))
    out = s3cmd("sync", f"{src}/", f"{s3}/tree/").stdout
    assert out.count("upload:") == 2
    assert "upload:" not in s3cmd("sync", f"{src}/", f"{s3}/tree/").stdout
    dst = tmp_path / "dst"
    dst.mkdir()
    s3cmd("sync", f"{s3}/tree/", f"{dst}/")
    assert (dst / "one.txt").read_bytes() == b"one\n"
    assert (dst / "sub" / "two.bin").read_bytes() == (src / "sub" / "two.bin").read_bytes()

    # del, then rb refuses a non-empty bucket, del -r, rb.
    assert "delete:" in s3cmd("del", f"{s3}/small.txt").stdout
    assert s3cmd("rb", s3, check=False).returncode != 0
    out = s3cmd("del", "--recursive", "--force", f"{s3}/").stdout
    assert out.count("delete:") == 3
    assert "removed" in s3cmd("rb", s3).stdout
    assert s3 not in s3cmd("ls").stdout


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 80)
        return True
    except OSError:
        return False


def _send(port: int, request: AWSRequest, host: str) -> tuple[int, dict, bytes]:
    prepared = request.prepare()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        path = prepared.url.split(host, 1)[1] or "/"
        conn.putrequest(prepared.method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in prepared.headers.items():
            conn.putheader(name, value)
        body = prepared.body or b""
        if "Content-Length" not in prepared.headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_virtual_host_style(walrus, tmp_path, bucket_name, signature):
    """BUCKET.localhost:PORT addresses BUCKET. With s3cmd if *.localhost resolves here;
    otherwise (glibc does not resolve it) the same requests go raw to 127.0.0.1 with a
    virtual-host Host header, signed by botocore."""
    host = f"{bucket_name}.localhost:{walrus.port}"
    alice = s3_client(walrus.url, ALICE)
    alice.create_bucket(Bucket=bucket_name)
    data = os.urandom(50_000)
    if _resolves(f"{bucket_name}.localhost"):
        config = _s3cfg(tmp_path / "s3cfg", f"localhost:{walrus.port}", v2=signature == "s3",
                        host_bucket=f"%(bucket)s.localhost:{walrus.port}")
        (tmp_path / "f").write_bytes(data)
        run = lambda *a: subprocess.run([S3CMD, "-c", str(config), *a], check=True,  # noqa: E731
                                        capture_output=True, text=True, timeout=60).stdout
        run("put", str(tmp_path / "f"), f"s3://{bucket_name}/v/obj")
        assert "v/obj" in run("ls", f"s3://{bucket_name}/v/")
        run("get", "--force", f"s3://{bucket_name}/v/obj", str(tmp_path / "g"))
        assert (tmp_path / "g").read_bytes() == data
    else:
        credentials = Credentials(ALICE.access_key, ALICE.secret_key)

        def signed(method: str, path: str, body: bytes = b"") -> AWSRequest:
            request = AWSRequest(method=method, url=f"http://{host}{path}", data=body)
            if signature == "s3v4":
                S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
            else:
                # SigV2 signs /BUCKET/KEY although the path is /KEY; botocore's HmacV1
                # takes the resource from the path, so hand it the virtual-host one.
                request.headers["Date"] = formatdate(usegmt=True)
                resource = f"/{bucket_name}{path}"
                signature_v2 = HmacV1Auth(credentials).get_signature(
                    method, urlsplit(f"http://{host}{resource}"), request.headers)
                request.headers["Authorization"] = f"AWS {ALICE.access_key}:{signature_v2}"
            return request

        status, _, body = _send(walrus.port, signed("PUT", "/v/obj", data), host)
        assert status == 200, body
        status, _, body = _send(walrus.port, signed("GET", "/v/obj"), host)
        assert (status, body) == (200, data)
        status, _, body = _send(walrus.port, signed("GET", "/"), host)
        assert status == 200, body
        keys = [e.text for e in ET.fromstring(body).iter() if e.tag.endswith("}Key")]
        assert keys == ["v/obj"]
    # Either way the object is the one path-style clients see.
    assert alice.get_object(Bucket=bucket_name, Key="v/obj")["Body"].read() == data
