"""Bundles in S3 (Walrus or AWS): upload, download and delete through aiobotocore.

Upload follows euca-upload-bundle (spec 4): make sure the bucket exists and is
ours, PUT every part (several in flight), then the manifest last, each with the
canned ACL (aws-exec-read by default, so the cloud can read private bundles);
every ETag must equal the MD5 of what we sent. An endpoint may carry a path
prefix (http://host:8774/services/objectstorage): botocore keeps it with
path-style addressing. We sign with SigV4 and ask for checksums only when
required, so plain S3 servers (old Walrus included) see ordinary PUTs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from . import manifest as manifest_mod
from .errors import BucketNotOwned, BundleError, MissingPart, SizeMismatch, TamperedPart, TransferError
from .manifest import Manifest

DEFAULT_REGION = "eucalyptus"
CANNED_ACLS = ("aws-exec-read", "public-read", "ec2-bundle-read")
MAX_MANIFEST = 16 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class S3Endpoint:
    url: str | None  # None: AWS itself
    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION
    session_token: str | None = None


@dataclass(frozen=True, slots=True)
class BundleLocation:
    """bucket + key prefix ('' or ending in '/') as given to -b BUCKET[/PREFIX]."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> "BundleLocation":
        bucket, _, prefix = text.strip("/").partition("/")
        if not bucket:
            raise BundleError("a bucket name is required")
        return cls(bucket, prefix.strip("/") + "/" if prefix.strip("/") else "")

    def key(self, name: str) -> str:
        return self.prefix + name

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")


def read_credential_file(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """AWS_CREDENTIAL_FILE format: AWSAccessKeyId=... / AWSSecretKey=... lines."""
    access = secret = None
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if name == "AWSAccessKeyId":
            access = value
        elif name == "AWSSecretKey":
            secret = value
    return access, secret


def endpoint_from_env(
    url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    env: dict | None = None,
) -> S3Endpoint:
    """Flags first, then S3_URL / AWS_ACCESS_KEY_ID... / AWS_ACCESS_KEY... / AWS_CREDENTIAL_FILE."""
    env = os.environ if env is None else env
    url = url or env.get("S3_URL") or None
    access_key = access_key or env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY") or env.get("EC2_ACCESS_KEY")
    secret_key = (
        secret_key or env.get("AWS_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_KEY") or env.get("EC2_SECRET_KEY")
    )
    if (not access_key or not secret_key) and env.get("AWS_CREDENTIAL_FILE"):
        try:
            file_access, file_secret = read_credential_file(env["AWS_CREDENTIAL_FILE"])
        except OSError as exc:
            raise BundleError(f"cannot read AWS_CREDENTIAL_FILE: {exc.strerror}") from exc
        access_key, secret_key = access_key or file_access, secret_key or file_secret
    if not access_key or not secret_key:
        raise BundleError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or use -I/-S)"
        )
    region = region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION
    return S3Endpoint(url, access_key, secret_key, region, env.get("AWS_SESSION_TOKEN"))


def client(endpoint: S3Endpoint):
    """An aiobotocore S3 client context manager: path style, SigV4."""
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=16,
    )
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        aws_session_token=endpoint.session_token,
        config=config,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)



async def _all_or_none(coros) -> None:
    """Run coros concurrently; if one fails, cancel the rest, wait for them, and raise
    its own exception (not an ExceptionGroup, as TaskGroup would: callers catch
    BundleError subclasses)."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

async def ensure_bucket(s3, bucket: str, location: str | None = None) -> bool:
    """Create the bucket if it does not exist; BucketNotOwned if someone else has it.

    Returns True when we created it.
    """
    try:
        await s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if _status(exc) == 403:
            raise BucketNotOwned(f"bucket {bucket} exists and is not yours") from exc
        if _status(exc) != 404:
            raise TransferError(f"cannot check bucket {bucket}: {exc}") from exc
    kwargs = {"Bucket": bucket}
    if location:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": location}
    try:
        await s3.create_bucket(**kwargs)
    except ClientError as exc:
        if _code(exc) == "BucketAlreadyOwnedByYou":
            return False
        if _code(exc) == "BucketAlreadyExists" or _status(exc) == 403:
            raise BucketNotOwned(f"bucket {bucket} exists and is not yours") from exc
        raise TransferError(f"cannot create bucket {bucket}: {exc}") from exc
    return True


def _read_with_md5(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.md5(data).hexdigest()


async def _put_checked(s3, bucket: str, key: str, data: bytes, md5: str, acl: str) -> None:
    try:
        reply = await s3.put_object(Bucket=bucket, Key=key, Body=data, ACL=acl)
    except ClientError as exc:
        if _status(exc) == 403:
            raise BucketNotOwned(f"not allowed to write {bucket}/{key}: {_code(exc)}") from exc
        raise TransferError(f"upload of {key} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise TransferError(f"upload of {key} failed: {exc}") from exc
    if reply.get("ETag", "").strip('"').lower() != md5:
        raise TransferError(f"upload of {key} was corrupted during transit (ETag is not its MD5)")


async def upload_bundle(
    endpoint: S3Endpoint,
    manifest_path: str | os.PathLike,
    location: BundleLocation,
    *,
    acl: str = "aws-exec-read",
    region_constraint: str | None = None,
    parts_dir: str | os.PathLike | None = None,
    concurrency: int = 4,
    progress: Progress | None = None,
    skip_manifest: bool = False,
) -> str:
    """Upload parts (in parallel) then the manifest; returns 'bucket/key' of the manifest.

    On failure, whatever this call uploaded is deleted again (best effort).
    """
    manifest_path = Path(manifest_path)
    raw = manifest_path.read_bytes()
    manifest = manifest_mod.parse(raw)
    source = Path(parts_dir) if parts_dir else manifest_path.parent
    for part in manifest.parts:
        if not (source / part.filename).is_file():
            raise MissingPart(part.filename, f"part {part.filename} is missing from {source}")
    manifest_key = location.key(manifest_path.name)
    uploaded: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def put_part(part) -> None:
        async with gate:
            data, md5 = await asyncio.to_thread(_read_with_md5, source / part.filename)
            await _put_checked(s3, location.bucket, location.key(part.filename), data, md5, acl)
            uploaded.append(location.key(part.filename))
            if progress:
                progress(len(data))

    async with client(endpoint) as s3:
        created = await ensure_bucket(s3, location.bucket, region_constraint)
        try:
            await _all_or_none(put_part(p) for p in manifest.parts)
            if not skip_manifest:
                await _put_checked(s3, location.bucket, manifest_key, raw, hashlib.md5(raw).hexdigest(), acl)
        except BaseException:
            await _delete_keys(s3, location.bucket, uploaded)
            if created:
                await _delete_bucket_quietly(s3, location.bucket)
            raise
    return f"{location.bucket}/{manifest_key}"


async def _delete_keys(s3, bucket: str, keys: list[str]) -> None:
    for key in keys:
        try:
            await s3.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass


async def _delete_bucket_quietly(s3, bucket: str) -> bool:
    try:
        await s3.delete_bucket(Bucket=bucket)
        return True
    except (ClientError, BotoCoreError):
        return False


async def fetch_manifest(s3, bucket: str, key: str) -> Manifest:
    try:
        reply = await s3.get_object(Bucket=bucket, Key=key)
        async with reply["Body"] as body:
            raw = await body.read()
    except ClientError as exc:
        if _status(exc) == 404:
            raise BundleError(f"manifest {bucket}/{key} not found") from exc
        if _status(exc) == 403:
            raise BucketNotOwned(f"not allowed to read {bucket}/{key}") from exc
        raise TransferError(f"cannot read manifest {bucket}/{key}: {exc}") from exc
    if len(raw) > MAX_MANIFEST:
        raise manifest_mod.ManifestError("manifest is too large")
    return manifest_mod.parse(raw)


def manifest_key_for(location: BundleLocation, manifest_name: str | None, prefix: str | None) -> str:
    if manifest_name:
        name = Path(manifest_name).name
    elif prefix:
        name = f"{prefix}.manifest.xml"
    else:
        raise BundleError("give the manifest (-m) or the bundle prefix (-p)")
    return location.key(name)


async def _list_manifests(s3, location: BundleLocation) -> list[str]:
    keys = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=location.bucket, Prefix=location.prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".manifest.xml")]
    return keys


async def download_bundle(
    endpoint: S3Endpoint,
    location: BundleLocation,
    destination: str | os.PathLike,
    *,
    manifest_name: str | None = None,
    prefix: str | None = None,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> Path:
    """Download manifest + parts into `destination`, checking each part's SHA-1 and size.

    Files appear in `destination` only once every part has been checked.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    async with client(endpoint) as s3:
        if manifest_name or prefix:
            keys = [manifest_key_for(location, manifest_name, prefix)]
        else:
            keys = await _list_manifests(s3, location)
            if len(keys) != 1:
                raise BundleError(f"{len(keys)} manifests under {location}; choose one with -m or -p")
        key = keys[0]
        manifest = await fetch_manifest(s3, location.bucket, key)
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=destination))
        gate = asyncio.Semaphore(concurrency)
        part_prefix = key[: key.rfind("/") + 1]

        async def get_part(part) -> None:
            async with gate:
                part_key = part_prefix + part.filename
                try:
                    reply = await s3.get_object(Bucket=location.bucket, Key=part_key)
                except ClientError as exc:
                    if _status(exc) == 404:
                        raise MissingPart(part.filename, f"part {part.filename} is missing from the bucket") from exc
                    raise TransferError(f"download of {part_key} failed: {exc}") from exc
                digest = hashlib.sha1()
                with open(work / part.filename, "wb") as f:
                    async with reply["Body"] as body:
                        while chunk := await body.read(1 << 20):
                            digest.update(chunk)
                            await asyncio.to_thread(f.write, chunk)
                            if progress:
                                progress(len(chunk))
                if digest.hexdigest() != part.digest:
                    raise TamperedPart(part.filename, f"part {part.filename} is corrupt or tampered (SHA-1 mismatch)")

        try:
            await _all_or_none(get_part(p) for p in manifest.parts)
            total = sum((work / p.filename).stat().st_size for p in manifest.parts)
            if total != manifest.bundled_size:
                raise SizeMismatch(f"parts hold {total} bytes but bundled_size is {manifest.bundled_size}")
            manifest_file = Path(key).name
            (work / manifest_file).write_bytes(manifest.raw)
            for p in manifest.parts:
                os.replace(work / p.filename, destination / p.filename)
            os.replace(work / manifest_file, destination / manifest_file)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return destination / manifest_file


async def delete_bundle(
    endpoint: S3Endpoint,
    location: BundleLocation,
    *,
    manifest_name: str | None = None,
    prefix: str | None = None,
    local_manifest: str | os.PathLike | None = None,
    clear: bool = False,
) -> list[str]:
    """Delete the parts, then the manifest; with `clear` also the bucket if now empty."""
    async with client(endpoint) as s3:
        if local_manifest is not None:
            manifest = manifest_mod.parse(Path(local_manifest).read_bytes())
            key = location.key(Path(local_manifest).name)
        else:
            key = manifest_key_for(location, manifest_name, prefix)
            manifest = await fetch_manifest(s3, location.bucket, key)
        part_prefix = key[: key.rfind("/") + 1]
        deleted = []
        for k in [part_prefix + p.filename for p in manifest.parts] + [key]:
            try:
                await s3.delete_object(Bucket=location.bucket, Key=k)
            except ClientError as exc:
                if _status(exc) == 403:
                    raise BucketNotOwned(f"not allowed to delete {location.bucket}/{k}") from exc
                if _status(exc) != 404:
                    raise TransferError(f"cannot delete {k}: {exc}") from exc
            deleted.append(k)
        if clear:
            listing = await s3.list_objects_v2(Bucket=location.bucket, MaxKeys=1)
            if listing.get("KeyCount", len(listing.get("Contents", []))) == 0:
                await s3.delete_bucket(Bucket=location.bucket)
    return deleted
