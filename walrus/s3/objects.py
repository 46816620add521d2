"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects."""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from email.utils import parsedate_to_datetime

from aiohttp import web

from ..storage import errors as storage_errors
from ..storage.records import ObjectRecord
from .context import Context, check_key, object_headers, trailers_of
from .errors import S3Error
from .responses import empty, xml_response
from .xml import children, element, parse_request_xml, subelement, text_of

MAX_OBJECT_SIZE = 5 * 1024**4  # S3's 5 TiB; a single PUT is capped at 5 GiB
MAX_SINGLE_PUT = 5 * 1024**3
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


async def receive_body(ctx: Context, *, max_size: int):
    """Stage the request body and verify every digest the client sent.
    Returns (staged, checksums). The caller commits or discards the staged body."""
    if ctx.request.content_length is None and "chunked" not in ctx.headers.get("Transfer-Encoding", ""):
        raise S3Error("MissingContentLength")
    digests, algorithm = ctx.wanted_digests()
    staged = await ctx.engine.stage(ctx.body(max_size=max_size), digests)
    try:
        checksums = ctx.verify_body(staged, algorithm, trailers_of(ctx))
    except BaseException:
        await ctx.engine.discard(staged)
        raise
    return staged, checksums


def checksum_headers(checksums) -> dict[str, str]:
    return {f"x-amz-checksum-{algorithm.lower()}": value for algorithm, value in checksums}


async def put_object(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "WRITE")
    key = ctx.route.key
    check_key(key)
    meta = ctx.object_meta()
    acl = await ctx.acl_from_headers(bucket_owner=bucket)
    if_none_match = ctx.headers.get("If-None-Match")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error("NotImplemented", "Only If-None-Match: * is supported on PUT", Header="If-None-Match")
    staged, checksums = await receive_body(ctx, max_size=MAX_SINGLE_PUT)
    etag = staged.digests["md5"].hex()
    # A failed commit releases the staged body itself (engine contract).
    try:
        record = await ctx.engine.commit_object(
            staged, bucket=bucket.name, key=key, etag=etag, owner_id=ctx.user_id or bucket.owner_id,
            meta=meta, acl=acl, checksums=checksums, if_none_match_any=if_none_match is not None)
    except storage_errors.PreconditionFailed:
        raise S3Error("PreconditionFailed", Condition="If-None-Match")
    except storage_errors.NoSuchBucket:
        raise S3Error("NoSuchBucket", BucketName=bucket.name)
    headers = {"ETag": f'"{record.etag}"', **checksum_headers(checksums)}
    return empty(headers=headers)


# ---- reads ---------------------------------------------------------------------------

async def readable_object(ctx: Context) -> ObjectRecord:
    """The object, if the caller may read it; NoSuchKey only to those who may list."""
    bucket = await ctx.bucket()
    record = await ctx.engine.get_object(bucket.name, ctx.route.key)
    if record is None:
        if ctx.user_id is not None and (ctx.user_id == bucket.owner_id or
                                        _may(ctx, bucket.acl, "READ")):
            raise S3Error("NoSuchKey", Key=ctx.route.key)
        raise S3Error("AccessDenied")
    ctx.require(record.acl, "READ")
    return record


def _may(ctx: Context, acl, permission: str) -> bool:
    try:
        ctx.require(acl, permission)
        return True
    except S3Error:
        return False


def _parse_http_date(value: str):
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return any(c == "*" or c.strip('"') == etag for c in candidates)


def check_conditions(headers, etag: str, last_modified: float, *, copy_source: bool = False) -> None:
    """RFC 7232 preconditions as S3 evaluates them (also for x-amz-copy-source-if-*)."""
    prefix = "x-amz-copy-source-" if copy_source else ""
    if_match = headers.get(prefix + "If-Match")
    if_none_match = headers.get(prefix + "If-None-Match")
    if_modified = headers.get(prefix + "If-Modified-Since")
    if_unmodified = headers.get(prefix + "If-Unmodified-Since")
    modified = int(last_modified)
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise S3Error("PreconditionFailed", Condition=prefix + "If-Match")
    elif if_unmodified is not None:
        ts = _parse_http_date(if_unmodified)
        if ts is not None and modified > ts:
            raise S3Error("PreconditionFailed", Condition=prefix + "If-Unmodified-Since")
    not_modified_error = "PreconditionFailed" if copy_source else "NotModified"
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            raise S3Error(not_modified_error, Condition=prefix + "If-None-Match")
    elif if_modified is not None:
        ts = _parse_http_date(if_modified)
        if ts is not None and modified <= ts:
            raise S3Error(not_modified_error, Condition=prefix + "If-Modified-Since")


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a single byte range, None to serve the whole object.
    Malformed or multiple ranges are ignored, as S3 does; unsatisfiable ones raise."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=header)
        return start, end
    suffix = int(last)
    if suffix == 0:
        raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=header)
    return max(size - suffix, 0), size


def part_range(record: ObjectRecord, number_text: str) -> tuple[int, int]:
    if not number_text.isdigit() or not 1 <= int(number_text) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=number_text)
    number = int(number_text)
    sizes = record.part_sizes or (record.size,)
    if number > len(sizes):
        raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", status=416,
                      PartNumberRequested=str(number), ActualPartCount=str(len(sizes)))
    start = sum(sizes[: number - 1])
    return start, start + sizes[number - 1]


async def get_object(ctx: Context, *, head: bool = False) -> web.StreamResponse:
    record = await readable_object(ctx)
    check_conditions(ctx.headers, record.etag, record.last_modified)
    headers = object_headers(record, checksum_mode=ctx.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED")
    overrides = {header: ctx.query[name] for name, header in RESPONSE_OVERRIDES.items() if name in ctx.query}
    if overrides and ctx.user is None:
        raise S3Error("InvalidRequest", "Request specific response headers cannot be used for anonymous GET requests.")
    headers.update(overrides)
    status = 200
    if "partNumber" in ctx.query:
        start, end = part_range(record, ctx.query["partNumber"])
        headers["x-amz-mp-parts-count"] = str(len(record.part_sizes or (record.size,)))
        if record.part_sizes:
            status = 206
    else:
        byte_range = parse_range(ctx.headers.get("Range"), record.size)
        start, end = byte_range or (0, record.size)
        if byte_range is not None:
            status = 206
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}" if end > start \
            else f"bytes */{record.size}"
        headers.pop("x-amz-checksum-crc32", None)
    if record.inline is not None and not head:
        # Small objects live in the metadata: one plain response, no streaming machinery.
        ctx.service.metrics.bytes_sent.inc(end - start)
        return web.Response(status=status, headers=headers, body=record.inline[start:end])
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    if head:
        return response  # nothing to stream: the server sends the headers
    await ctx.service.send_body(ctx, response, record, start, end)
    return response




async def delete_object(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "WRITE")
    await ctx.engine.delete_object(bucket.name, ctx.route.key)
    return empty(204)


def verify_small_body(ctx: Context, body: bytes, *, required: bool) -> None:
    """Integrity headers on small XML bodies (DeleteObjects requires one of them)."""
    content_md5 = ctx.headers.get("Content-MD5")
    checks = {
        "x-amz-checksum-crc32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
        "x-amz-checksum-sha256": lambda b: hashlib.sha256(b).digest(),
        "x-amz-checksum-sha1": lambda b: hashlib.sha1(b).digest(),
    }
    present = content_md5 is not None or any(h in ctx.headers for h in checks) \
        or "x-amz-checksum-crc32c" in ctx.headers
    if required and not present:
        raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5")
    if content_md5 is not None and base64.b64encode(hashlib.md5(body).digest()).decode() != content_md5:
        raise S3Error("BadDigest")
    for header, compute in checks.items():
        value = ctx.headers.get(header)
        if value is not None and base64.b64encode(compute(body)).decode() != value:
            raise S3Error("BadDigest", f"The {header[15:].upper()} you specified did not match the calculated checksum.")


async def delete_objects(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    body = await ctx.read_small_body()
    verify_small_body(ctx, body, required=True)
    doc = parse_request_xml(body, "Delete")
    quiet = (text_of(doc, "Quiet") or "").strip().lower() == "true"
    objects = children(doc, "Object")
    if not objects or len(objects) > 1000:
        raise S3Error("MalformedXML")
    keys = []
    for obj in objects:
        key = text_of(obj, "Key")
        if not key:
            raise S3Error("MalformedXML")
        keys.append(key)
    root = element("DeleteResult")
    may_write = _may(ctx, bucket.acl, "WRITE")
    for key in keys:
        if not may_write:
            err = subelement(root, "Error")
            subelement(err, "Key", key)
            subelement(err, "Code", "AccessDenied")
            subelement(err, "Message", "Access Denied")
            continue
        await ctx.engine.delete_object(bucket.name, key)
        if not quiet:
            subelement(subelement(root, "Deleted"), "Key", key)
    return xml_response(root)
