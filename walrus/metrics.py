"""Prometheus metrics of one Walrus server (its own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class WalrusMetrics:
    def __init__(self, engine_stats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("eucalypt_walrus_requests", "S3 requests by operation and HTTP status",
                                ["operation", "status"], registry=self.registry)
        self.duration = Histogram("eucalypt_walrus_request_duration_seconds",
                                  "Time to answer a request (first byte of body for GET)",
                                  ["operation"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.bytes_received = Counter("eucalypt_walrus_bytes_received", "Request body bytes received",
                                      registry=self.registry)
        self.bytes_sent = Counter("eucalypt_walrus_bytes_sent", "Object bytes sent", registry=self.registry)
        self.registry.register(_StorageCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StorageCollector:
    """Storage figures read from the engine at scrape time."""

    GAUGES = {
        "stored_bytes": ("eucalypt_walrus_storage_stored_bytes", "Bytes on disk for chunks, after compression and dedup"),
        "logical_bytes": ("eucalypt_walrus_storage_logical_bytes", "Sum of the sizes of all stored objects"),
        "chunks": ("eucalypt_walrus_storage_chunks", "Distinct chunks stored"),
        "objects": ("eucalypt_walrus_storage_objects", "Objects stored"),
    }
    COUNTERS = {
        "dedup_hit_chunks": ("eucalypt_walrus_chunk_dedup_hits", "Chunks written that were already stored"),
        "dedup_hit_bytes": ("eucalypt_walrus_chunk_dedup_hit_bytes", "Bytes of chunks that were already stored"),
    }

    def __init__(self, stats) -> None:
        self._stats = stats

    def describe(self):
        return []

    def collect(self):
        stats = self._stats()
        for field, (name, doc) in self.GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=stats.get(field, 0))
        for field, (name, doc) in self.COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(field, 0))
