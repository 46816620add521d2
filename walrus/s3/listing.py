"""Listings: ListObjects (v1 and v2), ListMultipartUploads, ListParts.

Delimiter grouping walks the key space in order and jumps past each common prefix, so a
bucket with a million keys under one prefix lists in one step, not a million.
"""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

from aiohttp import web

from .context import Context
from .errors import S3Error
from .responses import xml_response
from .xml import element, iso8601, subelement

MAX_PAGE = 1000
# Greater, in UTF-8 byte order, than any key continuing a prefix (the highest code point).
_AFTER_ALL = "\U0010ffff"


def _max_keys(ctx: Context, name: str) -> int:
    raw = ctx.query.get(name, str(MAX_PAGE))
    try:
        value = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      ArgumentName=name, ArgumentValue=raw)
    if value < 0:
        raise S3Error("InvalidArgument", f"Argument {name} must be an integer between 0 and 2147483647",
                      ArgumentName=name, ArgumentValue=raw)
    return min(value, MAX_PAGE)


def _encoder(ctx: Context):
    encoding = ctx.query.get("encoding-type")
    if encoding is None:
        return lambda s: s
    if encoding != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding)
    return lambda s: quote_plus(s, safe="/")


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return key[: at + len(delimiter)] if at >= 0 else None


def _resume_point(marker: str, prefix: str, delimiter: str) -> str:
    """Keys to skip when resuming after `marker`; a marker that is a common prefix skips
    everything under it (so paging never repeats a CommonPrefix)."""
    if delimiter and marker.startswith(prefix) and marker.endswith(delimiter) \
            and _common_prefix(marker, prefix, delimiter) == marker:
        return marker + _AFTER_ALL
    return marker


async def walk(ctx: Context, bucket: str, *, prefix: str, delimiter: str, after: str,
               max_keys: int):
    """(objects, common_prefixes, truncated, last_item) for one page."""
    objects, prefixes = [], []
    last_item = None
    cursor = _resume_point(after, prefix, delimiter) if after else ""
    while True:
        batch = await ctx.engine.scan_objects(bucket, prefix=prefix, after=cursor, limit=MAX_PAGE)
        if not batch:
            return objects, prefixes, False, last_item
        for record in batch:
            common = _common_prefix(record.key, prefix, delimiter)
            if len(objects) + len(prefixes) >= max_keys:
                return objects, prefixes, True, last_item
            if common is not None:
                if not prefixes or prefixes[-1] != common:
                    prefixes.append(common)
                last_item = common
                cursor = common + _AFTER_ALL
                break  # jump past every key under this prefix
            objects.append(record)
            last_item = record.key
            cursor = record.key
        else:
            if len(batch) < MAX_PAGE:
                return objects, prefixes, False, last_item


async def _owner_names(ctx: Context, ids) -> dict[str, str]:
    names = {}
    for owner_id in set(ids):
        user = await ctx.service.users.by_canonical_id(owner_id)
        names[owner_id] = user.display_name if user else ""
    return names


async def list_objects(ctx: Context, *, v2: bool = False) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "READ")
    encode = _encoder(ctx)
    q = ctx.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    max_keys = _max_keys(ctx, "max-keys")
    if v2:
        token = q.get("continuation-token")
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
            except ValueError:
                raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                              ArgumentName="continuation-token", ArgumentValue=token)
        else:
            after = q.get("start-after", "")
    else:
        after = q.get("marker", "")
    objects, prefixes, truncated, last_item = [], [], False, None
    if max_keys > 0:
        objects, prefixes, truncated, last_item = await walk(
            ctx, bucket.name, prefix=prefix, delimiter=delimiter, after=after, max_keys=max_keys)
    fetch_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
    owners = await _owner_names(ctx, (o.owner_id for o in objects)) if fetch_owner else {}

    root = element("ListBucketResult")
    subelement(root, "Name", bucket.name)
    subelement(root, "Prefix", encode(prefix))
    if v2:
        if "continuation-token" in q:
            subelement(root, "ContinuationToken", q["continuation-token"])
        if "start-after" in q:
            subelement(root, "StartAfter", encode(q["start-after"]))
        subelement(root, "KeyCount", len(objects) + len(prefixes))
    else:
        subelement(root, "Marker", encode(after))
    subelement(root, "MaxKeys", max_keys)
    if delimiter:
        subelement(root, "Delimiter", encode(delimiter))
    if "encoding-type" in q:
        subelement(root, "EncodingType", "url")
    subelement(root, "IsTruncated", "true" if truncated else "false")
    if truncated and last_item is not None:
        if v2:
            subelement(root, "NextContinuationToken",
                       base64.urlsafe_b64encode(last_item.encode()).decode())
        elif delimiter:
            subelement(root, "NextMarker", encode(last_item))
    for record in objects:
        c = subelement(root, "Contents")
        subelement(c, "Key", encode(record.key))
        subelement(c, "LastModified", iso8601(record.last_modified))
        subelement(c, "ETag", f'"{record.etag}"')
        subelement(c, "Size", record.size)
        if fetch_owner:
            owner = subelement(c, "Owner")
            subelement(owner, "ID", record.owner_id)
            subelement(owner, "DisplayName", owners.get(record.owner_id, ""))
        subelement(c, "StorageClass", dict(record.meta.headers).get("x-amz-storage-class", "STANDARD"))
    for common in prefixes:
        subelement(subelement(root, "CommonPrefixes"), "Prefix", encode(common))
    return xml_response(root)


async def list_uploads(ctx: Context) -> web.Response:
    bucket = await ctx.bucket()
    ctx.require(bucket.acl, "READ")
    encode = _encoder(ctx)
    q = ctx.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    key_marker = q.get("key-marker", "")
    upload_marker = q.get("upload-id-marker", "") if key_marker else ""
    max_uploads = _max_keys(ctx, "max-uploads")
    uploads, prefixes = [], []
    truncated = False
    after_key, after_id = _resume_point(key_marker, prefix, delimiter), upload_marker
    while len(uploads) + len(prefixes) < max_uploads + 1:
        batch = await ctx.engine.scan_uploads(bucket.name, prefix=prefix, after_key=after_key,
                                              after_upload_id=after_id, limit=MAX_PAGE)
        if not batch:
            break
        for upload in batch:
            after_key, after_id = upload.key, upload.upload_id
            common = _common_prefix(upload.key, prefix, delimiter)
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(uploads) + len(prefixes) >= max_uploads:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
            else:
                uploads.append(upload)
        if truncated or len(batch) < MAX_PAGE:
            break
    owners = await _owner_names(ctx, (u.owner_id for u in uploads))
    root = element("ListMultipartUploadsResult")
    subelement(root, "Bucket", bucket.name)
    subelement(root, "KeyMarker", encode(key_marker))
    subelement(root, "UploadIdMarker", upload_marker)
    if truncated:
        last = uploads[-1] if uploads and (not prefixes or uploads[-1].key > prefixes[-1]) else None
        subelement(root, "NextKeyMarker", encode(last.key if last else prefixes[-1]))
        subelement(root, "NextUploadIdMarker", last.upload_id if last else "")
    if prefix:
        subelement(root, "Prefix", encode(prefix))
    if delimiter:
        subelement(root, "Delimiter", encode(delimiter))
    subelement(root, "MaxUploads", max_uploads)
    if "encoding-type" in q:
        subelement(root, "EncodingType", "url")
    subelement(root, "IsTruncated", "true" if truncated else "false")
    for upload in uploads:
        u = subelement(root, "Upload")
        subelement(u, "Key", encode(upload.key))
        subelement(u, "UploadId", upload.upload_id)
        for tag in ("Initiator", "Owner"):
            who = subelement(u, tag)
            subelement(who, "ID", upload.owner_id)
            subelement(who, "DisplayName", owners.get(upload.owner_id, ""))
        subelement(u, "StorageClass", "STANDARD")
        subelement(u, "Initiated", iso8601(upload.initiated))
        if upload.checksum_algorithm:
            subelement(u, "ChecksumAlgorithm", upload.checksum_algorithm)
    for common in prefixes:
        subelement(subelement(root, "CommonPrefixes"), "Prefix", encode(common))
    return xml_response(root)


async def list_parts(ctx: Context, upload) -> web.Response:
    q = ctx.query
    marker_text = q.get("part-number-marker", "0") or "0"
    if not marker_text.isdigit():
        raise S3Error("InvalidArgument", "Provided part-number-marker not an integer or within integer range",
                      ArgumentName="part-number-marker", ArgumentValue=marker_text)
    marker = int(marker_text)
    max_parts = _max_keys(ctx, "max-parts")
    parts = await ctx.engine.list_parts(upload.upload_id, after=marker, limit=max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    owner = await ctx.service.users.by_canonical_id(upload.owner_id)
    root = element("ListPartsResult")
    subelement(root, "Bucket", upload.bucket)
    subelement(root, "Key", upload.key)
    subelement(root, "UploadId", upload.upload_id)
    for tag in ("Initiator", "Owner"):
        who = subelement(root, tag)
        subelement(who, "ID", upload.owner_id)
        subelement(who, "DisplayName", owner.display_name if owner else "")
    subelement(root, "StorageClass", "STANDARD")
    subelement(root, "PartNumberMarker", marker)
    if parts:
        subelement(root, "NextPartNumberMarker", parts[-1].part_number)
    subelement(root, "MaxParts", max_parts)
    subelement(root, "IsTruncated", "true" if truncated else "false")
    if upload.checksum_algorithm:
        subelement(root, "ChecksumAlgorithm", upload.checksum_algorithm)
    for part in parts:
        p = subelement(root, "Part")
        subelement(p, "PartNumber", part.part_number)
        subelement(p, "LastModified", iso8601(part.last_modified))
        subelement(p, "ETag", f'"{part.etag}"')
        subelement(p, "Size", part.size)
        for algorithm, value in part.checksums:
            subelement(p, f"Checksum{algorithm}", value)
    return xml_response(root)
