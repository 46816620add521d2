"""aiobotocore, the async client the rest of eucalypt uses, against a real Walrus."""

import asyncio
import hashlib
import os

import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from walrustest import ALICE, BOB


def client(walrus, user):
    return get_session().create_client(
        "s3", endpoint_url=walrus.url, region_name="eucalyptus",
        aws_access_key_id=user.access_key, aws_secret_access_key=user.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      max_pool_connections=32))


async def test_concurrent_put_get_list(walrus, bucket_name):
    async with client(walrus, ALICE) as s3:
        await s3.create_bucket(Bucket=bucket_name)
        bodies = {f"obj/{i:03d}": os.urandom(i * 997) for i in range(60)}
        await asyncio.gather(*(s3.put_object(Bucket=bucket_name, Key=k, Body=v) for k, v in bodies.items()))

        async def fetch(key):
            response = await s3.get_object(Bucket=bucket_name, Key=key)
            async with response["Body"] as stream:
                return key, await stream.read()
        fetched = dict(await asyncio.gather(*(fetch(k) for k in bodies)))
        assert fetched == bodies
        paginator = s3.get_paginator("list_objects_v2")
        keys = []
        async for page in paginator.paginate(Bucket=bucket_name, PaginationConfig={"PageSize": 25}):
            keys += [o["Key"] for o in page.get("Contents", [])]
        assert keys == sorted(bodies)


async def test_ranged_parallel_reads(walrus, bucket_name):
    """How a node will read image data: a few large ranged GETs in flight."""
    data = os.urandom(9 * 1024 * 1024 + 11)
    async with client(walrus, ALICE) as s3:
        await s3.create_bucket(Bucket=bucket_name)
        await s3.put_object(Bucket=bucket_name, Key="image", Body=data)
        step = 2 * 1024 * 1024

        async def read(start):
            end = min(start + step, len(data)) - 1
            response = await s3.get_object(Bucket=bucket_name, Key="image", Range=f"bytes={start}-{end}")
            async with response["Body"] as stream:
                return start, await stream.read()
        pieces = dict(await asyncio.gather(*(read(s) for s in range(0, len(data), step))))
        assert b"".join(pieces[s] for s in sorted(pieces)) == data


async def test_async_multipart_and_isolation(walrus, bucket_name):
    async with client(walrus, ALICE) as alice, client(walrus, BOB) as bob:
        await alice.create_bucket(Bucket=bucket_name)
        uid = (await alice.create_multipart_upload(Bucket=bucket_name, Key="mp"))["UploadId"]
        parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
        etags = await asyncio.gather(*(
            alice.upload_part(Bucket=bucket_name, Key="mp", UploadId=uid, PartNumber=n, Body=p)
            for n, p in enumerate(parts, 1)))
        with pytest.raises(ClientError) as exc:
            await bob.upload_part(Bucket=bucket_name, Key="mp", UploadId=uid, PartNumber=3, Body=b"x")
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
        await alice.complete_multipart_upload(
            Bucket=bucket_name, Key="mp", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e["ETag"]} for n, e in enumerate(etags, 1)]})
        response = await alice.get_object(Bucket=bucket_name, Key="mp")
        async with response["Body"] as stream:
            assert hashlib.sha256(await stream.read()).digest() == hashlib.sha256(b"".join(parts)).digest()
        with pytest.raises(ClientError) as exc:
            await bob.get_object(Bucket=bucket_name, Key="mp")
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
