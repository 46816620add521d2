"""Key layout of the engine's LMDB trees (synchronous helpers over a kv transaction).

trees
  buckets    name                                   -> codec bucket
  objects    bucket 0x00 keyUTF8                    -> codec object      (key < 440 bytes)
             bucket 0x00 keyUTF8[:440]              -> group of objects  (key >= 440 bytes)
  uploads    upload_id                              -> codec upload
  upl_index  bucket 0x00 upload_id                  -> b""
  parts      upload_id 0x00 u32be(part_number)      -> codec part
  chunks     sha256 (32 bytes)                      -> codec row (refcount, stored, enc, len)
  gcq        u64be(due ms) sha256                   -> b""    (time-ordered GC queue)
  stats      counter name                           -> i64

Object keys are UTF-8 bytes after the bucket name and a NUL (bucket names cannot hold
one), so an LMDB scan of a bucket runs in S3's order: UTF-8 byte order.

Long keys: LMDB keys are at most 511 bytes, S3 keys up to 1024. A key of 440 bytes or
more lives in a *group* value stored under its first 440 bytes, which holds every such
key sharing that prefix, sorted. Ordering still holds: no key shorter than 440 bytes
can sort between a 440-byte prefix P and a key extending P, and the group value's tag
(b"G") tells it from a record (b"O").
"""

from __future__ import annotations

import struct

from .kv import ReadTxn, WriteTxn

TREES = ("buckets", "objects", "uploads", "upl_index", "parts", "chunks", "gcq", "stats")
DIRECT_MAX = 440  # keys with fewer bytes are stored directly
_GROUP = b"G"
_LEN = struct.Struct("<I")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _bkey(bucket: str) -> bytes:
    return bucket.encode() + b"\x00"


def _split(bucket: str, key: str) -> tuple[bytes, bytes | None]:
    kb = key.encode("utf-8")
    if len(kb) < DIRECT_MAX:
        return _bkey(bucket) + kb, None
    return _bkey(bucket) + kb[:DIRECT_MAX], kb[DIRECT_MAX:]


def _group_decode(buf: bytes) -> list[tuple[bytes, bytes]]:
    out, o = [], 1
    while o < len(buf):
        (n,) = _LEN.unpack_from(buf, o)
        rest = buf[o + 4:o + 4 + n]
        o += 4 + n
        (m,) = _LEN.unpack_from(buf, o)
        out.append((rest, buf[o + 4:o + 4 + m]))
        o += 4 + m
    return out


def _group_encode(entries: list[tuple[bytes, bytes]]) -> bytes:
    out = [_GROUP]
    for rest, rec in sorted(entries):
        out += [_LEN.pack(len(rest)), rest, _LEN.pack(len(rec)), rec]
    return b"".join(out)


def obj_get(txn: ReadTxn, bucket: str, key: str) -> bytes | None:
    lk, rest = _split(bucket, key)
    v = txn.get("objects", lk)
    if rest is None or v is None:
        return v
    for r, rec in _group_decode(v):
        if r == rest:
            return rec
    return None


def obj_put(txn: WriteTxn, bucket: str, key: str, value: bytes) -> None:
    lk, rest = _split(bucket, key)
    if rest is None:
        txn.put("objects", lk, value)
        return
    old = txn.get("objects", lk)
    entries = [e for e in (_group_decode(old) if old else []) if e[0] != rest]
    entries.append((rest, value))
    txn.put("objects", lk, _group_encode(entries))


def obj_delete(txn: WriteTxn, bucket: str, key: str) -> bytes | None:
    """Remove bucket/key; returns the old record bytes, or None if there was none."""
    lk, rest = _split(bucket, key)
    old = txn.get("objects", lk)
    if old is None:
        return None
    if rest is None:
        txn.delete("objects", lk)
        return old
    entries = _group_decode(old)
    keep = [e for e in entries if e[0] != rest]
    if len(keep) == len(entries):
        return None
    if keep:
        txn.put("objects", lk, _group_encode(keep))
    else:
        txn.delete("objects", lk)
    return next(rec for r, rec in entries if r == rest)


def obj_scan(txn: ReadTxn, bucket: str, *, prefix: str = "", after: str = "",
             limit: int = 1000) -> list[tuple[str, bytes]]:
    """(key, record bytes) for keys > after starting with prefix, in UTF-8 byte order."""
    base = _bkey(bucket)
    pb = prefix.encode()
    ab = after.encode()
    start = base + ab[:DIRECT_MAX] if ab else None
    out: list[tuple[str, bytes]] = []
    if limit <= 0:
        return out
    n = len(base)
    for lk, v in txn.scan("objects", start=start, prefix=base + pb[:DIRECT_MAX]):
        kb = lk[n:]
        items = [(kb + r, rec) for r, rec in _group_decode(v)] if v[:1] == _GROUP else [(kb, v)]
        for full, rec in items:
            if (ab and full <= ab) or not full.startswith(pb):
                continue
            out.append((full.decode(), rec))
            if len(out) >= limit:
                return out
    return out


def bucket_has_objects(txn: ReadTxn, bucket: str) -> bool:
    return txn.first("objects", prefix=_bkey(bucket)) is not None


# ---- uploads ------------------------------------------------------------------------
def upload_index_key(bucket: str, upload_id: str) -> bytes:
    return _bkey(bucket) + upload_id.encode()


def upload_ids(txn: ReadTxn, bucket: str) -> list[str]:
    b = _bkey(bucket)
    return [k[len(b):].decode() for k, _ in txn.scan("upl_index", prefix=b)]


def bucket_has_uploads(txn: ReadTxn, bucket: str) -> bool:
    return txn.first("upl_index", prefix=_bkey(bucket)) is not None


def part_key(upload_id: str, part_number: int) -> bytes:
    return upload_id.encode() + b"\x00" + _U32.pack(part_number)


def part_prefix(upload_id: str) -> bytes:
    return upload_id.encode() + b"\x00"


# ---- GC queue -----------------------------------------------------------------------
def gc_key(due: float, sha: bytes) -> bytes:
    return _U64.pack(max(0, int(due * 1000))) + sha


def gc_until(now: float) -> bytes:
    """Exclusive end key for entries due at or before now."""
    return _U64.pack(max(0, int(now * 1000)) + 1)
