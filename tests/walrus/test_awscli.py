"""The aws cli (v1, as a subprocess) against a real Walrus: `aws s3` and `aws s3api`.

Credentials come only from the environment; config and credentials files point at empty
temp files so nothing on the machine leaks in. Each `aws` run costs ~0.5 s of start-up,
so the tests chain many steps per invocation budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from walrustest import ALICE, BOB

AWS = str(Path(sys.executable).with_name("aws"))
MULTIPART_SIZE = 9 * 1024 * 1024 + 12345  # over the cli's 8 MiB multipart threshold


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def aws(walrus, tmp_path):
    """aws(*args, user=ALICE, check=True, stdin=None) -> CompletedProcess (text)."""
    config = tmp_path / "aws-config"
    credentials = tmp_path / "aws-credentials"
    config.write_text("")
    credentials.write_text("")

    def run(*args: str, user=ALICE, check: bool = True, stdin: Path | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=user.access_key, AWS_SECRET_ACCESS_KEY=user.secret_key,
                   AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(config),
                   AWS_SHARED_CREDENTIALS_FILE=str(credentials), AWS_MAX_ATTEMPTS="1",
                   AWS_PAGER="")
        with open(stdin or os.devnull, "rb") as source:
            result = subprocess.run([AWS, "--endpoint-url", walrus.url, *args], env=env,
                                    stdin=source, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run


def _requests(url: str, operation: str) -> float:
    """How many requests of this operation the server answered with 200 so far."""
    text = urllib.request.urlopen(f"{url}/_eucalypt/metrics", timeout=10).read().decode()
    match = re.search(rf'^eucalypt_walrus_requests_total{{operation="{operation}",status="200"}} (\S+)$',
                      text, re.M)
    return float(match.group(1)) if match else 0.0


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_s3_mb_cp_sync_ls_rm_rb(aws, walrus, tmp_path, bucket_name):
    s3 = f"s3://{bucket_name}"
    assert f"make_bucket: {bucket_name}" in aws("s3", "mb", s3).stdout
    assert bucket_name in aws("s3", "ls").stdout

    big = os.urandom(MULTIPART_SIZE)
    (tmp_path / "big.bin").write_bytes(big)
    out = aws("s3", "cp", "--no-progress", str(tmp_path / "big.bin"), f"{s3}/dir/big.bin").stdout
    assert "upload: " in out and f"{s3}/dir/big.bin" in out
    # A multipart upload (two 8 MiB-threshold parts): the ETag says so.
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket_name, "--key", "dir/big.bin").stdout)
    assert head["ContentLength"] == MULTIPART_SIZE
    assert head["ETag"].strip('"').endswith("-2")

    # Download (the cli uses ranged GETs above the threshold) and compare bytes.
    aws("s3", "cp", "--no-progress", f"{s3}/dir/big.bin", str(tmp_path / "big.down"))
    assert (tmp_path / "big.down").read_bytes() == big

    # sync a tree up, list it, sync it down elsewhere, compare.
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_bytes(b"top level\n")
    (src / "a" / "one.bin").write_bytes(os.urandom(70_000))
    (src / "a" / "b" / "empty").write_bytes(b"")
    (src / "a" / "b" / "two words.txt").write_bytes(b"spaces in the key\n")
    out = aws("s3", "sync", "--no-progress", str(src), f"{s3}/tree").stdout
    assert out.count("upload: ") == 4
    # A second sync has nothing to do.
    assert aws("s3", "sync", "--no-progress", str(src), f"{s3}/tree").stdout.strip() == ""

    listing = aws("s3", "ls", "--recursive", s3).stdout
    keys = sorted(line.split(None, 3)[3] for line in listing.splitlines() if line.strip())
    assert keys == ["dir/big.bin", "tree/a/b/empty", "tree/a/b/two words.txt", "tree/a/one.bin",
                    "tree/top.txt"]
    top = aws("s3", "ls", f"{s3}/tree/").stdout
    assert "PRE a/" in top and "top.txt" in top

    dst = tmp_path / "dst"
    aws("s3", "sync", "--no-progress", f"{s3}/tree", str(dst))
    assert _tree(dst) == _tree(src)

    # Server-side copy; above the threshold the cli copies in parts (UploadPartCopy).
    part_copies = _requests(walrus.url, "UploadPartCopy")
    out = aws("s3", "cp", "--no-progress", f"{s3}/dir/big.bin", f"{s3}/copy/big.bin").stdout
    assert f"copy: {s3}/dir/big.bin to {s3}/copy/big.bin" in out
    assert _requests(walrus.url, "UploadPartCopy") - part_copies == 2
    # A presigned URL from the cli works without credentials.
    url = aws("s3", "presign", f"{s3}/copy/big.bin", "--expires-in", "300").stdout.strip()
    with urllib.request.urlopen(url, timeout=30) as response:
        assert hashlib.sha256(response.read()).digest() == hashlib.sha256(big).digest()
    # Upload from stdin (size unknown to the cli: multipart from a stream).
    streamed = os.urandom(MULTIPART_SIZE)
    (tmp_path / "streamed").write_bytes(streamed)
    aws("s3", "cp", "--no-progress", "-", f"{s3}/copy/streamed", stdin=tmp_path / "streamed")
    aws("s3", "cp", "--no-progress", f"{s3}/copy/streamed", str(tmp_path / "streamed.down"))
    assert (tmp_path / "streamed.down").read_bytes() == streamed

    # rm one key, then the rest; rb on an empty bucket.
    assert "delete: " in aws("s3", "rm", f"{s3}/tree/top.txt").stdout
    failed = aws("s3", "rb", s3, check=False)
    assert failed.returncode != 0 and "BucketNotEmpty" in failed.stderr
    out = aws("s3", "rm", "--recursive", s3).stdout
    assert out.count("delete: ") == 6
    assert f"remove_bucket: {bucket_name}" in aws("s3", "rb", s3).stdout
    gone = aws("s3", "ls", s3, check=False)
    assert gone.returncode != 0 and "NoSuchBucket" in gone.stderr


def test_s3api_objects_acls_and_multipart(aws, walrus, tmp_path, bucket_name):
    aws("s3api", "create-bucket", "--bucket", bucket_name)
    body = b"hello from s3api\n" * 100
    (tmp_path / "body").write_bytes(body)
    put = json.loads(aws("s3api", "put-object", "--bucket", bucket_name, "--key", "docs/hello.txt",
                         "--body", str(tmp_path / "body"), "--content-type", "text/plain",
                         "--metadata", "color=blue,shape=round").stdout)
    assert put["ETag"] == f'"{_md5(body)}"'
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket_name,
                          "--key", "docs/hello.txt").stdout)
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"color": "blue", "shape": "round"}

    got = json.loads(aws("s3api", "get-object", "--bucket", bucket_name, "--key", "docs/hello.txt",
                         "--range", "bytes=6-15", str(tmp_path / "range")).stdout)
    assert got["ContentRange"] == f"bytes 6-15/{len(body)}"
    assert (tmp_path / "range").read_bytes() == body[6:16]

    missing = aws("s3api", "head-object", "--bucket", bucket_name, "--key", "nope", check=False)
    assert missing.returncode != 0 and "404" in missing.stderr

    # Bob may not read Alice's private object.
    denied = aws("s3api", "get-object", "--bucket", bucket_name, "--key", "docs/hello.txt",
                 str(tmp_path / "bob"), user=BOB, check=False)
    assert denied.returncode != 0 and "AccessDenied" in denied.stderr

    # ACLs: private by default, then public-read; anonymous GET works after.
    acl = json.loads(aws("s3api", "get-object-acl", "--bucket", bucket_name,
                         "--key", "docs/hello.txt").stdout)
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    url = f"{walrus.url}/{bucket_name}/docs/hello.txt"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 403
    aws("s3api", "put-object-acl", "--bucket", bucket_name, "--key", "docs/hello.txt",
        "--acl", "public-read")
    acl = json.loads(aws("s3api", "get-object-acl", "--bucket", bucket_name,
                         "--key", "docs/hello.txt").stdout)
    public = [g for g in acl["Grants"] if g["Grantee"].get("URI", "").endswith("/global/AllUsers")]
    assert [g["Permission"] for g in public] == ["READ"]
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == body

    # Low-level multipart: create, two parts, list, complete; another one aborted.
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(1234)
    (tmp_path / "p1").write_bytes(part1)
    (tmp_path / "p2").write_bytes(part2)
    upload_id = json.loads(aws("s3api", "create-multipart-upload", "--bucket", bucket_name,
                               "--key", "mp/object").stdout)["UploadId"]
    etags = []
    for number, path in ((1, "p1"), (2, "p2")):
        etags.append(json.loads(aws("s3api", "upload-part", "--bucket", bucket_name, "--key",
                                    "mp/object", f"--upload-id={upload_id}", "--part-number",
                                    str(number), "--body", str(tmp_path / path)).stdout)["ETag"])
    parts = json.loads(aws("s3api", "list-parts", "--bucket", bucket_name, "--key", "mp/object",
                           f"--upload-id={upload_id}").stdout)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == \
        [(1, len(part1), etags[0]), (2, len(part2), etags[1])]
    spec = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in ((1, etags[0]), (2, etags[1]))]}
    (tmp_path / "mpu.json").write_text(json.dumps(spec))
    done = json.loads(aws("s3api", "complete-multipart-upload", "--bucket", bucket_name, "--key",
                          "mp/object", f"--upload-id={upload_id}",
                          "--multipart-upload", f"file://{tmp_path / 'mpu.json'}").stdout)
    expected_etag = hashlib.md5(bytes.fromhex(_md5(part1)) + bytes.fromhex(_md5(part2))).hexdigest()
    assert done["ETag"] == f'"{expected_etag}-2"'
    aws("s3api", "get-object", "--bucket", bucket_name, "--key", "mp/object", str(tmp_path / "mp"))
    assert (tmp_path / "mp").read_bytes() == part1 + part2

    abandoned = json.loads(aws("s3api", "create-multipart-upload", "--bucket", bucket_name,
                               "--key", "mp/abandoned").stdout)["UploadId"]
    uploads = json.loads(aws("s3api", "list-multipart-uploads", "--bucket", bucket_name).stdout)
    assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("mp/abandoned", abandoned)]
    aws("s3api", "abort-multipart-upload", "--bucket", bucket_name, "--key", "mp/abandoned",
        f"--upload-id={abandoned}")
    uploads = json.loads(aws("s3api", "list-multipart-uploads", "--bucket", bucket_name).stdout or "{}")
    assert not uploads.get("Uploads")

    # list-objects-v2 with prefix and delimiter.
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", bucket_name,
                            "--delimiter", "/").stdout)
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["docs/", "mp/"]
    assert "Contents" not in listed
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", bucket_name,
                            "--prefix", "mp/", "--no-paginate").stdout)
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("mp/object", len(part1) + len(part2))]
    assert listed["KeyCount"] == 1

    # delete-objects, then the bucket.
    (tmp_path / "delete.json").write_text(json.dumps(
        {"Objects": [{"Key": "docs/hello.txt"}, {"Key": "mp/object"}, {"Key": "never-existed"}]}))
    deleted = json.loads(aws("s3api", "delete-objects", "--bucket", bucket_name, "--delete",
                             f"file://{tmp_path / 'delete.json'}").stdout)
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["docs/hello.txt", "mp/object", "never-existed"]
    assert not deleted.get("Errors")
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", bucket_name,
                            "--no-paginate").stdout)
    assert listed["KeyCount"] == 0 and "Contents" not in listed
    aws("s3api", "delete-bucket", "--bucket", bucket_name)
