"""From a registered bundle to an available image: control's side of imagecache.

RegisterImage calls `inspect_bundle` with the caller's own keys: reading the manifest as
the caller proves they may (as EC2 requires), and the cheap checks -- the signature
against the account's certificates, the bundle key against the cloud's private key --
fail the call at once with a reason the user can act on. The expensive part (fetch,
decrypt, verify, chunk, publish) runs afterwards in `ImagePreparer`, which moves the
image from "pending" to "available" or to "failed" with imagecache's reason.

The preparer works as the cloud administrator (account "eucalyptus"): Walrus grants that
identity READ on bundles uploaded with the aws-exec-read ACL, and it owns the system
bucket. Pending images are picked up again when control restarts (prepare is idempotent
and publishes the image manifest last, so a crash never leaves a half image).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509

from bundletools import errors as bt_errors, manifest as bt_manifest, reader as bt_reader
from bundletools.s3 import S3Endpoint, client as s3_client
from imagecache.cache import CacheConfig, ImageCache, parse_bundle_location
from imagecache.errors import ImageCacheError, PrepareFailed, StoreError, from_bundle_error

from .errors import Ec2Error
from .identity import ADMIN_ACCOUNT, ADMIN_USER, account_by_name, get_user, list_users, user_keys
from .images import all_images, get_image, put_image

log = logging.getLogger("eucalypt.control.images")

MAX_MANIFEST = 16 << 20
RETRIES = (2.0, 5.0, 15.0)  # backoff between attempts after a transient store failure


def system_endpoint(txn, walrus_url: str) -> S3Endpoint:
    """The administrator's first key, for the preparer's S3 client."""
    account = account_by_name(txn, ADMIN_ACCOUNT)
    keys = user_keys(txn, get_user(txn, account.id, ADMIN_USER))
    if not keys:
        raise RuntimeError("the cloud administrator has no access key: images cannot be prepared")
    return S3Endpoint(walrus_url, keys[0].access_key, keys[0].secret_key)


@dataclass(frozen=True, slots=True)
class InspectedBundle:
    manifest: bt_manifest.Manifest
    signer_cert: str  # PEM of the certificate whose key signed the manifest


async def inspect_bundle(walrus_url: str, access_key: str, secret_key: str, location: str,
                         certificates: list[str], cloud_key) -> InspectedBundle:
    """Read and check a bundle manifest as the caller; Ec2Error(InvalidManifest) says why not."""
    try:
        bucket, key = parse_bundle_location(location)
    except PrepareFailed as exc:
        raise Ec2Error("InvalidManifest", exc.reason) from None
    if not key.endswith(".manifest.xml"):
        raise Ec2Error("InvalidManifest", f"{location} does not name a bundle manifest (KEY.manifest.xml)")
    try:
        async with s3_client(S3Endpoint(walrus_url, access_key, secret_key)) as s3:
            reply = await s3.get_object(Bucket=bucket, Key=key)
            async with reply["Body"] as body:
                raw = await body.read(MAX_MANIFEST + 1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:
            raise Ec2Error("Unavailable", f"the object store could not be read ({code})") from None
        raise Ec2Error("InvalidManifest", f"the manifest {location} cannot be read ({code or status}): "
                                          "check the bucket and key, and that you may read it") from None
    except (BotoCoreError, OSError) as exc:
        raise Ec2Error("Unavailable", f"the object store at {walrus_url} did not answer: {exc}") from None
    if len(raw) > MAX_MANIFEST:
        raise Ec2Error("InvalidManifest", "the manifest is too large to be a bundle manifest")
    try:
        manifest = bt_manifest.parse(raw)
    except bt_errors.BundleError as exc:
        raise Ec2Error("InvalidManifest", from_bundle_error(exc).reason) from None
    signer = None
    for pem in certificates:
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            manifest.verify_signature(cert.public_key())
        except bt_errors.BundleError:
            continue
        signer = pem
        break
    if signer is None:
        raise Ec2Error("InvalidManifest", "the manifest's signature does not verify with any certificate of "
                                          "your account: bundle with your own cert.pem and pk.pem")
    try:
        bt_reader.unwrap_bundle_key(manifest, cloud_key)
    except bt_errors.BundleError as exc:
        raise Ec2Error("InvalidManifest", from_bundle_error(exc).reason) from None
    return InspectedBundle(manifest, signer)


def account_certificates(txn, account_id: str, first_user: str) -> list[str]:
    """The certificates of an account's users, the calling user's first."""
    users = sorted(list_users(txn, account_id), key=lambda u: u.name != first_user)
    return [pem for user in users for pem in user.certificates]


class ImagePreparer:
    """Prepares pending images, `concurrency` at a time (it is CPU-heavy), in the background."""

    def __init__(self, store, cloud_key, walrus_url: str, *, cache_config: CacheConfig = CacheConfig(),
                 concurrency: int = 1, clock=None) -> None:
        self.store, self.cloud_key, self.walrus_url = store, cloud_key, walrus_url
        self.cache_config = cache_config
        self._gate = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task] = {}
        self._clock = clock
        self._stack: contextlib.AsyncExitStack | None = None
        self.cache: ImageCache | None = None

    async def start(self) -> None:
        with self.store.read() as txn:
            endpoint = system_endpoint(txn, self.walrus_url)
            pending = [r["image_id"] for r in all_images(txn) if r["state"] == "pending"]
        self._stack = contextlib.AsyncExitStack()
        self.cache = await self._stack.enter_async_context(
            ImageCache(endpoint, self.cloud_key, self.cache_config, holder="control"))
        for image_id in pending:
            log.info("resuming the preparation of %s", image_id)
            self.submit(image_id)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    def submit(self, image_id: str) -> None:
        if image_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._prepare(image_id))
            self._tasks[image_id] = task
            task.add_done_callback(lambda _t: self._tasks.pop(image_id, None))

    async def wait(self, image_id: str) -> None:
        """For callers that want the outcome (tests, the CLI): returns once it is known."""
        task = self._tasks.get(image_id)
        if task is not None:
            await asyncio.shield(task)

    async def _prepare(self, image_id: str) -> None:
        async with self._gate:
            with self.store.read() as txn:
                record = get_image(txn, image_id)
            if record is None or record["state"] != "pending":
                return
            cert = x509.load_pem_x509_certificate(record["signer_cert"].encode()).public_key()
            for attempt, delay in enumerate((*RETRIES, None)):
                try:
                    result = await self.cache.prepare(record["location"], image_id, user_cert=cert)
                except PrepareFailed as exc:
                    await self._finish(image_id, "failed", {"code": exc.code, "message": exc.reason})
                    return
                except (StoreError, ImageCacheError) as exc:
                    if delay is None:
                        await self._finish(image_id, "failed", {"code": "Server.StoreError",
                                                                "message": exc.reason})
                        return
                    log.warning("preparing %s (attempt %d): %s; retrying in %.0f s", image_id, attempt + 1,
                                exc.reason, delay)
                    await asyncio.sleep(delay)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug: fail the image visibly rather than leave it pending
                    log.exception("preparing %s failed", image_id)
                    await self._finish(image_id, "failed", {"code": "Server.InternalError",
                                                            "message": f"{type(exc).__name__}: {exc}"})
                    return
                manifest = result.manifest
                await self._finish(image_id, "available", None, size=manifest.size, sha256=manifest.sha256)
                log.info("image %s is available (%d bytes; %d new bytes published)", image_id, manifest.size,
                         result.stats.bytes_published)
                if self.cache_config.cap_bytes:
                    with contextlib.suppress(ImageCacheError):
                        await self.cache.evict(self.cache_config.cap_bytes)
                return

    async def _finish(self, image_id: str, state: str, reason: dict | None, **fields) -> None:
        def mutate(txn):
            record = get_image(txn, image_id)
            if record is None or record["state"] != "pending":
                return  # deregistered meanwhile
            put_image(txn, {**record, "state": state, "state_reason": reason, **fields})

        await self.store.write(mutate)

