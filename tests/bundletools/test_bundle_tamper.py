"""Every kind of damage is caught with its own error, and nothing is left in the destination."""

from __future__ import annotations

import hashlib
import os

import pytest

from bundletools import errors, reader

from bundle_testlib import test_keys  # noqa: F401 (fixtures)
from bundle_testlib import make_bundle

PART = 32 * 1024


@pytest.fixture
def bundle(tmp_path, test_keys):
    img = tmp_path / "img.raw"
    img.write_bytes(b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(5000)))  # ~5 parts
    result = make_bundle(test_keys, img, tmp_path / "b", part_size=PART)
    assert len(result.manifest.parts) >= 4
    return result


def expect(exc_type, result, tmp_path, key, **kw):
    dest = tmp_path / "out"
    with pytest.raises(exc_type) as info:
        reader.unbundle(result.manifest_path, dest, key, **kw)
    assert not dest.exists() or list(dest.iterdir()) == []  # nothing partial
    return info.value


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("index", [0, 2, -1])
def test_flipped_byte_in_a_part_names_the_part(bundle, tmp_path, test_keys, index):
    part = bundle.manifest.parts[index]
    flip(tmp_path / "b" / part.filename, 5)
    err = expect(errors.TamperedPart, bundle, tmp_path, test_keys.cloud_pk)
    assert err.part == part.filename and part.filename in str(err)


def test_flipped_byte_in_signature(bundle, tmp_path, test_keys):
    raw = bundle.manifest_path.read_bytes()
    i = raw.index(b"<signature>") + len(b"<signature>") + 10
    bundle.manifest_path.write_bytes(raw[:i] + (b"0" if raw[i:i + 1] != b"0" else b"1") + raw[i + 1:])
    expect(errors.BadSignature, bundle, tmp_path, test_keys.cloud_pk, certificate=test_keys.alice_cert)


def test_changed_image_digest(bundle, tmp_path, test_keys):
    raw = bundle.manifest_path.read_bytes()
    d = bundle.manifest.digest
    other = ("0" if d[0] != "0" else "1") + d[1:]
    bundle.manifest_path.write_bytes(raw.replace(d.encode(), other.encode()))
    expect(errors.BadSignature, bundle, tmp_path, test_keys.cloud_pk, certificate=test_keys.alice_cert)
    expect(errors.DigestMismatch, bundle, tmp_path, test_keys.cloud_pk)  # unsigned check path


def test_swapped_parts(bundle, tmp_path, test_keys):
    a, b = (tmp_path / "b" / p.filename for p in bundle.manifest.parts[1:3])
    tmp = a.with_suffix(".swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    err = expect(errors.TamperedPart, bundle, tmp_path, test_keys.alice_pk)
    assert err.part == bundle.manifest.parts[1].filename


def test_dropped_part(bundle, tmp_path, test_keys):
    part = bundle.manifest.parts[3]
    (tmp_path / "b" / part.filename).unlink()
    err = expect(errors.MissingPart, bundle, tmp_path, test_keys.alice_pk)
    assert err.part == part.filename


def test_truncated_part(bundle, tmp_path, test_keys):
    part = bundle.manifest.parts[1]
    path = tmp_path / "b" / part.filename
    path.write_bytes(path.read_bytes()[:-16])
    assert isinstance(expect(errors.BundleError, bundle, tmp_path, test_keys.alice_pk),
                      (errors.TamperedPart, errors.SizeMismatch))


def test_wrong_key(bundle, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expect(errors.WrongKey, bundle, tmp_path, stranger)


def test_wrong_image_size(bundle, tmp_path, test_keys):
    raw = bundle.manifest_path.read_bytes()
    size = bundle.manifest.size
    bundle.manifest_path.write_bytes(raw.replace(f"<size>{size}</size>".encode(), f"<size>{size + 1}</size>".encode()))
    expect(errors.SizeMismatch, bundle, tmp_path, test_keys.alice_pk)
    expect(errors.BadSignature, bundle, tmp_path, test_keys.alice_pk, certificate=test_keys.alice_cert)


def test_wrong_bundled_size(bundle, tmp_path, test_keys):
    raw = bundle.manifest_path.read_bytes()
    b = bundle.manifest.bundled_size
    bundle.manifest_path.write_bytes(raw.replace(f"<bundled_size>{b}</bundled_size>".encode(),
                                                 f"<bundled_size>{b - 16}</bundled_size>".encode()))
    expect(errors.SizeMismatch, bundle, tmp_path, test_keys.alice_pk)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ""])
def test_unsafe_part_names_are_refused(bundle, tmp_path, test_keys, name):
    raw = bundle.manifest_path.read_bytes()
    first = bundle.manifest.parts[0].filename
    bundle.manifest_path.write_bytes(raw.replace(f"<filename>{first}</filename>".encode(),
                                                 f"<filename>{name}</filename>".encode()))
    expect(errors.ManifestError, bundle, tmp_path, test_keys.alice_pk)


def test_part_count_and_gaps(bundle, tmp_path, test_keys):
    raw = bundle.manifest_path.read_bytes()
    n = len(bundle.manifest.parts)
    bundle.manifest_path.write_bytes(raw.replace(f'count="{n}"'.encode(), f'count="{n + 1}"'.encode()))
    expect(errors.ManifestError, bundle, tmp_path, test_keys.alice_pk)
    bundle.manifest_path.write_bytes(raw.replace(b'<part index="1">', b'<part index="7">'))
    expect(errors.ManifestError, bundle, tmp_path, test_keys.alice_pk)


def test_xml_entities_are_refused(tmp_path, test_keys):
    from bundletools import manifest

    bomb = b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaa">]><manifest>&a;</manifest>'
    with pytest.raises(errors.ManifestError):
        manifest.parse(bomb)


def test_existing_image_is_not_clobbered_on_failure(bundle, tmp_path, test_keys):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "img.raw").write_bytes(b"previous")
    flip(tmp_path / "b" / bundle.manifest.parts[0].filename, 0)
    with pytest.raises(errors.TamperedPart):
        reader.unbundle(bundle.manifest_path, dest, test_keys.alice_pk)
    assert [p.name for p in dest.iterdir()] == ["img.raw"]
    assert (dest / "img.raw").read_bytes() == b"previous"
