"""Pure parts: fetch planning, the manifest format, chunking stability."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from imagecache import ChunkRef, DEFAULT_PARAMS, ImageManifest, ImageManifestInvalid, PackRef, plan_ranges
from imagecache.chunking import cut_stream
from imagecache.fetchplan import plan_sequential


def _manifest(spec) -> ImageManifest:
    """spec: list of (pack index | None for zero, pack_offset, length, sha)."""
    chunks, offset, sizes = [], 0, {}
    for pack, pack_offset, length, sha in spec:
        if pack is None:
            chunks.append(ChunkRef(offset, length, sha, True))
        else:
            chunks.append(ChunkRef(offset, length, sha, False, pack, pack_offset))
            sizes[pack] = max(sizes.get(pack, 0), pack_offset + length)
        offset += length
    packs = tuple(PackRef(f"packs/p{i}", sizes.get(i, 0)) for i in range(max(sizes) + 1))
    return ImageManifest("emi-test0001", "machine", offset, "0" * 64, DEFAULT_PARAMS, packs, tuple(chunks))


K = 1 << 10


def test_plan_coalesces_adjacent_and_small_gaps_and_splits_by_pack():
    m = _manifest([(0, 0, 64 * K, "a"), (0, 64 * K, 64 * K, "b"), (0, 128 * K, 64 * K, "c"),
                   (None, 0, 256 * K, "z"), (0, 1024 * K, 64 * K, "d"), (1, 0, 64 * K, "e"), (0, 192 * K, 64 * K, "f")])
    plan = plan_ranges(m, {"a", "c", "d", "e", "z"})
    # a..c with the 64 KiB gap (b) inside: one request; d is 832 KiB further (> max_gap)
    # but the request is still < 1 MiB, so it joins (min_request); e is another pack.
    assert [(r.pack, r.start, r.end) for r in plan] == [("packs/p0", 0, 1088 * K), ("packs/p1", 0, 64 * K)]
    assert [c.sha256 for c in plan[0].chunks] == ["a", "c", "d"]
    assert plan[0].http_range == f"bytes=0-{1088 * K - 1}"
    strict = plan_ranges(m, {"a", "c", "d"}, min_request=0, max_gap=0)
    far = plan_ranges(m, {"a", "c", "d"}, min_request=512 * K)  # 832 KiB gap > both limits
    assert [(r.start, r.end) for r in far] == [(0, 192 * K), (1024 * K, 1088 * K)]
    assert [(r.start, r.end) for r in strict] == [(0, 64 * K), (128 * K, 192 * K), (1024 * K, 1088 * K)]


def test_plan_each_chunk_once_and_max_request():
    spec = [(0, i * 64 * K, 64 * K, f"s{i}") for i in range(64)]  # 4 MiB contiguous
    m = _manifest(spec + [(0, 0, 64 * K, "s0")])  # s0 repeated at the end of the image
    plan = plan_ranges(m, None, max_request=1 << 20)
    assert sum(len(r.chunks) for r in plan) == 64
    assert all(r.length <= (1 << 20) for r in plan) and len(plan) == 4
    body = bytes(range(256)) * (4 * K)
    assert bytes(plan[1].slice(body, plan[1].chunks[0])) == body[: 64 * K]


def test_plan_sequential_keeps_image_order():
    m = _manifest([(0, 0, 10, "a"), (0, 10, 10, "b"), (None, 0, 5, "z"), (0, 0, 10, "a"), (0, 20, 10, "c")])
    steps = plan_sequential(m)
    kinds = [(type(s).__name__, getattr(s, "start", None), getattr(s, "end", None)) for s in steps]
    assert kinds == [("RangeRequest", 0, 20), ("ChunkRef", None, None), ("RangeRequest", 0, 10),
                     ("RangeRequest", 20, 30)]


def test_manifest_round_trip_and_validation():
    m = _manifest([(0, 0, 100, "a" * 64), (None, 0, 50, "b" * 64)])
    raw = m.to_bytes()
    assert ImageManifest.from_bytes(raw) == m
    doc = json.loads(raw)
    assert doc["format"] == "eucalypt-image-manifest" and doc["version"] == 1
    assert doc["chunks"][1] == {"offset": 100, "length": 50, "sha256": "b" * 64, "zero": True}
    for breakage in ({"version": 99}, {"format": "other"}, {"size": 151}, {"kind": "toaster"}):
        with pytest.raises(ImageManifestInvalid):
            ImageManifest.from_bytes(json.dumps({**doc, **breakage}).encode())
    doc["chunks"][0]["pack"] = 5
    with pytest.raises(ImageManifestInvalid):
        ImageManifest.from_bytes(json.dumps(doc).encode())
    with pytest.raises(ImageManifestInvalid):
        ImageManifest.from_bytes(b"not json")
    doc = json.loads(raw)
    doc["future_field"] = {"x": 1}  # unknown fields are ignored within a version
    assert ImageManifest.from_bytes(json.dumps(doc).encode()) == m


def test_chunking_is_content_defined():
    """An insertion near the start changes only the chunks around it."""
    data = hashlib.shake_256(b"cdc").digest(4 << 20)
    edited = data[:100000] + b"inserted bytes" + data[100000:]

    def digests(buf):
        return [hashlib.sha256(c.data).hexdigest() for c in cut_stream(io.BytesIO(buf), DEFAULT_PARAMS)]

    a, b = digests(data), digests(edited)
    assert len(set(b) - set(a)) <= 2
    assert all(DEFAULT_PARAMS.min_size <= c.length <= DEFAULT_PARAMS.max_size
               for c in list(cut_stream(io.BytesIO(data), DEFAULT_PARAMS))[:-1])
    zeros = list(cut_stream(io.BytesIO(bytes(1 << 20)), DEFAULT_PARAMS))
    assert all(c.zero for c in zeros) and sum(c.length for c in zeros) == 1 << 20
