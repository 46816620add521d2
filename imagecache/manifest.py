"""The image manifest: the versioned JSON contract between imagecache and node controllers.

Stored at ``manifests/<image-id>.json`` in the system bucket, written last by
`prepare`: if it exists, every pack it names exists and holds every chunk it lists.
Example (version 1)::

    {"format": "eucalypt-image-manifest", "version": 1,
     "image_id": "emi-0123abcd", "kind": "machine", "size": 67108864,
     "sha256": "5f1c...", "created": 1795000000.0,
     "source": {"bundle": "alice-images/ubuntu.img.manifest.xml", "digest_sha1": "9a0b..."},
     "chunking": {"algorithm": "fastcdc-2020", "avg_size": 65536, "min_size": 16384,
                  "max_size": 262144, "normalization": 1, "seed": 0},
     "packs": [{"key": "packs/0197f1a2c3d4-8e1f0a2b3c4d5e6f", "size": 3145728}],
     "chunks": [{"offset": 0, "length": 81920, "sha256": "aa01...", "pack": 0, "pack_offset": 0},
                {"offset": 81920, "length": 262144, "sha256": "8a39...", "zero": true},
                ...]}

* ``chunks`` is in image order, contiguous from offset 0 to ``size``. ``sha256`` is the
  lowercase hex SHA-256 of the chunk's bytes (zero chunks too, so a node may key its
  cache uniformly). A ``zero`` chunk is all zero bytes and is stored nowhere: a node
  writes (or leaves a hole of) ``length`` zeros.
* ``pack`` indexes ``packs``; the chunk's bytes are ``packs[pack].key`` at
  ``[pack_offset, pack_offset + length)``, raw (uncompressed). Pack keys are relative to
  the bucket holding the manifest. Packs are plain S3 objects: any S3-compatible
  store, ranged GETs only.
* Chunks are deduplicated: two entries with the same ``sha256`` (in one image or in
  images sharing packs) point at the same bytes.
* Readers must reject a ``format`` they do not know and a ``version`` greater than
  theirs; fields may be added within a version and must be ignored when unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .chunking import ChunkingParams
from .errors import ImageManifestInvalid

FORMAT = "eucalypt-image-manifest"
VERSION = 1
KINDS = ("machine", "kernel", "ramdisk")


@dataclass(frozen=True, slots=True)
class PackRef:
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class ChunkRef:
    offset: int
    length: int
    sha256: str
    zero: bool = False
    pack: int = -1  # index into ImageManifest.packs; -1 for zero chunks
    pack_offset: int = 0

    def to_json(self) -> dict:
        if self.zero:
            return {"offset": self.offset, "length": self.length, "sha256": self.sha256, "zero": True}
        return {"offset": self.offset, "length": self.length, "sha256": self.sha256,
                "pack": self.pack, "pack_offset": self.pack_offset}


@dataclass(frozen=True, slots=True)
class ImageManifest:
    image_id: str
    kind: str
    size: int
    sha256: str
    chunking: ChunkingParams
    packs: tuple[PackRef, ...]
    chunks: tuple[ChunkRef, ...]
    created: float = 0.0
    source: dict = field(default_factory=dict)
    version: int = VERSION

    @property
    def stored_chunks(self) -> list[ChunkRef]:
        return [c for c in self.chunks if not c.zero]

    def pack_key(self, chunk: ChunkRef) -> str:
        return self.packs[chunk.pack].key

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT, "version": self.version, "image_id": self.image_id, "kind": self.kind,
            "size": self.size, "sha256": self.sha256, "created": self.created, "source": self.source,
            "chunking": self.chunking.to_json(),
            "packs": [{"key": p.key, "size": p.size} for p in self.packs],
            "chunks": [c.to_json() for c in self.chunks],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ImageManifest":
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageManifestInvalid(f"image manifest is not JSON: {exc}") from exc
        try:
            if doc.get("format") != FORMAT:
                raise ImageManifestInvalid(f"not an image manifest (format {doc.get('format')!r})")
            if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
                raise ImageManifestInvalid(f"image manifest version {doc.get('version')!r} is not supported")
            packs = tuple(PackRef(str(p["key"]), int(p["size"])) for p in doc["packs"])
            chunks = tuple(
                ChunkRef(int(c["offset"]), int(c["length"]), str(c["sha256"]), True)
                if c.get("zero") else
                ChunkRef(int(c["offset"]), int(c["length"]), str(c["sha256"]), False,
                         int(c["pack"]), int(c["pack_offset"]))
                for c in doc["chunks"]
            )
            manifest = cls(
                image_id=str(doc["image_id"]), kind=str(doc["kind"]), size=int(doc["size"]),
                sha256=str(doc["sha256"]), chunking=ChunkingParams.from_json(doc["chunking"]),
                packs=packs, chunks=chunks, created=float(doc.get("created", 0.0)),
                source=dict(doc.get("source") or {}), version=doc["version"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ImageManifestInvalid(f"image manifest is malformed: {exc!r}") from exc
        manifest.check()
        return manifest

    def check(self) -> None:
        """Structural consistency: contiguous chunks covering `size`, valid pack references."""
        if self.kind not in KINDS:
            raise ImageManifestInvalid(f"unknown image kind {self.kind!r}")
        position = 0
        for c in self.chunks:
            if c.offset != position or c.length <= 0:
                raise ImageManifestInvalid(f"chunks are not contiguous at offset {position}")
            if not c.zero:
                if not 0 <= c.pack < len(self.packs):
                    raise ImageManifestInvalid(f"chunk at {c.offset} names pack {c.pack}, which is not listed")
                if c.pack_offset < 0 or c.pack_offset + c.length > self.packs[c.pack].size:
                    raise ImageManifestInvalid(f"chunk at {c.offset} lies outside its pack")
            position += c.length
        if position != self.size:
            raise ImageManifestInvalid(f"chunks cover {position} bytes but the image is {self.size}")
