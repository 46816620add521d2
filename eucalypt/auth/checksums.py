"""Encodings of the S3 flexible checksums (x-amz-checksum-*): base64 of the big-endian digest.

The storage engine computes digests while streaming; this module only names the algorithms
and encodes/compares values, so both sides agree on the wire format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib

from .errors import BadDigest, InvalidRequest

ALGORITHMS = ("crc32", "crc32c", "sha1", "sha256")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli). Pure Python (slow, ~10 MB/s): the compiled ``crc32c`` package is used when installed."""
    try:
        import crc32c as _fast  # optional dependency
    except ImportError:
        crc ^= 0xFFFFFFFF
        table = _CRC32C_TABLE
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    return _fast.crc32c(data, crc)


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The x-amz-checksum-<algorithm> value for ``data``."""
    algorithm = algorithm.lower()
    if algorithm == "crc32":
        return crc32_b64(data)
    if algorithm == "crc32c":
        return crc32c_b64(data)
    if algorithm in ("sha1", "sha256"):
        return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    raise InvalidRequest(f"unsupported checksum algorithm {algorithm!r}")


def encode_digest(digest: bytes | int) -> str:
    """base64 of a digest; an int is taken as a CRC (4 bytes, big-endian)."""
    if isinstance(digest, int):
        digest = digest.to_bytes(4, "big")
    return base64.b64encode(digest).decode()


def check_checksum(algorithm: str, expected_b64: str, actual: bytes | int) -> None:
    """Raise BadDigest unless ``actual`` (digest bytes or CRC int) encodes to ``expected_b64``."""
    if not hmac.compare_digest(encode_digest(actual).encode(), expected_b64.strip().encode()):
        raise BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
