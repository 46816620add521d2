"""Engine behaviour on real LMDB + real chunk files (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import zlib

import pytest

from walrus.storage.digests import available
from walrus.storage.engine import Engine
from walrus.storage.errors import (BucketAlreadyExists, BucketAlreadyOwnedByYou,
                                   BucketNotEmpty, CorruptChunk, InvalidPart, NoSuchBucket,
                                   NoSuchKey, NoSuchUpload, PreconditionFailed, StorageError,
                                   UnsupportedDigest)
from walrus.storage.records import Acl, ChunkEncoding, ObjectMeta

from storagehelpers import ACL, CHUNK, INLINE, META, chunks_of, put, read_all


def chunk_files(engine):
    return sorted(p for p in (engine.data_dir / "chunks").rglob("*") if p.is_file())


# ---- buckets ---------------------------------------------------------------------
async def test_buckets(engine):
    with pytest.raises(BucketAlreadyOwnedByYou):
        await engine.create_bucket("bkt", "owner1", ACL, "")
    with pytest.raises(BucketAlreadyExists):
        await engine.create_bucket("bkt", "other", ACL, "")
    await engine.create_bucket("abc", "other", ACL, "eu-west-1")
    assert [b.name for b in await engine.list_buckets()] == ["abc", "bkt"]
    assert [b.name for b in await engine.list_buckets("other")] == ["abc"]
    assert (await engine.get_bucket("abc")).location == "eu-west-1"
    assert await engine.get_bucket("zzz") is None
    acl2 = Acl("owner1", "x", ())
    await engine.set_bucket_acl("abc", acl2)
    assert (await engine.get_bucket("abc")).acl == acl2
    with pytest.raises(NoSuchBucket):
        await engine.set_bucket_acl("zzz", acl2)
    await engine.delete_bucket("abc")
    with pytest.raises(NoSuchBucket):
        await engine.delete_bucket("abc")


async def test_bucket_not_empty(engine):
    await put(engine, "bkt", "k", b"x")
    with pytest.raises(BucketNotEmpty):
        await engine.delete_bucket("bkt")
    await engine.delete_object("bkt", "k")
    up = await engine.create_upload("bkt", "k", "owner1", META, ACL)
    with pytest.raises(BucketNotEmpty):  # only an upload present
        await engine.delete_bucket("bkt")
    await engine.abort_upload(up.upload_id)
    await engine.delete_bucket("bkt")


async def test_bucket_prefix_does_not_leak(engine):
    await engine.create_bucket("bk", "owner1", ACL, "")
    await put(engine, "bkt", "a", b"1")
    assert await engine.scan_objects("bk") == []
    await engine.delete_bucket("bk")  # "bkt"'s objects do not count


# ---- put / get / ranges ----------------------------------------------------------
SIZES = [0, 1, INLINE, INLINE + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


@pytest.mark.parametrize("size", SIZES)
async def test_roundtrip_sizes(engine, size):
    data = os.urandom(size)
    rec = await put(engine, "bkt", "k", data)
    assert rec.size == size
    assert rec.etag == hashlib.md5(data).hexdigest()
    assert (rec.inline is not None) == (size <= INLINE)
    if rec.inline is None:
        assert sum(c.length for c in rec.chunks) == size
        assert all(c.length <= CHUNK for c in rec.chunks)
    got = await engine.get_object("bkt", "k")
    assert got == rec
    assert got.meta == META and got.acl == ACL
    assert await read_all(engine, got) == data


async def test_ranges_cross_chunk_boundaries(engine):
    data = os.urandom(3 * CHUNK + 100)
    rec = await put(engine, "bkt", "k", data)
    cases = [(0, 1), (CHUNK - 1, CHUNK + 1), (CHUNK, CHUNK), (CHUNK, 2 * CHUNK),
             (5, 3 * CHUNK + 50), (3 * CHUNK, 3 * CHUNK + 100), (0, len(data)),
             (len(data) - 1, len(data)), (10, len(data) + 1000)]
    for start, end in cases:
        assert await read_all(engine, rec, start, end) == data[start:end], (start, end)


async def test_read_range_touches_only_needed_chunks(engine):
    data = os.urandom(4 * CHUNK)
    rec = await put(engine, "bkt", "k", data)
    plan = engine.plan_range(rec, CHUNK + 10, 2 * CHUNK + 10)
    assert [c for c, _, _ in plan] == [rec.chunks[1], rec.chunks[2]]
    assert [(lo, hi) for _, lo, hi in plan] == [(10, CHUNK), (0, 10)]


async def test_digests(engine):
    data = os.urandom(2 * CHUNK + 3)
    s = await engine.stage(chunks_of(data), ("sha256", "sha1", "crc32"))
    assert s.digests["md5"] == hashlib.md5(data).digest()
    assert s.digests["sha256"] == hashlib.sha256(data).digest()
    assert s.digests["sha1"] == hashlib.sha1(data).digest()
    assert s.digests["crc32"] == zlib.crc32(data).to_bytes(4, "big")
    await engine.discard(s)
    if "crc32c" in available():
        s = await engine.stage(chunks_of(b"123456789"), ("crc32c",))
        assert s.digests["crc32c"] == bytes.fromhex("e3069283")  # the CRC-32C check value
    with pytest.raises(UnsupportedDigest):
        await engine.stage(chunks_of(b"x"), ("whirlpool",))


async def test_compressible_stored_zstd_random_raw(engine):
    text = (b"the quick brown fox jumps over the lazy dog " * 5000)[: 2 * CHUNK]
    rec = await put(engine, "bkt", "text", text)
    assert {c.encoding for c in rec.chunks} == {ChunkEncoding.ZSTD}
    assert engine.chunk_path(rec.chunks[0]).name.endswith(".zst")
    rnd = await put(engine, "bkt", "rnd", os.urandom(CHUNK))
    assert rnd.chunks[0].encoding == ChunkEncoding.RAW
    raw_path = engine.chunk_path(rnd.chunks[0])
    assert raw_path.read_bytes() == await read_all(engine, rnd)  # sendfile-able as is
    assert await read_all(engine, rec) == text
    assert engine.stats()["stored_bytes"] < engine.stats()["logical_bytes"]


async def test_scan_order_utf8_bytes(engine):
    keys = ["a", "a/b", "a0", "b", "é", "z", "\U0001f600", "ﬀ", "A", "a b"]
    for k in keys:
        await put(engine, "bkt", k, b"x")
    expect = sorted(keys, key=lambda k: k.encode())
    assert [r.key for r in await engine.scan_objects("bkt")] == expect
    assert [r.key for r in await engine.scan_objects("bkt", prefix="a")] == \
        [k for k in expect if k.startswith("a")]
    assert [r.key for r in await engine.scan_objects("bkt", after="a0", limit=2)] == \
        [k for k in expect if k.encode() > b"a0"][:2]


async def test_long_keys(engine):
    base = "p" * 500
    keys = [base, base + "a", base + "b" * 300, "p" * 439, "p" * 440, "p" * 441, "q",
            "p" * 439 + "q", "\u00e9" * 512]
    for k in keys:
        await put(engine, "bkt", k, k.encode()[:50])
    expect = sorted(keys, key=lambda k: k.encode())
    assert [r.key for r in await engine.scan_objects("bkt")] == expect
    for k in keys:
        r = await engine.get_object("bkt", k)
        assert r is not None and r.key == k
        assert await read_all(engine, r) == k.encode()[:50]
    assert [r.key for r in await engine.scan_objects("bkt", prefix=base)] == \
        [k for k in expect if k.startswith(base)]
    assert [r.key for r in await engine.scan_objects("bkt", after=base + "a")] == \
        [k for k in expect if k.encode() > (base + "a").encode()]
    assert await engine.delete_object("bkt", base + "a")
    assert not await engine.delete_object("bkt", base + "a")
    assert await engine.get_object("bkt", base + "a") is None
    assert await engine.get_object("bkt", base) is not None
    for k in keys:
        await engine.delete_object("bkt", k)
    assert await engine.scan_objects("bkt") == []


async def test_if_none_match_and_missing_bucket(engine):
    await put(engine, "bkt", "k", b"1")
    with pytest.raises(PreconditionFailed):
        await put(engine, "bkt", "k", os.urandom(CHUNK * 2), if_none_match_any=True)
    assert await read_all(engine, await engine.get_object("bkt", "k")) == b"1"
    with pytest.raises(NoSuchBucket):
        await put(engine, "nob", "k", b"1")
    assert engine.stats()["pinned_chunks"] == 0  # failed commits released their bodies
    assert len(chunk_files(engine)) == 0


async def test_object_acl(engine):
    await put(engine, "bkt", "k", b"1")
    acl2 = Acl("owner1", "x", ())
    await engine.set_object_acl("bkt", "k", acl2)
    assert (await engine.get_object("bkt", "k")).acl == acl2
    with pytest.raises(NoSuchKey):
        await engine.set_object_acl("bkt", "nope", acl2)


async def test_commit_twice_and_discard_idempotent(engine):
    s = await engine.stage(chunks_of(os.urandom(CHUNK + 1)))
    await engine.commit_object(s, bucket="bkt", key="k", etag="e", owner_id="o", meta=META, acl=ACL)
    with pytest.raises(StorageError):
        await engine.commit_object(s, bucket="bkt", key="k2", etag="e", owner_id="o",
                                   meta=META, acl=ACL)
    await engine.discard(s)  # no-op after commit
    assert await read_all(engine, await engine.get_object("bkt", "k")) is not None
    s2 = await engine.stage(chunks_of(os.urandom(CHUNK + 1)))
    await engine.discard(s2)
    await engine.discard(s2)
    assert len(chunk_files(engine)) == 2  # only k's chunks remain


async def test_failing_body_releases_chunks(engine):
    async def broken():
        yield os.urandom(CHUNK * 2)
        raise ConnectionResetError("client went away")
    with pytest.raises(ConnectionResetError):
        await engine.stage(broken())
    assert chunk_files(engine) == []
    assert engine.stats()["pinned_chunks"] == 0
    assert list((engine.data_dir / "tmp").iterdir()) == []


# ---- dedup, overwrite, GC ----------------------------------------------------------
async def test_dedup_and_gc(engine, clock):
    data = os.urandom(2 * CHUNK)
    a = await put(engine, "bkt", "a", data)
    b = await put(engine, "bkt", "b", data)
    assert a.chunks == b.chunks
    assert len(chunk_files(engine)) == 2
    assert engine.stats()["dedup_hit_chunks"] == 2
    assert engine.stats()["dedup_hit_bytes"] == 2 * CHUNK
    assert engine.stats()["stored_bytes"] == 2 * CHUNK
    assert engine.stats()["logical_bytes"] == 4 * CHUNK
    assert await engine.chunk_refcount(a.chunks[0].sha256) == 2
    await engine.delete_object("bkt", "a")
    assert await engine.chunk_refcount(a.chunks[0].sha256) == 1
    assert await read_all(engine, await engine.get_object("bkt", "b")) == data
    await engine.delete_object("bkt", "b")
    assert await engine.chunk_refcount(a.chunks[0].sha256) == 0
    assert await engine.collect_garbage() == 0  # grace period not over
    assert await read_all(engine, b) == data  # an in-flight GET still works
    clock.advance(61)
    assert await engine.collect_garbage() == 2
    assert chunk_files(engine) == []
    assert await engine.chunk_refcount(a.chunks[0].sha256) is None
    st = engine.stats()
    assert (st["stored_bytes"], st["chunks"], st["objects"], st["logical_bytes"]) == (0, 0, 0, 0)
    with pytest.raises(CorruptChunk):
        await read_all(engine, b)


async def test_reuse_before_gc_revives_chunk(engine, clock):
    data = os.urandom(CHUNK)
    a = await put(engine, "bkt", "a", data)
    await engine.delete_object("bkt", "a")
    await put(engine, "bkt", "b", data)  # same chunk, refcount 0 -> 1
    clock.advance(61)
    assert await engine.collect_garbage() == 0
    assert await engine.chunk_refcount(a.chunks[0].sha256) == 1
    assert await read_all(engine, await engine.get_object("bkt", "b")) == data


async def test_pinned_dedup_hit_survives_gc(engine, clock):
    data = os.urandom(CHUNK)
    a = await put(engine, "bkt", "a", data)
    staged = await engine.stage(chunks_of(data))  # dedup hit, pinned
    await engine.delete_object("bkt", "a")  # refcount -> 0 while the upload is pending
    clock.advance(61)
    assert await engine.collect_garbage() == 0  # pinned: kept, requeued
    rec = await engine.commit_object(staged, bucket="bkt", key="b", etag="e", owner_id="o",
                                     meta=META, acl=ACL)
    clock.advance(1000)
    assert await engine.collect_garbage() == 0
    assert await read_all(engine, rec) == data
    assert rec.chunks == a.chunks


async def test_discarded_dedup_hit_is_collected_later(engine, clock):
    data = os.urandom(CHUNK)
    await put(engine, "bkt", "a", data)
    staged = await engine.stage(chunks_of(data))
    await engine.delete_object("bkt", "a")
    clock.advance(61)
    assert await engine.collect_garbage() == 0
    await engine.discard(staged)
    assert len(chunk_files(engine)) == 1  # has a row: left to GC
    clock.advance(61)
    assert await engine.collect_garbage() == 1
    assert chunk_files(engine) == []


async def test_overwrite_releases_old_chunks(engine, clock):
    old = await put(engine, "bkt", "k", os.urandom(2 * CHUNK))
    new = await put(engine, "bkt", "k", os.urandom(2 * CHUNK))
    assert all([await engine.chunk_refcount(c.sha256) == 0 for c in old.chunks])
    assert all([await engine.chunk_refcount(c.sha256) == 1 for c in new.chunks])
    clock.advance(61)
    assert await engine.collect_garbage() == 2
    assert len(chunk_files(engine)) == 2
    assert engine.stats()["objects"] == 1


async def test_repeated_chunk_in_one_object(engine, clock):
    block = os.urandom(CHUNK)
    rec = await put(engine, "bkt", "k", block * 3)
    assert len({c.sha256 for c in rec.chunks}) == 1
    assert await engine.chunk_refcount(rec.chunks[0].sha256) == 3
    assert await read_all(engine, rec) == block * 3
    await engine.delete_object("bkt", "k")
    clock.advance(61)
    assert await engine.collect_garbage() == 1


# ---- copy --------------------------------------------------------------------------
async def test_copy_shares_chunks(engine, clock):
    data = os.urandom(3 * CHUNK)
    src = await put(engine, "bkt", "src", data)
    meta2 = ObjectMeta(content_type="image/png")
    dst = await engine.copy_object(src, bucket="bkt", key="dst", owner_id="owner1",
                                   meta=meta2, acl=ACL, if_match_etag=src.etag)
    assert dst.chunks == src.chunks and dst.meta == meta2 and dst.etag == src.etag
    assert len(chunk_files(engine)) == 3
    assert await engine.chunk_refcount(src.chunks[0].sha256) == 2
    await engine.delete_object("bkt", "src")
    clock.advance(61)
    await engine.collect_garbage()
    assert await read_all(engine, await engine.get_object("bkt", "dst")) == data
    small = await put(engine, "bkt", "small", b"tiny")
    c = await engine.copy_object(small, bucket="bkt", key="small2", owner_id="o", meta=META, acl=ACL)
    assert await read_all(engine, c) == b"tiny"
    # copying onto itself (metadata replace) keeps refcounts balanced
    again = await engine.copy_object(dst, bucket="bkt", key="dst", owner_id="o", meta=META, acl=ACL)
    assert await engine.chunk_refcount(again.chunks[0].sha256) == 1


async def test_copy_preconditions(engine, clock):
    src = await put(engine, "bkt", "src", os.urandom(CHUNK))
    await put(engine, "bkt", "src", os.urandom(CHUNK))  # changed meanwhile
    with pytest.raises(PreconditionFailed):
        await engine.copy_object(src, bucket="bkt", key="d", owner_id="o", meta=META, acl=ACL,
                                 if_match_etag=src.etag)
    clock.advance(61)
    await engine.collect_garbage()  # src's old chunks are gone now
    with pytest.raises(PreconditionFailed):
        await engine.copy_object(src, bucket="bkt", key="d", owner_id="o", meta=META, acl=ACL)
    assert await engine.get_object("bkt", "d") is None
    with pytest.raises(NoSuchBucket):
        await engine.copy_object(src, bucket="nob", key="d", owner_id="o", meta=META, acl=ACL)


# ---- multipart ---------------------------------------------------------------------
async def _part(engine, upload_id, n, data):
    s = await engine.stage(chunks_of(data))
    return await engine.commit_part(s, upload_id, n, s.digests["md5"].hex())


async def test_multipart_complete(engine, clock):
    up = await engine.create_upload("bkt", "mp", "owner1", META, ACL, "CRC32")
    assert await engine.get_upload(up.upload_id) == up
    p1, p2, p3 = os.urandom(2 * CHUNK + 5), os.urandom(CHUNK), b"tail"
    await _part(engine, up.upload_id, 1, os.urandom(100))  # replaced below
    await _part(engine, up.upload_id, 1, p1)
    await _part(engine, up.upload_id, 2, p2)
    await _part(engine, up.upload_id, 3, p3)
    await _part(engine, up.upload_id, 4, os.urandom(CHUNK))  # not listed: released
    parts = await engine.list_parts(up.upload_id)
    assert [p.part_number for p in parts] == [1, 2, 3, 4]
    assert parts[0].etag == hashlib.md5(p1).hexdigest()
    assert [p.part_number for p in await engine.list_parts(up.upload_id, after=1, limit=2)] == [2, 3]
    rec = await engine.complete_upload(up.upload_id, [1, 2, 3], "abc-3", (("CRC32", "x"),))
    assert rec.part_sizes == (len(p1), len(p2), len(p3))
    assert rec.size == len(p1 + p2 + p3) and rec.etag == "abc-3"
    assert rec.meta == META and rec.checksums == (("CRC32", "x"),)
    assert await read_all(engine, await engine.get_object("bkt", "mp")) == p1 + p2 + p3
    assert await read_all(engine, rec, len(p1) - 2, len(p1) + 2) == (p1 + p2)[len(p1) - 2:len(p1) + 2]
    assert await engine.get_upload(up.upload_id) is None
    with pytest.raises(NoSuchUpload):
        await engine.list_parts(up.upload_id)
    with pytest.raises(NoSuchUpload):
        await engine.complete_upload(up.upload_id, [1], "x")
    assert all([await engine.chunk_refcount(c.sha256) == 1 for c in rec.chunks])
    clock.advance(61)
    assert await engine.collect_garbage() == 2  # the replaced part 1 (inline->chunk) + part 4
    await engine.delete_bucket("bkt") if False else None
    assert engine.stats()["objects"] == 1


async def test_complete_invalid_part(engine):
    up = await engine.create_upload("bkt", "mp", "owner1", META, ACL)
    await _part(engine, up.upload_id, 1, b"a")
    with pytest.raises(InvalidPart):
        await engine.complete_upload(up.upload_id, [1, 2], "x")
    assert await engine.get_upload(up.upload_id) is not None  # nothing changed


async def test_multipart_abort_and_expire(engine, clock):
    up = await engine.create_upload("bkt", "a", "owner1", META, ACL)
    await _part(engine, up.upload_id, 1, os.urandom(CHUNK))
    await engine.abort_upload(up.upload_id)
    with pytest.raises(NoSuchUpload):
        await engine.abort_upload(up.upload_id)
    with pytest.raises(NoSuchUpload):
        await _part(engine, up.upload_id, 1, b"x")
    old = await engine.create_upload("bkt", "b", "owner1", META, ACL)
    await _part(engine, old.upload_id, 1, os.urandom(CHUNK))
    clock.advance(100)
    new = await engine.create_upload("bkt", "c", "owner1", META, ACL)
    assert await engine.expire_uploads(clock.now() - 50) == 1
    assert await engine.get_upload(old.upload_id) is None
    assert await engine.get_upload(new.upload_id) is not None
    clock.advance(61)
    assert await engine.collect_garbage() == 2
    assert chunk_files(engine) == []


async def test_scan_uploads_order(engine, clock):
    ups = []
    for key in ["b", "a", "b", "c/d", "a"]:
        ups.append(await engine.create_upload("bkt", key, "owner1", META, ACL))
        clock.advance(1)
    got = await engine.scan_uploads("bkt")
    assert [(u.key, u.initiated) for u in got] == sorted((u.key, u.initiated) for u in ups)
    assert [u.key for u in await engine.scan_uploads("bkt", prefix="c")] == ["c/d"]
    assert [u.key for u in await engine.scan_uploads("bkt", after_key="a")] == ["b", "b", "c/d"]
    after = await engine.scan_uploads("bkt", after_key=got[2].key, after_upload_id=got[2].upload_id)
    assert after == got[3:]
    assert len(await engine.scan_uploads("bkt", limit=2)) == 2


async def test_copy_part(engine, clock):
    data = os.urandom(4 * CHUNK)
    src = await put(engine, "bkt", "src", data)
    up = await engine.create_upload("bkt", "dst", "owner1", META, ACL)
    start, end = CHUNK // 2, 3 * CHUNK + 10
    part = await engine.copy_part(src, start, end, up.upload_id, 1)
    assert part.size == end - start and part.etag == hashlib.md5(data[start:end]).hexdigest()
    assert part.chunks[1:3] == src.chunks[1:3]  # whole chunks shared
    assert len(part.chunks) == 4
    whole = await engine.copy_part(src, 0, len(data), up.upload_id, 2)
    assert whole.chunks == src.chunks
    small = await put(engine, "bkt", "small", b"0123456789")
    p3 = await engine.copy_part(small, 2, 5, up.upload_id, 3)
    rec = await engine.complete_upload(up.upload_id, [1, 2, 3], "x-3")
    assert await read_all(engine, rec) == data[start:end] + data + b"234"
    await engine.delete_object("bkt", "src")
    clock.advance(61)
    await engine.collect_garbage()
    assert await read_all(engine, rec) == data[start:end] + data + b"234"
    assert p3.size == 3


# ---- concurrency -------------------------------------------------------------------
async def test_concurrent_commits_one_failing(engine):
    await engine.create_bucket("other", "owner1", ACL, "")
    await put(engine, "other", "x", b"1")
    datas = {f"k{i}": os.urandom(100 + i * 50) for i in range(64)}
    staged = {k: await engine.stage(chunks_of(v)) for k, v in datas.items()}
    batches0 = engine.stats()["commit_batches"]

    async def commit(k):
        s = staged[k]
        return await engine.commit_object(s, bucket="bkt", key=k, etag=s.digests["md5"].hex(),
                                          owner_id="o", meta=META, acl=ACL)
    results = await asyncio.gather(*[commit(k) for k in datas], engine.delete_bucket("other"),
                                   engine.delete_bucket("nob"), return_exceptions=True)
    assert isinstance(results[-2], BucketNotEmpty)
    assert isinstance(results[-1], NoSuchBucket)
    assert all(r.key == k for r, k in zip(results, datas))
    assert engine.stats()["commit_batches"] - batches0 < 66  # grouped
    for k, v in datas.items():
        assert await read_all(engine, await engine.get_object("bkt", k)) == v


async def test_cancelled_commit_is_all_or_nothing(engine, clock):
    data = os.urandom(2 * CHUNK)
    s = await engine.stage(chunks_of(data))
    task = asyncio.create_task(engine.commit_object(s, bucket="bkt", key="k", etag="e",
                                                    owner_id="o", meta=META, acl=ACL))
    await asyncio.sleep(0)
    task.cancel()
    await engine.discard(s)  # what a handler's cleanup does; must not race the commit
    await asyncio.sleep(0.2)
    await engine.create_bucket("sync", "owner1", ACL, "")  # a later batch: commit is done
    clock.advance(1000)
    await engine.collect_garbage()
    rec = await engine.get_object("bkt", "k")
    if rec is not None:
        assert await read_all(engine, rec) == data
    else:
        assert chunk_files(engine) == []
    assert engine.stats()["pinned_chunks"] == 0


async def test_concurrent_large_stages(engine):
    datas = [os.urandom(5 * CHUNK + i) for i in range(6)]
    recs = await asyncio.gather(*[put(engine, "bkt", f"k{i}", d) for i, d in enumerate(datas)])
    for r, d in zip(recs, datas):
        assert await read_all(engine, r) == d


# ---- corruption ----------------------------------------------------------------------
async def test_corrupted_chunk(engine):
    data = os.urandom(3 * CHUNK)
    rec = await put(engine, "bkt", "k", data)
    path = engine.chunk_path(rec.chunks[1])
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert await read_all(engine, rec, 0, CHUNK) == data[:CHUNK]  # untouched chunk fine
    with pytest.raises(CorruptChunk):
        await read_all(engine, rec)
    path.unlink()
    with pytest.raises(CorruptChunk):
        await read_all(engine, rec, CHUNK, CHUNK + 1)


async def test_chunk_corrupted_after_a_good_read_is_caught_within_ttl(engine, clock):
    data = os.urandom(2 * CHUNK)
    rec = await put(engine, "bkt", "k", data)
    assert await read_all(engine, rec) == data  # hashed once: trusted for verify_ttl
    path = engine.chunk_path(rec.chunks[0])
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x01
    path.write_bytes(bytes(raw))
    clock.advance(engine.verify_ttl + 1)
    with pytest.raises(CorruptChunk):
        await read_all(engine, rec)


async def test_corrupted_zstd_chunk(engine):
    rec = await put(engine, "bkt", "k", b"abc" * CHUNK)
    path = engine.chunk_path(rec.chunks[0])
    path.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(CorruptChunk):
        await read_all(engine, rec)


# ---- persistence and recovery --------------------------------------------------------
async def test_reopen_keeps_everything(tmp_path, clock):
    d = tmp_path / "s"
    e = await Engine.open(d, clock=clock, chunk_size=CHUNK, inline_limit=INLINE, gc_interval=None)
    await e.create_bucket("bkt", "owner1", ACL, "")
    data = os.urandom(2 * CHUNK)
    await put(e, "bkt", "k", data)
    await put(e, "bkt", "s", b"small")
    stats = e.stats()
    await e.close()
    e = await Engine.open(d, clock=clock, chunk_size=CHUNK, inline_limit=INLINE, gc_interval=None)
    assert await read_all(e, await e.get_object("bkt", "k")) == data
    assert await read_all(e, await e.get_object("bkt", "s")) == b"small"
    assert {k: e.stats()[k] for k in ("stored_bytes", "logical_bytes", "objects", "chunks")} == \
        {k: stats[k] for k in ("stored_bytes", "logical_bytes", "objects", "chunks")}
    await e.close()


async def test_recovery_removes_tmp_and_orphans(tmp_path, clock):
    d = tmp_path / "s"
    e = await Engine.open(d, clock=clock, chunk_size=CHUNK, inline_limit=INLINE, gc_interval=None)
    await e.create_bucket("bkt", "owner1", ACL, "")
    kept = await put(e, "bkt", "k", os.urandom(CHUNK))
    orphan = await e.stage(chunks_of(os.urandom(2 * CHUNK)))  # never committed
    await e.close()
    (d / "tmp" / "leftover").write_bytes(b"x")
    e = await Engine.open(d, clock=clock, chunk_size=CHUNK, inline_limit=INLINE, gc_interval=None)
    assert e.recovery["tmp_files"] == 1 and e.recovery["orphan_chunks"] == 2
    assert chunk_files(e) == [e.chunk_path(kept.chunks[0])]
    assert orphan.chunks[0] not in kept.chunks
    await e.close()
