"""Crash recovery: a child process stages and commits objects and is SIGKILLed mid-way;
after reopening, every acknowledged object reads back byte for byte, nothing is half
there, and no temp file or unreferenced chunk file is left."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from storagehelpers import read_all

from walrus.storage.engine import Engine

CHUNK = 64 << 10
CHILD = textwrap.dedent("""
    import asyncio, random, sys
    from walrus.storage.engine import Engine
    from walrus.storage.records import Acl, ObjectMeta

    ACL = Acl("o", "o", ())

    def body_of(i):
        rnd = random.Random(i)
        size = rnd.choice([0, 10, 5000, 65535, 65536, 65537, 200000, 300001])
        if i % 3 == 0:  # compressible
            return (b"%d " % i * (size // 2 + 1))[:size]
        return rnd.randbytes(size)

    async def pieces(data):
        for o in range(0, len(data), 16384):
            yield data[o:o + 16384]

    async def main(d, start):
        e = await Engine.open(d, chunk_size=65536, inline_limit=4096, gc_interval=None)
        try:
            await e.create_bucket("b", "o", ACL, "")
        except Exception:
            pass
        i = start

        async def one(i):
            data = body_of(i)
            s = await e.stage(pieces(data))
            # keys repeat (i % 40): overwrites release chunks
            await e.commit_object(s, bucket="b", key="k%d" % (i % 40), etag="%d" % i,
                                  owner_id="o", meta=ObjectMeta(), acl=ACL)
            print("ok", i, flush=True)
        while True:
            await asyncio.gather(*[one(i + j) for j in range(4)])
            i += 4

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def _body_of(i):
    ns = {}
    exec(CHILD.split("async def pieces")[0], ns)  # noqa: S102 - our own source, same function
    return ns["body_of"](i)


def _run_child(d, start, acks_before_kill, rng):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line.split()[1]))
            if len(acked) >= acks_before_kill:
                break
        else:
            pytest.fail("child died: " + proc.stderr.read())
        # kill at an arbitrary instant shortly after, while commits are in flight
        for _ in range(rng.randrange(0, 8)):
            line = proc.stdout.readline()
            if line:
                acked.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # lines already written before the kill count too
            acked.append(int(line.split()[1]))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return acked


async def test_sigkill_mid_write_recovers(tmp_path):
    d = tmp_path / "store"
    rng = random.Random(7)
    latest: dict[str, int] = {}
    start = 0
    for round_ in range(3):
        acked = _run_child(d, start, 20 + 10 * round_, rng)
        assert acked
        for i in sorted(acked):
            latest["k%d" % (i % 40)] = max(latest.get("k%d" % (i % 40), -1), i)
        start = max(acked) + 100  # never reuse a body number

        e = await Engine.open(d, chunk_size=CHUNK, inline_limit=4096, gc_interval=None)
        try:
            assert list((d / "tmp").iterdir()) == []
            recs = {r.key: r for r in await e.scan_objects("b", limit=10_000)}
            for key, i in latest.items():
                rec = recs[key]
                # acknowledged, or a newer commit that landed before its ack was printed
                assert int(rec.etag) >= i
                assert await read_all(e, rec) == _body_of(int(rec.etag)), key
            for key, rec in recs.items():  # nothing half there, nothing invented
                assert await read_all(e, rec) == _body_of(int(rec.etag))
                latest[key] = int(rec.etag)
            referenced = collections.Counter(c.sha256 for r in recs.values() for c in r.chunks)
            files = {sha for sha, _enc, _p in e._store.iter_files()}
            assert set(referenced) <= files
            for sha in files:  # every file left is referenced or waiting for GC
                assert await e.chunk_refcount(sha) == referenced.get(sha, 0)
            for sha, n in referenced.items():
                assert await e.chunk_refcount(sha) == n
        finally:
            await e.close()
