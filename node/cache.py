"""The node's local image cache: chunks fetched once, base images assembled from them.

    DATA/cache/chunks/<name>.pack     pack files: one per fetch request, verified chunks
                                      back to back (chunkstore)
    DATA/cache/db/                    LMDB metadata, with each present chunk's pack and
                                      offset (cachedb)
    DATA/images/<image-id>.img        assembled base images (sparse), kept while cached

`ensure(image_id)` makes an image's base file present: the manifest is read from Walrus
once (then kept in LMDB: manifests are immutable), the image registered (taking its
chunk references), room made, the chunks it lacks fetched (fetcher), the base
assembled; a missing or corrupt chunk found while assembling is dropped, refetched
(into a new pack) and the assembly done again. Concurrent `ensure`s of one image share
one task (single-flight); a caller cancelled while waiting does not cancel the others.

Size: "used" is the bytes of the pack files (their dead bytes included: chunks no
longer present whose pack still holds a live one) plus the non-zero extent of assembled
base images. Admission reserves what an image still needs; when used + reserved + need
would pass the high watermark, images are evicted least recently used first until it is
under the low watermark; if it would still pass the hard limit, CacheFull. Eviction is
per image, never of one pinned (by an instance) or busy (being ensured or launched);
the chunks it frees are only those no remaining image references (cachedb refcounts),
and a pack file goes when its last live chunk does.

Start: pack files the metadata does not name (written before a crash, before the commit
that would have named them; or whose deletion a crash interrupted) are deleted, and
records of the old one-file-per-chunk layout dropped (that part of the cache starts
empty; assembled base images stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass
from pathlib import Path

from imagecache import ImageManifest, ImageManifestInvalid, manifest_key

from .assemble import assemble_base, nonzero_extent
from .cachedb import CacheDB, ImageRecord
from .chunkstore import ChunkStore
from .errors import CacheFull, ImageCorrupt, NotFound
from .fetcher import ChunkFetcher
from .metrics import NodeMetrics

log = logging.getLogger("eucalypt.node.cache")


@dataclass(frozen=True, slots=True)
class CacheLimits:
    limit: int                 # hard cap, bytes
    high: float = 0.90         # evict when usage would pass high * limit ...
    low: float = 0.75          # ... down to low * limit

    @property
    def high_bytes(self) -> int:
        return int(self.limit * self.high)

    @property
    def low_bytes(self) -> int:
        return int(self.limit * self.low)


@dataclass(frozen=True, slots=True)
class EnsureResult:
    record: ImageRecord
    manifest: ImageManifest
    path: Path
    fetched_bytes: int         # chunk bytes this call fetched (0 for joiners)
    fetch_seconds: float
    assemble_seconds: float


class NodeImageCache:
    def __init__(self, data_dir: Path, db: CacheDB, fetcher: ChunkFetcher, chunks: ChunkStore,
                 limits: CacheLimits, metrics: NodeMetrics, clock) -> None:
        self.images_dir = Path(data_dir) / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db, self.fetcher, self.chunks = db, fetcher, chunks
        self.limits, self.metrics, self.clock = limits, metrics, clock
        self._inflight: dict[str, asyncio.Task] = {}
        self._busy: Tally[str] = Tally()
        self._reserved: dict[str, int] = {}
        self._room = asyncio.Lock()
        self.metrics.cache_limit.set(limits.limit)
        self._clean_temps()
        self._recover_packs()
        self.refresh_gauges()

    def base_path(self, image_id: str) -> Path:
        return self.images_dir / f"{image_id}.img"

    def used(self) -> int:
        chunk_bytes, base_bytes = self.db.totals()
        return chunk_bytes + base_bytes

    def refresh_gauges(self) -> None:
        self.metrics.cache_used.set(self.used())
        self.metrics.cache_images.set(len(self.db.images()))

    @contextlib.contextmanager
    def busy(self, image_id: str):
        """Keep `image_id` from eviction while the block runs (launches hold this from
        before `ensure` until the instance's persistent pin is taken)."""
        self._busy[image_id] += 1
        try:
            yield
        finally:
            self._busy[image_id] -= 1
            if not self._busy[image_id]:
                del self._busy[image_id]

    # ensure --------------------------------------------------------------------------

    async def ensure(self, image_id: str) -> EnsureResult:
        task = self._inflight.get(image_id)
        joined = task is not None
        if task is None:
            task = asyncio.create_task(self._ensure(image_id))
            self._inflight[image_id] = task
            task.add_done_callback(lambda t: self._inflight.pop(image_id, None) if self._inflight.get(image_id) is t else None)
        with self.busy(image_id):
            result = await asyncio.shield(task)
        if joined:
            return EnsureResult(result.record, result.manifest, result.path, 0, 0.0, 0.0)
        return result

    async def _ensure(self, image_id: str) -> EnsureResult:
        with self.busy(image_id):
            try:
                return await self._ensure_locked(image_id)
            finally:
                self._reserved.pop(image_id, None)
                self.refresh_gauges()

    async def _ensure_locked(self, image_id: str) -> EnsureResult:
        record = self.db.image(image_id)
        if record is None:
            raw = await self.fetcher.read_manifest(manifest_key(image_id))
            try:
                manifest = ImageManifest.from_bytes(raw)
            except ImageManifestInvalid as exc:
                raise ImageCorrupt(f"manifest of {image_id}: {exc}") from exc
            if manifest.image_id != image_id:
                raise ImageCorrupt(f"manifest {manifest_key(image_id)} describes {manifest.image_id!r}")
            await self._make_room(image_id, sum(self.db.missing(manifest).values()) + nonzero_extent(manifest))
            record = self.db.add_image(manifest, raw, self.clock.now())
        manifest = self.db.manifest(image_id)
        path = self.base_path(image_id)
        if record.state == "ready" and path.is_file():
            self.metrics.chunk_cache_hit_bytes.inc(record.stored_bytes)
            record = self.db.touch(image_id, self.clock.now()) or record
            return EnsureResult(record, manifest, path, 0, 0.0, 0.0)
        if record.state == "ready":  # base file lost: assemble again
            record = self.db.clear_base(image_id) or record

        missing = self.db.missing(manifest)
        self.metrics.chunk_cache_hit_bytes.inc(record.stored_bytes - sum(missing.values()))
        await self._make_room(image_id, sum(missing.values()) + nonzero_extent(manifest))
        started = time.monotonic()
        fetched = await self.fetcher.fetch_missing(manifest, set(missing)) if missing else 0
        fetch_seconds = time.monotonic() - started

        started = time.monotonic()
        locations = self.db.locations(manifest)
        result = await asyncio.to_thread(assemble_base, manifest, self.chunks, locations, path)
        assemble_seconds = time.monotonic() - started
        if result.bad_chunks:
            log.warning("%s: %d cached chunk(s) missing or corrupt; refetching", image_id, len(result.bad_chunks))
            self.metrics.chunk_corrupt.inc(len(result.bad_chunks))
            dead = self.db.mark_absent({sha: where.pack if (where := locations.get(sha)) else None
                                        for sha in result.bad_chunks})
            await asyncio.to_thread(self._delete_packs, dead)
            started = time.monotonic()
            more = await self.fetcher.fetch_missing(manifest, set(self.db.missing(manifest)))
            fetched += more
            fetch_seconds += time.monotonic() - started
            started = time.monotonic()
            result = await asyncio.to_thread(assemble_base, manifest, self.chunks, self.db.locations(manifest), path)
            assemble_seconds += time.monotonic() - started
            if result.bad_chunks:
                raise ImageCorrupt(f"{image_id}: {len(result.bad_chunks)} chunk(s) still do not match "
                                   f"their SHA-256 after a refetch")
        record = self.db.set_ready(image_id, result.written_bytes, self.clock.now())
        return EnsureResult(record, manifest, path, fetched, fetch_seconds, assemble_seconds)

    # room ----------------------------------------------------------------------------

    async def _make_room(self, image_id: str, need: int) -> None:
        """Reserve `need` bytes for `image_id`, evicting if the high watermark would pass."""
        async with self._room:
            self._reserved.pop(image_id, None)
            reserved = sum(self._reserved.values())
            used = self.used()
            if used + reserved + need > self.limits.high_bytes:
                for victim in self._victims(keep=image_id):
                    if used + reserved + need <= self.limits.low_bytes:
                        break
                    self.evict(victim.image_id)
                    used = self.used()
            if used + reserved + need > self.limits.limit:
                raise CacheFull(f"{image_id} needs {need} bytes but the cache holds {used} of "
                                f"{self.limits.limit} (+{reserved} reserved) in pinned or busy images")
            self._reserved[image_id] = need

    def _victims(self, keep: str) -> list[ImageRecord]:
        return sorted((r for r in self.db.images()
                       if not r.pins and r.image_id != keep and r.image_id not in self._busy),
                      key=lambda r: (r.last_used, r.added))

    def evict(self, image_id: str) -> bool:
        """Drop one unpinned image and the chunks no other image needs; False if it is
        pinned, busy or unknown."""
        if image_id in self._busy:
            return False
        removed = self.db.remove_image(image_id)
        if removed is None:
            return False
        self.base_path(image_id).unlink(missing_ok=True)
        self._delete_packs(removed.dead_packs)
        freed_bytes = removed.record.base_bytes + sum(size for _, size in removed.dead_packs)
        self.metrics.evicted_images.inc()
        self.metrics.evicted_bytes.inc(freed_bytes)
        log.info("evicted %s (%d bytes freed, %d chunks, %d packs; %d dead bytes left in packs)", image_id,
                 freed_bytes, len(removed.freed), len(removed.dead_packs), self.db.dead_bytes())
        self.refresh_gauges()
        return True

    # restart -------------------------------------------------------------------------

    def rediscover(self, pins: dict[str, int]) -> list[ImageRecord]:
        """After a restart: pins from the instance records; images whose base file is
        gone fall back to "fetching" (the next ensure reassembles them)."""
        self.db.reset_pins(pins)
        for record in self.db.images():
            if record.state == "ready" and not self.base_path(record.image_id).is_file():
                self.db.clear_base(record.image_id)
        self.refresh_gauges()
        return self.db.images()

    def _clean_temps(self) -> None:
        for tmp in self.images_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def _recover_packs(self) -> None:
        """Before any fetch runs (a fetch has packs on disk not yet named)."""
        dropped = self.db.drop_old_layout()
        if dropped:
            log.info("dropped %d chunk record(s) of the one-file-per-chunk layout; refetched on demand", dropped)
        strays = self.chunks.remove_unnamed(self.db.pack_names())
        if strays:
            log.info("deleted %d pack file(s) the cache metadata does not name", len(strays))

    def _delete_packs(self, packs: list[tuple[str, int]]) -> None:
        """After the commit that dropped their records (a crash in between leaves strays
        that the next start deletes)."""
        for name, _ in packs:
            self.chunks.remove_pack(name)

    def has_chunk(self, sha256: str) -> bool:
        """Whether the chunk is present: recorded so, in a pack file that exists."""
        rec = self.db.chunk(sha256)
        return rec is not None and rec.present and self.chunks.path(rec.pack).is_file()

    def pin(self, image_id: str) -> None:
        if self.db.pin(image_id) is None:
            raise NotFound(f"image {image_id} is not cached")

    def unpin(self, image_id: str) -> None:
        self.db.unpin(image_id)

