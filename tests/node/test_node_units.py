"""Unit tests without servers: domain XML, tap names, cache metadata refcounts, the CLI
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


def test_cachedb_refcounts_change_with_images_only():
    db = CacheDB(MemoryKV(TREES))
    a = _manifest("emi-a", ["a1", "s1", "s1", "z0"], zero_at=3)
    b = _manifest("emi-b", ["s1", "b1"])
    db.add_image(a, a.to_bytes(), 1.0)
    db.add_image(a, a.to_bytes(), 2.0)  # idempotent
    db.add_image(b, b.to_bytes(), 3.0)
    assert db.chunk("s1").refs == 2 and db.chunk("a1").refs == 1 and db.chunk("z0") is None
    assert set(db.missing(a)) == {"a1", "s1"}
    assert db.mark_present({"a1": 10, "s1": 10, "gone": 10}) == ["gone"]
    assert db.totals() == (20, 0) and db.missing(a) == {}
    db.set_ready("emi-a", 30, 4.0)
    db.pin("emi-a")
    assert db.remove_image("emi-a") is None  # pinned
    db.unpin("emi-a")
    record, freed = db.remove_image("emi-a")
    assert record.image_id == "emi-a" and freed == ["a1"]  # s1 is still b's
    assert db.chunk("s1").refs == 1 and db.chunk("a1") is None
    assert db.totals() == (10, 0)
    db.mark_absent(["s1"])
    assert db.totals() == (0, 0) and set(db.missing(b)) == {"s1", "b1"}
    db.pin("emi-b")
    db.reset_pins({})
    assert db.image("emi-b").pins == 0


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
