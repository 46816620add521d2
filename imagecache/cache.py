"""The decrypted-image cache in the system bucket: prepare, account, evict, verify.

Bucket layout (default bucket "eucalypt-images", owned by the cloud's system identity):

    manifests/<image-id>.json          image manifest (see manifest.py); written LAST --
                                       its presence means the image is complete
    packs/<ms-time hex>-<random>       raw chunk bytes, new chunks of one prepare in image
                                       order, up to pack_size (256 MiB) each
    state/<image-id>/launched          {"last_launched": t}            touch()
    state/<image-id>/pins/<holder>     {"since": t, "expires": t|null} pin()/unpin()
    state/<image-id>/preparing         {"holder", "since", "expires"}  lease held by prepare

State lives in small separate objects rather than inside the manifest so that the
manifest is immutable once written (a node may cache it by ETag) and so that no two
writers ever read-modify-write the same object (S3 has no compare-and-swap).

Dedup across images: the chunk index (SHA-256 -> pack, offset) is built from the
manifests of the images in the cache; manifests are immutable, so they are cached in
memory by ETag and a prepare costs one listing plus the manifests it has not seen yet.
Packs named by no manifest (a crash mid-prepare) are never in the index, so a retry
simply publishes those chunks again and the orphans are collected by `gc`.

Eviction (`evict(cap)`): the images not pinned and not being prepared, least recently
launched first (never launched: by creation time), lose their manifests until the bytes
of the packs the remaining images reference fit under the cap; then `gc` deletes packs
no manifest references. A pack is the unit of deletion: a pack that still holds one
chunk some image needs is kept whole (rewriting packs would mean reading and writing
back what is still needed -- a compaction worth adding only if partly-dead packs turn out
to matter; `usage()` reports the referenced total so an operator can see it).

Concurrency between eviction and prepares (several processes may run them): a prepare
takes its lease *before* it lists manifests for its index; `gc` deletes packs only when
no unexpired lease exists, after it has deleted the evicted manifests. So a prepare
either took its lease before gc looked (gc then deletes nothing) or listed manifests
after the victims were gone (its index cannot name their packs). Orphans of a crashed
prepare outlive its lease by `gc_grace` at least. Pins are the caller's: control pins an
image while a node fetches it or an instance runs from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bundletools.errors as bt_errors
from bundletools import manifest as bt_manifest
from bundletools import reader as bt_reader
from bundletools.keys import verify as verify_signature_bytes

from . import chunking, prepare as prepare_mod, reader
from .errors import (
    BundleManifestInvalid,
    BundleNotFound,
    ImageCacheError,
    ImageNotFound,
    PrepareFailed,
    StoreError,
    from_bundle_error,
)
from .manifest import ImageManifest
from .metrics import ImageCacheMetrics, PrepareStats
from .store import BucketStore, Endpoint, open_client

DEFAULT_BUCKET = "eucalypt-images"
MANIFEST_PREFIX = "manifests/"
STATE_PREFIX = "state/"
MAX_BUNDLE_MANIFEST = 16 << 20
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def manifest_key(image_id: str) -> str:
    return f"{MANIFEST_PREFIX}{image_id}.json"


def check_image_id(image_id: str) -> str:
    if not _IMAGE_ID.match(image_id):
        raise ValueError(f"invalid image id {image_id!r}")
    return image_id


@dataclass(frozen=True, slots=True)
class CacheConfig:
    bucket: str = DEFAULT_BUCKET
    cap_bytes: int | None = None  # None: no cap (evict() then needs one)
    pack_size: int = 256 << 20
    part_size: int = 8 << 20  # multipart part size (S3 minimum is 5 MiB)
    part_window: int = 4  # bundle parts fetched ahead
    upload_concurrency: int = 4
    lease_ttl: float = 600.0
    gc_grace: float = 3600.0
    chunking: chunking.ChunkingParams = chunking.DEFAULT_PARAMS


@dataclass(frozen=True, slots=True)
class PrepareResult:
    manifest: ImageManifest
    stats: PrepareStats
    already_prepared: bool = False


@dataclass(frozen=True, slots=True)
class ImageInfo:
    image_id: str
    kind: str
    size: int
    stored_bytes: int  # bytes of non-zero chunks (before dedup across images)
    created: float
    last_launched: float | None
    pinned_by: tuple[str, ...]
    preparing: bool


@dataclass(frozen=True, slots=True)
class Usage:
    pack_bytes: int  # every pack object in the bucket
    referenced_bytes: int  # packs that some image manifest names
    images: int
    packs: int

    @property
    def garbage_bytes(self) -> int:
        return self.pack_bytes - self.referenced_bytes


@dataclass(frozen=True, slots=True)
class EvictResult:
    evicted: tuple[str, ...]
    deleted_packs: tuple[str, ...]
    freed_bytes: int
    referenced_bytes: int  # after eviction
    gc_skipped: bool = False  # a prepare was running: packs left for a later run


@dataclass(slots=True)
class _State:
    last_launched: float | None = None
    pins: dict[str, float | None] = field(default_factory=dict)  # holder -> expiry
    preparing_until: float | None = None


def parse_bundle_location(location: str) -> tuple[str, str]:
    """'bucket/path/to/prefix.manifest.xml' -> (bucket, key)."""
    bucket, _, key = location.strip().lstrip("/").partition("/")
    if not bucket or not key:
        raise BundleNotFound(f"bundle location {location!r} is not BUCKET/KEY.manifest.xml")
    return bucket, key


class ImageCache:
    """The imagecache API control uses. Open with `async with ImageCache(...) as cache`."""

    def __init__(self, endpoint: Endpoint, cloud_private_key=None, config: CacheConfig = CacheConfig(), *,
                 clock: Callable[[], float] = time.time, metrics: ImageCacheMetrics | None = None,
                 holder: str | None = None) -> None:
        self.endpoint, self.cloud_private_key, self.config = endpoint, cloud_private_key, config
        self.clock, self.metrics = clock, metrics
        self.holder = holder or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self._stack: contextlib.AsyncExitStack | None = None
        self.s3 = None
        self.store: BucketStore | None = None
        self._manifests: dict[str, tuple[str, ImageManifest]] = {}  # key -> (etag, manifest)
        self._bucket_ready = False

    async def __aenter__(self) -> "ImageCache":
        self._stack = contextlib.AsyncExitStack()
        self.s3 = await self._stack.enter_async_context(open_client(self.endpoint))
        self.store = BucketStore(self.s3, self.config.bucket)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            await self.store.ensure_bucket()
            self._bucket_ready = True

    # --- reading manifests ------------------------------------------------------------

    async def manifest(self, image_id: str) -> ImageManifest:
        """The image's manifest; ImageNotFound if it was never prepared or was evicted."""
        key = manifest_key(check_image_id(image_id))
        got = await self.store.get_with_etag(key)
        if got is None:
            raise ImageNotFound(f"image {image_id} is not in the cache")
        raw, etag = got
        cached = self._manifests.get(key)
        if cached and cached[0] == etag:
            return cached[1]
        manifest = ImageManifest.from_bytes(raw)
        self._manifests[key] = (etag, manifest)
        return manifest

    async def has_image(self, image_id: str) -> bool:
        return await self.store.head(manifest_key(check_image_id(image_id))) is not None

    async def _all_manifests(self) -> dict[str, ImageManifest]:
        """image id -> manifest for every image in the cache (cached by ETag)."""
        listing = await self.store.list(MANIFEST_PREFIX)
        live = {o.key for o in listing}
        for key in list(self._manifests):
            if key not in live:
                del self._manifests[key]
        out = {}
        for obj in listing:
            if not obj.key.endswith(".json"):
                continue
            cached = self._manifests.get(obj.key)
            if cached is None or cached[0] != obj.etag:
                got = await self.store.get_with_etag(obj.key)
                if got is None:
                    continue  # deleted since the listing
                try:
                    cached = (got[1], ImageManifest.from_bytes(got[0]))
                except ImageCacheError:
                    continue  # an unreadable manifest names nothing we can reuse
                self._manifests[obj.key] = cached
            out[cached[1].image_id] = cached[1]
        return out

    async def _chunk_index(self) -> prepare_mod.ChunkIndex:
        index: prepare_mod.ChunkIndex = {}
        for manifest in (await self._all_manifests()).values():
            for c in manifest.chunks:
                if not c.zero and c.sha256 not in index:
                    pack = manifest.packs[c.pack]
                    index[c.sha256] = prepare_mod.StoredChunk(pack.key, c.pack_offset, c.length, pack.size)
        return index

    # --- prepare ----------------------------------------------------------------------

    async def prepare(self, bundle_location: str, image_id: str, *, user_cert, force: bool = False,
                      progress: Callable[[PrepareStats], None] | None = None) -> PrepareResult:
        """Decrypt, verify and publish the bundle at 'bucket/key.manifest.xml' as `image_id`.

        Idempotent: an image already in the cache is returned as is (unless `force`).
        On any PrepareFailed (its `reason` is for the user) nothing is published; on a
        StoreError the prepare may be retried.
        """
        check_image_id(image_id)
        if self.cloud_private_key is None:
            raise ValueError("prepare needs the cloud's private key")
        await self._ensure_bucket()
        if not force:
            try:
                return PrepareResult(await self.manifest(image_id), PrepareStats(), already_prepared=True)
            except ImageNotFound:
                pass
        stats = PrepareStats()
        outcome = "failed"
        async with self._lease(image_id):
            try:
                result = await self._prepare(bundle_location, image_id, user_cert, stats, progress)
                outcome = "prepared"
                return result
            finally:
                if self.metrics:
                    self.metrics.record_prepare(stats, outcome)

    async def _prepare(self, bundle_location, image_id, user_cert, stats, progress) -> PrepareResult:
        started = time.monotonic()
        bundle_bucket, bundle_key = parse_bundle_location(bundle_location)
        bundle = await self._read_bundle_manifest(bundle_bucket, bundle_key)
        try:
            verify_signature_bytes(user_cert, bundle.signed_bytes(), bundle.signature)
            # Fails fast, before any part is fetched, when the bundle is not for this cloud.
            bt_reader.unwrap_bundle_key(bundle, self.cloud_private_key)
        except bt_errors.BundleError as exc:
            raise from_bundle_error(exc) from exc
        index = await self._chunk_index()
        ticker = asyncio.create_task(self._report(progress, stats)) if progress else None
        try:
            chunked = await prepare_mod.run_pipeline(
                s3=self.s3, store=self.store, bundle_bucket=bundle_bucket,
                part_prefix=bundle_key[: bundle_key.rfind("/") + 1], manifest=bundle,
                private_key=self.cloud_private_key, index=index, stats=stats, params=self.config.chunking,
                clock=self.clock, pack_size=self.config.pack_size, part_size=self.config.part_size,
                part_window=self.config.part_window, upload_concurrency=self.config.upload_concurrency,
            )
        except bt_errors.BundleError as exc:
            raise from_bundle_error(exc) from exc
        finally:
            if ticker:
                ticker.cancel()
        manifest = prepare_mod.build_manifest(
            image_id, bundle.image_type, chunked, self.config.chunking, created=self.clock(),
            source={"bundle": f"{bundle_bucket}/{bundle_key}", "digest_sha1": bundle.digest},
        )
        try:
            manifest.check()
            # Packs from other images that this one reuses must still be there (belt and
            # braces: the lease already keeps gc away).
            for key in set(chunked.pack_sizes) - chunked.written:
                if await self.store.head(key) is None:
                    raise StoreError(f"pack {key} vanished during the prepare; retry")
            await self.store.put(manifest_key(image_id), manifest.to_bytes(), content_type="application/json")
        except BaseException:
            for key in chunked.written:
                with contextlib.suppress(StoreError):
                    await self.store.delete(key)
            raise
        stats.seconds = time.monotonic() - started
        if progress:
            progress(stats)
        return PrepareResult(manifest, stats)

    async def _report(self, progress, stats) -> None:
        while True:
            await asyncio.sleep(0.5)
            progress(stats)

    async def _read_bundle_manifest(self, bucket: str, key: str) -> bt_manifest.Manifest:
        bundle_store = BucketStore(self.s3, bucket)
        try:
            raw = await bundle_store.get(key)
        except StoreError as exc:
            raise BundleNotFound(f"the bundle manifest {bucket}/{key} cannot be read by the cloud "
                                 f"(is it uploaded with the aws-exec-read ACL?)") from exc
        if raw is None:
            raise BundleNotFound(f"the bundle manifest {bucket}/{key} does not exist")
        if len(raw) > MAX_BUNDLE_MANIFEST:
            raise BundleManifestInvalid("the bundle manifest is too large")
        try:
            return bt_manifest.parse(raw)
        except bt_errors.BundleError as exc:
            raise from_bundle_error(exc) from exc

    # --- leases, launches, pins -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lease(self, image_id: str):
        key = f"{STATE_PREFIX}{image_id}/preparing"

        async def write() -> None:
            now = self.clock()
            body = {"holder": self.holder, "since": now, "expires": now + self.config.lease_ttl}
            await self.store.put(key, json.dumps(body).encode(), content_type="application/json")

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.config.lease_ttl / 3)
                with contextlib.suppress(StoreError):
                    await write()

        await write()
        renewer = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            with contextlib.suppress(StoreError):
                await self.store.delete(key)

    async def touch(self, image_id: str, when: float | None = None) -> None:
        """Record a launch of the image (eviction keeps recently launched images)."""
        body = {"last_launched": self.clock() if when is None else when}
        await self.store.put(f"{STATE_PREFIX}{check_image_id(image_id)}/launched", json.dumps(body).encode(),
                             content_type="application/json")

    async def pin(self, image_id: str, holder: str, ttl: float | None = None) -> None:
        """Keep the image from eviction until unpin(holder) (or `ttl` seconds pass)."""
        now = self.clock()
        body = {"since": now, "expires": None if ttl is None else now + ttl}
        await self.store.put(f"{STATE_PREFIX}{check_image_id(image_id)}/pins/{_safe(holder)}",
                             json.dumps(body).encode(), content_type="application/json")

    async def unpin(self, image_id: str, holder: str) -> None:
        await self.store.delete(f"{STATE_PREFIX}{check_image_id(image_id)}/pins/{_safe(holder)}")

    async def _states(self) -> dict[str, _State]:
        states: dict[str, _State] = {}
        for obj in await self.store.list(STATE_PREFIX):
            rest = obj.key[len(STATE_PREFIX):]
            image_id, _, what = rest.partition("/")
            body = await self.store.get(obj.key)
            if body is None:
                continue
            try:
                doc = json.loads(body)
            except ValueError:
                continue
            st = states.setdefault(image_id, _State())
            if what == "launched":
                st.last_launched = float(doc.get("last_launched") or 0)
            elif what == "preparing":
                st.preparing_until = float(doc.get("expires") or 0)
            elif what.startswith("pins/"):
                st.pins[what[5:]] = doc.get("expires")
        return states

    def _protected(self, st: _State | None, now: float) -> bool:
        if st is None:
            return False
        if st.preparing_until is not None and st.preparing_until > now:
            return True
        return any(exp is None or exp > now for exp in st.pins.values())

    # --- accounting and eviction ------------------------------------------------------

    async def list_images(self) -> list[ImageInfo]:
        manifests = await self._all_manifests()
        states = await self._states()
        now = self.clock()
        out = []
        for image_id, m in sorted(manifests.items()):
            st = states.get(image_id) or _State()
            out.append(ImageInfo(
                image_id, m.kind, m.size, sum(c.length for c in m.chunks if not c.zero), m.created,
                st.last_launched,
                tuple(h for h, exp in st.pins.items() if exp is None or exp > now),
                st.preparing_until is not None and st.preparing_until > now,
            ))
        return out

    async def usage(self) -> Usage:
        packs = await self.store.list(prepare_mod.PACK_PREFIX)
        manifests = await self._all_manifests()
        referenced = _referenced_packs(manifests.values())
        sizes = {o.key: o.size for o in packs}
        usage = Usage(sum(sizes.values()), sum(sizes.get(k, 0) for k in referenced), len(manifests), len(packs))
        if self.metrics:
            self.metrics.usage_bytes.set(usage.referenced_bytes)
        return usage

    async def evict(self, cap_bytes: int | None = None, *, images: list[str] | None = None,
                    grace: float | None = None) -> EvictResult:
        """Evict images (LRU, or exactly `images`) until referenced bytes <= cap, then gc.

        Pinned images and images being prepared are never evicted (also when named).
        """
        cap = self.config.cap_bytes if cap_bytes is None else cap_bytes
        if cap is None and images is None:
            raise ValueError("evict needs a cap (or a list of images)")
        manifests = await self._all_manifests()
        states = await self._states()
        now = self.clock()
        candidates = [i for i in manifests if not self._protected(states.get(i), now)]
        if images is not None:
            wanted = set(images)
            candidates = [i for i in candidates if i in wanted]

        def recency(image_id: str) -> float:
            st = states.get(image_id)
            if st and st.last_launched is not None:
                return st.last_launched
            return manifests[image_id].created

        candidates.sort(key=recency)
        remaining = dict(manifests)

        def referenced_bytes() -> int:
            return sum(_referenced_packs(remaining.values()).values())

        victims = []
        for image_id in candidates:
            if images is None and referenced_bytes() <= cap:
                break
            victims.append(image_id)
            del remaining[image_id]
        for image_id in victims:
            await self.store.delete(manifest_key(image_id))
            await self.store.delete(f"{STATE_PREFIX}{image_id}/launched")
            self._manifests.pop(manifest_key(image_id), None)
        if self.metrics:
            self.metrics.evicted_images.inc(len(victims))
        deleted, freed, skipped = await self._gc(grace, dropped=_referenced_packs(
            manifests[v] for v in victims))
        return EvictResult(tuple(victims), tuple(deleted), freed, (await self.usage()).referenced_bytes, skipped)

    async def gc(self, grace: float | None = None) -> EvictResult:
        """Delete packs no manifest references (orphans only once older than `grace`)."""
        deleted, freed, skipped = await self._gc(grace, dropped={})
        return EvictResult((), tuple(deleted), freed, (await self.usage()).referenced_bytes, skipped)

    async def _gc(self, grace: float | None, dropped: dict[str, int]) -> tuple[list[str], int, bool]:
        grace = self.config.gc_grace if grace is None else grace
        now = self.clock()
        states = await self._states()
        if any(st.preparing_until is not None and st.preparing_until > now for st in states.values()):
            return [], 0, True
        referenced = _referenced_packs((await self._all_manifests()).values())
        deleted, freed = [], 0
        for obj in await self.store.list(prepare_mod.PACK_PREFIX):
            if obj.key in referenced:
                continue
            # A pack an evicted image named was complete and is now unreferenced: no
            # prepare can pick it up (see the module docstring). Anything else is an
            # orphan of a failed prepare: wait out the grace period.
            if obj.key in dropped or now - obj.last_modified >= grace:
                await self.store.delete(obj.key)
                deleted.append(obj.key)
                freed += obj.size
        for upload in await self.store.list_uploads(prepare_mod.PACK_PREFIX):
            if now - upload.initiated >= grace:
                await self.store.abort_multipart(upload.key, upload.upload_id)
        if self.metrics:
            self.metrics.deleted_packs.inc(freed)
        return deleted, freed, False

    # --- verify / read back -----------------------------------------------------------

    async def verify(self, image_id: str) -> ImageManifest:
        """Read every chunk back; ImageCorrupt unless the image matches its manifest."""
        manifest = await self.manifest(image_id)
        await reader.verify_image(self.store, manifest)
        return manifest

    async def reassemble(self, image_id: str, path: str | Path) -> Path:
        return await reader.reassemble(self.store, await self.manifest(image_id), path)


def _referenced_packs(manifests) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in manifests:
        for p in m.packs:
            out[p.key] = p.size
    return out


def _safe(holder: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", holder)[:128] or "_"


__all__ = [
    "CacheConfig", "EvictResult", "ImageCache", "ImageInfo", "PrepareFailed", "PrepareResult", "Usage",
    "manifest_key", "parse_bundle_location",
]
