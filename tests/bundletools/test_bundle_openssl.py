"""Interoperability with the openssl/gzip/tar pipeline euca2ools itself drives (spec 6)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from bundletools import keys, reader
from bundletools.manifest import MachineConfiguration, Manifest, PartInfo

from bundle_testlib import test_keys  # noqa: F401 (fixtures)
from bundle_testlib import make_bundle

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("openssl", "gzip", "tar")),
                                reason="needs openssl, gzip and GNU tar")


def sh(cmd: str, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True, capture_output=True, **kw)


@pytest.mark.parametrize("who", ["cloud", "user"])
def test_openssl_pipeline_unbundles_ours(tmp_path, test_keys, who):
    img = tmp_path / "img.raw"
    img.write_bytes(b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(40000)) + bytes(300000))
    m = make_bundle(test_keys, img, tmp_path / "b", part_size=256 * 1024).manifest
    assert len(m.parts) > 2
    pk = test_keys.cloud_pk_path if who == "cloud" else test_keys.alice_pk_path
    fkey, fiv = ("ec2_encrypted_key", "ec2_encrypted_iv") if who == "cloud" else ("user_encrypted_key", "user_encrypted_iv")
    (tmp_path / "k.hex").write_text(getattr(m, fkey))
    (tmp_path / "iv.hex").write_text(getattr(m, fiv))
    k = sh(f"xxd -r -p k.hex | openssl pkeyutl -decrypt -inkey {pk}", tmp_path).stdout.decode()
    iv = sh(f"xxd -r -p iv.hex | openssl pkeyutl -decrypt -inkey {pk}", tmp_path).stdout.decode()
    parts = " ".join(f"b/{p.filename}" for p in m.parts)  # manifest order
    sh(f"cat {parts} | openssl enc -d -aes-128-cbc -K {k} -iv {iv} | gunzip | tee stream.tar | tar -x -O > out",
       tmp_path)
    assert (tmp_path / "out").read_bytes() == img.read_bytes()
    assert hashlib.sha1((tmp_path / "stream.tar").read_bytes()).hexdigest() == m.digest


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_reads_bundle_made_by_openssl_pipeline(tmp_path, test_keys, tar_format):
    """GNU sparse (or PAX sparse) member, gzip -9, 1-digit ec2-ami-tools part names, openssl everything."""
    work = tmp_path / "w"
    work.mkdir()
    img = work / "vm.img"
    with open(img, "wb") as f:
        f.write(b"".join(hashlib.sha256(b"x%d" % i).digest() for i in range(3000)))
        f.seek(3 << 20)
        f.write(b"the end")
    k = sh("openssl rand -hex 16", work).stdout.decode().strip()
    iv = sh("openssl rand -hex 16", work).stdout.decode().strip()
    sh(f"tar -c -S --format={tar_format} --owner 0 --group 0 vm.img | tee stream.tar | gzip -9 "
       f"| openssl enc -e -aes-128-cbc -K {k} -iv {iv} > payload", work)
    payload = (work / "payload").read_bytes()
    part_size = 40000
    chunks = [payload[i:i + part_size] for i in range(0, len(payload), part_size)]
    assert 1 < len(chunks) < 10  # Amazon naming: one digit for fewer than 10 parts
    parts = []
    for i, chunk in enumerate(chunks):
        (work / f"vm.img.part.{i}").write_bytes(chunk)
        parts.append(PartInfo(i, f"vm.img.part.{i}", hashlib.sha1(chunk).hexdigest()))

    def wrap(cert, text):
        return sh(f"printf %s {text} | openssl pkeyutl -encrypt -certin -inkey {cert} | xxd -p | tr -d '\\n'",
                  work).stdout.decode()

    unsigned = Manifest(
        name="vm.img", user="123456789012", image_type="machine",
        digest=hashlib.sha1((work / "stream.tar").read_bytes()).hexdigest(),
        size=img.stat().st_size, bundled_size=len(payload),
        ec2_encrypted_key=wrap(test_keys.cloud_cert_path, k), user_encrypted_key=wrap(test_keys.alice_cert_path, k),
        ec2_encrypted_iv=wrap(test_keys.cloud_cert_path, iv), user_encrypted_iv=wrap(test_keys.alice_cert_path, iv),
        parts=tuple(parts), machine_configuration=MachineConfiguration("x86_64"),
        bundler_name="ec2-ami-tools", bundler_version="1.5", bundler_release="0",
    )
    (work / "signed").write_bytes(unsigned.signed_bytes())
    sig = sh(f"openssl dgst -sha1 -sign {test_keys.alice_pk_path} signed | xxd -p | tr -d '\\n'", work).stdout.decode()
    raw = unsigned.to_bytes().replace(b"<signature>UNSIGNED</signature>", f"<signature>{sig}</signature>".encode())
    raw = raw.replace(b"<?xml version='1.0' encoding='ASCII'?>\n", b"<?xml version='1.0'?>")  # REXML style
    (work / "vm.img.manifest.xml").write_bytes(raw)
    for key in (test_keys.alice_pk, test_keys.cloud_pk):
        out, _ = reader.unbundle(work / "vm.img.manifest.xml", tmp_path / "out", key, certificate=test_keys.alice_cert)
        assert out.read_bytes() == img.read_bytes()


def test_rsa_wrapping_matches_openssl_rsautl(tmp_path, test_keys):
    wrapped = keys.wrap(test_keys.cloud_cert, "00112233445566778899aabbccddeeff")
    (tmp_path / "w.hex").write_text(wrapped)
    out = sh(f"xxd -r -p w.hex | openssl pkeyutl -decrypt -pkeyopt rsa_padding_mode:pkcs1 -inkey "
             f"{test_keys.cloud_pk_path}", tmp_path).stdout
    assert out == b"00112233445566778899aabbccddeeff"
