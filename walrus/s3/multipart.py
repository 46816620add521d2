"""Multipart uploads: create, upload part (and part copy), complete, abort, list parts."""

from __future__ import annotations

import hashlib
import re

from aiohttp import web

from ..storage import errors as storage_errors
from ..storage.records import Upload
from .context import Context, check_key
from .copy import copy_source
from .errors import S3Error
from .listing import list_parts
from .objects import MAX_SINGLE_PUT, checksum_headers, receive_body
from .responses import empty, xml_response
from .xml import children, element, iso8601, parse_request_xml, subelement, text_of

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000


async def create_upload(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "WRITE")
    check_key(ctx.route.key)
    meta = ctx.object_meta()
    acl = await ctx.acl_from_headers(bucket_owner=bucket)
    algorithm = ctx.headers.get("x-amz-checksum-algorithm", "").upper()
    upload = await ctx.engine.create_upload(bucket.name, ctx.route.key, ctx.user_id, meta, acl, algorithm)
    root = element("InitiateMultipartUploadResult")
    subelement(root, "Bucket", bucket.name)
    subelement(root, "Key", ctx.route.key)
    subelement(root, "UploadId", upload.upload_id)
    headers = {"x-amz-checksum-algorithm": algorithm} if algorithm else None
    return xml_response(root, headers=headers)


async def _upload(ctx: Context) -> Upload:
    """The upload named by ?uploadId, checked against the bucket/key and the caller."""
    bucket = await ctx.bucket()
    upload = await ctx.engine.get_upload(ctx.query["uploadId"])
    if upload is None or upload.bucket != bucket.name or upload.key != ctx.route.key:
        raise S3Error("NoSuchUpload", UploadId=ctx.query["uploadId"])
    if ctx.user_id != upload.owner_id and ctx.user_id != bucket.owner_id:
        ctx.require(bucket.acl, "WRITE")
    return upload


def _part_number(ctx: Context) -> int:
    raw = ctx.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=raw)
    return int(raw)


async def upload_part(ctx: Context) -> web.Response:
    number = _part_number(ctx)
    upload = await _upload(ctx)
    staged, checksums = await receive_body(ctx, max_size=MAX_SINGLE_PUT)
    try:  # a failed commit releases the staged body itself (engine contract)
        part = await ctx.engine.commit_part(staged, upload.upload_id, number,
                                            staged.digests["md5"].hex(), checksums)
    except storage_errors.NoSuchUpload:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    return empty(headers={"ETag": f'"{part.etag}"', **checksum_headers(checksums)})


_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


async def upload_part_copy(ctx: Context) -> web.Response:
    number = _part_number(ctx)
    upload = await _upload(ctx)
    source = await copy_source(ctx)
    header = ctx.headers.get("x-amz-copy-source-range")
    if header is None:
        start, end = 0, source.size
    else:
        match = _COPY_RANGE.match(header.strip())
        if not match or int(match.group(2)) < int(match.group(1)):
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                          "bytes=first-last where first and last are the zero-based offsets of the first "
                          "and last bytes to copy", ArgumentName="x-amz-copy-source-range",
                          ArgumentValue=header)
        start, end = int(match.group(1)), int(match.group(2)) + 1
        if end > source.size:
            raise S3Error("InvalidRange", "The requested range is not satisfiable",
                          ActualObjectSize=str(source.size), RangeRequested=header)
    if end - start > MAX_SINGLE_PUT:
        raise S3Error("EntityTooLarge")
    try:
        part = await ctx.engine.copy_part(source, start, end, upload.upload_id, number)
    except storage_errors.NoSuchUpload:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    root = element("CopyPartResult")
    subelement(root, "LastModified", iso8601(part.last_modified))
    subelement(root, "ETag", f'"{part.etag}"')
    return xml_response(root)


async def complete_upload(ctx: Context) -> web.Response:
    upload = await _upload(ctx)
    doc = parse_request_xml(await ctx.read_small_body(), "CompleteMultipartUpload")
    requested = []
    for part in children(doc, "Part"):
        number_text = (text_of(part, "PartNumber") or "").strip()
        etag = (text_of(part, "ETag") or "").strip().strip('"')
        if not number_text.isdigit():
            raise S3Error("MalformedXML")
        requested.append((int(number_text), etag))
    if not requested:
        raise S3Error("MalformedXML", "You must specify at least one part")
    numbers = [n for n, _ in requested]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder", UploadId=upload.upload_id)
    stored = {p.part_number: p for p in await ctx.engine.list_parts(upload.upload_id, limit=MAX_PARTS)}
    for index, (number, etag) in enumerate(requested):
        part = stored.get(number)
        if part is None or part.etag != etag:
            raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=str(number),
                          ETag=etag)
        if index < len(requested) - 1 and part.size < MIN_PART_SIZE:
            raise S3Error("EntityTooSmall", ProposedSize=str(part.size),
                          MinSizeAllowed=str(MIN_PART_SIZE), PartNumber=str(number), ETag=etag)
    combined = hashlib.md5(b"".join(bytes.fromhex(stored[n].etag) for n in numbers)).hexdigest()
    etag = f"{combined}-{len(numbers)}"
    try:
        record = await ctx.engine.complete_upload(upload.upload_id, numbers, etag)
    except storage_errors.NoSuchUpload:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    root = element("CompleteMultipartUploadResult")
    host = ctx.request.host
    subelement(root, "Location", f"http://{host}/{upload.bucket}/{upload.key}")
    subelement(root, "Bucket", upload.bucket)
    subelement(root, "Key", upload.key)
    subelement(root, "ETag", f'"{record.etag}"')
    return xml_response(root)


async def abort_upload(ctx: Context) -> web.Response:
    upload = await _upload(ctx)
    try:
        await ctx.engine.abort_upload(upload.upload_id)
    except storage_errors.NoSuchUpload:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
    return empty(204)


async def list_upload_parts(ctx: Context) -> web.Response:
    upload = await _upload(ctx)
    return await list_parts(ctx, upload)
