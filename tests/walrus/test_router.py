"""Routing is a pure function: no socket needed."""

import pytest

from walrus.s3.router import address, route


def op(method, path, query=None, headers=None, host="127.0.0.1:8774"):
    addr = address(host, path, ("localhost",))
    return route(method, addr, query or {}, headers or {})


@pytest.mark.parametrize("method,path,query,headers,expected", [
    ("GET", "/", {}, {}, ("ListBuckets", None, None)),
    ("PUT", "/b", {}, {}, ("CreateBucket", "b", None)),
    ("GET", "/b", {"list-type": "2"}, {}, ("ListObjectsV2", "b", None)),
    ("GET", "/b/", {}, {}, ("ListObjects", "b", None)),
    ("GET", "/b", {"uploads": ""}, {}, ("ListMultipartUploads", "b", None)),
    ("POST", "/b", {"delete": ""}, {}, ("DeleteObjects", "b", None)),
    ("GET", "/b", {"acl": ""}, {}, ("GetBucketAcl", "b", None)),
    ("GET", "/b", {"website": ""}, {}, ("NotImplemented", "b", None)),
    ("PUT", "/b/k%20x/y", {}, {}, ("PutObject", "b", "k x/y")),
    ("PUT", "/b/k", {}, {"x-amz-copy-source": "/a/b"}, ("CopyObject", "b", "k")),
    ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, {}, ("UploadPart", "b", "k")),
    ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, {"x-amz-copy-source": "a/b"},
     ("UploadPartCopy", "b", "k")),
    ("POST", "/b/k", {"uploads": ""}, {}, ("CreateMultipartUpload", "b", "k")),
    ("POST", "/b/k", {"uploadId": "u"}, {}, ("CompleteMultipartUpload", "b", "k")),
    ("DELETE", "/b/k", {"uploadId": "u"}, {}, ("AbortMultipartUpload", "b", "k")),
    ("GET", "/b/k", {"uploadId": "u"}, {}, ("ListParts", "b", "k")),
    ("HEAD", "/b/k", {}, {}, ("HeadObject", "b", "k")),
    ("PATCH", "/b/k", {}, {}, ("NotImplemented", "b", "k")),
    ("GET", "/services/objectstorage/b/k", {}, {}, ("GetObject", "b", "k")),
    ("GET", "/services/Walrus/b", {}, {}, ("ListObjects", "b", None)),
    ("GET", "/services/objectstorage", {}, {}, ("ListBuckets", None, None)),
])
def test_routes(method, path, query, headers, expected):
    r = op(method, path, query, headers)
    assert (r.operation, r.bucket, r.key) == expected


def test_virtual_host_addressing():
    addr = address("photos.localhost:8774", "/2024/a.jpg", ("localhost",))
    assert (addr.bucket, addr.key, addr.virtual_host) == ("photos", "2024/a.jpg", True)
    assert addr.sigv2_resource == "/photos/2024/a.jpg"
    assert address("localhost:8774", "/b/k", ("localhost",)).bucket == "b"


def test_sigv2_resource_omits_service_prefix():
    addr = address("127.0.0.1", "/services/objectstorage/b/some%20key", ("localhost",))
    assert addr.sigv2_resource == "/b/some%20key"
    assert addr.prefix == "/services/objectstorage"
