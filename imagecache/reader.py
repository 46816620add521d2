"""Reading an image back from its manifest: fetch chunks, verify, reassemble.

Two shapes of reading, both built on `fetchplan`:

* `fetch_chunks` -- what a node does: fetch a *set* of chunks (those it lacks) with few
  large ranged GETs, several in flight, verifying each chunk's SHA-256; yields
  (chunk, bytes) in whatever order requests complete.
* `stream_image` -- the whole image in image order (zero chunks synthesised), with a
  bounded window of requests in flight; `reassemble` writes it to a file (holes for zero
  chunks) and `verify_image` checks every chunk plus the whole image's size and SHA-256.

Hashing runs in worker threads (hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from .errors import ImageCorrupt
from .fetchplan import RangeRequest, plan_ranges, plan_sequential
from .manifest import ChunkRef, ImageManifest
from .store import BucketStore

_ZEROS = bytes(1 << 20)


def _check_request(request: RangeRequest, body: bytes) -> None:
    for chunk in request.chunks:
        if hashlib.sha256(request.slice(body, chunk)).hexdigest() != chunk.sha256:
            raise ImageCorrupt(
                f"chunk {chunk.sha256[:16]}... at image offset {chunk.offset} in {request.pack} "
                f"does not match its SHA-256")


async def _fetch_checked(store: BucketStore, request: RangeRequest) -> bytes:
    body = await store.get_range(request.pack, request.start, request.end)
    await asyncio.to_thread(_check_request, request, body)
    return body


async def fetch_chunks(
    store: BucketStore,
    manifest: ImageManifest,
    missing_shas: Iterable[str] | None = None,
    *,
    concurrency: int = 4,
    **plan_options,
) -> AsyncIterator[tuple[ChunkRef, memoryview]]:
    """Fetch (and verify) the stored chunks in `missing_shas` (None: all), in any order."""
    requests = plan_ranges(manifest, missing_shas, **plan_options)
    queue: deque[RangeRequest] = deque(requests)
    running: set[asyncio.Task] = set()
    try:
        while queue or running:
            while queue and len(running) < concurrency:
                request = queue.popleft()
                task = asyncio.create_task(_fetch_checked(store, request))
                task.request = request  # type: ignore[attr-defined]
                running.add(task)
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                body = task.result()
                for chunk in task.request.chunks:  # type: ignore[attr-defined]
                    yield chunk, task.request.slice(body, chunk)  # type: ignore[attr-defined]
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def stream_image(store: BucketStore, manifest: ImageManifest, *, window: int = 4,
                       max_request: int = 16 << 20) -> AsyncIterator[memoryview | bytes]:
    """The image's bytes in order; at most `window` range requests in flight."""
    steps = plan_sequential(manifest, max_request=max_request)
    pending: deque[tuple[object, asyncio.Task | None]] = deque()
    index = 0
    try:
        while index < len(steps) or pending:
            while index < len(steps) and sum(1 for _, t in pending if t is not None) < window:
                step = steps[index]
                index += 1
                if isinstance(step, RangeRequest):
                    pending.append((step, asyncio.create_task(_fetch_checked(store, step))))
                else:
                    pending.append((step, None))
            step, task = pending.popleft()
            if task is None:
                left = step.length
                while left:
                    n = min(left, len(_ZEROS))
                    yield memoryview(_ZEROS)[:n]
                    left -= n
            else:
                yield memoryview(await task)
    finally:
        for _, task in pending:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for _, t in pending if t is not None), return_exceptions=True)


async def verify_image(store: BucketStore, manifest: ImageManifest, *, window: int = 4) -> None:
    """Raise ImageCorrupt unless every chunk and the whole image match the manifest."""
    digest, size = hashlib.sha256(), 0
    async for piece in stream_image(store, manifest, window=window):
        size += len(piece)
        if len(piece) > 1 << 16:
            await asyncio.to_thread(digest.update, piece)
        else:
            digest.update(piece)
    if size != manifest.size:
        raise ImageCorrupt(f"image reassembles to {size} bytes, the manifest says {manifest.size}")
    if digest.hexdigest() != manifest.sha256:
        raise ImageCorrupt("the reassembled image does not match the manifest's SHA-256")


async def reassemble(store: BucketStore, manifest: ImageManifest, path: str | os.PathLike, *,
                     window: int = 4) -> Path:
    """Write the image to `path` (zero chunks become holes), verifying as it goes."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        async for piece in stream_image(store, manifest, window=window):
            if piece is not None and len(piece) <= len(_ZEROS) and piece == memoryview(_ZEROS)[: len(piece)]:
                digest.update(piece)
                out.seek(len(piece), os.SEEK_CUR)
            else:
                await asyncio.to_thread(_write_and_hash, out, digest, piece)
        out.truncate(manifest.size)
    if digest.hexdigest() != manifest.sha256:
        path.unlink(missing_ok=True)
        raise ImageCorrupt("the reassembled image does not match the manifest's SHA-256")
    return path


def _write_and_hash(out, digest, piece) -> None:
    digest.update(piece)
    out.write(piece)
