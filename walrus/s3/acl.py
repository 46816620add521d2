"""ACL operations: Get/Put Bucket ACL and Object ACL."""

from __future__ import annotations

from aiohttp import web

from ..storage.records import Acl
from .context import Context
from .errors import S3Error
from .grants import acl_document, parse_acl_document
from .responses import empty, xml_response


async def _acl_from_request(ctx: Context, owner_id: str, owner_name: str, bucket_owner=None) -> Acl:
    """A new ACL from either headers (canned or x-amz-grant-*) or an XML body."""
    has_headers = "x-amz-acl" in ctx.headers or any(h.lower().startswith("x-amz-grant-") for h in ctx.headers)
    body = await ctx.read_small_body(64 * 1024)
    if has_headers and body.strip():
        raise S3Error("UnexpectedContent", "This request does not support content")
    if body.strip():
        doc_owner, grants = parse_acl_document(body)
        if doc_owner is not None and doc_owner != owner_id:
            raise S3Error("AccessDenied")
        return await ctx.resolve_grants(Acl(owner_id, owner_name, tuple(grants)))
    if not has_headers:
        raise S3Error("MissingSecurityHeader", "Your request was missing a required header",
                      MissingHeaderName="x-amz-acl")
    # The resource keeps its owner whoever changes the ACL.
    return await ctx.acl_from_headers(bucket_owner=bucket_owner, owner=(owner_id, owner_name))


async def get_bucket_acl(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "READ_ACP")
    return xml_response(acl_document(bucket.acl))


async def put_bucket_acl(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "WRITE_ACP")
    acl = await _acl_from_request(ctx, bucket.acl.owner_id, bucket.acl.owner_name)
    await ctx.engine.set_bucket_acl(bucket.name, acl)
    return empty()


async def get_object_acl(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    record = await ctx.engine.get_object(bucket.name, ctx.route.key)
    if record is None:
        raise S3Error("NoSuchKey", Key=ctx.route.key)
    ctx.require(record.acl, "READ_ACP")
    return xml_response(acl_document(record.acl))


async def put_object_acl(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    record = await ctx.engine.get_object(bucket.name, ctx.route.key)
    if record is None:
        raise S3Error("NoSuchKey", Key=ctx.route.key)
    ctx.require(record.acl, "WRITE_ACP")
    acl = await _acl_from_request(ctx, record.acl.owner_id, record.acl.owner_name, bucket_owner=bucket)
    await ctx.engine.set_object_acl(bucket.name, record.key, acl)
    return empty()
