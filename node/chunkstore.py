"""The pack files of the local cache: DATA/cache/chunks/<name>.pack, verified chunks back to back.

One fetch request (a ranged GET of a run of chunks) becomes one pack, written
sequentially: `write_pack` hashes every chunk first, writes the ones whose SHA-256
matches into a temp file, fdatasyncs it once, renames it into place and fsyncs the
directory -- so a crash leaves either no pack under its real name or a whole synced
one, and the caller may name the pack in the metadata (cachedb) only after this
returns. Which chunks of a pack *count* -- and where each one lies in it -- is the
metadata's business; this module only knows files. Reads are not verified: callers hash.

Why packs and not one file per chunk (the layout until issue #6): a content-defined
chunk is ~64 KiB, and creating, syncing and renaming ~13,000 files per GiB capped a
cold fetch at ~260 MiB/s on a disk that writes a few sequential files much faster. A
data dir in the old layout (DATA/cache/chunks/ab/<sha256>) is dropped on start: its
chunk records carry no pack location, so cachedb treats them as absent and the chunks
are fetched again when an image needs them.

All functions are blocking: call them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACK_SUFFIX = ".pack"
_TMP_SUFFIX = ".tmp"
_LEGACY_DIR = re.compile(r"[0-9a-f]{2}")


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a present chunk's bytes are: `length` bytes at `offset` of pack `pack`."""

    pack: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PackWritten:
    """A pack `write_pack` made durable: its name, size and the chunks in it."""

    name: str
    size: int
    chunks: dict[str, ChunkLocation]


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean()

    def path(self, pack: str) -> Path:
        return self.root / f"{pack}{PACK_SUFFIX}"

    def write_pack(self, items: Iterable[tuple[str, bytes | memoryview]]) -> tuple[PackWritten | None, list[str]]:
        """Store each (sha256, data) whose data hashes to sha256 in one new pack; return
        it (None if no chunk matched) and the shas that did not match (not stored). A sha
        given twice is stored once. The pack is durable when this returns.

        Each chunk is hashed and, if it matches, written at once (while its bytes are
        still in the CPU cache); the temp file is synced once, at the end, and only then
        renamed to a pack name, so unverified bytes never sit under one."""
        bad: list[str] = []
        chunks: dict[str, ChunkLocation] = {}
        name = uuid.uuid4().hex
        final = self.path(name)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        fd, offset = None, 0
        try:
            for sha, data in items:
                view = memoryview(data)
                if sha in chunks:
                    continue
                if hashlib.sha256(view).hexdigest() != sha:
                    bad.append(sha)
                    continue
                if fd is None:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                chunks[sha] = ChunkLocation(name, offset, len(view))
                offset += len(view)
                while view:
                    view = view[os.write(fd, view):]
            if fd is None:
                return None, bad
            os.fdatasync(fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
                tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)
        self._sync_dir()
        return PackWritten(name, offset, chunks), bad

    def read(self, where: ChunkLocation) -> bytes | None:
        """The chunk's bytes, or None if its pack is missing or too short."""
        try:
            fd = os.open(self.path(where.pack), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return self.read_at(fd, where)
        finally:
            os.close(fd)

    @staticmethod
    def read_at(fd: int, where: ChunkLocation) -> bytes | None:
        """Like `read`, from an already open pack (assembly keeps its packs open)."""
        data = os.pread(fd, where.length, where.offset)
        return data if len(data) == where.length else None

    def remove_pack(self, pack: str) -> None:
        self.path(pack).unlink(missing_ok=True)

    def pack_names(self) -> set[str]:
        return {p.name[: -len(PACK_SUFFIX)] for p in self.root.glob(f"*{PACK_SUFFIX}")}

    def remove_unnamed(self, named: set[str]) -> list[str]:
        """Delete the packs not in `named` (written, but the metadata commit naming them
        never happened, or their last chunk was freed and the process stopped before the
        unlink). Only at start: a fetch in progress has packs not yet named."""
        strays = sorted(self.pack_names() - named)
        for pack in strays:
            self.remove_pack(pack)
        return strays

    def _sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _clean(self) -> None:
        for entry in self.root.iterdir():
            if entry.name.endswith(_TMP_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
            elif _LEGACY_DIR.fullmatch(entry.name) and entry.is_dir():  # the one-file-per-chunk layout
                shutil.rmtree(entry, ignore_errors=True)
