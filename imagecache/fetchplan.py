"""Planning ranged GETs: which byte ranges of which packs fetch a set of chunks.

Small chunks must travel in large requests (a Python HTTP server answers ~1k requests/s;
one request per 64 KiB chunk would cap a node at ~64 MB/s and flood Walrus). New chunks
of one prepare are stored contiguously in image order, so the chunks a node lacks are
usually long runs inside a few packs. `plan_ranges` sorts the wanted chunks by
(pack, pack_offset) and coalesces neighbours into one request when the gap between them
is small (reading a few unwanted bytes is cheaper than another round trip), then splits
runs longer than `max_request` so several requests can be in flight. Pure functions;
node imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .manifest import ChunkRef, ImageManifest


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """GET `pack` bytes [start, end) (end exclusive; HTTP `Range: bytes=start-(end-1)`)."""

    pack: str
    start: int
    end: int
    chunks: tuple[ChunkRef, ...]  # what the response holds, in pack order

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def http_range(self) -> str:
        return f"bytes={self.start}-{self.end - 1}"

    def slice(self, body: bytes | memoryview, chunk: ChunkRef) -> memoryview:
        """The bytes of `chunk` within this request's response body."""
        at = chunk.pack_offset - self.start
        return memoryview(body)[at : at + chunk.length]


def plan_ranges(
    manifest: ImageManifest,
    missing_shas: Iterable[str] | None = None,
    *,
    min_request: int = 1 << 20,
    max_gap: int = 256 << 10,
    max_request: int = 16 << 20,
) -> list[RangeRequest]:
    """Requests that fetch every stored chunk whose sha256 is in `missing_shas` (None: all).

    Each chunk is fetched once even if the image lists it several times. Two neighbouring
    chunks in a pack join one request when the gap between them is at most `max_gap`, or
    at most `min_request` while the request is still shorter than `min_request` (so tiny
    scattered runs still make requests of useful size). A request grows past
    `max_request` only by a single chunk. Requests come out ordered by (pack, start).
    """
    wanted = None if missing_shas is None else set(missing_shas)
    seen: set[str] = set()
    picked: list[tuple[str, int, ChunkRef]] = []
    for chunk in manifest.chunks:
        if chunk.zero or chunk.sha256 in seen or (wanted is not None and chunk.sha256 not in wanted):
            continue
        seen.add(chunk.sha256)
        picked.append((manifest.pack_key(chunk), chunk.pack_offset, chunk))
    picked.sort(key=lambda t: (t[0], t[1]))
    return _coalesce(picked, min_request, max_gap, max_request)


def _coalesce(picked, min_request: int, max_gap: int, max_request: int) -> list[RangeRequest]:
    requests: list[RangeRequest] = []
    pack, start, end, members = None, 0, 0, []
    for key, offset, chunk in picked:
        if members and key == pack:
            gap = offset - end
            size = end - start
            join = gap <= max_gap or (size < min_request and gap <= min_request)
            if offset < end:  # overlapping entries (cannot happen for distinct shas; be safe)
                join = True
            if join and size < max_request:
                end = max(end, offset + chunk.length)
                members.append(chunk)
                continue
        if members:
            requests.append(RangeRequest(pack, start, end, tuple(members)))
        pack, start, end, members = key, offset, offset + chunk.length, [chunk]
    if members:
        requests.append(RangeRequest(pack, start, end, tuple(members)))
    return requests


def plan_sequential(manifest: ImageManifest, *, max_request: int = 16 << 20) -> list[RangeRequest | ChunkRef]:
    """The whole image in image order: zero chunks as themselves, stored chunks grouped
    into requests of runs that are contiguous in one pack (what a streaming reader or
    `verify` needs; a node filling gaps should use `plan_ranges`)."""
    steps: list[RangeRequest | ChunkRef] = []
    pack, start, end, members = None, 0, 0, []

    def flush() -> None:
        nonlocal members
        if members:
            steps.append(RangeRequest(pack, start, end, tuple(members)))
            members = []

    for chunk in manifest.chunks:
        if chunk.zero:
            flush()
            steps.append(chunk)
            continue
        key = manifest.pack_key(chunk)
        if members and key == pack and chunk.pack_offset == end and end - start < max_request:
            end += chunk.length
            members.append(chunk)
            continue
        flush()
        pack, start, end, members = key, chunk.pack_offset, chunk.pack_offset + chunk.length, [chunk]
    flush()
    return steps
