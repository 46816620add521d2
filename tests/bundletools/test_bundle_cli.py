"""The euca2ools-named commands: options, environment variables, errors and exit status."""

from __future__ import annotations

import hashlib

import pytest

from bundletools.cli import bundle_image, unbundle
from bundletools.reader import read_manifest
from bundle_testlib import bundle_env, test_keys  # noqa: F401 (fixtures)



@pytest.fixture
def image(tmp_path):
    path = tmp_path / "vm.img"
    path.write_bytes(b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(9000)))
    return path


def test_bundle_then_unbundle_from_environment(bundle_env, image, tmp_path, capsys):
    assert bundle_image.main(["-i", str(image), "-r", "x86_64", "-d", str(tmp_path / "b"),
                              "--part-size", "100000", "-q"]) == 0
    manifest_path = tmp_path / "b" / "vm.img.manifest.xml"
    assert f"Wrote manifest {manifest_path}" in capsys.readouterr().out
    m = read_manifest(manifest_path)
    assert m.user == "123456789012" and len(m.parts) == 3
    assert unbundle.main(["-m", str(manifest_path), "-d", str(tmp_path / "o"), "-q"]) == 0  # EC2_PRIVATE_KEY
    assert (tmp_path / "o" / "vm.img").read_bytes() == image.read_bytes()
    assert unbundle.main(["-m", str(manifest_path), "-d", str(tmp_path / "o2"), "-k",
                          str(bundle_env.cloud_pk_path), "-c", str(bundle_env.alice_cert_path)]) == 0


def test_bundle_options_reach_the_manifest(bundle_env, image, tmp_path):
    assert bundle_image.main(["-i", str(image), "-r", "i386", "-p", "custom", "-d", str(tmp_path),
                              "-u", "9999-8888-7777", "--kernel", "eki-11112222", "--ramdisk", "eri-33334444",
                              "-B", "root=/dev/sda1,ami=sda1", "--productcodes", "AB12", "-q"]) == 0
    m = read_manifest(tmp_path / "custom.manifest.xml")
    mc = m.machine_configuration
    assert (m.name, m.user, mc.architecture) == ("custom", "999988887777", "i386")
    assert (mc.kernel_id, mc.ramdisk_id, mc.product_codes) == ("eki-11112222", "eri-33334444", ("AB12",))
    assert [x.virtual for x in mc.block_device_mapping] == ["ami", "root"]


def test_kernel_true_makes_a_kernel_bundle(bundle_env, image, tmp_path):
    assert bundle_image.main(["-i", str(image), "--kernel", "true", "-d", str(tmp_path), "-q"]) == 0
    m = read_manifest(tmp_path / "vm.img.manifest.xml")
    assert m.image_type == "kernel" and m.machine_configuration.kernel_id == "true"


@pytest.mark.parametrize("var, message", [("EC2_CERT", "user certificate"), ("EUCALYPTUS_CERT", "cloud certificate"),
                                          ("EC2_PRIVATE_KEY", "private key"), ("EC2_USER_ID", "account number")])
def test_missing_credentials_fail_cleanly(bundle_env, image, tmp_path, monkeypatch, capsys, var, message):
    monkeypatch.delenv(var)
    assert bundle_image.main(["-i", str(image), "-d", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("euca-bundle-image: error:") and message in err
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []


def test_missing_image(bundle_env, tmp_path, capsys):
    assert bundle_image.main(["-i", str(tmp_path / "nope.img"), "-d", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unbundle_errors_are_specific(bundle_env, image, tmp_path, capsys):
    bundle_image.main(["-i", str(image), "-d", str(tmp_path / "b"), "--part-size", "100000", "-q"])
    manifest_path = tmp_path / "b" / "vm.img.manifest.xml"
    part = tmp_path / "b" / "vm.img.part.01"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    assert unbundle.main(["-m", str(manifest_path), "-d", str(tmp_path / "o"), "-q"]) == 1
    assert "vm.img.part.01" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert unbundle.main(["-m", str(manifest_path), "-d", str(tmp_path / "o"), "-k", str(stranger)]) == 1
    assert "neither" in capsys.readouterr().err


def test_module_entry_points_run(bundle_env, image, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bundletools.cli.bundle_image", "-i", str(image), "-d",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # not a TTY: no progress bar
    for mod in ("unbundle", "upload_bundle", "download_bundle", "delete_bundle", "install_image"):
        r = subprocess.run([sys.executable, "-m", f"bundletools.cli.{mod}", "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout
