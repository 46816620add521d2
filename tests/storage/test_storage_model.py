"""Hypothesis state machine: the engine against a dict, for put/get/delete/copy/list,
with GC passes and clock jumps interleaved (chunks must never vanish under a live key)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from storagehelpers import ACL, META, FakeClock, chunks_of, read_all

from walrus.storage.engine import Engine

KEYS = st.sampled_from(["a", "a/b", "b", "é", "z" * 450, "z" * 450 + "1", "\U0001f600"])
# a small alphabet of blocks so bodies share chunks (dedup) across keys
BLOCK = st.sampled_from([b"\x00" * 256, bytes(range(256)), b"xyz" * 85 + b"!", b"\xff" * 256])
BODIES = st.one_of(st.binary(max_size=300), st.lists(BLOCK, max_size=9).map(b"".join))


class EngineVsDict(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.engine = self.run(Engine.open(Path(self.tmp.name), clock=self.clock,
                                           chunk_size=512, inline_limit=64, gc_grace=10,
                                           gc_interval=None))
        self.run(self.engine.create_bucket("bkt", "owner1", ACL, ""))
        self.model: dict[str, bytes] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self):
        self.run(self.engine.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(key=KEYS, body=BODIES)
    def put(self, key, body):
        async def go():
            s = await self.engine.stage(chunks_of(body, 100))
            await self.engine.commit_object(s, bucket="bkt", key=key, etag="e",
                                            owner_id="o", meta=META, acl=ACL)
        self.run(go())
        self.model[key] = body

    @rule(key=KEYS)
    def delete(self, key):
        assert self.run(self.engine.delete_object("bkt", key)) == (key in self.model)
        self.model.pop(key, None)

    @rule(src=KEYS, dst=KEYS)
    def copy(self, src, dst):
        rec = self.run(self.engine.get_object("bkt", src))
        assert (rec is None) == (src not in self.model)
        if rec is not None:
            self.run(self.engine.copy_object(rec, bucket="bkt", key=dst, owner_id="o",
                                             meta=META, acl=ACL))
            self.model[dst] = self.model[src]

    @rule(key=KEYS, start=st.integers(0, 3000), length=st.integers(0, 3000))
    def get_range(self, key, start, length):
        rec = self.run(self.engine.get_object("bkt", key))
        assert (rec is None) == (key not in self.model)
        if rec is not None:
            got = self.run(read_all(self.engine, rec, start, start + length))
            assert got == self.model[key][start:start + length]

    @rule(seconds=st.sampled_from([0, 5, 11]))
    def gc(self, seconds):
        self.clock.advance(seconds)
        self.run(self.engine.collect_garbage())

    @rule(prefix=st.sampled_from(["", "a", "z", "é"]), after=st.sampled_from(["", "a", "b", "z" * 450]))
    def scan(self, prefix, after):
        got = [r.key for r in self.run(self.engine.scan_objects("bkt", prefix=prefix, after=after))]
        want = sorted((k for k in self.model if k.startswith(prefix) and k.encode() > after.encode()),
                      key=lambda k: k.encode())
        assert got == want

    @invariant()
    def contents_and_stats(self):
        for key, body in self.model.items():
            rec = self.run(self.engine.get_object("bkt", key))
            assert self.run(read_all(self.engine, rec)) == body
        stats = self.engine.stats()
        assert stats["objects"] == len(self.model)
        assert stats["logical_bytes"] == sum(map(len, self.model.values()))
        assert stats["pinned_chunks"] == 0


TestEngineVsDict = EngineVsDict.TestCase
TestEngineVsDict.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
