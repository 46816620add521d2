"""The local cache's metadata in the node's KV store (walrus/storage/kv.py, LMDB).

Trees (keys are ASCII):

    cache_images     image id -> ImageRecord JSON (state, last use, pins, sizes)
    cache_manifests  image id -> the image manifest exactly as read from Walrus
    cache_chunks     sha256 hex -> {"size": n, "refs": images naming it, "present": bool}
    cache_meta       "chunk_bytes" -> bytes of present chunk files, "base_bytes" -> bytes
                     of assembled base images (their non-zero extent)

Invariants, each kept inside the one write transaction that changes what justifies it:
a chunk's `refs` is the number of image records whose manifest lists it (each image
counts once however often it lists the chunk); a chunk record exists iff refs > 0; the
meta totals equal the sums over present chunks and assembled images. An image is
registered (and takes its references) *before* its chunks are fetched, so a chunk that
arrives always has an owner and eviction can never race a fetch into deleting it.
Pins are counts held by launching and running instances; `reset_pins` rebuilds them
from the instance records after a restart (transient pins of launches die with the
process that held them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from imagecache import ImageManifest
from walrus.storage.kv import KV

IMAGES, MANIFESTS, CHUNKS, META = "cache_images", "cache_manifests", "cache_chunks", "cache_meta"
TREES = (IMAGES, MANIFESTS, CHUNKS, META)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image_id: str
    kind: str
    size: int            # the image's logical size
    stored_bytes: int    # bytes of its distinct non-zero chunks
    base_bytes: int      # non-zero extent of its base image file (0: not assembled)
    state: str           # "fetching" | "ready"
    added: float
    last_used: float
    pins: int = 0

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ImageRecord":
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    size: int
    refs: int
    present: bool


def _chunk(raw: bytes | None) -> ChunkRecord | None:
    if raw is None:
        return None
    d = json.loads(raw)
    return ChunkRecord(d["size"], d["refs"], d["present"])


def _chunk_bytes(c: ChunkRecord) -> bytes:
    return json.dumps({"size": c.size, "refs": c.refs, "present": c.present}).encode()


def _distinct_stored(manifest: ImageManifest) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in manifest.chunks:
        if not c.zero:
            out.setdefault(c.sha256, c.length)
    return out


class CacheDB:
    def __init__(self, kv: KV) -> None:
        self.kv = kv

    # reads ---------------------------------------------------------------------------

    def image(self, image_id: str) -> ImageRecord | None:
        with self.kv.read() as txn:
            raw = txn.get(IMAGES, image_id.encode())
        return None if raw is None else ImageRecord.from_bytes(raw)

    def images(self) -> list[ImageRecord]:
        with self.kv.read() as txn:
            return [ImageRecord.from_bytes(v) for _, v in txn.scan(IMAGES)]

    def manifest(self, image_id: str) -> ImageManifest | None:
        with self.kv.read() as txn:
            raw = txn.get(MANIFESTS, image_id.encode())
        return None if raw is None else ImageManifest.from_bytes(raw)

    def chunk(self, sha256: str) -> ChunkRecord | None:
        with self.kv.read() as txn:
            return _chunk(txn.get(CHUNKS, sha256.encode()))

    def missing(self, manifest: ImageManifest) -> dict[str, int]:
        """sha256 -> size of the image's distinct stored chunks not present."""
        with self.kv.read() as txn:
            return {sha: size for sha, size in _distinct_stored(manifest).items()
                    if not (rec := _chunk(txn.get(CHUNKS, sha.encode()))) or not rec.present}

    def totals(self) -> tuple[int, int]:
        """(chunk bytes, base image bytes)."""
        with self.kv.read() as txn:
            return self._total(txn, "chunk_bytes"), self._total(txn, "base_bytes")

    def chunk_count(self) -> int:
        with self.kv.read() as txn:
            return sum(1 for _ in txn.scan(CHUNKS))

    @staticmethod
    def _total(txn, name: str) -> int:
        raw = txn.get(META, name.encode())
        return int(raw) if raw else 0

    def _add_total(self, txn, name: str, delta: int) -> None:
        if delta:
            txn.put(META, name.encode(), str(self._total(txn, name) + delta).encode())

    # writes --------------------------------------------------------------------------

    def add_image(self, manifest: ImageManifest, raw_manifest: bytes, now: float) -> ImageRecord:
        """Register the image and take its chunk references (idempotent: an existing
        record is returned unchanged)."""
        key = manifest.image_id.encode()
        with self.kv.write() as txn:
            raw = txn.get(IMAGES, key)
            if raw is not None:
                return ImageRecord.from_bytes(raw)
            chunks = _distinct_stored(manifest)
            for sha, size in chunks.items():
                rec = _chunk(txn.get(CHUNKS, sha.encode())) or ChunkRecord(size, 0, False)
                txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(rec, refs=rec.refs + 1)))
            record = ImageRecord(manifest.image_id, manifest.kind, manifest.size, sum(chunks.values()),
                                 0, "fetching", now, now, 0)
            txn.put(IMAGES, key, record.to_bytes())
            txn.put(MANIFESTS, key, raw_manifest)
            return record

    def mark_present(self, chunks: dict[str, int]) -> list[str]:
        """Record fetched chunk files as present; return the shas no image references
        any more (their files should be removed)."""
        orphans = []
        with self.kv.write() as txn:
            added = 0
            for sha in chunks:
                rec = _chunk(txn.get(CHUNKS, sha.encode()))
                if rec is None:
                    orphans.append(sha)
                elif not rec.present:
                    txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(rec, present=True)))
                    added += rec.size
            self._add_total(txn, "chunk_bytes", added)
        return orphans

    def mark_absent(self, shas) -> None:
        """Chunks whose files are missing or corrupt: no longer present."""
        with self.kv.write() as txn:
            removed = 0
            for sha in shas:
                rec = _chunk(txn.get(CHUNKS, sha.encode()))
                if rec is not None and rec.present:
                    txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(rec, present=False)))
                    removed += rec.size
            self._add_total(txn, "chunk_bytes", -removed)

    def _update(self, image_id: str, change) -> ImageRecord | None:
        key = image_id.encode()
        with self.kv.write() as txn:
            raw = txn.get(IMAGES, key)
            if raw is None:
                return None
            old = ImageRecord.from_bytes(raw)
            new = change(old)
            txn.put(IMAGES, key, new.to_bytes())
            self._add_total(txn, "base_bytes", new.base_bytes - old.base_bytes)
            return new

    def set_ready(self, image_id: str, base_bytes: int, now: float) -> ImageRecord | None:
        return self._update(image_id, lambda r: replace(r, state="ready", base_bytes=base_bytes, last_used=now))

    def clear_base(self, image_id: str) -> ImageRecord | None:
        return self._update(image_id, lambda r: replace(r, state="fetching", base_bytes=0))

    def touch(self, image_id: str, now: float) -> ImageRecord | None:
        return self._update(image_id, lambda r: replace(r, last_used=max(r.last_used, now)))

    def pin(self, image_id: str) -> ImageRecord | None:
        return self._update(image_id, lambda r: replace(r, pins=r.pins + 1))

    def unpin(self, image_id: str) -> ImageRecord | None:
        return self._update(image_id, lambda r: replace(r, pins=max(0, r.pins - 1)))

    def reset_pins(self, counts: dict[str, int]) -> None:
        with self.kv.write() as txn:
            for key, raw in list(txn.scan(IMAGES)):
                rec = ImageRecord.from_bytes(raw)
                pins = counts.get(rec.image_id, 0)
                if pins != rec.pins:
                    txn.put(IMAGES, key, replace(rec, pins=pins).to_bytes())

    def remove_image(self, image_id: str) -> tuple[ImageRecord, list[str]] | None:
        """Drop the image and its references; return it and the present chunks that no
        remaining image needs (their files are to be deleted). None if unknown or pinned."""
        key = image_id.encode()
        with self.kv.write() as txn:
            raw = txn.get(IMAGES, key)
            if raw is None:
                return None
            rec = ImageRecord.from_bytes(raw)
            if rec.pins:
                return None
            manifest = ImageManifest.from_bytes(txn.get(MANIFESTS, key))
            freed, freed_bytes = [], 0
            for sha in _distinct_stored(manifest):
                chunk = _chunk(txn.get(CHUNKS, sha.encode()))
                if chunk is None:
                    continue
                if chunk.refs <= 1:
                    txn.delete(CHUNKS, sha.encode())
                    if chunk.present:
                        freed.append(sha)
                        freed_bytes += chunk.size
                else:
                    txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(chunk, refs=chunk.refs - 1)))
            txn.delete(IMAGES, key)
            txn.delete(MANIFESTS, key)
            self._add_total(txn, "chunk_bytes", -freed_bytes)
            self._add_total(txn, "base_bytes", -rec.base_bytes)
            return rec, freed
