"""CopyObject, and the copy-source handling UploadPartCopy shares.

A copy writes a new record that references the source's chunks; no data is copied.
"""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

from ..storage import errors as storage_errors
from ..storage.records import ObjectRecord
from .context import Context, check_key
from .errors import S3Error
from .objects import check_conditions
from .responses import xml_response
from .xml import element, iso8601, subelement


def parse_copy_source(value: str) -> tuple[str, str]:
    source = unquote(value.split("?versionId=", 1)[0])
    bucket, slash, key = source.lstrip("/").partition("/")
    if not bucket or not slash or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                      ArgumentName="x-amz-copy-source", ArgumentValue=value)
    return bucket, key


async def copy_source(ctx: Context) -> ObjectRecord:
    """The readable source object named by x-amz-copy-source, preconditions checked."""
    bucket_name, key = parse_copy_source(ctx.headers["x-amz-copy-source"])
    bucket = await ctx.engine.get_bucket(bucket_name)
    if bucket is None:
        raise S3Error("NoSuchBucket", BucketName=bucket_name)
    record = await ctx.engine.get_object(bucket_name, key)
    if record is None:
        if ctx.user_id == bucket.owner_id:
            raise S3Error("NoSuchKey", Key=key)
        raise S3Error("AccessDenied")
    ctx.require(record.acl, "READ")
    check_conditions(ctx.headers, record.etag, record.last_modified, copy_source=True)
    return record


async def copy_object(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "WRITE")
    check_key(ctx.route.key)
    source = await copy_source(ctx)
    directive = ctx.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.",
                      ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    if directive == "REPLACE":
        meta = ctx.object_meta()
    else:
        meta = source.meta
        storage_class = ctx.headers.get("x-amz-storage-class")
        if storage_class:
            kept = tuple((n, v) for n, v in meta.headers if n != "x-amz-storage-class")
            meta = type(meta)(meta.content_type, meta.user, kept + (("x-amz-storage-class", storage_class),))
    same_object = source.bucket == bucket.name and source.key == ctx.route.key
    if same_object and directive == "COPY" and meta == source.meta:
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an "
                      "object to itself without changing the object's metadata, storage class, website "
                      "redirect location or encryption attributes.")
    acl = await ctx.acl_from_headers(bucket_owner=bucket)
    try:
        record = await ctx.engine.copy_object(source, bucket=bucket.name, key=ctx.route.key,
                                              owner_id=ctx.user_id, meta=meta, acl=acl,
                                              if_match_etag=source.etag)
    except storage_errors.PreconditionFailed:
        raise S3Error("PreconditionFailed", "The source object changed during the copy.",
                      Condition="x-amz-copy-source-If-Match")
    root = element("CopyObjectResult")
    subelement(root, "LastModified", iso8601(record.last_modified))
    subelement(root, "ETag", f'"{record.etag}"')
    for algorithm, value in record.checksums:
        subelement(root, f"Checksum{algorithm}", value)
    return xml_response(root)
