"""Base image assembly: cached chunks (in their packs) -> DATA/images/<image-id>.img.

The file is written as a temp next to its final name, zero chunks left as holes
(never written: the file is sparse), every stored chunk read from its pack at the
place the metadata records and re-hashed as it is copied, fsynced, then renamed into
place. A chunk that has no location, whose pack is missing or short, or whose bytes do
not match its name is *reported*, not trusted: the caller drops it from the cache, refetches it and
assembles again. With every chunk verified against a manifest whose chunks are checked
to be contiguous, the result is the image the manifest describes. Blocking: run in a
thread.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from imagecache import ImageManifest

from .chunkstore import ChunkLocation, ChunkStore


@dataclass(frozen=True, slots=True)
class AssembleResult:
    path: Path | None          # None when bad chunks were found
    bad_chunks: frozenset[str]
    written_bytes: int         # the non-zero extent written


def nonzero_extent(manifest: ImageManifest) -> int:
    return sum(c.length for c in manifest.chunks if not c.zero)


def assemble_base(manifest: ImageManifest, chunks: ChunkStore, locations: dict[str, ChunkLocation],
                  target: Path) -> AssembleResult:
    """Assemble `target` from the chunks at `locations` (cachedb.locations: sha256 ->
    where it lies); a chunk not in it counts as missing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    bad: set[str] = set()
    verified: set[str] = set()
    written = 0
    packs: dict[str, int | None] = {}  # open pack fds (None: missing), one open per pack
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, manifest.size)
        for chunk in manifest.chunks:
            if chunk.zero or chunk.sha256 in bad:
                continue
            data = _read(chunks, packs, locations.get(chunk.sha256))
            if data is None or (chunk.sha256 not in verified
                                and hashlib.sha256(data).hexdigest() != chunk.sha256):
                bad.add(chunk.sha256)
                continue
            verified.add(chunk.sha256)
            view = memoryview(data)
            at = chunk.offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n
            written += chunk.length
        if not bad:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for pack_fd in packs.values():
            if pack_fd is not None:
                os.close(pack_fd)
    os.close(fd)
    if bad:
        tmp.unlink(missing_ok=True)
        return AssembleResult(None, frozenset(bad), 0)
    os.replace(tmp, target)
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return AssembleResult(target, frozenset(), written)


def _read(chunks: ChunkStore, packs: dict[str, int | None], where: ChunkLocation | None) -> bytes | None:
    if where is None:
        return None
    if where.pack not in packs:
        try:
            packs[where.pack] = os.open(chunks.path(where.pack), os.O_RDONLY)
        except FileNotFoundError:
            packs[where.pack] = None
    pack_fd = packs[where.pack]
    return None if pack_fd is None else chunks.read_at(pack_fd, where)
