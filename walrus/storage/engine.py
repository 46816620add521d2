"""The Walrus storage engine: buckets, objects and multipart uploads over LMDB + chunks.

CONTRACT (the S3 layer in walrus/s3/ codes against exactly this; keep it stable):

* Every method is a coroutine unless marked; blocking work (LMDB, file I/O, hashing,
  zstd) runs in worker threads, never on the event loop.
* Writing a body is two steps: `stage()` streams it into durable chunks (or keeps it for
  inline storage if small) and computes digests; the caller verifies what it must
  (Content-MD5, x-amz-content-sha256, checksums), then calls one `commit_*` method, or
  `discard()`. Nothing is visible before commit; a commit is one LMDB transaction that
  writes the record and changes every refcount it implies. Commits from many requests
  are grouped into one transaction + one fsync (group commit).
* Errors are raised as `walrus.storage.errors.StorageError` subclasses (see that module);
  "not found" on a read returns None rather than raising.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path

from .records import Acl, Bucket, ObjectMeta, ObjectRecord, Part, Staged, Upload


class Engine:
    @classmethod
    async def open(cls, data_dir: Path, *, clock=None, chunk_size: int | None = None,
                   inline_limit: int | None = None) -> "Engine":
        """Open (creating if needed) the store in data_dir, run crash recovery:
        remove temp files, and collect chunk files no record references."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # ---- buckets -------------------------------------------------------------------
    async def create_bucket(self, name: str, owner_id: str, acl: Acl, location: str) -> Bucket:
        """Raises BucketAlreadyOwnedByYou / BucketAlreadyExists."""
        raise NotImplementedError

    async def get_bucket(self, name: str) -> Bucket | None:
        raise NotImplementedError

    async def list_buckets(self, owner_id: str | None = None) -> list[Bucket]:
        """Sorted by name; all buckets when owner_id is None."""
        raise NotImplementedError

    async def delete_bucket(self, name: str) -> None:
        """Raises NoSuchBucket, BucketNotEmpty (objects or multipart uploads present)."""
        raise NotImplementedError

    async def set_bucket_acl(self, name: str, acl: Acl) -> None:
        raise NotImplementedError

    # ---- bodies --------------------------------------------------------------------
    async def stage(self, body: AsyncIterable[bytes], digests: Sequence[str] = ("md5",)) -> Staged:
        """Stream body into the chunk store; compute the named whole-body digests.
        If body raises, every chunk written for it is released and the error propagates."""
        raise NotImplementedError

    async def discard(self, staged: Staged) -> None:
        """Release a staged body that will not be committed (idempotent)."""
        raise NotImplementedError

    # ---- objects -------------------------------------------------------------------
    async def commit_object(self, staged: Staged, *, bucket: str, key: str, etag: str,
                            owner_id: str, meta: ObjectMeta, acl: Acl,
                            checksums: tuple[tuple[str, str], ...] = (),
                            if_none_match_any: bool = False) -> ObjectRecord:
        """Make staged the current version of bucket/key (replacing any older one and
        releasing its chunks). Raises NoSuchBucket; PreconditionFailed if
        if_none_match_any and the key exists."""
        raise NotImplementedError

    async def get_object(self, bucket: str, key: str) -> ObjectRecord | None:
        raise NotImplementedError

    async def delete_object(self, bucket: str, key: str) -> bool:
        """True if something was deleted. Deleting a missing key is not an error."""
        raise NotImplementedError

    async def copy_object(self, src: ObjectRecord, *, bucket: str, key: str, owner_id: str,
                          meta: ObjectMeta, acl: Acl, if_match_etag: str | None = None) -> ObjectRecord:
        """New record for bucket/key sharing src's chunks (refcounts +1, no data copied).
        if_match_etag: fail with PreconditionFailed if src changed meanwhile."""
        raise NotImplementedError

    def read_range(self, record: ObjectRecord | Part, start: int, end: int) -> AsyncIterator[bytes]:
        """Plain bytes [start, end) of the body; touches only the chunks needed.
        Raises CorruptChunk if a chunk is missing or fails its digest. (Not a coroutine:
        returns an async iterator.)"""
        raise NotImplementedError

    async def scan_objects(self, bucket: str, *, prefix: str = "", after: str = "",
                           limit: int = 1000) -> list[ObjectRecord]:
        """Up to `limit` records of keys > after (and starting with prefix), in key order
        (UTF-8 byte order, as S3)."""
        raise NotImplementedError

    async def set_object_acl(self, bucket: str, key: str, acl: Acl) -> None:
        raise NotImplementedError

    # ---- multipart -----------------------------------------------------------------
    async def create_upload(self, bucket: str, key: str, owner_id: str, meta: ObjectMeta,
                            acl: Acl, checksum_algorithm: str = "") -> Upload:
        raise NotImplementedError

    async def get_upload(self, upload_id: str) -> Upload | None:
        raise NotImplementedError

    async def commit_part(self, staged: Staged, upload_id: str, part_number: int, etag: str,
                          checksums: tuple[tuple[str, str], ...] = ()) -> Part:
        """Store/replace a part. Raises NoSuchUpload."""
        raise NotImplementedError

    async def copy_part(self, src: ObjectRecord, start: int, end: int, upload_id: str,
                        part_number: int) -> Part:
        """UploadPartCopy: part from src bytes [start, end). Whole chunks are shared
        (refcount), partial edge chunks are re-chunked."""
        raise NotImplementedError

    async def list_parts(self, upload_id: str, *, after: int = 0, limit: int = 1000) -> list[Part]:
        raise NotImplementedError

    async def scan_uploads(self, bucket: str, *, prefix: str = "", after_key: str = "",
                           after_upload_id: str = "", limit: int = 1000) -> list[Upload]:
        """Ordered by (key, initiated, upload_id)."""
        raise NotImplementedError

    async def complete_upload(self, upload_id: str, parts: Sequence[int], etag: str,
                              checksums: tuple[tuple[str, str], ...] = ()) -> ObjectRecord:
        """Turn the listed parts (already validated by the caller) into the object;
        unlisted parts are released; the upload disappears. Raises NoSuchUpload."""
        raise NotImplementedError

    async def abort_upload(self, upload_id: str) -> None:
        """Raises NoSuchUpload."""
        raise NotImplementedError

    async def expire_uploads(self, older_than: float) -> int:
        """Abort uploads initiated before `older_than` (unix seconds); returns how many."""
        raise NotImplementedError

    # ---- operations ----------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters for metrics (not a coroutine): stored_bytes (on disk, after
        compression and dedup), logical_bytes, chunks, dedup_hit_chunks,
        dedup_hit_bytes, objects."""
        raise NotImplementedError
