"""A small ordered key-value interface of our own, with an LMDB and an in-memory backend.

Storage, control and node all keep their state in one of these; none of them talks to
LMDB directly, so a backend can be swapped (or wrapped, e.g. to count or inject faults)
without touching the logic above it.

Model: a store holds a fixed set of named *trees* (declared when it is opened); each tree
maps bytes keys to bytes values, ordered by unsigned byte order. All access goes through
transactions:

* ``store.read()`` -> context manager yielding a `ReadTxn`: a consistent snapshot. A read
  transaction must be used only by the thread that opened it, and only inside the
  ``with`` block (scan iterators included).
* ``store.write()`` -> context manager yielding a `WriteTxn`. It commits when the block
  exits normally (durably, if the store was opened with ``sync=True``) and aborts when the
  block raises. Only one write transaction is open at a time (others wait).
* ``txn.nested()`` -> a child `WriteTxn` of a write transaction: its changes become part
  of the parent when its block exits normally and vanish when it raises; the parent stays
  usable either way. This is what lets a group commit apply many independent mutations
  in one transaction while a failing one leaves no trace.

``get`` returns None for a missing key (never raises for that); ``delete`` returns whether
the key existed; ``put`` overwrites. Keys are non-empty bytes; LMDB limits them to
`max_key_size` (511) bytes.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

__all__ = ["KV", "ReadTxn", "WriteTxn", "LmdbKV", "MemoryKV", "UnknownTree"]


class UnknownTree(KeyError):
    """A transaction named a tree the store was not opened with."""


class ReadTxn(abc.ABC):
    @abc.abstractmethod
    def get(self, tree: str, key: bytes) -> bytes | None:
        """The value of key, or None if absent."""

    @abc.abstractmethod
    def scan(self, tree: str, *, start: bytes | None = None, end: bytes | None = None,
             prefix: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in ascending key order with start <= key < end and key
        starting with prefix (each bound optional). Valid only inside the transaction."""

    def first(self, tree: str, *, start: bytes | None = None, end: bytes | None = None,
              prefix: bytes | None = None) -> tuple[bytes, bytes] | None:
        """The first pair `scan` would yield, or None."""
        for item in self.scan(tree, start=start, end=end, prefix=prefix):
            return item
        return None


class WriteTxn(ReadTxn):
    @abc.abstractmethod
    def put(self, tree: str, key: bytes, value: bytes) -> None:
        """Set key to value (overwriting)."""

    @abc.abstractmethod
    def delete(self, tree: str, key: bytes) -> bool:
        """Remove key; True if it existed."""

    @abc.abstractmethod
    def nested(self) -> contextlib.AbstractContextManager[WriteTxn]:
        """A child transaction: merged into this one on normal exit, dropped on error."""


class KV(abc.ABC):
    max_key_size: int = 511

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractContextManager[ReadTxn]:
        ...

    @abc.abstractmethod
    def write(self) -> contextlib.AbstractContextManager[WriteTxn]:
        ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; transactions must not be open."""


# ---- LMDB ---------------------------------------------------------------------------


def _lmdb_scan(cur: lmdb.Cursor, start: bytes | None, end: bytes | None,
               prefix: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    lo = start
    if prefix is not None and (lo is None or lo < prefix):
        lo = prefix
    ok = cur.set_range(lo) if lo else cur.first()
    if not ok:
        return
    for key, value in cur:
        if end is not None and key >= end:
            return
        if prefix is not None and not key.startswith(prefix):
            return
        yield key, value


class _LmdbRead(ReadTxn):
    __slots__ = ("_txn", "_dbs")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, object]):
        self._txn = txn
        self._dbs = dbs

    def _db(self, tree: str):
        try:
            return self._dbs[tree]
        except KeyError:
            raise UnknownTree(tree) from None

    def get(self, tree, key):
        return self._txn.get(key, db=self._db(tree))

    def scan(self, tree, *, start=None, end=None, prefix=None):
        cur = self._txn.cursor(db=self._db(tree))
        return _lmdb_scan(cur, start, end, prefix)


class _LmdbWrite(_LmdbRead, WriteTxn):
    __slots__ = ("_env",)

    def __init__(self, env, txn, dbs):
        super().__init__(txn, dbs)
        self._env = env

    def put(self, tree, key, value):
        self._txn.put(key, value, db=self._db(tree))

    def delete(self, tree, key):
        return self._txn.delete(key, db=self._db(tree))

    @contextlib.contextmanager
    def nested(self):
        child = self._env.begin(write=True, parent=self._txn)
        try:
            yield _LmdbWrite(self._env, child, self._dbs)
        except BaseException:
            child.abort()
            raise
        else:
            child.commit()


class LmdbKV(KV):
    """LMDB backend. The map is sparse, so a huge map_size costs nothing until used."""

    def __init__(self, path: Path | str, trees: Iterable[str], *, map_size: int = 1 << 40,
                 sync: bool = True, max_readers: int = 256):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        trees = list(trees)
        # max_spare_txns=0: every read transaction gives its reader slot back when it ends.
        # With py-lmdb 2.3's spare-transaction cache, a burst of reads (control answering
        # 10,000 launch failures at once) left every slot held by a reset transaction and
        # further reads failed with MDB_READERS_FULL; not caching costs ~0.07 us a read.
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=len(trees) + 1,
                              sync=sync, metasync=sync, readahead=False,
                              max_readers=max_readers, max_spare_txns=0, writemap=False)
        self.max_key_size = self._env.max_key_size()
        self._dbs = {}
        with self._env.begin(write=True) as txn:
            for name in trees:
                self._dbs[name] = self._env.open_db(name.encode(), txn=txn, create=True)

    @contextlib.contextmanager
    def read(self):
        txn = self._env.begin(write=False, buffers=False)
        try:
            yield _LmdbRead(txn, self._dbs)
        finally:
            txn.abort()

    @contextlib.contextmanager
    def write(self):
        txn = self._env.begin(write=True)
        try:
            yield _LmdbWrite(self._env, txn, self._dbs)
        except BaseException:
            txn.abort()
            raise
        else:
            txn.commit()

    def close(self):
        self._env.close()


# ---- memory -------------------------------------------------------------------------


class _SortedDict:
    """A dict with a sorted key list, copied on write by transactions."""

    __slots__ = ("data", "keys")

    def __init__(self, data=None, keys=None):
        self.data: dict[bytes, bytes] = data if data is not None else {}
        self.keys: list[bytes] = keys if keys is not None else []

    def copy(self) -> _SortedDict:
        return _SortedDict(dict(self.data), list(self.keys))


class _MemRead(ReadTxn):
    def __init__(self, trees: dict[str, _SortedDict]):
        self._trees = trees

    def _t(self, tree):
        try:
            return self._trees[tree]
        except KeyError:
            raise UnknownTree(tree) from None

    def get(self, tree, key):
        return self._t(tree).data.get(key)

    def scan(self, tree, *, start=None, end=None, prefix=None):
        t = self._t(tree)
        lo = start
        if prefix is not None and (lo is None or lo < prefix):
            lo = prefix
        i = bisect.bisect_left(t.keys, lo) if lo else 0
        keys = t.keys[i:]  # snapshot: the txn may write while the caller iterates
        for key in keys:
            if end is not None and key >= end:
                return
            if prefix is not None and not key.startswith(prefix):
                return
            if key in t.data:
                yield key, t.data[key]


class _MemWrite(_MemRead, WriteTxn):
    def __init__(self, trees):
        super().__init__(trees)
        self._copied: set[str] = set()

    def _w(self, tree):
        t = self._t(tree)
        if tree not in self._copied:
            t = self._trees[tree] = t.copy()
            self._copied.add(tree)
        return t

    def put(self, tree, key, value):
        if not key:
            raise ValueError("empty key")
        t = self._w(tree)
        if key not in t.data:
            bisect.insort(t.keys, key)
        t.data[key] = bytes(value)

    def delete(self, tree, key):
        t = self._w(tree)
        if key not in t.data:
            return False
        del t.data[key]
        del t.keys[bisect.bisect_left(t.keys, key)]
        return True

    @contextlib.contextmanager
    def nested(self):
        child = _MemWrite(dict(self._trees))
        yield child
        self._trees.update(child._trees)
        self._copied |= child._copied


class MemoryKV(KV):
    """In-memory backend (tests, throwaway state). Not durable, same semantics."""

    def __init__(self, trees: Iterable[str]):
        self._trees = {name: _SortedDict() for name in trees}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def read(self):
        yield _MemRead(dict(self._trees))

    @contextlib.contextmanager
    def write(self):
        with self._lock:
            txn = _MemWrite(dict(self._trees))
            yield txn
            self._trees = txn._trees

    def close(self):
        pass
