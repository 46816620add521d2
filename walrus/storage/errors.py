"""Storage-level failures. The S3 layer maps each to its S3 error code.

StorageError
├── NoSuchBucket
├── BucketAlreadyExists
├── BucketAlreadyOwnedByYou
├── BucketNotEmpty
├── NoSuchUpload
├── NoSuchKey               (a write names an object that does not exist)
├── InvalidPart             (complete_upload names a part that is not stored)
├── UnsupportedDigest       (stage() asked for a digest we cannot compute; also a ValueError)
├── PreconditionFailed      (conditional write lost: If-None-Match: *, or copy source changed)
└── CorruptChunk            (a chunk file is missing or fails its SHA-256)
"""


class StorageError(Exception):
    pass


class NoSuchBucket(StorageError):
    pass


class BucketAlreadyExists(StorageError):
    pass


class BucketAlreadyOwnedByYou(StorageError):
    pass


class BucketNotEmpty(StorageError):
    pass


class NoSuchUpload(StorageError):
    pass


class PreconditionFailed(StorageError):
    pass


class CorruptChunk(StorageError):
    pass


class NoSuchKey(StorageError):
    """The object a write refers to (e.g. set_object_acl) does not exist."""


class InvalidPart(StorageError):
    """complete_upload named a part that is not (or no longer) stored."""


class UnsupportedDigest(StorageError, ValueError):
    """stage() was asked for a digest this build cannot compute (e.g. crc32c)."""
