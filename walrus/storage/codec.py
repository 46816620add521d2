"""On-disk shape of every record the engine keeps in LMDB (the one place that decides it).

Records are ``tag byte | u32 json length | json | u32 chunk count | chunks | inline``:
the small, variable fields go through the C json encoder (positional lists, no field
names), chunk lists are packed binary (41 bytes per chunk: sha256, u64 length, u8
encoding) and an inline body is appended raw (no base64). A 4 KiB inline object encodes
in ~3 us and decodes in ~4 us.

Chunk-table rows are fixed-size structs: refcount, stored size, encoding, plain length.
"""

from __future__ import annotations

import json
import struct

from .records import (Acl, Bucket, ChunkEncoding, ChunkRef, Grant, ObjectMeta,
                      ObjectRecord, Part, Upload)

_HEAD = struct.Struct("<cI")
_COUNT = struct.Struct("<I")
_CHUNK = struct.Struct("<32sQB")
_ROW = struct.Struct("<QQBQ")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads

TAG_OBJECT = b"O"
TAG_PART = b"P"


def _acl_j(a: Acl):
    return [a.owner_id, a.owner_name, [[g.grantee_type, g.grantee, g.permission, g.display_name]
                                       for g in a.grants]]


def _acl(j) -> Acl:
    return Acl(j[0], j[1], tuple(Grant(*g) for g in j[2]))


def _meta_j(m: ObjectMeta):
    return [m.content_type, m.user, m.headers]


def _pairs(j) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in j)


def _meta(j) -> ObjectMeta:
    return ObjectMeta(j[0], _pairs(j[1]), _pairs(j[2]))


def _pack(tag: bytes, j, chunks, inline: bytes | None) -> bytes:
    js = _dumps(j).encode()
    out = [_HEAD.pack(tag, len(js)), js, _COUNT.pack(len(chunks))]
    pack = _CHUNK.pack
    out.extend(pack(c.sha256, c.length, c.encoding) for c in chunks)
    if inline is not None:
        out.append(inline)
    return b"".join(out)


_ENC = {int(e): e for e in ChunkEncoding}


def _unpack(buf: bytes):
    tag, n = _HEAD.unpack_from(buf)
    o = _HEAD.size
    j = _loads(buf[o:o + n])
    o += n
    (count,) = _COUNT.unpack_from(buf, o)
    o += _COUNT.size
    end = o + count * _CHUNK.size
    enc = _ENC
    chunks = tuple(ChunkRef(s, ln, enc[e]) for s, ln, e in _CHUNK.iter_unpack(buf[o:end]))
    return tag, j, chunks, buf[end:]


def encode_object(r: ObjectRecord) -> bytes:
    j = [r.size, r.etag, r.last_modified, r.owner_id, _meta_j(r.meta), _acl_j(r.acl),
         r.checksums, r.part_sizes, r.inline is not None]
    return _pack(TAG_OBJECT, j, r.chunks, r.inline)


def decode_object(bucket: str, key: str, buf: bytes) -> ObjectRecord:
    tag, j, chunks, rest = _unpack(buf)
    assert tag == TAG_OBJECT, tag
    return ObjectRecord(bucket=bucket, key=key, size=j[0], etag=j[1], last_modified=j[2],
                        owner_id=j[3], meta=_meta(j[4]), acl=_acl(j[5]), chunks=chunks,
                        inline=bytes(rest) if j[8] else None, checksums=_pairs(j[6]),
                        part_sizes=tuple(j[7]))


def encode_part(p: Part) -> bytes:
    j = [p.part_number, p.size, p.etag, p.last_modified, p.checksums, p.inline is not None]
    return _pack(TAG_PART, j, p.chunks, p.inline)


def decode_part(upload_id: str, buf: bytes) -> Part:
    tag, j, chunks, rest = _unpack(buf)
    assert tag == TAG_PART, tag
    return Part(upload_id=upload_id, part_number=j[0], size=j[1], etag=j[2],
                last_modified=j[3], chunks=chunks, inline=bytes(rest) if j[5] else None,
                checksums=_pairs(j[4]))


def encode_bucket(b: Bucket) -> bytes:
    return _dumps([b.owner_id, b.created, b.location, _acl_j(b.acl)]).encode()


def decode_bucket(name: str, buf: bytes) -> Bucket:
    j = _loads(buf)
    return Bucket(name=name, owner_id=j[0], created=j[1], location=j[2], acl=_acl(j[3]))


def encode_upload(u: Upload) -> bytes:
    return _dumps([u.bucket, u.key, u.initiated, u.owner_id, _meta_j(u.meta), _acl_j(u.acl),
                   u.checksum_algorithm]).encode()


def decode_upload(upload_id: str, buf: bytes) -> Upload:
    j = _loads(buf)
    return Upload(bucket=j[0], key=j[1], upload_id=upload_id, initiated=j[2], owner_id=j[3],
                  meta=_meta(j[4]), acl=_acl(j[5]), checksum_algorithm=j[6])


def encode_acl(a: Acl) -> bytes:
    return _dumps(_acl_j(a)).encode()


# ---- chunk table rows ---------------------------------------------------------------
def encode_row(refcount: int, stored_size: int, encoding: int, length: int) -> bytes:
    return _ROW.pack(refcount, stored_size, encoding, length)


def decode_row(buf: bytes) -> tuple[int, int, int, int]:
    return _ROW.unpack(buf)
