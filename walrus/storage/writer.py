"""Group commit: every write transaction of the engine goes through one writer thread.

Callers submit *mutations* -- plain functions ``fn(batch) -> result`` that read and write
through ``batch.txn`` and have no other side effects (they may be run twice) -- and await
a future. The writer takes everything queued and applies the mutations in one
transaction; if one raises (e.g. BucketNotEmpty), that attempt is rolled back and the
batch re-run with each mutation in its own nested transaction, so the failing one is
rolled back alone and its caller gets the exception while the others are unaffected.
Then ONE LMDB commit with ONE fsync, and the futures are resolved (one wake-up per loop). Under load
the batch grows by itself: while one commit is syncing, the next batch queues up.

A mutation may register ``batch.after(fn)`` callbacks (run after the durable commit, in
the writer thread, only if the mutation succeeded) and ``batch.add(counter, n)`` deltas to
the persistent counters (written once per batch). *Exclusive* jobs ``fn(kv)`` run alone,
between batches, with their own transactions (used by garbage collection).
"""

from __future__ import annotations

import asyncio
import queue
import struct
import threading
from collections.abc import Callable

from .kv import KV, WriteTxn

STATS_TREE = "stats"
_I64 = struct.Struct("<q")
MAX_BATCH = 512


class Batch:
    __slots__ = ("txn", "_after", "_deltas")

    def __init__(self, txn: WriteTxn):
        self.txn = txn
        self._after: list[Callable[[], None]] = []
        self._deltas: dict[str, int] = {}

    def after(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def add(self, counter: str, n: int) -> None:
        if n:
            self._deltas[counter] = self._deltas.get(counter, 0) + n

    @classmethod
    def child(cls, parent: "Batch", txn: WriteTxn) -> "Batch":
        """A view of parent over a nested txn, sharing its hooks and deltas (use only for
        a nested mutation that raises before changing anything, or not at all)."""
        b = cls(txn)
        b._after = parent._after
        b._deltas = parent._deltas
        return b


def write_counters(txn: WriteTxn, deltas: dict[str, int]) -> dict[str, int]:
    """Apply deltas to the persistent counters in txn; returns their new values."""
    new = {}
    for k, n in deltas.items():
        key = k.encode()
        old = txn.get(STATS_TREE, key)
        new[k] = (_I64.unpack(old)[0] if old else 0) + n
        txn.put(STATS_TREE, key, _I64.pack(new[k]))
    return new


def read_counters(kv: KV) -> dict[str, int]:
    with kv.read() as txn:
        return {k.decode(): _I64.unpack(v)[0] for k, v in txn.scan(STATS_TREE)}


def _resolve(fut: asyncio.Future, ok: bool, value) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Writer:
    def __init__(self, kv: KV, counters: dict[str, int]):
        self._kv = kv
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.counters = counters  # mirror of the persistent counters, updated after commit
        self.batches = 0
        self.mutations = 0
        self._thread = threading.Thread(target=self._run, name="walrus-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Batch], object]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((False, fn, loop, fut))
        return fut

    def submit_exclusive(self, fn: Callable[[KV], object]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((True, fn, loop, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        q = self._q
        pending = None
        while True:
            item = pending if pending is not None else q.get()
            pending = None
            if item is None:
                return
            if item[0]:
                self._exclusive(item)
                continue
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt[0]:
                    pending = nxt
                    break
                batch.append(nxt)
            self._apply(batch)
            if pending is None and not q.empty():
                continue

    def _exclusive(self, item) -> None:
        _, fn, loop, fut = item
        try:
            res = (True, fn(self._kv))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            res = (False, e)
        loop.call_soon_threadsafe(_resolve, fut, *res)

    def _apply(self, items) -> None:
        # Optimistic first: every mutation straight in the batch transaction (no nested
        # transaction each: those copy pages and showed up in profiles). Mutations rarely
        # fail; when one does, the whole attempt is rolled back and the batch re-run with
        # a nested transaction per mutation, so only the failing one loses its change.
        try:
            try:
                results, afters, new = self._attempt(items, isolate=False)
            except _MutationFailed:
                results, afters, new = self._attempt(items, isolate=True)
        except BaseException as e:  # the commit itself failed: nobody's change happened
            self._resolve_all([(fut, loop, False, e) for _, _, loop, fut in items])
            return
        self.counters.update(new)
        self.batches += 1
        self.mutations += len(items)
        for fn in afters:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a hook must not strand the callers
                pass
        self._resolve_all([(fut, loop, ok, value)
                           for (_, _, loop, fut), (ok, value) in zip(items, results)])

    def _attempt(self, items, *, isolate: bool):
        results = []
        afters: list[Callable[[], None]] = []
        deltas: dict[str, int] = {}
        with self._kv.write() as txn:
            for _, fn, loop, fut in items:
                if not isolate:
                    b = Batch(txn)
                    try:
                        value = fn(b)
                    except Exception as e:  # noqa: BLE001 - retried with isolation
                        raise _MutationFailed() from e
                else:
                    try:
                        with txn.nested() as sub:
                            b = Batch(sub)
                            value = fn(b)
                    except Exception as e:  # noqa: BLE001 - handed to its caller
                        results.append((False, e))
                        continue
                results.append((True, value))
                afters.extend(b._after)
                for k, n in b._deltas.items():
                    deltas[k] = deltas.get(k, 0) + n
            new = write_counters(txn, deltas)
        return results, afters, new

    @staticmethod
    def _resolve_all(outcomes) -> None:
        """One wake-up of each event loop per batch, not one per mutation."""
        by_loop: dict = {}
        for fut, loop, ok, value in outcomes:
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, group in by_loop.items():
            loop.call_soon_threadsafe(_resolve_group, group)


class _MutationFailed(Exception):
    """A mutation raised during an optimistic (unisolated) attempt."""


def _resolve_group(group) -> None:
    for fut, ok, value in group:
        _resolve(fut, ok, value)
