"""Listings, multipart uploads and ACLs through boto3, with two users."""

import hashlib
import os
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError


MiB = 1024 * 1024


def code_of(exc):
    return exc.value.response["Error"]["Code"]


@pytest.fixture
def bucket(alice, bucket_name):
    alice.create_bucket(Bucket=bucket_name)
    return bucket_name


# ---- listing -----------------------------------------------------------------------------

@pytest.fixture
def tree(alice, bucket):
    keys = ["a.txt", "b/1", "b/2", "b/c/3", "c/4", "d", "e/5", "e/6"]
    for key in keys:
        alice.put_object(Bucket=bucket, Key=key, Body=key.encode())
    return bucket, keys


def test_list_v2_delimiter(alice, tree):
    bucket, keys = tree
    res = alice.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in res["Contents"]] == ["a.txt", "d"]
    assert [p["Prefix"] for p in res["CommonPrefixes"]] == ["b/", "c/", "e/"]
    assert res["KeyCount"] == 5
    res = alice.list_objects_v2(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in res["Contents"]] == ["b/1", "b/2"]
    assert [p["Prefix"] for p in res["CommonPrefixes"]] == ["b/c/"]


def test_list_v2_pagination_with_delimiter(alice, tree):
    bucket, keys = tree
    seen, prefixes, token = [], [], None
    pages = 0
    while True:
        kwargs = {"ContinuationToken": token} if token else {}
        res = alice.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=2, **kwargs)
        pages += 1
        seen += [o["Key"] for o in res.get("Contents", [])]
        prefixes += [p["Prefix"] for p in res.get("CommonPrefixes", [])]
        assert res["KeyCount"] <= 2
        if not res["IsTruncated"]:
            break
        token = res["NextContinuationToken"]
    assert seen == ["a.txt", "d"] and prefixes == ["b/", "c/", "e/"] and pages == 3


def test_list_v2_start_after_and_owner(alice, tree):
    bucket, keys = tree
    res = alice.list_objects_v2(Bucket=bucket, StartAfter="b/2")
    assert [o["Key"] for o in res["Contents"]] == [k for k in sorted(keys) if k > "b/2"]
    assert "Owner" not in res["Contents"][0]
    res = alice.list_objects_v2(Bucket=bucket, FetchOwner=True, MaxKeys=1)
    assert res["Contents"][0]["Owner"]["DisplayName"] == "Alice"
    assert res["IsTruncated"]


def test_list_v1_markers(alice, tree):
    bucket, keys = tree
    res = alice.list_objects(Bucket=bucket, MaxKeys=3)
    assert [o["Key"] for o in res["Contents"]] == sorted(keys)[:3]
    assert res["IsTruncated"]
    res = alice.list_objects(Bucket=bucket, Marker=sorted(keys)[2])
    assert [o["Key"] for o in res["Contents"]] == sorted(keys)[3:]
    res = alice.list_objects(Bucket=bucket, Delimiter="/", MaxKeys=2)
    assert res["NextMarker"] == "b/"
    res = alice.list_objects(Bucket=bucket, Delimiter="/", Marker="b/")
    assert [p["Prefix"] for p in res["CommonPrefixes"]] == ["c/", "e/"]
    assert [o["Key"] for o in res["Contents"]] == ["d"]
    paginator = alice.get_paginator("list_objects")
    everything = [o["Key"] for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 3})
                  for o in page.get("Contents", [])]
    assert everything == sorted(keys)


def test_list_url_encoding(alice, bucket):
    alice.put_object(Bucket=bucket, Key="sp ace/ü+x", Body=b"x")
    # Asked for explicitly, keys come back encoded (botocore leaves them so).
    res = alice.list_objects_v2(Bucket=bucket, EncodingType="url")
    assert res["Contents"][0]["Key"] == "sp+ace/%C3%BC%2Bx"
    raw = alice.list_objects_v2(Bucket=bucket, Delimiter="/", EncodingType="url")
    assert raw["CommonPrefixes"][0]["Prefix"] == "sp+ace/"
    # list_objects (v1) sets encoding-type=url itself and decodes the answer.
    assert alice.list_objects(Bucket=bucket)["Contents"][0]["Key"] == "sp ace/ü+x"


def test_list_max_keys_invalid(alice, bucket):
    with pytest.raises(ClientError) as exc:
        alice.list_objects_v2(Bucket=bucket, MaxKeys=-1)
    assert code_of(exc) == "InvalidArgument"


def test_list_many_keys_pages(alice, bucket):
    keys = [f"k{i:05d}" for i in range(2100)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: alice.put_object(Bucket=bucket, Key=k, Body=b""), keys))
    paginator = alice.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=bucket))
    assert [len(p["Contents"]) for p in pages] == [1000, 1000, 100]
    assert [o["Key"] for p in pages for o in p["Contents"]] == keys


# ---- multipart -----------------------------------------------------------------------------

def test_multipart_upload_complete(alice, bucket):
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    upload = alice.create_multipart_upload(Bucket=bucket, Key="big", ContentType="application/x-test",
                                           Metadata={"kind": "mp"})
    uid = upload["UploadId"]
    etags = []
    for number, data in enumerate(parts_data, 1):
        etags.append(alice.upload_part(Bucket=bucket, Key="big", UploadId=uid, PartNumber=number,
                                       Body=data)["ETag"])
    listed = alice.list_parts(Bucket=bucket, Key="big", UploadId=uid)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [p["Size"] for p in listed["Parts"]] == [5 * MiB, 5 * MiB, 123]
    uploads = alice.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["UploadId"] for u in uploads] == [uid]
    done = alice.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    md5s = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
    got = alice.get_object(Bucket=bucket, Key="big")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ContentType"] == "application/x-test" and got["Metadata"] == {"kind": "mp"}
    part2 = alice.get_object(Bucket=bucket, Key="big", PartNumber=2)
    assert part2["Body"].read() == parts_data[1]
    assert part2["PartsCount"] == 3
    assert alice.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as exc:
        alice.list_parts(Bucket=bucket, Key="big", UploadId=uid)
    assert code_of(exc) == "NoSuchUpload"


def test_multipart_errors(alice, bucket):
    uid = alice.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    e1 = alice.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"small")["ETag"]
    e2 = alice.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=2, Body=b"tail")["ETag"]
    complete = lambda parts: alice.complete_multipart_upload(  # noqa: E731
        Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={"Parts": parts})
    with pytest.raises(ClientError) as exc:
        complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}])
    assert code_of(exc) == "EntityTooSmall"
    with pytest.raises(ClientError) as exc:
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])
    assert code_of(exc) == "InvalidPartOrder"
    with pytest.raises(ClientError) as exc:
        complete([{"PartNumber": 1, "ETag": '"ffffffffffffffffffffffffffffffff"'}])
    assert code_of(exc) == "InvalidPart"
    with pytest.raises(ClientError) as exc:
        complete([{"PartNumber": 7, "ETag": e1}])
    assert code_of(exc) == "InvalidPart"
    with pytest.raises(ClientError) as exc:
        alice.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=10001, Body=b"x")
    assert code_of(exc) == "InvalidArgument"
    # A single small part is a valid (last) part.
    complete([{"PartNumber": 1, "ETag": e1}])
    assert alice.get_object(Bucket=bucket, Key="m")["Body"].read() == b"small"
    with pytest.raises(ClientError) as exc:
        alice.upload_part(Bucket=bucket, Key="m", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert code_of(exc) == "NoSuchUpload"


def test_multipart_abort_and_part_replace(alice, bucket):
    uid = alice.create_multipart_upload(Bucket=bucket, Key="a")["UploadId"]
    alice.upload_part(Bucket=bucket, Key="a", UploadId=uid, PartNumber=1, Body=b"first")
    etag = alice.upload_part(Bucket=bucket, Key="a", UploadId=uid, PartNumber=1, Body=b"second")["ETag"]
    parts = alice.list_parts(Bucket=bucket, Key="a", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag)]
    alice.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=uid)
    with pytest.raises(ClientError) as exc:
        alice.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=uid)
    assert code_of(exc) == "NoSuchUpload"
    with pytest.raises(ClientError):
        alice.head_object(Bucket=bucket, Key="a")


def test_upload_part_copy_ranged(alice, bucket):
    source = os.urandom(12 * MiB + 7)
    alice.put_object(Bucket=bucket, Key="src", Body=source)
    uid = alice.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    r1 = alice.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=0-5242879")
    r2 = alice.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=2,
                                CopySource={"Bucket": bucket, "Key": "src"},
                                CopySourceRange=f"bytes=5242880-{len(source) - 1}")
    assert r1["CopyPartResult"]["ETag"] == f'"{hashlib.md5(source[:5 * MiB]).hexdigest()}"'
    alice.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]})
    assert alice.get_object(Bucket=bucket, Key="assembled")["Body"].read() == source
    with pytest.raises(ClientError) as exc:
        uid2 = alice.create_multipart_upload(Bucket=bucket, Key="x")["UploadId"]
        alice.upload_part_copy(Bucket=bucket, Key="x", UploadId=uid2, PartNumber=1,
                               CopySource=f"{bucket}/src", CopySourceRange=f"bytes=0-{len(source)}")
    assert code_of(exc) == "InvalidRange"


def test_managed_transfer(alice, bucket, tmp_path):
    """boto3's upload_file/download_file: parallel multipart up and ranged GETs down."""
    from boto3.s3.transfer import TransferConfig
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(21 * MiB))
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    alice.upload_file(str(path), bucket, "blob", Config=config)
    assert alice.head_object(Bucket=bucket, Key="blob")["ETag"].endswith('-3"')
    out = tmp_path / "out"
    alice.download_file(bucket, "blob", str(out), Config=config)
    assert out.read_bytes() == path.read_bytes()


# ---- ACLs -------------------------------------------------------------------------------

def test_private_by_default(alice, bob, bucket, walrus):
    alice.put_object(Bucket=bucket, Key="secret", Body=b"mine")
    for call in (lambda: bob.get_object(Bucket=bucket, Key="secret"),
                 lambda: bob.list_objects_v2(Bucket=bucket),
                 lambda: bob.put_object(Bucket=bucket, Key="intrude", Body=b"x"),
                 lambda: bob.get_bucket_acl(Bucket=bucket),
                 lambda: bob.get_object_acl(Bucket=bucket, Key="secret")):
        with pytest.raises(ClientError) as exc:
            call()
        assert code_of(exc) == "AccessDenied"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{walrus.url}/{bucket}/secret")
    assert exc.value.code == 403


def test_canned_acls(alice, bob, bucket, walrus):
    alice.put_object(Bucket=bucket, Key="pub", Body=b"public", ACL="public-read")
    with urllib.request.urlopen(f"{walrus.url}/{bucket}/pub") as response:
        assert response.read() == b"public"
    alice.put_object(Bucket=bucket, Key="auth", Body=b"members", ACL="authenticated-read")
    assert bob.get_object(Bucket=bucket, Key="auth")["Body"].read() == b"members"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{walrus.url}/{bucket}/auth")
    grants = alice.get_object_acl(Bucket=bucket, Key="pub")["Grants"]
    assert {(g["Grantee"].get("URI"), g["Permission"]) for g in grants} >= {
        ("http://acs.amazonaws.com/groups/global/AllUsers", "READ")}
    alice.put_object(Bucket=bucket, Key="exec", Body=b"bundle", ACL="aws-exec-read")
    exec_grants = alice.get_object_acl(Bucket=bucket, Key="exec")["Grants"]
    assert len(exec_grants) == 2 and exec_grants[1]["Permission"] == "READ"
    with pytest.raises(ClientError) as exc:
        alice.put_object(Bucket=bucket, Key="bad", Body=b"x", ACL="not-a-canned-acl")
    assert code_of(exc) == "InvalidArgument"


def test_public_read_write_bucket(alice, bob, bucket):
    alice.put_bucket_acl(Bucket=bucket, ACL="public-read-write")
    bob.put_object(Bucket=bucket, Key="from-bob", Body=b"hi")
    assert [o["Key"] for o in bob.list_objects_v2(Bucket=bucket)["Contents"]] == ["from-bob"]
    # Bob owns his object; Alice (bucket owner) is not granted READ on it unless asked.
    with pytest.raises(ClientError):
        alice.get_object(Bucket=bucket, Key="from-bob")
    bob.put_object(Bucket=bucket, Key="for-alice", Body=b"hi", ACL="bucket-owner-full-control")
    assert alice.get_object(Bucket=bucket, Key="for-alice")["Body"].read() == b"hi"


def test_explicit_grants(alice, bob, bucket):
    from walrus.users import canonical_id_for
    alice.put_object(Bucket=bucket, Key="shared", Body=b"for bob")
    acl = alice.get_object_acl(Bucket=bucket, Key="shared")
    owner = acl["Owner"]
    alice.put_object_acl(Bucket=bucket, Key="shared", AccessControlPolicy={
        "Owner": owner,
        "Grants": acl["Grants"] + [{"Grantee": {"Type": "CanonicalUser", "ID": canonical_id_for("bob")},
                                    "Permission": "READ"}]})
    assert bob.get_object(Bucket=bucket, Key="shared")["Body"].read() == b"for bob"
    grants = alice.get_object_acl(Bucket=bucket, Key="shared")["Grants"]
    assert any(g["Grantee"].get("DisplayName") == "Bob" for g in grants)
    # Header grants, by email.
    alice.put_object(Bucket=bucket, Key="by-mail", Body=b"x", GrantRead='emailAddress="bob@example.com"')
    assert bob.get_object(Bucket=bucket, Key="by-mail")["Body"].read() == b"x"
    alice.put_bucket_acl(Bucket=bucket, GrantRead=f'id="{canonical_id_for("bob")}"')
    assert bob.list_objects_v2(Bucket=bucket)["KeyCount"] == 2
    with pytest.raises(ClientError) as exc:
        alice.put_bucket_acl(Bucket=bucket, GrantRead='emailAddress="nobody@example.com"')
    assert code_of(exc) == "UnresolvableGrantByEmailAddress"


def test_acl_documents(alice, bucket):
    acl = alice.get_bucket_acl(Bucket=bucket)
    assert acl["Owner"]["DisplayName"] == "Alice"
    assert acl["Grants"] == [{"Grantee": {"Type": "CanonicalUser", "ID": acl["Owner"]["ID"],
                                          "DisplayName": "Alice"}, "Permission": "FULL_CONTROL"}]
    alice.put_bucket_acl(Bucket=bucket, ACL="public-read")
    uris = [g["Grantee"].get("URI") for g in alice.get_bucket_acl(Bucket=bucket)["Grants"]]
    assert "http://acs.amazonaws.com/groups/global/AllUsers" in uris
