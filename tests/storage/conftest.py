"""Fixtures for the storage engine tests: real LMDB and real files under tmp_path."""

from __future__ import annotations

import pytest
from storagehelpers import ACL, CHUNK, INLINE, FakeClock

from walrus.storage.engine import Engine


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
async def engine(tmp_path, clock):
    e = await Engine.open(tmp_path / "store", clock=clock, chunk_size=CHUNK,
                          inline_limit=INLINE, gc_grace=60.0, gc_interval=None)
    await e.create_bucket("bkt", "owner1", ACL, "")
    yield e
    await e.close()
