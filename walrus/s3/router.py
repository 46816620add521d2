"""Routing: (method, host, path, query, headers) -> one S3 operation. Pure; no I/O.

Two steps, both unit-testable without a socket:
  address()  decides bucket and key from virtual-host or path style addressing, and strips
             the legacy path prefixes euca2ools configurations use;
  route()    maps method + sub-resources + a few headers to an operation name.
Anything we do not serve maps to NotImplemented, never to a 500.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import S3Error

# Old Eucalyptus/euca2ools endpoints put the S3 service under these prefixes.
SERVICE_PREFIXES = ("/services/objectstorage", "/services/Walrus")


@dataclass(frozen=True, slots=True)
class Address:
    bucket: str | None
    key: str | None
    prefix: str  # the service prefix that was stripped ("" if none)
    virtual_host: bool
    path: str  # the raw (percent-encoded) path after the prefix

    @property
    def sigv2_resource(self) -> str:
        """SigV2 canonical resource path: /bucket/key as the client encoded it, never the
        service prefix (euca2ools signs without it)."""
        return f"/{self.bucket}{self.path}" if self.virtual_host else self.path


@dataclass(frozen=True, slots=True)
class Route:
    operation: str
    bucket: str | None = None
    key: str | None = None


def _decode(segment: str) -> str:
    """Percent-decode a bucket or key; bytes that are not UTF-8 are refused (as S3 does)
    rather than replaced, which would map different keys onto one."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI") from None


def address(host: str, raw_path: str, domains: Iterable[str]) -> Address:
    """Resolve bucket and key. raw_path is percent-encoded, without query string."""
    hostname = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
    vhost_bucket = None
    for domain in domains:
        suffix = "." + domain.lower()
        if hostname.endswith(suffix) and len(hostname) > len(suffix):
            vhost_bucket = hostname[: -len(suffix)]
            break
    path = raw_path
    prefix = ""
    for candidate in SERVICE_PREFIXES:
        if path == candidate or path.startswith(candidate + "/"):
            prefix = candidate
            path = path[len(candidate):] or "/"
            break
    if not path.startswith("/"):
        path = "/" + path
    if vhost_bucket is not None:
        key = _decode(path[1:]) if len(path) > 1 else None
        return Address(vhost_bucket, key, prefix, True, path)
    rest = path[1:]
    if not rest:
        return Address(None, None, prefix, False, path)
    bucket, slash, key = rest.partition("/")
    return Address(_decode(bucket), _decode(key) if slash and key else None, prefix, False, path)


# Bucket sub-resources we know of but do not implement: answered with NotImplemented.
_UNSUPPORTED_BUCKET = frozenset({
    "accelerate", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
    "lifecycle", "logging", "metrics", "notification", "object-lock", "ownershipControls",
    "policy", "policyStatus", "publicAccessBlock", "replication", "requestPayment",
    "tagging", "website", "versions", "restore", "select", "legal-hold", "retention",
    "torrent", "attributes",
})


def route(method: str, addr: Address, query: Mapping[str, str], headers: Mapping[str, str]) -> Route:
    """The S3 operation a request asks for."""
    b, k = addr.bucket, addr.key
    q = query
    if b is None:
        if method in ("GET", "HEAD"):
            return Route("ListBuckets")
        return Route("NotImplemented")
    if any(name in q for name in _UNSUPPORTED_BUCKET):
        return Route("NotImplemented", b, k)
    if k is None:
        table = {
            ("GET", "acl"): "GetBucketAcl",
            ("PUT", "acl"): "PutBucketAcl",
            ("GET", "location"): "GetBucketLocation",
            ("GET", "uploads"): "ListMultipartUploads",
            ("GET", "versioning"): "GetBucketVersioning",
            ("POST", "delete"): "DeleteObjects",
        }
        for (m, sub), op in table.items():
            if method == m and sub in q:
                return Route(op, b)
        if method == "GET":
            return Route("ListObjectsV2" if q.get("list-type") == "2" else "ListObjects", b)
        simple = {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}
        return Route(simple.get(method, "NotImplemented"), b)
    if method == "PUT":
        if "partNumber" in q and "uploadId" in q:
            return Route("UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart", b, k)
        if "acl" in q:
            return Route("PutObjectAcl", b, k)
        if "x-amz-copy-source" in headers:
            return Route("CopyObject", b, k)
        return Route("PutObject", b, k)
    if method in ("GET", "HEAD"):
        if "acl" in q:
            return Route("GetObjectAcl" if method == "GET" else "NotImplemented", b, k)
        if "uploadId" in q and method == "GET":
            return Route("ListParts", b, k)
        return Route("GetObject" if method == "GET" else "HeadObject", b, k)
    if method == "POST":
        if "uploads" in q:
            return Route("CreateMultipartUpload", b, k)
        if "uploadId" in q:
            return Route("CompleteMultipartUpload", b, k)
        return Route("NotImplemented", b, k)
    if method == "DELETE":
        return Route("AbortMultipartUpload" if "uploadId" in q else "DeleteObject", b, k)
    return Route("NotImplemented", b, k)
