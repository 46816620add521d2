"""Percent-encoding exactly as AWS canonicalises it (RFC 3986 unreserved set), on bytes.

Working on bytes keeps invalid UTF-8 in a query byte-exact through decode/re-encode.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

UNRESERVED = "-_.~"


def aws_quote(value: bytes | str, safe: str = UNRESERVED) -> str:
    return quote(value, safe=safe)


def parse_query(raw: str) -> list[tuple[bytes, bytes]]:
    """Decode a raw query string into (name, value) byte pairs, in order.

    '+' decodes to a space, as form encoding and aiohttp/yarl read it, so the parameters
    whose signature we check are the ones the server will act on. Empty pieces ("a&&b")
    are skipped; a name without '=' has an empty value.
    """
    pairs: list[tuple[bytes, bytes]] = []
    if not raw:
        return pairs
    for piece in raw.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append(
            (unquote_to_bytes(name.replace("+", " ")), unquote_to_bytes(value.replace("+", " ")))
        )
    return pairs


def canonical_query(pairs: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> str:
    """SigV4 canonical query: encode each name and value, sort by name then value."""
    encoded = sorted((aws_quote(k), aws_quote(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 dot-segment removal, also collapsing '//' (what SigV4 wants for non-S3 services)."""
    if not path:
        return "/"
    out: list[str] = []
    for seg in path.split("/"):
        if seg and seg != ".":
            if seg == "..":
                if out:
                    out.pop()
            else:
                out.append(seg)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last
