"""Progress and metrics: per-prepare statistics and their Prometheus counters.

`PrepareStats` is filled in while a prepare runs (each field is written by one thread
only, so plain ints suffice) and returned with its result. `ImageCacheMetrics` turns
finished prepares into Prometheus series in a registry the caller passes in (no global
registry): control exports them under /_eucalypt/metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(slots=True)
class PrepareStats:
    bytes_read: int = 0  # bundle bytes (ciphertext) fetched from the store
    bytes_decrypted: int = 0  # image bytes out of decrypt -> gunzip -> untar
    bytes_published: int = 0  # bytes written into new packs
    chunks: int = 0  # chunks in the image
    zero_chunks: int = 0  # all-zero chunks (recorded, not stored)
    zero_bytes: int = 0
    dedup_chunks: int = 0  # chunks already stored (by another image or earlier in this one)
    dedup_bytes: int = 0
    new_chunks: int = 0
    packs: int = 0  # pack objects written
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def throughput(self) -> float:
        """Image bytes per second."""
        return self.bytes_decrypted / self.seconds if self.seconds else 0.0


class ImageCacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "eucalypt_imagecache_"
        self.bytes_read = Counter(p + "bytes_read", "Bundle bytes read from the store", registry=registry)
        self.decrypted = Counter(p + "decrypted_bytes", "Image bytes decrypted", registry=registry)
        self.published = Counter(p + "published_bytes", "Bytes published into packs", registry=registry)
        self.dedup_chunks = Counter(p + "dedup_chunks", "Chunks found already stored", registry=registry)
        self.zero_chunks = Counter(p + "zero_chunks", "All-zero chunks skipped", registry=registry)
        self.prepares = Counter(p + "prepares", "Prepares by outcome", ["outcome"], registry=registry)
        self.prepare_seconds = Histogram(p + "prepare_seconds", "Duration of a prepare", registry=registry,
                                         buckets=(1, 5, 15, 60, 300, 900, 3600))
        self.evicted_images = Counter(p + "evicted_images", "Images evicted", registry=registry)
        self.deleted_packs = Counter(p + "deleted_pack_bytes", "Pack bytes deleted", registry=registry)
        self.usage_bytes = Gauge(p + "usage_bytes", "Bytes in packs referenced by images", registry=registry)

    def record_prepare(self, stats: PrepareStats, outcome: str) -> None:
        self.bytes_read.inc(stats.bytes_read)
        self.decrypted.inc(stats.bytes_decrypted)
        self.published.inc(stats.bytes_published)
        self.dedup_chunks.inc(stats.dedup_chunks)
        self.zero_chunks.inc(stats.zero_chunks)
        self.prepares.labels(outcome).inc()
        self.prepare_seconds.observe(stats.seconds)
