"""Prometheus metrics of one node agent (its own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_PHASE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.chunk_fetched_bytes = Counter(
            "eucalypt_node_chunk_fetched_bytes", "Bytes of verified chunks fetched into the local cache", registry=r)
        self.chunk_fetched = Counter("eucalypt_node_chunk_fetched_chunks", "Chunks fetched into the local cache",
                                     registry=r)
        self.fetch_wire_bytes = Counter(
            "eucalypt_node_fetch_response_bytes", "Bytes received in ranged GETs (chunks plus coalesced gaps)",
            registry=r)
        self.fetch_requests = Counter("eucalypt_node_fetch_requests", "Ranged GETs sent, by result",
                                      ["result"], registry=r)
        self.fetch_retries = Counter("eucalypt_node_fetch_retries", "Ranged GETs or manifest reads retried",
                                     registry=r)
        self.chunk_cache_hit_bytes = Counter(
            "eucalypt_node_chunk_cache_hit_bytes", "Bytes of an image's chunks found in the local cache when needed",
            registry=r)
        self.chunk_corrupt = Counter("eucalypt_node_chunk_corrupt_chunks",
                                     "Cached chunk files found missing or corrupt (then refetched)", registry=r)
        self.cache_used = Gauge("eucalypt_node_cache_used_bytes", "Bytes used by chunk files and base images",
                                registry=r)
        self.cache_limit = Gauge("eucalypt_node_cache_limit_bytes", "The cache's hard size cap", registry=r)
        self.cache_images = Gauge("eucalypt_node_cache_images", "Images in the local cache", registry=r)
        self.evicted_images = Counter("eucalypt_node_cache_evicted_images", "Images evicted from the local cache",
                                      registry=r)
        self.evicted_bytes = Counter("eucalypt_node_cache_evicted_bytes", "Bytes freed by eviction", registry=r)
        self.launch_phase = Histogram("eucalypt_node_launch_phase_seconds",
                                      "Time of each launch phase (fetch, assemble, define, start)",
                                      ["phase"], buckets=_PHASE_BUCKETS, registry=r)
        self.launches = Counter("eucalypt_node_launches", "Instance launches by result", ["result"], registry=r)
        self.instances = Gauge("eucalypt_node_instances", "Instances this node runs", registry=r)
        self.api_requests = Counter("eucalypt_node_api_requests", "Node API requests by route and status",
                                    ["route", "status"], registry=r)
        self.metadata_requests = Counter("eucalypt_node_metadata_requests",
                                         "Instance metadata service requests by result", ["result"], registry=r)
        self.heartbeats = Counter("eucalypt_node_heartbeats", "Heartbeats sent to control, by result",
                                  ["result"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
