"""Control's state: named trees in LMDB (walrus/storage/kv.py), JSON records, group commit.

Trees (keys are ASCII; ``A`` is a 12-digit account id):

    meta             b"schema" -> version
    accounts         A -> account record          account_names  NAME -> A
    users            A/USER -> user record        access_keys    AKID -> key record
    canonical        S3 canonical id -> A         (Walrus asks by canonical id)
    keypairs         A/KEYNAME -> key pair        keypair_ids    KEYPAIRID -> A/KEYNAME
    groups           A/GROUPID -> group           group_names    A/NAME -> GROUPID
    group_ids        GROUPID -> A                 (group ids are cloud-wide unique)
    tags             A/RESOURCEID/KEY -> value
    images           IMAGEID -> image record (control/images.py)
    nodes            NODEID -> node record (nodes.py: last heartbeat, resources, reachability)
    instances        A/INSTANCEID -> instance record   instance_ids  INSTANCEID -> A
    node_instances   NODEID/INSTANCEID -> A            (what control placed on each node)
    client_tokens    A/TOKEN -> {reservation, instance ids, request digest} (RunInstances idempotency)
    private_ips      SUBNET/IP -> INSTANCEID           (allocated from each node's subnet)
    addresses        PUBLICIP -> elastic IP record      address_ids  eipalloc-... -> PUBLICIP
    policy           b"version" -> the network policy counter (policy.py)
    group_index      GROUPID -> k; group_slots, node_index, node_slots: netmodes.py (managed modes)
    account_requests REQUESTID -> a visitor's account request (console/requests.py)
    console_passwords A/USER -> the user's console password hash (console/passwords.py)
    stats            the group-commit writer's persistent counters

Every API write goes through ``ControlStore.write``: the mutation runs in the writer
thread inside one LMDB transaction with the others queued at that moment, and its future
resolves only after that transaction committed with fsync; a mutation that raises is
rolled back alone. The admin CLI (another process) writes with ``write_sync``; LMDB's
lock serialises the two, and control keeps no cache of its own, so it sees such changes
on its next read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from walrus.storage.kv import LmdbKV, ReadTxn, WriteTxn
from walrus.storage.writer import STATS_TREE, Writer

T = TypeVar("T")
SCHEMA = b"1"
TREES = ("meta", "accounts", "account_names", "users", "access_keys", "canonical", "keypairs",
         "keypair_ids", "groups", "group_names", "group_ids", "tags", "nodes", "instances", "instance_ids",
         "node_instances", "client_tokens", "private_ips", "addresses", "address_ids", "images",
         "account_requests", "console_passwords", "policy",
         "group_index", "group_slots", "node_index", "node_slots", STATS_TREE)  # the last four: netmodes.py


def get_json(txn: ReadTxn, tree: str, key: str) -> dict | None:
    raw = txn.get(tree, key.encode())
    return json.loads(raw) if raw is not None else None


def put_json(txn: WriteTxn, tree: str, key: str, value: dict) -> None:
    txn.put(tree, key.encode(), json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def scan_json(txn: ReadTxn, tree: str, prefix: str = "") -> list[tuple[str, dict]]:
    return [(k.decode(), json.loads(v)) for k, v in txn.scan(tree, prefix=prefix.encode() or None)]


def get_text(txn: ReadTxn, tree: str, key: str) -> str | None:
    raw = txn.get(tree, key.encode())
    return raw.decode() if raw is not None else None


def put_text(txn: WriteTxn, tree: str, key: str, value: str) -> None:
    txn.put(tree, key.encode(), value.encode())


class ControlStore:
    def __init__(self, path: Path) -> None:
        self.kv = LmdbKV(path, TREES, sync=True)
        with self.kv.write() as txn:
            if txn.get("meta", b"schema") is None:
                txn.put("meta", b"schema", SCHEMA)
        self._writer: Writer | None = None

    def read(self):
        """A consistent snapshot (``with store.read() as txn``)."""
        return self.kv.read()

    async def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """Run ``fn(txn)`` in the group-commit writer; returns after the durable commit."""
        if self._writer is None:
            self._writer = Writer(self.kv, {})
        return await self._writer.submit(lambda batch: fn(batch.txn))

    def write_sync(self, fn: Callable[[WriteTxn], T]) -> T:
        """One transaction of its own, committed (fsynced) before returning: for the CLI."""
        with self.kv.write() as txn:
            return fn(txn)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.kv.close()
