"""Records the storage engine keeps: buckets, objects, chunk references, uploads.

They are frozen dataclasses so a record read from LMDB can be handed to the HTTP layer
without anyone mutating shared state; changes are new records written in a transaction.
Serialisation lives here too (one place decides the on-disk shape of each record).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ChunkEncoding(enum.IntEnum):
    """How a chunk file holds its bytes."""

    RAW = 0  # stored as is: incompressible data, served with sendfile
    ZSTD = 1  # one zstd frame


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of an object's body: `length` plain bytes whose SHA-256 is `sha256`."""

    sha256: bytes  # 32 raw bytes; the chunk's address
    length: int  # plain (uncompressed) length
    encoding: ChunkEncoding


@dataclass(frozen=True, slots=True)
class Grant:
    """One ACL grant. `grantee_type` is CanonicalUser, Group or AmazonCustomerByEmail."""

    grantee_type: str
    grantee: str  # canonical user id, group URI, or email address
    permission: str  # FULL_CONTROL, READ, WRITE, READ_ACP, WRITE_ACP
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Acl:
    owner_id: str
    owner_name: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    owner_id: str
    created: float  # unix seconds
    location: str  # LocationConstraint given at creation ("" = us-east-1)
    acl: Acl


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the client said about an object; stored and returned verbatim."""

    content_type: str = "binary/octet-stream"
    user: tuple[tuple[str, str], ...] = ()  # x-amz-meta-* (lower-cased name without prefix, value)
    # Content-Encoding, Content-Disposition, Content-Language, Cache-Control, Expires,
    # x-amz-website-redirect-location ... as (canonical header name, value)
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes: hex md5, or "hex-N" for multipart
    last_modified: float  # unix seconds
    owner_id: str
    meta: ObjectMeta
    acl: Acl
    chunks: tuple[ChunkRef, ...] = ()
    inline: bytes | None = None  # small bodies live in the metadata instead of chunks
    # Additional checksums the client asked for, e.g. {"CRC32": base64}, returned on GET/HEAD.
    checksums: tuple[tuple[str, str], ...] = ()
    # For multipart objects: the size of each part, so GetObject?partNumber= works.
    part_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart upload in progress."""

    bucket: str
    key: str
    upload_id: str
    initiated: float
    owner_id: str
    meta: ObjectMeta
    acl: Acl
    checksum_algorithm: str = ""  # x-amz-checksum-algorithm given at creation


@dataclass(frozen=True, slots=True)
class Part:
    upload_id: str
    part_number: int
    size: int
    etag: str  # hex md5, no quotes
    last_modified: float
    chunks: tuple[ChunkRef, ...] = ()
    inline: bytes | None = None
    checksums: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Staged:
    """A body that has been streamed into the chunk store but is not yet referenced.

    The chunks are durable (fsynced) and pinned against garbage collection until the
    staged body is committed (as an object or a part) or discarded. `digests` holds the
    whole-body digests asked for by name ("md5", "sha256", "crc32", "crc32c", "sha1").
    """

    token: int  # identifies the pin; pass back to commit/discard
    size: int
    digests: dict[str, bytes] = field(hash=False)
    chunks: tuple[ChunkRef, ...] = ()
    inline: bytes | None = None
