"""Conformance tests every kv backend must pass (LMDB and memory)."""

from __future__ import annotations

import pytest

from walrus.storage.kv import LmdbKV, MemoryKV, UnknownTree

TREES = ("a", "b")


class KVConformance:
    @pytest.fixture
    def kv(self, tmp_path):
        raise NotImplementedError

    def test_get_missing_is_none(self, kv):
        with kv.read() as txn:
            assert txn.get("a", b"nope") is None

    def test_put_get_delete(self, kv):
        with kv.write() as txn:
            txn.put("a", b"k", b"v")
            assert txn.get("a", b"k") == b"v"  # own writes visible
        with kv.read() as txn:
            assert txn.get("a", b"k") == b"v"
            assert txn.get("b", b"k") is None  # trees are separate
        with kv.write() as txn:
            assert txn.delete("a", b"k") is True
            assert txn.delete("a", b"k") is False
        with kv.read() as txn:
            assert txn.get("a", b"k") is None

    def test_overwrite(self, kv):
        with kv.write() as txn:
            txn.put("a", b"k", b"1")
            txn.put("a", b"k", b"2")
        with kv.read() as txn:
            assert txn.get("a", b"k") == b"2"

    def test_abort_on_exception(self, kv):
        with pytest.raises(RuntimeError):
            with kv.write() as txn:
                txn.put("a", b"k", b"v")
                raise RuntimeError("boom")
        with kv.read() as txn:
            assert txn.get("a", b"k") is None

    def test_snapshot_isolation(self, kv):
        with kv.write() as txn:
            txn.put("a", b"k", b"old")
        with kv.read() as snap:
            with kv.write() as txn:
                txn.put("a", b"k", b"new")
            assert snap.get("a", b"k") == b"old"
        with kv.read() as txn:
            assert txn.get("a", b"k") == b"new"

    def test_scan_order_and_bounds(self, kv):
        keys = [b"\x00", b"a", b"ab", b"abc", b"b", b"\xc3\xa9", b"\xff\xff"]
        with kv.write() as txn:
            for k in reversed(keys):
                txn.put("a", k, k.upper())
        with kv.read() as txn:
            assert [k for k, _ in txn.scan("a")] == keys
            assert [k for k, _ in txn.scan("a", prefix=b"a")] == [b"a", b"ab", b"abc"]
            assert [k for k, _ in txn.scan("a", start=b"ab")] == keys[2:]
            assert [k for k, _ in txn.scan("a", start=b"a", end=b"b")] == [b"a", b"ab", b"abc"]
            assert [k for k, _ in txn.scan("a", prefix=b"ab", start=b"abb")] == [b"abc"]
            assert [k for k, _ in txn.scan("a", prefix=b"zz")] == []
            assert [k for k, _ in txn.scan("a", start=b"\xff\xff\xff")] == []
            assert txn.first("a", prefix=b"b") == (b"b", b"B")
            assert txn.first("b") is None
            assert dict(txn.scan("a"))[b"ab"] == b"AB"

    def test_nested_commit_and_rollback(self, kv):
        with kv.write() as txn:
            txn.put("a", b"base", b"1")
            with txn.nested() as sub:
                sub.put("a", b"kept", b"1")
                assert sub.get("a", b"base") == b"1"
            with pytest.raises(ValueError):
                with txn.nested() as sub:
                    sub.put("a", b"dropped", b"1")
                    sub.delete("a", b"base")
                    raise ValueError
            assert txn.get("a", b"kept") == b"1"
            assert txn.get("a", b"dropped") is None
            assert txn.get("a", b"base") == b"1"
            with txn.nested() as sub:
                sub.delete("a", b"kept")
        with kv.read() as txn:
            assert dict(txn.scan("a")) == {b"base": b"1"}

    def test_write_while_scanning(self, kv):
        with kv.write() as txn:
            for i in range(10):
                txn.put("a", b"k%d" % i, b"v")
            for k, _ in list(txn.scan("a")):
                txn.delete("a", k)
            assert txn.first("a") is None

    def test_unknown_tree(self, kv):
        with kv.read() as txn:
            with pytest.raises(UnknownTree):
                txn.get("zzz", b"k")


class TestLmdbKV(KVConformance):
    @pytest.fixture
    def kv(self, tmp_path):
        kv = LmdbKV(tmp_path / "db", TREES)
        yield kv
        kv.close()

    def test_durable_across_reopen(self, tmp_path):
        kv = LmdbKV(tmp_path / "db", TREES)
        with kv.write() as txn:
            txn.put("b", b"x", b"y")
        kv.close()
        kv = LmdbKV(tmp_path / "db", TREES)
        with kv.read() as txn:
            assert txn.get("b", b"x") == b"y"
        kv.close()


class TestMemoryKV(KVConformance):
    @pytest.fixture
    def kv(self):
        return MemoryKV(TREES)
