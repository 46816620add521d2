"""Unit tests without servers: domain XML, tap names, cache metadata refcounts and packs, the CLI
process coming up on the test driver."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import defusedxml.ElementTree as ET

from imagecache import ChunkingParams, ChunkRef, ImageManifest, PackRef
from node.cachedb import TREES, CacheDB
from node.chunkstore import ChunkLocation, ChunkStore, PackWritten
from node.cli import parse_size
from node.domainxml import DomainSpec, domain_xml, parse_metadata, tap_name
from walrus.storage.kv import MemoryKV

ROOT = Path(__file__).resolve().parents[2]


def test_tap_names_fit_and_avoid_vnet():
    assert tap_name("i-0123abcd") == "tap0123abcd"
    long = tap_name("i-0123456789abcdef0")
    assert len(long) <= 15 and long.startswith("eu")
    for iid in ("i-vnet0000", "i-0", "i-" + "f" * 32):
        assert not tap_name(iid).startswith("vnet") and len(tap_name(iid)) <= 15


def test_domain_xml_direct_kernel_boot_bridge_console():
    spec = DomainSpec(name="i-0123abcd", vcpus=2, memory_mib=512, disk_path="/d/disk.qcow2",
                      console_log="/d/console.log", domain_type="kvm", kernel="/i/eki.img", ramdisk="/i/eri.img",
                      bridge="br-eu", images=(("machine", "emi-1"), ("kernel", "eki-1"), ("ramdisk", "eri-1")))
    root = ET.fromstring(domain_xml(spec))
    assert root.get("type") == "kvm" and root.findtext("name") == "i-0123abcd"
    assert root.findtext("os/kernel") == "/i/eki.img" and root.findtext("os/initrd") == "/i/eri.img"
    assert root.find("os/boot") is None
    assert root.find("devices/disk/driver").get("type") == "qcow2"
    assert root.find("devices/interface/source").get("bridge") == "br-eu"
    assert root.find("devices/interface/target").get("dev") == "tap0123abcd"
    assert root.find("devices/serial/source").get("path") == "/d/console.log"
    plain = ET.fromstring(domain_xml(DomainSpec(name="i-1", vcpus=1, memory_mib=64, disk_path="/x",
                                                console_log="/c")))
    assert plain.find("os/boot").get("dev") == "hd" and plain.find("devices/interface") is None
    meta = '<instance xmlns="https://eucalypt.dev/xmlns/node/1"><image role="machine" id="emi-1"/></instance>'
    assert parse_metadata(meta) == {"machine": "emi-1"} and parse_metadata(None) == {}


def _manifest(image_id: str, shas: list[str], zero_at: int | None = None) -> ImageManifest:
    chunks, offset, pack_offset = [], 0, 0
    for i, sha in enumerate(shas):
        if i == zero_at:
            chunks.append(ChunkRef(offset, 10, sha, True))
        else:
            chunks.append(ChunkRef(offset, 10, sha, False, 0, pack_offset))
            pack_offset += 10
        offset += 10
    return ImageManifest(image_id, "machine", offset, "0" * 64, ChunkingParams(), (PackRef("packs/p", pack_offset),),
                         tuple(chunks))


def _pack(name: str, shas: list[str]) -> PackWritten:
    return PackWritten(name, 10 * len(shas), {sha: ChunkLocation(name, 10 * i, 10) for i, sha in enumerate(shas)})


def test_cachedb_refcounts_change_with_images_only():
    db = CacheDB(MemoryKV(TREES))
    a = _manifest("emi-a", ["a1", "s1", "s1", "z0"], zero_at=3)
    b = _manifest("emi-b", ["s1", "b1"])
    db.add_image(a, a.to_bytes(), 1.0)
    db.add_image(a, a.to_bytes(), 2.0)  # idempotent
    db.add_image(b, b.to_bytes(), 3.0)
    assert db.chunk("s1").refs == 2 and db.chunk("a1").refs == 1 and db.chunk("z0") is None
    assert set(db.missing(a)) == {"a1", "s1"}
    assert db.commit_pack(_pack("p1", ["gone", "a1", "s1"]))  # "gone": no image names it, dead bytes
    assert not db.commit_pack(_pack("p2", ["a1", "gone"]))  # nothing wanted: the file is to go
    assert db.pack_names() == {"p1"} and db.pack("p1").live == 2
    assert db.totals() == (30, 0) and db.dead_bytes() == 10 and db.missing(a) == {}
    assert db.locations(a) == {"a1": ChunkLocation("p1", 10, 10), "s1": ChunkLocation("p1", 20, 10)}
    db.set_ready("emi-a", 30, 4.0)
    db.pin("emi-a")
    assert db.remove_image("emi-a") is None  # pinned
    db.unpin("emi-a")
    removed = db.remove_image("emi-a")
    assert removed.record.image_id == "emi-a" and removed.freed == ["a1"]  # s1 is still b's
    assert removed.dead_packs == []  # p1 still holds s1
    assert db.chunk("s1").refs == 1 and db.chunk("a1") is None
    assert db.totals() == (30, 0) and db.dead_bytes() == 20  # dead bytes count until the pack goes
    assert db.mark_absent({"s1": "p-other"}) == []  # found bad in a pack it is not in: stays
    assert db.chunk("s1").present
    assert db.mark_absent({"s1": "p1"}) == [("p1", 30)]  # its last live chunk: the pack goes
    assert db.totals() == (0, 0) and db.pack_names() == set() and set(db.missing(b)) == {"s1", "b1"}
    db.pin("emi-b")
    db.reset_pins({})
    assert db.image("emi-b").pins == 0


def test_cachedb_drops_the_one_file_per_chunk_layout():
    kv = MemoryKV(TREES)
    with kv.write() as txn:  # what a data dir from before packs holds
        txn.put("cache_chunks", b"old1", b'{"size": 10, "refs": 1, "present": true}')
        txn.put("cache_meta", b"chunk_bytes", b"10")
    db = CacheDB(kv)
    assert not db.chunk("old1").present
    assert db.drop_old_layout() == 1 and db.drop_old_layout() == 0
    assert db.totals() == (0, 0) and db.dead_bytes() == 0


def test_chunkstore_writes_verified_packs(tmp_path):
    import hashlib
    (tmp_path / "ab").mkdir()  # the old layout, and a temp a crash left: both go on start
    (tmp_path / "ab" / ("ab" * 32)).write_bytes(b"x")
    (tmp_path / "left.pack.tmp").write_bytes(b"x")
    store = ChunkStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    good, other = b"good" * 100, b"other" * 50
    pack, bad = store.write_pack([(hashlib.sha256(good).hexdigest(), good), ("0" * 64, b"liar"),
                                  (hashlib.sha256(other).hexdigest(), memoryview(other)),
                                  (hashlib.sha256(good).hexdigest(), good)])
    assert bad == ["0" * 64] and pack.size == len(good) + len(other) == store.path(pack.name).stat().st_size
    assert [store.read(w) for w in pack.chunks.values()] == [good, other]
    assert store.read(ChunkLocation(pack.name, 640, 20)) is None  # past the end
    assert store.read(ChunkLocation("missing", 0, 1)) is None
    assert store.write_pack([("1" * 64, b"no")]) == (None, ["1" * 64])
    assert store.remove_unnamed(set()) == [pack.name] and store.pack_names() == set()


def test_parse_size():
    assert parse_size("16G") == 16 << 30 and parse_size("512MiB") == 512 << 20 and parse_size(1000) == 1000


def test_cli_starts_a_node_on_the_test_driver(tmp_path, walrus):
    secret = tmp_path / "service.secret"
    secret.write_text("s3cret\n")
    creds = tmp_path / "walrus.toml"
    creds.write_text('access_key = "AKIDALICE0000000000"\nsecret_key = "alice-secret-key/with+symbols"\n')
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "node", "--port", "0", "--data-dir",
                             str(tmp_path / "node"), "--control", "http://127.0.0.1:8773", "--cluster", "zone-a",
                             "--hypervisor", "test:///default", "--walrus", walrus.url,
                             "--service-secret-file", str(secret), "--walrus-credentials", str(creds),
                             "--metadata-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert "listening on http://" in line, line + proc.stderr.read().decode()
        url = line.split("listening on ")[1].strip()
        with urllib.request.urlopen(url + "/_eucalypt/health", timeout=10) as reply:
            assert json.load(reply)["status"] == "ok"
        with urllib.request.urlopen(url + "/_eucalypt/metrics", timeout=10) as reply:
            assert b"eucalypt_node_cache_limit_bytes 1.7179869184e+10" in reply.read()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
