"""The chunk files of the local cache: DATA/cache/chunks/ab/<sha256>, content-addressed.

Only bytes whose SHA-256 matches their name ever enter: `put_many` hashes, writes
temp files, fsyncs them, renames them into place and finally fsyncs the directories it
touched, so a crash leaves either no file or a whole one (never a half chunk under a
real name). Whether a chunk *counts* as cached is the metadata's business (cachedb);
this module only knows files. All functions are blocking: call them in a thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

_TMP_SUFFIX = ".tmp"
SYNC_GROUP = 64


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_temps()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put_many(self, items: Iterable[tuple[str, bytes | memoryview]]) -> list[str]:
        """Store each (sha256, data) whose data hashes to sha256; return the shas that did
        not match (those are not stored). Durable when it returns.

        Temp files are written a group at a time and only then synced and renamed: a
        request's chunks (hundreds of them) share journal commits instead of paying one
        each (~1.4x here), with at most SYNC_GROUP files open."""
        bad, dirs, group = [], set(), []
        for sha, data in items:
            if hashlib.sha256(data).hexdigest() != sha:
                bad.append(sha)
                continue
            group.append((sha, data))
            if len(group) == SYNC_GROUP:
                dirs |= self._write_group(group)
                group = []
        if group:
            dirs |= self._write_group(group)
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return bad

    def _write_group(self, group: list[tuple[str, bytes | memoryview]]) -> set[Path]:
        written = []
        try:
            for sha, data in group:
                final = self.path(sha)
                final.parent.mkdir(exist_ok=True)
                tmp = final.with_name(f"{sha}.{os.getpid()}.{id(data):x}{_TMP_SUFFIX}")
                written.append((os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), tmp, final))
                view = memoryview(data)
                while view:
                    view = view[os.write(written[-1][0], view):]
            for fd, _, _ in written:
                os.fdatasync(fd)
        except BaseException:
            for fd, tmp, _ in written:
                os.close(fd)
                tmp.unlink(missing_ok=True)
            raise
        for fd, tmp, final in written:
            os.close(fd)
            os.replace(tmp, final)
        return {final.parent for _, _, final in written}

    def read(self, sha256: str) -> bytes | None:
        """The file's bytes, or None if it is missing (no verification: callers hash)."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def _clean_temps(self) -> None:
        for sub in self.root.iterdir():
            if sub.is_dir():
                for tmp in sub.glob(f"*{_TMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)
