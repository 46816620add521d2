"""Storage-level failures. The S3 layer maps each to its S3 error code.

StorageError
├── NoSuchBucket
├── BucketAlreadyExists
├── BucketAlreadyOwnedByYou
├── BucketNotEmpty
├── NoSuchUpload
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
