"""Crash consistency: kill -9 Walrus in the middle of a PUT storm, restart, check the store.

Several clients (threads, one boto3 client each) PUT objects of mixed sizes: inline
(< 32 KiB), ~100 KiB (one chunk), a few MiB (several 1 MiB chunks, some compressible and
sharing chunks with each other), and complete small multipart uploads. Each key has one
writer, so the order of its PUTs is known. A multipart upload with acknowledged parts is
left open. Then SIGKILL, restart on the same data directory, and:

* every acknowledged write is there byte for byte, and no key went back in time: a key
  holds its last acknowledged body, or the one that was in flight at the kill;
* nothing half-written is visible: every listed key reads completely and hashes to a body
  some PUT sent for that key;
* the open multipart upload is not an object, and still completes after the restart;
* recovery left no temp files, and every chunk file on disk is one the metadata counts.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from botocore.exceptions import ClientError

from walrustest import ALICE, s3_client, start_walrus

BUCKET = "crash-storm"
WRITERS = 3
KEYS_PER_WRITER = 8
MIB = 1024 * 1024
# Compressible filler shared by the "big-z" bodies: after their unique first bytes their
# chunks are identical, so they dedup against each other.
SHARED_FILLER = b"".join(b"walrus crash filler %08d\n" % i for i in range(4 * MIB // 29 + 1))


def _body(rng: random.Random, kind: str, tag: bytes) -> bytes:
    if kind == "tiny":
        return tag + rng.randbytes(rng.randint(0, 3000))
    if kind == "mid":
        return tag + rng.randbytes(100 * 1024 + rng.randint(0, 4096))
    if kind == "big":
        return tag + rng.randbytes(2 * MIB + rng.randint(0, MIB))
    # big-z: unique head (its own first chunk), then compressible shared chunks.
    head = tag + rng.randbytes(MIB - len(tag))
    return head + SHARED_FILLER[: 2 * MIB + rng.randint(0, 4) * 4096]


@dataclass
class History:
    """What clients sent and what the server acknowledged, per key (one writer per key)."""

    attempts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    acked: dict[str, int] = field(default_factory=dict)  # key -> index of last acked attempt
    errors_before_kill: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, key: str, body: bytes) -> int:
        with self.lock:
            self.attempts[key].append(hashlib.sha256(body).hexdigest())
            return len(self.attempts[key]) - 1

    def ack(self, key: str, index: int) -> None:
        with self.lock:
            self.acked[key] = index

    @property
    def ack_count(self) -> int:
        with self.lock:
            return len(self.acked) + sum(self.acked.values())


def _client(url: str):
    return s3_client(url, ALICE, connect_timeout=3, read_timeout=20)


def _put_writer(url: str, number: int, history: History, killed: threading.Event,
                stop: threading.Event) -> None:
    client = _client(url)
    rng = random.Random(number)
    kinds = ["tiny", "tiny", "mid", "big", "big-z"]
    n = 0
    while not stop.is_set():
        key = f"w{number}/k{rng.randrange(KEYS_PER_WRITER)}"
        kind = kinds[n % len(kinds)]
        body = _body(rng, kind, f"{key}#{n}#".encode())
        n += 1
        index = history.attempt(key, body)
        try:
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        except Exception as exc:  # noqa: BLE001 - the kill makes every kind of error
            if not killed.is_set():
                history.errors_before_kill.append(f"PUT {key}: {exc!r}")
            return
        history.ack(key, index)


def _multipart_writer(url: str, history: History, killed: threading.Event,
                      stop: threading.Event) -> None:
    """Complete small multipart uploads (5 MiB + a tail) over and over."""
    client = _client(url)
    rng = random.Random(99)
    n = 0
    while not stop.is_set():
        key = f"mpu/k{n % 3}"
        parts = [f"{key}#{n}#".encode() + rng.randbytes(5 * MIB), rng.randbytes(rng.randint(1, 50_000))]
        n += 1
        index = history.attempt(key, b"".join(parts))
        try:
            upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
            etags = [client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=i + 1,
                                        Body=part)["ETag"] for i, part in enumerate(parts)]
            client.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
        except Exception as exc:  # noqa: BLE001
            if not killed.is_set():
                history.errors_before_kill.append(f"MPU {key}: {exc!r}")
            return
        history.ack(key, index)


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/_eucalypt/metrics", timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing from metrics"
    return float(match.group(1))


def _list_all(client) -> dict[str, int]:
    keys = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


def test_kill_during_put_storm(tmp_path, users_file):
    data_dir = tmp_path / "data"
    server = start_walrus(data_dir, users_file)
    try:
        setup = _client(server.url)
        setup.create_bucket(Bucket=BUCKET)
        # An upload left open across the crash, with two acknowledged parts.
        open_parts = [b"open-part-1" + random.Random(7).randbytes(5 * MIB), b"open-part-2 tail"]
        open_upload = setup.create_multipart_upload(Bucket=BUCKET, Key="mpu/open")["UploadId"]
        open_etags = [setup.upload_part(Bucket=BUCKET, Key="mpu/open", UploadId=open_upload,
                                        PartNumber=i + 1, Body=p)["ETag"]
                      for i, p in enumerate(open_parts)]

        history = History()
        killed, stop = threading.Event(), threading.Event()
        threads = [threading.Thread(target=_put_writer, args=(server.url, i, history, killed, stop))
                   for i in range(WRITERS)]
        threads.append(threading.Thread(target=_multipart_writer,
                                        args=(server.url, history, killed, stop)))
        for t in threads:
            t.start()
        # Let the storm build up (bounded: the kill comes after at most ~10 s either way).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                history.ack_count < 120 or not any(k.startswith("mpu/") for k in history.acked)):
            time.sleep(0.05)
        killed.set()
        server.kill()
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    finally:
        server.kill()
    assert not history.errors_before_kill, history.errors_before_kill
    assert history.ack_count >= 10, "the storm never got going"
    assert any(k.startswith("mpu/k") for k in history.acked)

    # Whatever the kill left behind, recovery must also clear what is planted here: a temp
    # file and a well-named chunk file that no record references.
    store = data_dir / "store"
    (store / "tmp" / "planted.tmp").write_bytes(b"half a chunk")
    stray = hashlib.sha256(b"stray chunk").hexdigest()
    (store / "chunks" / stray[:2] / stray[2:4]).mkdir(parents=True, exist_ok=True)
    (store / "chunks" / stray[:2] / stray[2:4] / stray).write_bytes(b"stray chunk")

    server = start_walrus(data_dir, users_file)
    try:
        client = _client(server.url)
        listed = _list_all(client)

        # Nothing half-written is visible: each listed key reads completely, and its
        # bytes are one of the bodies sent for that key.
        assert set(listed) <= set(history.attempts), set(listed) - set(history.attempts)
        found = {}
        for key, size in listed.items():
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert len(body) == size, key
            digest = hashlib.sha256(body).hexdigest()
            assert digest in history.attempts[key], f"{key}: body matches no PUT sent"
            found[key] = digest

        # Every acknowledged write survived, and no key went back in time.
        for key, attempts in history.attempts.items():
            last = len(attempts) - 1
            acked = history.acked.get(key)
            if acked == last:
                allowed = {attempts[last]}
            elif acked is not None:  # attempt `last` was in flight at the kill
                assert acked == last - 1
                allowed = {attempts[last - 1], attempts[last]}
            else:
                assert last == 0
                allowed = {attempts[0], None}
            assert found.get(key) in allowed, f"{key}: acked #{acked} of {last + 1}, found other"

        # The open multipart upload is no object, but survived with its parts.
        assert "mpu/open" not in listed
        with pytest.raises(ClientError) as err:
            client.head_object(Bucket=BUCKET, Key="mpu/open")
        assert err.value.response["Error"]["Code"] == "404"
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        assert open_upload in [u["UploadId"] for u in uploads if u["Key"] == "mpu/open"]
        parts = client.list_parts(Bucket=BUCKET, Key="mpu/open", UploadId=open_upload)["Parts"]
        assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, open_etags[0]), (2, open_etags[1])]

        # Recovery left the store tidy: no temp files, no chunk file the metadata does not
        # count, object counters in line with the listing.
        assert sorted(p.name for p in (store / "tmp").iterdir()) == []
        chunk_files = [p for p in (store / "chunks").rglob("*") if p.is_file()]
        assert stray not in [p.name for p in chunk_files]
        assert chunk_files, "multi-MiB objects must have chunk files"
        for p in chunk_files:
            assert re.fullmatch(r"[0-9a-f]{64}(\.zst)?", p.name), p
            assert p.parent.name == p.name[2:4] and p.parent.parent.name == p.name[:2], p
        assert _metric(server.url, "eucalypt_walrus_storage_chunks") == len(chunk_files)
        assert _metric(server.url, "eucalypt_walrus_storage_objects") == len(listed)

        # The open upload still completes after the restart, to the bytes of its parts.
        client.complete_multipart_upload(
            Bucket=BUCKET, Key="mpu/open", UploadId=open_upload,
            MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(open_etags)]})
        body = client.get_object(Bucket=BUCKET, Key="mpu/open")["Body"].read()
        assert body == b"".join(open_parts)
    finally:
        server.stop()
