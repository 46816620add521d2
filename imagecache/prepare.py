"""The prepare pipeline: bundle parts in S3 -> verified image -> chunks -> packs.

    event loop    PartFeeder: GETs of parts, `window` parts in flight, 1 MiB pieces
       |  (run_coroutine_threadsafe hand-offs; bounded queues everywhere)
    thread 1      bundletools parts stage: part SHA-1 + AES-128-CBC
    thread 2      bundletools gunzip stage
    thread 3      bundletools tar stage (tar SHA-1, first regular member) -> Pipe
    thread 4      chunk stage: FastCDC cut, zero test, SHA-256 per chunk and of the
                  image, dedup lookup, new chunks appended to the current pack buffer
       |
    event loop    PackUploader: multipart upload parts of `part_size`, `concurrency`
                  in flight; a pack is closed at `pack_size`

Memory is bounded by the queues: ~window*4 MiB of parts, 8 MiB between tar and chunk
stages, (concurrency+1)*part_size of pack buffers. Nothing is written to local disk.

Packs: new chunks of one prepare are appended raw, in image order, to pack objects of
up to `pack_size` bytes (Walrus compresses internally; a node wants to ranged-GET raw
bytes). A pack's key is ``packs/<ms-time hex>-<random>``: random because its content is
not known until it is complete (a content hash would need a second pass or a copy),
time-prefixed so an operator can see its age. Every pack is complete (multipart upload
completed, or single PUT) before the image manifest that names it is written; a failure
aborts the open uploads and deletes the packs this prepare wrote (best effort -- a
crash leaves orphans that `ImageCache.gc` collects after a grace period).

Checks happen as bundletools does them: a tampered part is only known once the part
has been hashed, and the image SHA-1/size only at the very end, so chunks of a bad
bundle may have reached a pack by then. That is harmless: they are deleted again, are
never named by a manifest, and (being content-addressed) could not poison another image.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bundletools import reader as bt_reader
from bundletools.manifest import Manifest, PartInfo
from bundletools.pipe import Pipe

from . import chunking
from .errors import StoreError
from .manifest import ChunkRef, ImageManifest, PackRef
from .metrics import PrepareStats
from .store import BucketStore

PIECE = 1 << 20
PACK_PREFIX = "packs/"


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """Where an existing chunk lives: what the dedup index maps a SHA-256 to."""

    pack: str
    pack_offset: int
    length: int
    pack_size: int


ChunkIndex = dict[str, StoredChunk]


class Cancelled(Exception):
    """The other side of a hand-off gave up; stop quietly (its error is reported)."""


class _Bridge:
    """Calls from worker threads into the event loop, abandoned when `stop` is set."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stop = threading.Event()

    def call(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return future.result(timeout=0.1)
            except TimeoutError:
                if self.stop.is_set():
                    future.cancel()
                    raise Cancelled() from None


# --- parts: S3 -> bundletools reader --------------------------------------------------


class PartFeeder:
    """Downloads parts ahead of the reader, `window` at a time, each into a bounded queue."""

    def __init__(self, s3, bucket: str, key_prefix: str, manifest: Manifest, bridge: _Bridge,
                 stats: PrepareStats, *, window: int = 4, depth: int = 4) -> None:
        self.s3, self.bucket, self.key_prefix, self.manifest = s3, bucket, key_prefix, manifest
        self.bridge, self.stats, self.window, self.depth = bridge, stats, window, depth
        self.queues: dict[int, asyncio.Queue] = {}
        self.consumed: dict[int, asyncio.Event] = {}
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        for part in self.manifest.parts:
            self.queues[part.index] = asyncio.Queue(self.depth)
            self.consumed[part.index] = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        gate = asyncio.Semaphore(self.window)
        tasks = []
        try:
            for part in self.manifest.parts:
                await gate.acquire()
                tasks.append(asyncio.create_task(self._download(part, gate)))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _download(self, part: PartInfo, gate: asyncio.Semaphore) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        q = self.queues[part.index]
        key = self.key_prefix + part.filename
        try:
            try:
                reply = await self.s3.get_object(Bucket=self.bucket, Key=key)
                async with reply["Body"] as body:
                    buf = bytearray()
                    while piece := await body.read(PIECE):
                        buf += piece
                        if len(buf) >= PIECE:
                            await q.put(bytes(buf))
                            buf.clear()
                    if buf:
                        await q.put(bytes(buf))
                await q.put(None)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                # S3 answers 403, not 404, for a missing key to a reader who may not list
                # the bucket -- which the cloud may not: both mean "the part is not there".
                if status in (403, 404):
                    await q.put(FileNotFoundError(key))
                else:
                    await q.put(StoreError(f"cannot read bundle part {self.bucket}/{key}: {exc}"))
            except BotoCoreError as exc:
                await q.put(StoreError(f"cannot read bundle part {self.bucket}/{key}: {exc}"))
            await self.consumed[part.index].wait()
        finally:
            gate.release()

    def open_part(self, part: PartInfo) -> "_PartReader":
        """Called by the bundletools parts thread, in part order."""
        return _PartReader(self, part.index)


class _PartReader:
    def __init__(self, feeder: PartFeeder, index: int) -> None:
        self.feeder, self.index = feeder, index
        self.buf, self.pos, self.eof = b"", 0, False
        self._next()  # raises FileNotFoundError now if the part is missing

    def _next(self) -> None:
        item = self.feeder.bridge.call(self.feeder.queues[self.index].get())
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self.eof = True
            self.buf, self.pos = b"", 0
            # lets the feeder start the next part's download
            self.feeder.bridge.loop.call_soon_threadsafe(self.feeder.consumed[self.index].set)
        else:
            self.buf, self.pos = item, 0
            self.feeder.stats.bytes_read += len(item)

    def read(self, n: int = -1) -> bytes:
        while self.pos >= len(self.buf) and not self.eof:
            self._next()
        if self.eof:
            return b""
        if n < 0 or (self.pos == 0 and n >= len(self.buf)):
            data, self.pos = self.buf[self.pos:] if self.pos else self.buf, len(self.buf)
            return data
        data = self.buf[self.pos : self.pos + n]
        self.pos += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


# --- image bytes: bundletools tar stage -> chunk stage --------------------------------


def _new_pipe() -> Pipe:
    return Pipe(8, error=Cancelled)


class ImageSink:
    """The seekable 'file' bundletools writes the image to; hands bytes to the chunk stage.

    bundletools seeks over all-zero runs (to keep files sparse); a seek becomes an int
    (that many zeros) in the pipe.
    """

    def __init__(self, pipe: Pipe, stats: PrepareStats) -> None:
        self.pipe, self.stats = pipe, stats

    def write(self, data) -> int:
        self.pipe.put(data)
        self.stats.bytes_decrypted += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_CUR or offset < 0:
            raise ValueError("the image sink only seeks forward from the current position")
        if offset:
            self.pipe.put(offset)
            self.stats.bytes_decrypted += offset
        return 0

    def truncate(self, size: int | None = None) -> int:
        return size or 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.pipe.put(None)


class _PipeReader:
    """readinto() over the pipe, for pyfastcdc's stream chunker."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.buf: memoryview | None = None
        self.zeros = 0
        self.eof = False
        self._zero_block = bytes(PIECE)

    def readinto(self, dest: memoryview) -> int:
        while True:
            if self.zeros:
                n = min(self.zeros, len(dest), PIECE)
                dest[:n] = self._zero_block[:n]
                self.zeros -= n
                return n
            if self.buf is not None and len(self.buf):
                n = min(len(self.buf), len(dest))
                dest[:n] = self.buf[:n]
                self.buf = self.buf[n:]
                return n
            if self.eof:
                return 0
            item = self.pipe.get()
            if item is None:
                self.eof = True
            elif isinstance(item, int):
                self.zeros = item
            else:
                self.buf = memoryview(item)


# --- packs ----------------------------------------------------------------------------


def new_pack_key(clock: Callable[[], float]) -> str:
    return f"{PACK_PREFIX}{int(clock() * 1000):012x}-{secrets.token_hex(8)}"


class PackUploader:
    """Event-loop side of pack writing: multipart uploads, `concurrency` parts in flight."""

    def __init__(self, store: BucketStore, *, concurrency: int = 4) -> None:
        self.store = store
        self.gate = asyncio.Semaphore(concurrency)
        self.uploads: dict[str, str] = {}  # key -> upload id (open multipart uploads)
        self.part_tasks: dict[str, list[asyncio.Task]] = {}
        self.completed: list[str] = []  # packs fully written by this prepare
        self.failure: BaseException | None = None

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def put_part(self, key: str, number: int, data: bytes) -> None:
        """Schedule part `number` (1-based) of `key`; returns once a slot is free."""
        self._raise_failure()
        if key not in self.uploads:
            self.uploads[key] = await self.store.create_multipart(key)
            self.part_tasks[key] = []
        await self.gate.acquire()
        self._raise_failure()
        task = asyncio.create_task(self._upload(key, number, data))
        self.part_tasks[key].append(task)

    async def _upload(self, key: str, number: int, data: bytes) -> str:
        try:
            return await self.store.upload_part(key, self.uploads[key], number, data)
        except BaseException as exc:
            if self.failure is None and not isinstance(exc, asyncio.CancelledError):
                self.failure = exc
            raise
        finally:
            self.gate.release()

    async def finish_pack(self, key: str, number: int, data: bytes) -> None:
        """Last piece of the pack: a single PUT if it is the only piece, else complete the upload."""
        self._raise_failure()
        if key not in self.uploads:
            await self.store.put(key, data)
            self.completed.append(key)
            return
        if data:
            await self.put_part(key, number, data)
        etags = await asyncio.gather(*self.part_tasks[key])
        await self.store.complete_multipart(key, self.uploads.pop(key), list(etags))
        self.completed.append(key)

    async def discard(self) -> None:
        """Abort open uploads and delete the packs written so far (after a failure)."""
        for tasks in self.part_tasks.values():
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for key, upload_id in list(self.uploads.items()):
            try:
                await self.store.abort_multipart(key, upload_id)
            except StoreError:
                pass
        self.uploads.clear()
        for key in self.completed:
            try:
                await self.store.delete(key)
            except StoreError:
                pass
        self.completed.clear()


class PackWriter:
    """Thread side of pack writing: appends chunks, cuts packs and upload parts."""

    def __init__(self, bridge: _Bridge, uploader: PackUploader, stats: PrepareStats, *,
                 clock: Callable[[], float], pack_size: int, part_size: int) -> None:
        self.bridge, self.uploader, self.stats, self.clock = bridge, uploader, stats, clock
        self.pack_size, self.part_size = pack_size, part_size
        self.key: str | None = None
        self.size = 0  # bytes appended to the current pack
        self.part_number = 0  # parts sent for the current pack
        self.buf = bytearray()
        self.sizes: dict[str, int] = {}  # finished packs

    def append(self, data: memoryview) -> tuple[str, int]:
        if self.key is not None and self.size + len(data) > self.pack_size:
            self.close_pack()
        if self.key is None:
            self.key, self.size, self.part_number = new_pack_key(self.clock), 0, 0
        at = self.size
        self.buf += data
        self.size += len(data)
        self.stats.bytes_published += len(data)
        if len(self.buf) >= self.part_size:
            self.part_number += 1
            piece, self.buf = bytes(self.buf), bytearray()
            self.bridge.call(self.uploader.put_part(self.key, self.part_number, piece))
        return self.key, at

    def close_pack(self) -> None:
        if self.key is None:
            return
        piece, self.buf = bytes(self.buf), bytearray()
        self.bridge.call(self.uploader.finish_pack(self.key, self.part_number + 1, piece))
        self.sizes[self.key] = self.size
        self.stats.packs += 1
        self.key = None


# --- the chunk stage ------------------------------------------------------------------


@dataclass(slots=True)
class ChunkedImage:
    entries: list[tuple[int, int, str, bool, str | None, int]]  # offset, length, sha, zero, pack, pack_offset
    sha256: str
    size: int
    pack_sizes: dict[str, int]  # every pack the image names -> its size
    written: frozenset[str] = frozenset()  # the packs this prepare wrote


def chunk_stage(pipe: Pipe, index: ChunkIndex, writer: PackWriter, stats: PrepareStats,
                params: chunking.ChunkingParams) -> ChunkedImage:
    image_hash = hashlib.sha256()
    entries = []
    own: dict[str, tuple[str, int]] = {}
    pack_sizes: dict[str, int] = {}
    size = 0
    sha256 = hashlib.sha256
    for cut in chunking.cut_stream(_PipeReader(pipe), params):
        data, length = cut.data, cut.length
        image_hash.update(data)
        size += length
        stats.chunks += 1
        if cut.zero:
            stats.zero_chunks += 1
            stats.zero_bytes += length
            entries.append((cut.offset, length, chunking.zero_sha256(length), True, None, 0))
            continue
        digest = sha256(data).hexdigest()
        location = own.get(digest)
        if location is None:
            stored = index.get(digest)
            if stored is not None and stored.length == length:
                location = (stored.pack, stored.pack_offset)
                pack_sizes[stored.pack] = stored.pack_size
            else:
                location = writer.append(data)
                stats.new_chunks += 1
                own[digest] = location
                entries.append((cut.offset, length, digest, False, *location))
                continue
            own[digest] = location
        stats.dedup_chunks += 1
        stats.dedup_bytes += length
        entries.append((cut.offset, length, digest, False, *location))
    writer.close_pack()
    pack_sizes.update(writer.sizes)
    return ChunkedImage(entries, image_hash.hexdigest(), size, pack_sizes, frozenset(writer.sizes))


def build_manifest(image_id: str, kind: str, chunked: ChunkedImage, params: chunking.ChunkingParams,
                   *, created: float, source: dict) -> ImageManifest:
    pack_index: dict[str, int] = {}
    chunks = []
    for offset, length, digest, zero, pack, pack_offset in chunked.entries:
        if zero:
            chunks.append(ChunkRef(offset, length, digest, True))
            continue
        i = pack_index.setdefault(pack, len(pack_index))
        chunks.append(ChunkRef(offset, length, digest, False, i, pack_offset))
    packs = tuple(PackRef(key, chunked.pack_sizes[key]) for key in pack_index)
    return ImageManifest(image_id, kind, chunked.size, chunked.sha256, params, packs, tuple(chunks),
                         created=created, source=source)


async def run_pipeline(
    *,
    s3,
    store: BucketStore,
    bundle_bucket: str,
    part_prefix: str,
    manifest: Manifest,
    private_key,
    index: ChunkIndex,
    stats: PrepareStats,
    params: chunking.ChunkingParams,
    clock: Callable[[], float],
    pack_size: int,
    part_size: int,
    part_window: int,
    upload_concurrency: int,
) -> ChunkedImage:
    """Run every stage; on any failure discard what was uploaded and re-raise."""
    loop = asyncio.get_running_loop()
    bridge = _Bridge(loop)
    feeder = PartFeeder(s3, bundle_bucket, part_prefix, manifest, bridge, stats, window=part_window)
    uploader = PackUploader(store, concurrency=upload_concurrency)
    writer = PackWriter(bridge, uploader, stats, clock=clock, pack_size=pack_size, part_size=part_size)
    pipe = _new_pipe()
    sink = ImageSink(pipe, stats)

    def unbundle() -> None:
        try:
            bt_reader.unbundle_stream(manifest, feeder.open_part, sink, private_key)
        except BaseException:
            pipe.cancelled.set()
            raise
        sink.close()

    def chunk() -> ChunkedImage:
        try:
            return chunk_stage(pipe, index, writer, stats, params)
        except BaseException:
            pipe.cancelled.set()
            raise

    feeder.start()
    started = time.monotonic()
    unbundle_task = asyncio.ensure_future(asyncio.to_thread(unbundle))
    chunk_task = asyncio.ensure_future(asyncio.to_thread(chunk))
    try:
        results = await asyncio.gather(unbundle_task, chunk_task, return_exceptions=True)
        unbundle_error, chunked = results
        # The bundle's own verdict comes first: a tampered part also breaks the chunk stage.
        if isinstance(unbundle_error, BaseException) and not isinstance(unbundle_error, Cancelled):
            raise unbundle_error
        if isinstance(chunked, BaseException):
            if isinstance(chunked, Cancelled) and uploader.failure is not None:
                raise uploader.failure
            raise chunked
        if uploader.failure is not None:
            raise uploader.failure
        return chunked
    except BaseException:
        bridge.stop.set()
        pipe.cancelled.set()
        await asyncio.gather(unbundle_task, chunk_task, return_exceptions=True)
        await uploader.discard()
        raise
    finally:
        bridge.stop.set()
        await feeder.stop()
        stats.seconds = time.monotonic() - started
