"""Service and bucket operations: ListBuckets, Create/Head/Delete bucket, location."""

from __future__ import annotations

from aiohttp import web

from ..storage import errors as storage_errors
from .context import Context, check_bucket_name
from .errors import S3Error
from .responses import empty, xml_response
from .xml import element, iso8601, parse_request_xml, subelement, text_of


async def list_buckets(ctx: Context) -> web.Response:
    user = ctx.require_user()
    root = element("ListAllMyBucketsResult")
    owner = subelement(root, "Owner")
    subelement(owner, "ID", user.canonical_id)
    subelement(owner, "DisplayName", user.display_name)
    buckets = subelement(root, "Buckets")
    for bucket in await ctx.engine.list_buckets(user.canonical_id):
        b = subelement(buckets, "Bucket")
        subelement(b, "Name", bucket.name)
        subelement(b, "CreationDate", iso8601(bucket.created))
    return xml_response(root)


async def create_bucket(ctx: Context) -> web.Response:
    user = ctx.require_user()
    name = ctx.route.bucket
    check_bucket_name(name)
    location = ""
    body = await ctx.read_small_body(64 * 1024)
    if body.strip():
        doc = parse_request_xml(body, "CreateBucketConfiguration")
        location = text_of(doc, "LocationConstraint") or ""
        if location == "us-east-1":
            # AWS refuses an explicit us-east-1 constraint; any other name is a region of ours.
            raise S3Error("InvalidLocationConstraint", "The specified location-constraint is not valid",
                          status=400, LocationConstraint=location)
    acl = await ctx.acl_from_headers()
    try:
        await ctx.engine.create_bucket(name, user.canonical_id, acl, location)
    except storage_errors.BucketAlreadyOwnedByYou:
        raise S3Error("BucketAlreadyOwnedByYou", BucketName=name)
    except storage_errors.BucketAlreadyExists:
        raise S3Error("BucketAlreadyExists", BucketName=name)
    return empty(headers={"Location": f"/{name}"})


async def head_bucket(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "READ")
    return empty(headers={"x-amz-bucket-region": bucket.location or ctx.service.region})


async def delete_bucket(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require_owner(bucket)
    try:
        await ctx.engine.delete_bucket(bucket.name)
    except storage_errors.BucketNotEmpty:
        raise S3Error("BucketNotEmpty", BucketName=bucket.name)
    except storage_errors.NoSuchBucket:
        raise S3Error("NoSuchBucket", BucketName=bucket.name)
    return empty(204)


async def get_bucket_location(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require_owner(bucket)
    root = element("LocationConstraint")
    if bucket.location:
        root.text = bucket.location
    return xml_response(root)


async def get_bucket_versioning(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require_owner(bucket)
    # Versioning is never enabled on Walrus: S3 answers an empty configuration then.
    return xml_response(element("VersioningConfiguration"))
