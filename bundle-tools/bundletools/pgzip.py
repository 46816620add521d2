"""Parallel gzip in the manner of pigz: one ordinary gzip member, compressed in blocks.

Why: gzip is the slow stage of bundling (tens of MB/s per core on incompressible
data) and the format only asks for "a gzip stream". zlib releases the GIL, so
blocks compressed on a thread pool use every core. Each block is a raw deflate
segment primed with the previous 32 KiB (so the ratio barely changes) and ended
with a sync flush; the concatenation is one valid deflate stream, which any gunzip
reads. The CRC-32 of the whole stream is combined from per-block CRCs.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from functools import lru_cache

WINDOW = 32 * 1024
# magic, CM=deflate, no flags, mtime 0, XFL 0, OS 3 (Unix) — what `gzip -c` writes for a pipe.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


def _gf2_times(mat: tuple[int, ...], vec: int) -> int:
    total, i = 0, 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Matrix of applying b then a."""
    return tuple(_gf2_times(a, col) for col in b)


@lru_cache(maxsize=64)
def _zeros_operator(length: int) -> tuple[int, ...]:
    """GF(2) matrix advancing a CRC-32 over `length` zero bytes (zlib's crc32_combine)."""
    op = (0xEDB88320,) + tuple(1 << n for n in range(31))  # one zero bit
    for _ in range(3):
        op = _gf2_compose(op, op)  # -> one zero byte
    result = tuple(1 << n for n in range(32))
    while length:
        if length & 1:
            result = _gf2_compose(op, result)
        op = _gf2_compose(op, op)
        length >>= 1
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B)."""
    if len2 == 0:
        return crc1
    return _gf2_times(_zeros_operator(len2), crc1) ^ crc2


def _compress_block(block: bytes, primer: bytes, level: int) -> tuple[bytes, int]:
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, primer) if primer else \
        zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    return c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(block)


def gzip_blocks(blocks: Iterable[bytes], pool: Executor, level: int = 1, ahead: int = 4) -> Iterator[bytes]:
    """Yield a gzip stream of the concatenated `blocks`, compressing `ahead` at a time.

    Memory stays at about `ahead` input blocks plus their outputs.
    """
    yield GZIP_HEADER
    pending: deque = deque()
    crc, total, primer = 0, 0, b""

    def finish_one() -> bytes:
        nonlocal crc
        fut, n = pending.popleft()
        data, block_crc = fut.result()
        crc = crc32_combine(crc, block_crc, n)
        return data

    try:
        for block in blocks:
            if not block:
                continue
            pending.append((pool.submit(_compress_block, block, primer, level), len(block)))
            total += len(block)
            primer = (primer + block)[-WINDOW:] if len(block) < WINDOW else block[-WINDOW:]
            while len(pending) > ahead:
                yield finish_one()
        while pending:
            yield finish_one()
    finally:
        for fut, _ in pending:
            fut.cancel()
    # final empty deflate block with BFINAL set
    yield zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    yield struct.pack("<II", crc, total & 0xFFFFFFFF)


class GunzipStream:
    """Incremental gunzip that accepts any level and multi-member streams."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self._started = False

    def feed(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                self._started = True
                out.append(self._d.decompress(data))
                if self._d.eof:
                    data = self._d.unused_data
                    self._d = zlib.decompressobj(31)
                    self._started = False
                else:
                    data = b""
        except zlib.error as exc:
            from .errors import CorruptPayload

            raise CorruptPayload(f"the decrypted payload is not gzip: {exc}") from exc
        return b"".join(out)

    def finish(self) -> None:
        if self._started:
            from .errors import CorruptPayload

            raise CorruptPayload("the gzip stream is truncated")
