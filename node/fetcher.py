"""Fetching an image's missing chunks from Walrus (or any S3 store) into the local cache.

`plan_ranges` (imagecache.fetchplan) turns the missing chunks into few large ranged
GETs; this module runs them with at most `concurrency` in flight, verifies every chunk's
SHA-256 and stores each request's good chunks as one local pack file
(ChunkStore.write_pack, in a worker thread), records them as present at their places in
it as soon as the pack is durable -- so an interrupted fetch resumes where it stopped --
and retries a failed or corrupt request with exponential backoff, moving to the next
endpoint on each attempt. Sleeping goes through an injected coroutine so
tests need not wait.

Why not imagecache.reader.fetch_chunks: it yields chunk by chunk to one consumer (so
storing, with its fsyncs, would run one chunk at a time, behind the network) and has no
retry; here each request is fetched, verified and stored by its own task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from imagecache import ImageManifest, RangeRequest, StoreError, plan_ranges
from imagecache.store import BucketStore

from .cachedb import CacheDB
from .chunkstore import ChunkStore
from .errors import FetchFailed, NotFound
from .metrics import NodeMetrics

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    concurrency: int = 8          # ranged GETs in flight
    attempts: int = 4             # per request (and per manifest read), the first included
    backoff: float = 0.25         # seconds before the first retry; doubles each time
    backoff_max: float = 5.0
    min_request: int = 1 << 20    # fetchplan.plan_ranges coalescing parameters
    max_gap: int = 256 << 10
    max_request: int = 16 << 20

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the first retry)."""
        return min(self.backoff_max, self.backoff * (2 ** (attempt - 1)))


class ChunkFetcher:
    def __init__(self, stores: Sequence[BucketStore], chunks: ChunkStore, db: CacheDB, metrics: NodeMetrics,
                 policy: FetchPolicy, sleep: Sleep = asyncio.sleep) -> None:
        if not stores:
            raise ValueError("at least one S3 endpoint is needed")
        self.stores, self.chunks, self.db, self.metrics = list(stores), chunks, db, metrics
        self.policy, self.sleep = policy, sleep

    async def read_manifest(self, key: str) -> bytes:
        """The manifest object's bytes; NotFound if no endpoint has it, FetchFailed if
        none answers."""
        last = ""
        for attempt in range(self.policy.attempts):
            if attempt:
                self.metrics.fetch_retries.inc()
                await self.sleep(self.policy.delay(attempt))
            store = self.stores[attempt % len(self.stores)]
            try:
                raw = await store.get(key)
            except StoreError as exc:
                last = str(exc)
                continue
            if raw is None:
                raise NotFound(f"s3://{store.bucket}/{key} does not exist (image not prepared?)")
            return raw
        raise FetchFailed(f"cannot read s3://{self.stores[0].bucket}/{key} after "
                          f"{self.policy.attempts} attempts: {last}")

    async def fetch_missing(self, manifest: ImageManifest, missing: set[str]) -> int:
        """Fetch, verify and store the chunks in `missing`; return the chunk bytes stored.
        Raises FetchFailed (chunks stored so far stay cached)."""
        p = self.policy
        plan = plan_ranges(manifest, missing, min_request=p.min_request, max_gap=p.max_gap,
                           max_request=p.max_request)
        gate = asyncio.Semaphore(max(1, p.concurrency))
        stored = [0]

        async def one(request: RangeRequest) -> None:
            async with gate:
                n = await self._fetch_request(request)
                stored[0] += n

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                for request in plan:
                    group.create_task(one(request))
        except* FetchFailed as group:
            raise group.exceptions[0] from None
        return stored[0]

    async def _fetch_request(self, request: RangeRequest) -> int:
        wanted = list(request.chunks)
        last, stored = "", 0
        for attempt in range(self.policy.attempts):
            if attempt:
                self.metrics.fetch_retries.inc()
                await self.sleep(self.policy.delay(attempt))
            store = self.stores[attempt % len(self.stores)]
            try:
                body = await store.get_range(request.pack, request.start, request.end)
            except StoreError as exc:
                self.metrics.fetch_requests.labels("error").inc()
                last = str(exc)
                continue
            self.metrics.fetch_wire_bytes.inc(len(body))
            items = [(c.sha256, request.slice(body, c)) for c in wanted]
            bad = set(await asyncio.to_thread(self._store, items))
            good = {c.sha256: c.length for c in wanted if c.sha256 not in bad}
            n = sum(good.values())
            stored += n
            self.metrics.chunk_fetched_bytes.inc(n)
            self.metrics.chunk_fetched.inc(len(good))
            if not bad:
                self.metrics.fetch_requests.labels("ok").inc()
                return stored
            self.metrics.fetch_requests.labels("corrupt").inc()
            wanted = [c for c in wanted if c.sha256 in bad]
            last = (f"{len(bad)} chunk(s) from {request.pack} [{request.start}, {request.end}) "
                    f"do not match their SHA-256")
        raise FetchFailed(f"fetching {request.pack} bytes [{request.start}, {request.end}) failed after "
                          f"{self.policy.attempts} attempts: {last}")

    def _store(self, items) -> list[str]:
        """One request's chunks -> one durable pack, then the commit naming it; return the
        shas that did not match. In a worker thread, LMDB commit included: the commit
        syncs (~10 ms, up to ~60), and in the event loop it stalled every GET in flight
        (a third of a cold fetch's time). A cancelled fetch's pack still gets committed or
        deleted here; one left unnamed by a crash is deleted on the next start."""
        pack, bad = self.chunks.write_pack(items)
        if pack is not None and not self.db.commit_pack(pack):
            self.chunks.remove_pack(pack.name)  # nothing in it is wanted now
        return bad
