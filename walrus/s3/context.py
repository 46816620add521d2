"""What a handler gets: the request, its route, the caller, and the server's parts.

Also the small pieces every handler shares: access checks, reading the request body as a
verified stream, and turning stored object metadata into response headers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, web

from eucalypt.auth import AuthError, AwsChunkedDecoder, PayloadMode, Verified

from ..storage.records import Acl, Bucket, Grant, ObjectMeta, ObjectRecord
from ..users import User
from . import grants as acl_policy
from .errors import S3Error
from .router import Address, Route

if TYPE_CHECKING:
    from ..server import WalrusService

# Headers stored with an object and returned on GET/HEAD, in their canonical spelling.
STORED_HEADERS = ("Content-Encoding", "Content-Disposition", "Content-Language",
                  "Cache-Control", "Expires", "x-amz-website-redirect-location",
                  "x-amz-storage-class")
CHECKSUM_ALGORITHMS = {"CRC32": "crc32", "CRC32C": "crc32c", "SHA1": "sha1", "SHA256": "sha256"}
MAX_USER_METADATA = 2048
MAX_KEY_BYTES = 1024
MAX_XML_BODY = 2 * 1024 * 1024


@dataclass
class Context:
    request: web.BaseRequest
    route: Route
    addr: Address
    query: Mapping[str, str]
    user: User | None
    verified: Verified | None
    request_id: str
    service: "WalrusService"
    bytes_in: int = 0

    @property
    def headers(self):
        return self.request.headers

    @property
    def user_id(self) -> str | None:
        return self.user.canonical_id if self.user else None

    @property
    def engine(self):
        return self.service.engine

    @property
    def resource(self) -> str:
        if self.route.bucket is None:
            return "/"
        return f"/{self.route.bucket}" + (f"/{self.route.key}" if self.route.key else "")

    # ---- access ------------------------------------------------------------------
    def require_user(self) -> User:
        if self.user is None:
            raise S3Error("AccessDenied")
        return self.user

    async def bucket(self) -> Bucket:
        bucket = await self.engine.get_bucket(self.route.bucket)
        if bucket is None:
            raise S3Error("NoSuchBucket", BucketName=self.route.bucket)
        return bucket

    def require(self, acl: Acl, permission: str) -> None:
        if not acl_policy.allowed(acl, permission, self.user_id):
            raise S3Error("AccessDenied")

    def require_owner(self, bucket: Bucket) -> None:
        if self.user_id != bucket.owner_id:
            raise S3Error("AccessDenied")

    # ---- ACLs from request headers -----------------------------------------------
    async def acl_from_headers(self, *, bucket_owner: Bucket | None = None,
                               owner: tuple[str, str] | None = None) -> Acl:
        """The ACL a request's x-amz-acl or x-amz-grant-* headers ask for (default private).
        owner: (canonical id, display name) of the resource owner, default the caller."""
        if owner is None:
            user = self.require_user()
            owner = (user.canonical_id, user.display_name)
        canned = self.headers.get("x-amz-acl")
        grants = acl_policy.parse_grant_headers(self.headers, resolve=self._resolve_grantee)
        if canned is not None and grants is not None:
            raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed")
        if grants is not None:
            return await self.resolve_grants(Acl(owner[0], owner[1], tuple(grants)))
        bucket_owner_name = ""
        if bucket_owner is not None:
            found = await self.service.users.by_canonical_id(bucket_owner.owner_id)
            bucket_owner_name = found.display_name if found else ""
        return acl_policy.canned_acl(canned or "private", owner[0], owner[1],
                                     bucket_owner_id=bucket_owner.owner_id if bucket_owner else "",
                                     bucket_owner_name=bucket_owner_name,
                                     system_id=self.service.system_canonical_id)

    def _resolve_grantee(self, kind: str, value: str, permission: str):
        kind = kind.lower()
        if kind == "id":
            return Grant("CanonicalUser", value, permission)
        if kind == "uri":
            if value not in (acl_policy.ALL_USERS, acl_policy.AUTHENTICATED_USERS,
                             acl_policy.LOG_DELIVERY):
                raise S3Error("InvalidArgument", "Invalid group uri", ArgumentName="uri",
                              ArgumentValue=value)
            return Grant("Group", value, permission)
        if kind == "emailaddress":
            return Grant("AmazonCustomerByEmail", value, permission)
        raise S3Error("InvalidArgument", f"Invalid grantee type: {kind}")

    async def _grant_by_email(self, email: str, permission: str):
        user = await self.service.users.by_email(email)
        if user is None:
            raise S3Error("UnresolvableGrantByEmailAddress",
                          "The e-mail address you provided does not match any account on record.",
                          status=400)
        return Grant("CanonicalUser", user.canonical_id, permission, user.display_name)

    async def resolve_grants(self, acl: Acl) -> Acl:
        """Turn email grants into canonical-user grants and fill in display names."""
        out = []
        for g in acl.grants:
            if g.grantee_type == "AmazonCustomerByEmail":
                out.append(await self._grant_by_email(g.grantee, g.permission))
            elif g.grantee_type == "CanonicalUser" and not g.display_name:
                user = await self.service.users.by_canonical_id(g.grantee)
                out.append(Grant(g.grantee_type, g.grantee, g.permission,
                                 user.display_name if user else ""))
            else:
                out.append(g)
        return Acl(acl.owner_id, acl.owner_name, tuple(out))

    # ---- request body --------------------------------------------------------------
    def declared_length(self) -> int | None:
        """Length of the (decoded) body the client announced."""
        decoded = self.headers.get("x-amz-decoded-content-length")
        raw = decoded if decoded is not None else self.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.isdigit():
            raise S3Error("InvalidArgument", "Invalid Content-Length")
        return int(raw)

    def body(self, *, max_size: int | None = None) -> AsyncIterator[bytes]:
        """The request body, decoded from aws-chunked if needed, with every chunk signature
        checked on the way. Raises IncompleteBody if the client stops short."""
        return _body_stream(self, max_size)

    async def read_small_body(self, limit: int = MAX_XML_BODY) -> bytes:
        parts = []
        size = 0
        async for piece in self.body(max_size=limit):
            size += len(piece)
            parts.append(piece)
        body = b"".join(parts)
        # The signature covers x-amz-content-sha256, not the body: check the body matches,
        # or a tampered document (DeleteObjects, ACL, Complete...) would be acted on.
        if self.verified and self.verified.payload_mode is PayloadMode.SIGNED:
            claimed = self.headers.get("x-amz-content-sha256", "")
            computed = hashlib.sha256(body).hexdigest()
            if claimed != computed:
                raise S3Error("XAmzContentSHA256Mismatch", ClientComputedContentSHA256=claimed,
                              S3ComputedContentSHA256=computed)
        return body

    def wanted_digests(self) -> tuple[list[str], str | None]:
        """Digests stage() must compute, and the checksum algorithm the client uses."""
        digests = ["md5"]
        if self.verified and self.verified.payload_mode is PayloadMode.SIGNED:
            digests.append("sha256")
        algorithm = None
        for name in CHECKSUM_ALGORITHMS:
            if f"x-amz-checksum-{name.lower()}" in self.headers:
                algorithm = name
        trailer = self.headers.get("x-amz-trailer", "").strip().lower()
        if trailer.startswith("x-amz-checksum-"):
            algorithm = trailer[len("x-amz-checksum-"):].upper()
        sdk = self.headers.get("x-amz-sdk-checksum-algorithm")
        if algorithm is None and sdk:
            algorithm = sdk.upper()
        if algorithm is not None:
            if algorithm not in CHECKSUM_ALGORITHMS:
                raise S3Error("InvalidRequest", f"Unsupported checksum algorithm {algorithm}")
            digest = CHECKSUM_ALGORITHMS[algorithm]
            if digest not in digests:
                digests.append(digest)
        return digests, algorithm

    def verify_body(self, staged, algorithm: str | None, trailers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """Check Content-MD5, x-amz-content-sha256 and the flexible checksum against what
        was received. Returns the checksums to store."""
        md5 = staged.digests["md5"]
        content_md5 = self.headers.get("Content-MD5")
        if content_md5 is not None:
            try:
                expected = base64.b64decode(content_md5, validate=True)
            except ValueError:
                raise S3Error("InvalidDigest", ContentMD5=content_md5)
            if len(expected) != 16:
                raise S3Error("InvalidDigest", ContentMD5=content_md5)
            if expected != md5:
                raise S3Error("BadDigest", ExpectedDigest=content_md5,
                              CalculatedDigest=base64.b64encode(md5).decode())
        if self.verified and self.verified.payload_mode is PayloadMode.SIGNED:
            claimed = self.headers.get("x-amz-content-sha256", "")
            if claimed != staged.digests["sha256"].hex():
                raise S3Error("XAmzContentSHA256Mismatch",
                              ClientComputedContentSHA256=claimed,
                              S3ComputedContentSHA256=staged.digests["sha256"].hex())
        if algorithm is None:
            return ()
        header = f"x-amz-checksum-{algorithm.lower()}"
        claimed = trailers.get(header) or self.headers.get(header)
        computed = base64.b64encode(staged.digests[CHECKSUM_ALGORITHMS[algorithm]]).decode()
        if claimed is not None and claimed != computed:
            raise S3Error("BadDigest", f"The {algorithm} you specified did not match the calculated checksum.")
        return ((algorithm, computed),)

    # ---- metadata ----------------------------------------------------------------
    def object_meta(self) -> ObjectMeta:
        user = []
        size = 0
        for name, value in self.headers.items():
            lower = name.lower()
            if lower.startswith("x-amz-meta-"):
                user.append((lower[len("x-amz-meta-"):], value))
                size += len(lower) - len("x-amz-meta-") + len(value.encode())
        if size > MAX_USER_METADATA:
            raise S3Error("MetadataTooLarge", Size=str(size), MaxSizeAllowed=str(MAX_USER_METADATA))
        stored = []
        for name in STORED_HEADERS:
            value = self.headers.get(name)
            if value is None:
                continue
            if name == "Content-Encoding":
                # aws-chunked is a transfer detail of the upload, never part of the object.
                codings = [c.strip() for c in value.split(",") if c.strip() and c.strip() != "aws-chunked"]
                if not codings:
                    continue
                value = ",".join(codings)
            if name == "x-amz-storage-class" and value not in ("STANDARD", "REDUCED_REDUNDANCY",
                                                                "STANDARD_IA", "ONEZONE_IA",
                                                                "INTELLIGENT_TIERING", "GLACIER",
                                                                "DEEP_ARCHIVE", "GLACIER_IR"):
                raise S3Error("InvalidStorageClass", StorageClassRequested=value)
            stored.append((name, value))
        content_type = self.headers.get("Content-Type") or "binary/octet-stream"
        return ObjectMeta(content_type=content_type, user=tuple(sorted(user)), headers=tuple(stored))


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=str(len(key.encode())), MaxSizeAllowed=str(MAX_KEY_BYTES))


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def http_date(timestamp: float) -> str:
    """RFC 7231 date (Last-Modified); memoised, formatdate is slow on the hot path."""
    return _http_date(int(timestamp))


def object_headers(record: ObjectRecord, *, checksum_mode: bool = False) -> dict[str, str]:
    headers = {
        "ETag": f'"{record.etag}"',
        "Last-Modified": http_date(int(record.last_modified)),
        "Content-Type": record.meta.content_type,
        "Accept-Ranges": "bytes",
    }
    for name, value in record.meta.headers:
        if name == "x-amz-storage-class" and value == "STANDARD":
            continue
        headers[name] = value
    for name, value in record.meta.user:
        headers[f"x-amz-meta-{name}"] = value
    if checksum_mode:
        for algorithm, value in record.checksums:
            headers[f"x-amz-checksum-{algorithm.lower()}"] = value
    return headers


async def send_continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` when the body is first wanted: by then the request is
    authenticated and authorised, so a refused upload is refused before its body is sent."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue" \
            and not request.get("continue_sent"):
        request["continue_sent"] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response


async def _body_stream(ctx: Context, max_size: int | None) -> AsyncIterator[bytes]:
    await send_continue(ctx.request)
    content = ctx.request.content
    encoded_length = ctx.request.content_length
    declared = ctx.declared_length()
    if max_size is not None and declared is not None and declared > max_size:
        raise S3Error("MaxMessageLengthExceeded" if max_size <= MAX_XML_BODY else "EntityTooLarge")
    decoder = None
    mode = ctx.verified.payload_mode if ctx.verified else None
    content_encoding = ctx.headers.get("Content-Encoding", "")
    if mode in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER,
                PayloadMode.STREAMING_UNSIGNED_TRAILER) or \
            (mode is None and "aws-chunked" in content_encoding):
        if ctx.verified is None:
            raise S3Error("AccessDenied")
        decoder = AwsChunkedDecoder(ctx.verified)
    received = 0
    decoded = 0
    try:
        while True:
            piece = await content.readany()
            if not piece:
                break
            received += len(piece)
            ctx.bytes_in += len(piece)
            if decoder is not None:
                piece = decoder.feed(piece)
                if not piece:
                    continue
            decoded += len(piece)
            if max_size is not None and decoded > max_size:
                raise S3Error("MaxMessageLengthExceeded" if max_size <= MAX_XML_BODY else "EntityTooLarge")
            yield piece
        if encoded_length is not None and received < encoded_length:
            raise S3Error("IncompleteBody")
        if decoder is not None:
            ctx.request["trailers"] = decoder.finish()
        if declared is not None and decoded != declared:
            raise S3Error("IncompleteBody")
    except AuthError as exc:
        raise S3Error(exc.code, exc.message, status=exc.status) from exc
    except (ConnectionError, EOFError) as exc:
        raise S3Error("IncompleteBody") from exc


def trailers_of(ctx: Context) -> Mapping[str, str]:
    return ctx.request.get("trailers", {})


BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def check_bucket_name(name: str) -> None:
    if (not BUCKET_NAME.match(name) or ".." in name or ".-" in name or "-." in name
            or IP_LIKE.match(name) or name.startswith("xn--") or name.endswith("-s3alias")):
        raise S3Error("InvalidBucketName", BucketName=name)
