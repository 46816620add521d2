"""The content-addressed chunk store on local disk (files only; refcounts live in LMDB).

Layout: ``DIR/chunks/ab/cd/<sha256hex>`` for a chunk stored RAW (so the HTTP layer can
``sendfile`` it) and ``DIR/chunks/ab/cd/<sha256hex>.zst`` for one stored as a single zstd
frame. The encoding is in the file name, so a file is self-describing: recovery and dedup
never need to sniff the content (a user's body may itself be a zstd frame).

Writes are atomic and durable: temp file in ``DIR/tmp`` -> write -> fsync -> rename into
place; the caller then fsyncs the shard directories once per staged body
(`fsync_dirs`), before any LMDB transaction refers to the chunk. On ext4 the first
directory fsync commits the journal holding every rename, so the rest are nearly free.

Compression: zstd level 1. A chunk is kept RAW when zstd saves less than 5%
(`RAW_THRESHOLD`) -- random or already-compressed data -- which also keeps those chunks
servable with sendfile. Incompressible chunks are spotted by compressing a 64 KiB probe
first, so random data pays ~6% of a compression, not all of it.

MEASUREMENTS (2 vCPU VM shared with other busy sessions, load average 5-7 during the
runs, so expect +-50% run to run; scratch scripts outside the repo, /tmp/wb/bench5.py
and bench_stage.py:
stage() of a 256 MiB body fed in 256 KiB pieces, best of 3 interleaved runs, with md5
alone over the same buffer measured in the same run as the reference: 0.79 GB/s):

    stage()  random  1 MiB chunks 0.08-0.45 GB/s    4 MiB chunks 0.22-0.47 GB/s
    stage()  text    1 MiB chunks 0.11-0.38 GB/s    4 MiB chunks 0.21-0.48 GB/s
    (8 runs each over 10 minutes; in every run 4 MiB >= 1 MiB, by 1.05x when the disk
    was quiet up to 2.5x when neighbours were writing)
    zstd level 1 vs 3 on text-like data: ratio 0.120 vs 0.141, level 1 faster -> level 1
    read_range (verify sha256) ~1.0 GB/s, without verification 2.5-6 GB/s (page cache)

The bound is the disk: per-chunk write+fdatasync summed to 3.2 s of thread time for a
1.97 s stage (md5 lane 0.6 s, zstd probe 0.02 s); write+fdatasync alone measured
0.3-1.3 GB/s depending on the neighbours' I/O, and each chunk costs one fdatasync, so
4 MiB chunks stage faster when the disk is contended. But they cost 4x read
amplification for the 1 MiB ranged GETs nodes issue (each read must fetch, decompress and verify a whole chunk) and
4x the memory per in-flight upload (~9 MiB vs ~36 MiB at STAGE_INFLIGHT=4). Objects are
written once and read by many nodes, so we chose 1 MiB (engine.DEFAULT_CHUNK_SIZE);
`Engine.open(chunk_size=...)` changes it per store (existing chunks stay readable:
records carry each chunk's length).

This module is synchronous: everything here runs in worker threads.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from pathlib import Path

import zstandard

from .errors import CorruptChunk
from .records import ChunkEncoding, ChunkRef

RAW_THRESHOLD = 0.95  # keep RAW unless compressed size < 95% of plain size
ZSTD_LEVEL = 1
PROBE = 64 << 10  # bytes compressed first to spot incompressible chunks cheaply

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


class ChunkStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.chunk_dir = self.root / "chunks"
        self.tmp_dir = self.root / "tmp"
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    # ---- naming ---------------------------------------------------------------------
    def shard_dir(self, sha: bytes) -> Path:
        h = sha.hex()
        return self.chunk_dir / h[:2] / h[2:4]

    def path(self, sha: bytes, encoding: ChunkEncoding) -> Path:
        name = sha.hex() + (".zst" if encoding == ChunkEncoding.ZSTD else "")
        return self.shard_dir(sha) / name

    def find(self, sha: bytes) -> tuple[ChunkEncoding, int] | None:
        """(encoding, stored size) of the chunk file for sha, or None if absent."""
        for enc in (ChunkEncoding.RAW, ChunkEncoding.ZSTD):
            try:
                st = os.stat(self.path(sha, enc))
            except FileNotFoundError:
                continue
            return enc, st.st_size
        return None

    # ---- writing --------------------------------------------------------------------
    @staticmethod
    def encode(data: bytes | memoryview) -> tuple[ChunkEncoding, bytes | memoryview]:
        """Choose the encoding for data and return (encoding, stored bytes).

        A chunk larger than 2 * PROBE is first probed: if its first PROBE bytes do not
        compress below RAW_THRESHOLD, the chunk is kept RAW without compressing the rest
        (random data costs ~6% of a full compression instead of 100%)."""
        cctx = _compressor()
        if len(data) > 2 * PROBE:
            if len(cctx.compress(data[:PROBE])) >= PROBE * RAW_THRESHOLD:
                return ChunkEncoding.RAW, data
        packed = cctx.compress(data)
        if len(packed) < len(data) * RAW_THRESHOLD:
            return ChunkEncoding.ZSTD, packed
        return ChunkEncoding.RAW, data

    def write(self, sha: bytes, encoding: ChunkEncoding, stored: bytes | memoryview) -> list[Path]:
        """Write one chunk file atomically (tmp, fsync, rename). Directories are NOT
        fsynced here: the caller collects the returned ones (the shard directory, plus
        its parents when they were just created) and calls `fsync_dirs` once for a whole
        staged body."""
        final = self.path(sha, encoding)
        tmp = self.tmp_dir / f"{sha.hex()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(stored)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        dirs = [final.parent]
        try:
            os.rename(tmp, final)
        except FileNotFoundError:
            # a new shard directory: its entry in the parent must be made durable too
            final.parent.mkdir(parents=True, exist_ok=True)
            dirs += [final.parent.parent, self.chunk_dir]
            os.rename(tmp, final)
        return dirs

    # ---- reading --------------------------------------------------------------------
    def read(self, ref: ChunkRef, *, verify: bool = True) -> bytes:
        """The plain bytes of ref's chunk. Raises CorruptChunk if the file is missing,
        does not decode, or (verify) fails its SHA-256."""
        path = self.path(ref.sha256, ref.encoding)
        try:
            with open(path, "rb", buffering=0) as f:
                stored = f.read()
        except FileNotFoundError:
            raise CorruptChunk(f"chunk {ref.sha256.hex()} is missing") from None
        if ref.encoding == ChunkEncoding.ZSTD:
            try:
                data = _decompressor().decompress(stored, max_output_size=ref.length)
            except zstandard.ZstdError as e:
                raise CorruptChunk(f"chunk {ref.sha256.hex()} does not decode: {e}") from None
        else:
            data = stored
        if len(data) != ref.length or (verify and hashlib.sha256(data).digest() != ref.sha256):
            raise CorruptChunk(f"chunk {ref.sha256.hex()} fails its SHA-256")
        return data

    def delete(self, sha: bytes) -> None:
        for enc in (ChunkEncoding.RAW, ChunkEncoding.ZSTD):
            _unlink(self.path(sha, enc))

    # ---- recovery -------------------------------------------------------------------
    def clear_tmp(self) -> int:
        n = 0
        for p in self.tmp_dir.iterdir():
            _unlink(p)
            n += 1
        return n

    def iter_files(self):
        """(sha, encoding, path) of every chunk file; junk names are yielded with sha None."""
        for d1 in self.chunk_dir.iterdir():
            if not d1.is_dir():
                continue
            for d2 in d1.iterdir():
                if not d2.is_dir():
                    continue
                for p in d2.iterdir():
                    name = p.name
                    enc = ChunkEncoding.RAW
                    if name.endswith(".zst"):
                        name, enc = name[:-4], ChunkEncoding.ZSTD
                    try:
                        sha = bytes.fromhex(name)
                    except ValueError:
                        sha = None
                    if sha is not None and len(sha) != 32:
                        sha = None
                    yield sha, enc, p


def fsync_dirs(dirs) -> None:
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
