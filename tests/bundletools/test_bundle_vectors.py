"""Every bundle made by the real euca2ools 3.4 reads back with our reader, both keys."""

from __future__ import annotations

import hashlib

import pytest

from bundletools import keys, reader
from bundletools.manifest import DeviceMapping

from bundle_testlib import test_keys  # noqa: F401 (fixtures)
from bundle_testlib import VECTOR_DATA, VECTORS, build_image

IDS = [v["id"] for v in VECTOR_DATA["vectors"]]
BY_ID = {v["id"]: v for v in VECTOR_DATA["vectors"]}


@pytest.fixture(params=IDS)
def vector(request):
    v = BY_ID[request.param]
    return v, VECTORS / v["id"] / v["manifest_file"]


def test_manifest_fields_match_record(vector):
    v, path = vector
    m = reader.read_manifest(path)
    e = v["expected"]
    assert (m.name, m.user, m.image_type) == (e["name"], e["user"], e["type"])
    assert (m.digest, m.size, m.bundled_size) == (e["digest"], e["size"], e["bundled_size"])
    assert [(p.index, p.filename, p.digest) for p in m.parts] == [
        (p["index"], p["filename"], p["sha1"]) for p in e["parts"]
    ]
    assert e["machine_configuration"].encode() in m.raw
    assert hashlib.sha256(m.raw).hexdigest() == v["manifest_sha256"]


def test_signature_over_raw_substrings(vector, test_keys):
    v, path = vector
    m = reader.read_manifest(path)
    signed = m.signed_bytes()
    assert len(signed) == v["derived"]["signed_bytes_len"]
    assert hashlib.sha1(signed).hexdigest() == v["derived"]["signed_bytes_sha1"]
    m.verify_signature(test_keys.alice_cert)


def test_both_key_copies_unwrap_to_recorded_aes_key(vector, test_keys):
    v, path = vector
    m = reader.read_manifest(path)
    d = v["derived"]
    assert keys.unwrap(test_keys.alice_pk, m.user_encrypted_key) == d["aes_key_hex"]
    assert keys.unwrap(test_keys.alice_pk, m.user_encrypted_iv) == d["aes_iv_hex"]
    assert keys.unwrap(test_keys.cloud_pk, m.ec2_encrypted_key) == d["aes_key_hex"]
    assert keys.unwrap(test_keys.cloud_pk, m.ec2_encrypted_iv) == d["aes_iv_hex"]


@pytest.mark.parametrize("who", ["user", "cloud"])
def test_unbundle_gives_recorded_image(vector, test_keys, tmp_path, who):
    v, path = vector
    key = test_keys.alice_pk if who == "user" else test_keys.cloud_pk
    out, result = reader.unbundle(path, tmp_path, key, certificate=test_keys.alice_cert)
    assert out.name == v["expected"]["name"]
    assert out.stat().st_size == v["image"]["size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == v["image"]["sha256"]
    assert result.tar_member_name == v["derived"]["tar_member"]["name"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp files left


def test_stored_images_match_their_recipe(tmp_path):
    for v in VECTOR_DATA["vectors"]:
        if v["image"]["recipe"] or v["image"]["size"] == 0:
            img = build_image(tmp_path / "x", v["image"]["recipe"])
            assert hashlib.sha256(img.read_bytes()).hexdigest() == v["image"]["sha256"], v["id"]


def test_machine_metadata_exactly_as_stored():
    m = reader.read_manifest(VECTORS / "h-machine-metadata" / "meta.img.manifest.xml")
    mc = m.machine_configuration
    assert mc.architecture == "x86_64"
    assert mc.kernel_id == "eki-0123ABCD" and mc.ramdisk_id == "eri-4567CDEF"
    assert mc.product_codes == ("1234ABCD", "5678EFAB")
    assert mc.block_device_mapping == (
        DeviceMapping("ami", "sda1"), DeviceMapping("ephemeral0", "sda2"),
        DeviceMapping("root", "/dev/sda1"), DeviceMapping("swap", "sda3"),
    )


def test_kernel_and_ramdisk_types():
    k = reader.read_manifest(VECTORS / "e-kernel" / "kernel.bin.manifest.xml")
    r = reader.read_manifest(VECTORS / "e2-ramdisk" / "ramdisk.bin.manifest.xml")
    assert (k.image_type, k.machine_configuration.kernel_id) == ("kernel", "true")
    assert (r.image_type, r.machine_configuration.ramdisk_id) == ("ramdisk", "true")


def test_many_parts_follow_index_not_name_order():
    m = reader.read_manifest(VECTORS / "i-many-parts" / "many.img.manifest.xml")
    assert len(m.parts) == 116
    assert m.parts[99].filename == "many.img.part.99"
    assert m.parts[100].filename == "many.img.part.100"
