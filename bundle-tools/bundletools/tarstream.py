"""The tar stage: one-member tar streams, written the way euca2ools 3.x on Python 3 does.

Writing: a PAX-format header from `tarfile` (plain ustar unless a field does not fit,
e.g. names over 100 characters), mode 0644, uid/gid 0, empty owner names, mtime 0;
data padded to 512; two zero blocks; the stream padded to a 10240-byte record.
Reading: `tarfile` in stream mode, which understands GNU, ustar, PAX and GNU sparse
members; we take the first regular file and never use its name as a path.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import CorruptPayload

BLOCK = 512
RECORD = 10240


def member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def trailer(header_len: int, size: int) -> bytes:
    """Data padding + end-of-archive blocks + record padding, given what came before."""
    pad = -size % BLOCK
    used = header_len + size + pad + 2 * BLOCK
    return bytes(pad + 2 * BLOCK + (-used % RECORD))


def tar_size(name: str, size: int) -> int:
    head = len(member_header(name, size))
    return head + size + len(trailer(head, size))


def first_regular_member(stream: BinaryIO, chunk_size: int = 1 << 20) -> tuple[tarfile.TarInfo, Iterator[bytes]]:
    """Open a tar stream and return the first regular file and an iterator of its bytes.

    `stream` only needs `read(n)`. The caller must drain the rest of `stream`
    afterwards if it hashes the whole tar stream (end blocks and padding included).
    """
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", bufsize=chunk_size)
        for info in archive:
            if info.isreg():
                break
        else:
            raise CorruptPayload("the tar stream holds no regular file")
        member = archive.extractfile(info)
    except tarfile.TarError as exc:
        raise CorruptPayload(f"the decrypted image is not a tar stream: {exc}") from exc

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                chunk = member.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        except (tarfile.TarError, EOFError) as exc:
            raise CorruptPayload(f"the tar stream is truncated: {exc}") from exc

    return info, chunks()
