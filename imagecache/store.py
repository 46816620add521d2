"""The one seam for I/O: a bucket of an S3-compatible store, through aiobotocore.

Everything imagecache stores goes through `BucketStore`; everything above it deals in
keys and bytes. 404 is an answer (None / False), not an error; every other failure is a
StoreError. Only plain S3 operations are used (GET with Range, PUT, DELETE, HEAD,
ListObjectsV2, multipart), so the system bucket can live in any S3-compatible store.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError

from bundletools import s3 as bt_s3

from .errors import StoreError

Endpoint = bt_s3.S3Endpoint


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # unix seconds
    etag: str = ""


@dataclass(frozen=True, slots=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _ts(value) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


@contextlib.asynccontextmanager
async def open_client(endpoint: Endpoint):
    """An aiobotocore S3 client (path style, SigV4, checksums only when required)."""
    try:
        async with bt_s3.client(endpoint) as s3:
            yield s3
    except BotoCoreError as exc:
        raise StoreError(f"S3 endpoint {endpoint.url}: {exc}") from exc


class BucketStore:
    def __init__(self, s3, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket

    def _fail(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{what} s3://{self.bucket}: {exc}")

    async def ensure_bucket(self) -> None:
        try:
            await bt_s3.ensure_bucket(self.s3, self.bucket)
        except Exception as exc:  # bundletools raises its own TransferError/BucketNotOwned
            raise self._fail("cannot use bucket", exc) from exc

    async def get(self, key: str) -> bytes | None:
        found = await self.get_with_etag(key)
        return None if found is None else found[0]

    async def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            reply = await self.s3.get_object(Bucket=self.bucket, Key=key)
            async with reply["Body"] as body:
                return await body.read(), reply.get("ETag", "")
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._fail(f"GET {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._fail(f"GET {key}", exc) from exc

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of `key`; StoreError if the object is gone or short."""
        try:
            reply = await self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            async with reply["Body"] as body:
                data = await body.read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"GET {key} [{start}, {end})", exc) from exc
        if len(data) != end - start:
            raise StoreError(f"GET {key} [{start}, {end}) returned {len(data)} bytes")
        return data

    async def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        try:
            await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"PUT {key}", exc) from exc

    async def delete(self, key: str) -> None:
        try:
            await self.s3.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) != 404:
                raise self._fail(f"DELETE {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._fail(f"DELETE {key}", exc) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            reply = await self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._fail(f"HEAD {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._fail(f"HEAD {key}", exc) from exc
        return ObjectInfo(key, int(reply["ContentLength"]), _ts(reply.get("LastModified")), reply.get("ETag", ""))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        try:
            paginator = self.s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(o["Key"], int(o["Size"]), _ts(o.get("LastModified")), o.get("ETag", "")))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"LIST {prefix}", exc) from exc
        return out

    # multipart ---------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        try:
            reply = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"CreateMultipartUpload {key}", exc) from exc
        return reply["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        try:
            reply = await self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"UploadPart {key} #{number}", exc) from exc
        return reply["ETag"]

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
        try:
            await self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                    MultipartUpload={"Parts": parts})
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"CompleteMultipartUpload {key}", exc) from exc

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _status(exc) != 404:
                raise self._fail(f"AbortMultipartUpload {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._fail(f"AbortMultipartUpload {key}", exc) from exc

    async def list_uploads(self, prefix: str) -> list[UploadInfo]:
        out = []
        try:
            paginator = self.s3.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for u in page.get("Uploads", []):
                    out.append(UploadInfo(u["Key"], u["UploadId"], _ts(u.get("Initiated"))))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"ListMultipartUploads {prefix}", exc) from exc
        return out
