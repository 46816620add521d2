"""Our writer -> our reader, for the sizes that matter, opened with either key."""

from __future__ import annotations

import hashlib
import os

import pytest

from bundletools import reader

from bundle_testlib import test_keys  # noqa: F401 (fixtures)
from bundle_testlib import make_bundle

PART = 64 * 1024


def _pattern(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


@pytest.mark.parametrize("size", [0, 1, PART, 3 * PART, 3 * PART + 7], ids=["empty", "one-byte", "one-part",
                                                                          "multiple-of-part", "odd"])
@pytest.mark.parametrize("who", ["user", "cloud"])
def test_round_trip(tmp_path, test_keys, size, who):
    img = tmp_path / "img.raw"
    img.write_bytes(_pattern(size))
    result = make_bundle(test_keys, img, tmp_path / "bundle", part_size=PART)
    assert result.manifest.size == size
    key = test_keys.alice_pk if who == "user" else test_keys.cloud_pk
    out, res = reader.unbundle(result.manifest_path, tmp_path / "out", key, certificate=test_keys.alice_cert)
    assert out.read_bytes() == img.read_bytes()
    assert res.image_size == size


def test_sparse_100_mib(tmp_path, test_keys):
    img = tmp_path / "sparse.img"
    with open(img, "wb") as f:
        f.write(b"boot sector")
        f.seek(50 << 20)
        f.write(b"middle")
        f.truncate(100 << 20)
    result = make_bundle(test_keys, img, tmp_path / "bundle", part_size=1 << 20)
    assert result.manifest.bundled_size < 1 << 20  # zeros compress
    for key in (test_keys.alice_pk, test_keys.cloud_pk):
        out, _ = reader.unbundle(result.manifest_path, tmp_path / "out", key)
        assert out.stat().st_size == 100 << 20
        assert out.stat().st_blocks * 512 < 4 << 20  # the output stays sparse
        with open(out, "rb") as f:
            assert f.read(11) == b"boot sector"
            f.seek(50 << 20)
            assert f.read(6) == b"middle"


async def test_async_api_runs_off_the_loop(tmp_path, test_keys):
    from bundletools.writer import BundleSpec, bundle_image_async

    img = tmp_path / "a.img"
    img.write_bytes(os.urandom(300_000))
    result = await bundle_image_async(img, tmp_path / "b", BundleSpec(user="123456789012", prefix="a.img"),
                                      cloud_cert=test_keys.cloud_cert, user_cert=test_keys.alice_cert,
                                      private_key=test_keys.alice_pk)
    out, _ = await reader.unbundle_async(result.manifest_path, tmp_path / "o", test_keys.cloud_pk)
    assert out.read_bytes() == img.read_bytes()
