"""Helpers shared by the storage tests."""

from __future__ import annotations

from walrus.storage.records import Acl, Grant, ObjectMeta

ACL = Acl("owner1", "Owner One", (Grant("CanonicalUser", "owner1", "FULL_CONTROL", "Owner One"),))
META = ObjectMeta(content_type="text/plain", user=(("color", "blue"),),
                  headers=(("Cache-Control", "no-cache"),))
CHUNK = 64 << 10  # small chunks keep the tests quick; edge cases scale with it
INLINE = 4 << 10


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


async def chunks_of(data: bytes, piece: int = 10_000):
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


async def read_all(engine, record, start=0, end=None):
    end = record.size if end is None else end
    return b"".join([b async for b in engine.read_range(record, start, end)])


async def put(engine, bucket, key, data, **kw):
    staged = await engine.stage(chunks_of(data), ("md5", "sha256"))
    return await engine.commit_object(staged, bucket=bucket, key=key,
                                      etag=staged.digests["md5"].hex(), owner_id="owner1",
                                      meta=META, acl=ACL, **kw)


