"""The local cache's metadata in the node's KV store (walrus/storage/kv.py, LMDB).

Trees (keys are ASCII):

    cache_images     image id -> ImageRecord JSON (state, last use, pins, sizes)
    cache_manifests  image id -> the image manifest exactly as read from Walrus
    cache_chunks     sha256 hex -> {"size": n, "refs": images naming it, "present": bool,
                     and when present "pack": name, "offset": where in the pack}
    cache_packs      pack name -> {"size": bytes of the file, "live": present chunks in
                     it, "live_bytes": their bytes}
    cache_meta       "chunk_bytes" -> bytes of present chunks, "pack_bytes" -> bytes of
                     the recorded pack files (present chunks plus dead bytes),
                     "base_bytes" -> bytes of assembled base images (non-zero extent),
                     "layout" -> "packs" once records of the old layout are dropped

Invariants, each kept inside the one write transaction that changes what justifies it:
a chunk's `refs` is the number of image records whose manifest lists it (each image
counts once however often it lists the chunk); a chunk record exists iff refs > 0; a
present chunk names a pack record, and a pack record exists iff live > 0 (its file is
then on disk, whole: packs are synced before the commit that names them, and deleted
only after the commit that drops them); the meta totals equal the sums over present
chunks, pack records and assembled images. Dead bytes -- the chunks of a pack that are
no longer present (freed by eviction, found corrupt, or fetched twice by concurrent
fetches) -- stay on disk until the pack's last live chunk goes, and count as used so
the cache cap stays honest. (Compacting a mostly dead pack -- copying its live chunks
into a new one in one commit -- would reclaim them sooner; not done yet.) An image is
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

from .chunkstore import ChunkLocation, PackWritten

IMAGES, MANIFESTS, CHUNKS, PACKS, META = ("cache_images", "cache_manifests", "cache_chunks", "cache_packs",
                                          "cache_meta")
TREES = (IMAGES, MANIFESTS, CHUNKS, PACKS, META)


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
    pack: str | None = None    # where a present chunk lies
    offset: int = 0

    @property
    def location(self) -> ChunkLocation | None:
        return ChunkLocation(self.pack, self.offset, self.size) if self.present else None


def _chunk(raw: bytes | None) -> ChunkRecord | None:
    if raw is None:
        return None
    d = json.loads(raw)
    if "pack" not in d:  # the old layout's files are gone (chunkstore): not present
        return ChunkRecord(d["size"], d["refs"], False)
    return ChunkRecord(d["size"], d["refs"], d["present"], d["pack"], d["offset"])


def _chunk_bytes(c: ChunkRecord) -> bytes:
    d = {"size": c.size, "refs": c.refs, "present": c.present}
    if c.present:
        d |= {"pack": c.pack, "offset": c.offset}
    return json.dumps(d).encode()


def _absent(c: ChunkRecord) -> ChunkRecord:
    return replace(c, present=False, pack=None, offset=0)


@dataclass(frozen=True, slots=True)
class PackRecord:
    size: int
    live: int          # present chunks in the pack
    live_bytes: int

    @property
    def dead_bytes(self) -> int:
        return self.size - self.live_bytes


def _pack(raw: bytes | None) -> PackRecord | None:
    return None if raw is None else PackRecord(**json.loads(raw))


def _pack_bytes(p: PackRecord) -> bytes:
    return json.dumps(asdict(p)).encode()


@dataclass(frozen=True, slots=True)
class RemovedImage:
    record: ImageRecord
    freed: list[str]                  # chunks no remaining image needs (records dropped)
    dead_packs: list[tuple[str, int]]  # (name, size) of packs now without a live chunk: delete them


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

    def locations(self, manifest: ImageManifest) -> dict[str, ChunkLocation]:
        """sha256 -> where it lies, for the image's distinct stored chunks that are present."""
        with self.kv.read() as txn:
            return {sha: rec.location for sha in _distinct_stored(manifest)
                    if (rec := _chunk(txn.get(CHUNKS, sha.encode()))) and rec.present}

    def totals(self) -> tuple[int, int]:
        """(bytes of the pack files, base image bytes): what the cache occupies."""
        with self.kv.read() as txn:
            return self._total(txn, "pack_bytes"), self._total(txn, "base_bytes")

    def dead_bytes(self) -> int:
        """Bytes of pack files that hold no present chunk (counted in `totals`)."""
        with self.kv.read() as txn:
            return self._total(txn, "pack_bytes") - self._total(txn, "chunk_bytes")

    def pack(self, name: str) -> PackRecord | None:
        with self.kv.read() as txn:
            return _pack(txn.get(PACKS, name.encode()))

    def pack_names(self) -> set[str]:
        with self.kv.read() as txn:
            return {k.decode() for k, _ in txn.scan(PACKS)}

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

    def drop_old_layout(self) -> int:
        """Once per data dir: chunk records of the one-file-per-chunk layout (no pack)
        become absent and the totals are rebuilt; return how many were dropped."""
        with self.kv.write() as txn:
            if txn.get(META, b"layout") == b"packs":
                return 0
            dropped, live = 0, 0
            for key, raw in list(txn.scan(CHUNKS)):
                d = json.loads(raw)
                if "pack" not in d:
                    dropped += d["present"]
                    txn.put(CHUNKS, key, _chunk_bytes(_chunk(raw)))
                elif d["present"]:
                    live += d["size"]
            packs = sum(_pack(raw).size for _, raw in txn.scan(PACKS))
            txn.put(META, b"chunk_bytes", str(live).encode())
            txn.put(META, b"pack_bytes", str(packs).encode())
            txn.put(META, b"layout", b"packs")
            return dropped

    def commit_pack(self, pack: PackWritten) -> bool:
        """Record the (durable) pack's chunks as present at their places in it, in one
        transaction; False if none of them is wanted any more -- already present (fetched
        by a concurrent fetch) or no longer referenced -- and the file is to be deleted."""
        with self.kv.write() as txn:
            live, live_bytes = 0, 0
            for sha, where in pack.chunks.items():
                rec = _chunk(txn.get(CHUNKS, sha.encode()))
                if rec is None or rec.present:
                    continue
                txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(rec, present=True, pack=pack.name,
                                                                   offset=where.offset)))
                live, live_bytes = live + 1, live_bytes + rec.size
            if not live:
                return False
            txn.put(PACKS, pack.name.encode(), _pack_bytes(PackRecord(pack.size, live, live_bytes)))
            self._add_total(txn, "chunk_bytes", live_bytes)
            self._add_total(txn, "pack_bytes", pack.size)
            return True

    def mark_absent(self, found_bad: dict[str, str | None]) -> list[tuple[str, int]]:
        """Chunks found missing or corrupt (sha -> the pack they were read from; None:
        wherever they are) are no longer present; return the (name, size) of packs left
        without a live chunk (their files are to be deleted). A chunk present in another
        pack than the one found bad (refetched meanwhile) stays present."""
        with self.kv.write() as txn:
            dead = []
            for sha, pack in found_bad.items():
                rec = _chunk(txn.get(CHUNKS, sha.encode()))
                if rec is None or not rec.present or (pack is not None and rec.pack != pack):
                    continue
                txn.put(CHUNKS, sha.encode(), _chunk_bytes(_absent(rec)))
                dead += self._release(txn, rec)
            return dead

    def _release(self, txn, rec: ChunkRecord) -> list[tuple[str, int]]:
        """A present chunk stops being present: its pack loses a live chunk (the one
        place pack counts go down); the pack record goes with its last one."""
        self._add_total(txn, "chunk_bytes", -rec.size)
        key = rec.pack.encode()
        pack = _pack(txn.get(PACKS, key))
        if pack is None:
            return []
        if pack.live <= 1:
            txn.delete(PACKS, key)
            self._add_total(txn, "pack_bytes", -pack.size)
            return [(rec.pack, pack.size)]
        txn.put(PACKS, key, _pack_bytes(replace(pack, live=pack.live - 1, live_bytes=pack.live_bytes - rec.size)))
        return []

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

    def remove_image(self, image_id: str) -> RemovedImage | None:
        """Drop the image and its references, and the present chunks no remaining image
        needs; return what was freed (the packs left without a live chunk are to be
        deleted). None if unknown or pinned."""
        key = image_id.encode()
        with self.kv.write() as txn:
            raw = txn.get(IMAGES, key)
            if raw is None:
                return None
            rec = ImageRecord.from_bytes(raw)
            if rec.pins:
                return None
            manifest = ImageManifest.from_bytes(txn.get(MANIFESTS, key))
            freed, dead = [], []
            for sha in _distinct_stored(manifest):
                chunk = _chunk(txn.get(CHUNKS, sha.encode()))
                if chunk is None:
                    continue
                if chunk.refs <= 1:
                    txn.delete(CHUNKS, sha.encode())
                    if chunk.present:
                        freed.append(sha)
                        dead += self._release(txn, chunk)
                else:
                    txn.put(CHUNKS, sha.encode(), _chunk_bytes(replace(chunk, refs=chunk.refs - 1)))
            txn.delete(IMAGES, key)
            txn.delete(MANIFESTS, key)
            self._add_total(txn, "base_bytes", -rec.base_bytes)
            return RemovedImage(rec, freed, dead)
