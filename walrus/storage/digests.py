"""Whole-body digests computed while a body streams in (md5 for the ETag, plus the
checksums S3 clients may ask for). Values are raw bytes; CRCs are 4 bytes big-endian,
which is what S3 base64-encodes in x-amz-checksum-crc32(c).

crc32c has no stdlib implementation; it is available only when a compiled module
(`google_crc32c` or `crc32c`) is importable -- no dependency is added for it, and a
pure-Python table version would run at a few MB/s, far below the stage() target.
`available()` lists what this build supports; asking for anything else raises
UnsupportedDigest.
"""

from __future__ import annotations

import hashlib
import zlib

from .errors import UnsupportedDigest

try:  # pragma: no cover - depends on the environment
    import google_crc32c as _gcrc

    def _crc32c(data, value: int) -> int:
        return _gcrc.extend(value, bytes(data))
except ImportError:  # pragma: no cover
    try:
        import crc32c as _crc

        def _crc32c(data, value: int) -> int:
            return _crc.crc32c(data, value)
    except ImportError:
        _crc32c = None

_HASHLIB = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}


def available() -> tuple[str, ...]:
    names = ["md5", "sha1", "sha256", "crc32"]
    if _crc32c is not None:
        names.append("crc32c")
    return tuple(names)


class Digests:
    """Running digests over a stream. Not thread-safe: feed it from one thread at a time,
    in order."""

    __slots__ = ("_hashes", "_crcs")

    def __init__(self, names):
        self._hashes = {}
        self._crcs = {}
        for name in names:
            if name in _HASHLIB:
                self._hashes[name] = _HASHLIB[name]()
            elif name == "crc32" or (name == "crc32c" and _crc32c is not None):
                self._crcs[name] = 0
            else:
                raise UnsupportedDigest(f"digest {name!r} is not supported "
                                        f"(available: {', '.join(available())})")

    def update(self, data) -> None:
        for h in self._hashes.values():
            h.update(data)
        crcs = self._crcs
        if crcs:
            if "crc32" in crcs:
                crcs["crc32"] = zlib.crc32(data, crcs["crc32"])
            if "crc32c" in crcs:
                crcs["crc32c"] = _crc32c(data, crcs["crc32c"])

    def result(self) -> dict[str, bytes]:
        out = {name: h.digest() for name, h in self._hashes.items()}
        for name, v in self._crcs.items():
            out[name] = v.to_bytes(4, "big")
        return out
