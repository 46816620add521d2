"""Bundles from our writer have every property of euca2ools 3.x output (vectors README)."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import subprocess
import tarfile

import pytest

from bundletools import keys, manifest as manifest_mod
from bundletools.manifest import DeviceMapping, MachineConfiguration

from bundle_testlib import test_keys  # noqa: F401 (fixtures)
from bundle_testlib import decrypt_payload, make_bundle


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(hashlib.sha256(b"seed").digest() * 4000 + bytes(70000) + b"tail")
    return path


def test_digest_covers_whole_tar_stream(image, tmp_path, test_keys):
    m = make_bundle(test_keys, image, tmp_path / "b").manifest
    tar_stream = gzip.decompress(decrypt_payload(m, tmp_path / "b", test_keys.cloud_pk))
    assert hashlib.sha1(tar_stream).hexdigest() == m.digest
    assert hashlib.sha1(image.read_bytes()).hexdigest() != m.digest
    assert len(tar_stream) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(tar_stream)) as tf:
        (member,) = tf.getmembers()
        assert (member.name, member.mode, member.uid, member.gid, member.mtime) == ("disk.img", 0o644, 0, 0, 0)
        assert (member.uname, member.gname, member.type) == ("", "", tarfile.REGTYPE)
        assert tf.extractfile(member).read() == image.read_bytes()


def test_gzip_header_like_gzip_c(image, tmp_path, test_keys):
    m = make_bundle(test_keys, image, tmp_path / "b").manifest
    gz = decrypt_payload(m, tmp_path / "b", test_keys.alice_pk)
    assert gz[:4] == b"\x1f\x8b\x08\x00"  # deflate, no name/flags
    assert gz[4:8] == b"\x00\x00\x00\x00" and gz[9] == 3  # mtime 0, OS Unix
    d = __import__("zlib").decompressobj(31)
    d.decompress(gz)
    assert d.eof and d.unused_data == b""  # a single member
    subprocess.run(["gzip", "-t"], input=gz, check=True)


def test_key_and_iv_wrapped_as_lowercase_hex_text(image, tmp_path, test_keys):
    m = make_bundle(test_keys, image, tmp_path / "b").manifest
    for field in ("ec2_encrypted_key", "ec2_encrypted_iv", "user_encrypted_key", "user_encrypted_iv"):
        value = getattr(m, field)
        assert re.fullmatch(r"[0-9a-f]{512}", value), field
    for pk, pair in ((test_keys.cloud_pk, ("ec2_encrypted_key", "ec2_encrypted_iv")),
                     (test_keys.alice_pk, ("user_encrypted_key", "user_encrypted_iv"))):
        for field in pair:
            text = keys.unwrap(pk, getattr(m, field))
            assert re.fullmatch(r"[0-9a-f]{32}", text)
    assert keys.unwrap(test_keys.cloud_pk, m.ec2_encrypted_key) == keys.unwrap(test_keys.alice_pk, m.user_encrypted_key)


def test_manifest_is_compact_euca2ools_shape(image, tmp_path, test_keys):
    result = make_bundle(test_keys, image, tmp_path / "b")
    raw = result.manifest_path.read_bytes()
    decl, body = raw.split(b"\n", 1)
    assert decl == b"<?xml version='1.0' encoding='ASCII'?>"
    assert b"\n" not in body and not body.endswith(b"\n") and b"> <" not in body
    assert body.startswith(b"<manifest><version>2007-10-10</version><bundler>")
    assert b'<ec2_encrypted_key algorithm="AES-128-CBC">' in body
    assert b'<user_encrypted_key algorithm="AES-128-CBC">' in body
    assert b"<ec2_encrypted_iv>" in body and b"<user_encrypted_iv>" in body  # no attribute on IVs
    assert b"<user>123456789012</user><type>machine</type>" in body
    order = [b"<name>", b"<user>", b"<type>", b"<digest", b"<size>", b"<bundled_size>", b"<ec2_encrypted_key",
             b"<user_encrypted_key", b"<ec2_encrypted_iv>", b"<user_encrypted_iv>", b"<parts count="]
    positions = [body.index(tag, body.index(b"<image>")) for tag in order]
    assert positions == sorted(positions)
    assert manifest_mod.parse(raw) == result.manifest


def test_signature_is_over_raw_substrings_and_openssl_verifies(image, tmp_path, test_keys):
    result = make_bundle(test_keys, image, tmp_path / "b")
    raw = result.manifest_path.read_bytes()
    signed = raw[raw.index(b"<machine_configuration>"):raw.index(b"</machine_configuration>") + 24] + \
        raw[raw.index(b"<image>"):raw.index(b"</image>") + 8]
    assert manifest_mod.signed_bytes(raw) == signed
    (tmp_path / "signed").write_bytes(signed)
    (tmp_path / "sig").write_bytes(bytes.fromhex(result.manifest.signature))
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", test_keys.alice_cert_path],
                         check=True, capture_output=True).stdout
    (tmp_path / "pub.pem").write_bytes(pub)
    out = subprocess.run(["openssl", "dgst", "-sha1", "-verify", tmp_path / "pub.pem", "-signature",
                          tmp_path / "sig", tmp_path / "signed"], capture_output=True, text=True)
    assert out.returncode == 0 and "Verified OK" in out.stdout


def test_part_names_at_least_two_digits_and_index_order(tmp_path, test_keys):
    img = tmp_path / "many.img"
    img.write_bytes(b"".join(hashlib.sha256(b"many%d" % i).digest() for i in range(70)))  # incompressible
    m = make_bundle(test_keys, img, tmp_path / "b", part_size=20).manifest
    assert len(m.parts) > 100
    assert [p.filename for p in m.parts[:3]] == ["many.img.part.00", "many.img.part.01", "many.img.part.02"]
    assert m.parts[100].filename == "many.img.part.100"
    sizes = [(tmp_path / "b" / p.filename).stat().st_size for p in m.parts]
    assert sum(sizes) == m.bundled_size and all(s == 20 for s in sizes[:-1])
    assert len(m.parts) == m.bundled_size // 20 + 1


def test_trailing_empty_part_when_ciphertext_is_a_multiple(tmp_path, test_keys):
    img = tmp_path / "x.img"
    img.write_bytes(b"abc" * 1000)
    m = make_bundle(test_keys, img, tmp_path / "b", part_size=16).manifest  # AES output: always a multiple
    last = m.parts[-1]
    assert (tmp_path / "b" / last.filename).stat().st_size == 0
    assert last.digest == manifest_mod.EMPTY_SHA1
    assert len(m.parts) == m.bundled_size // 16 + 1


def test_machine_configuration_elements_in_euca2ools_order(image, tmp_path, test_keys):
    mc = MachineConfiguration(
        architecture="x86_64",
        block_device_mapping=(DeviceMapping("root", "/dev/sda1"), DeviceMapping("ami", "sda1"),
                              DeviceMapping("swap", "sda3"), DeviceMapping("ephemeral0", "sda2")),
        product_codes=("1234ABCD", "5678EFAB"), kernel_id="eki-0123ABCD", ramdisk_id="eri-4567CDEF",
    )
    raw = make_bundle(test_keys, image, tmp_path / "b", machine_configuration=mc).manifest_path.read_bytes()
    from bundle_testlib import VECTORS

    theirs = (VECTORS / "h-machine-metadata" / "meta.img.manifest.xml").read_bytes()
    cut = lambda r: r[r.index(b"<machine_configuration>"):r.index(b"</machine_configuration>")]  # noqa: E731
    assert cut(raw) == cut(theirs)


def test_dashes_removed_from_account_and_long_prefix_uses_pax(tmp_path, test_keys):
    img = tmp_path / "x.img"
    img.write_bytes(b"x" * 5000)
    prefix = "p" * 117
    from bundletools.writer import BundleSpec, bundle_image

    result = bundle_image(img, tmp_path / "b", BundleSpec(user="1234-5678-9012", prefix=prefix, part_size=1 << 20),
                          cloud_cert=test_keys.cloud_cert, user_cert=test_keys.alice_cert,
                          private_key=test_keys.alice_pk)
    assert result.manifest.user == "123456789012"
    tar_stream = gzip.decompress(decrypt_payload(result.manifest, tmp_path / "b", test_keys.cloud_pk))
    assert tar_stream[156:157] == b"x" and b"path=" + prefix.encode() in tar_stream[:1024]
    assert result.manifest_path.name == prefix + ".manifest.xml"
