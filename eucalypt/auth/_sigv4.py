"""SigV4 building blocks shared by signing and verifying: canonical request, scope, signing key."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from ._encoding import aws_quote, canonical_query, remove_dot_segments

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


def format_amz_date(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return when.astimezone(timezone.utc).strftime(AMZ_DATE_FORMAT)


def parse_amz_date(value: str) -> datetime:
    """Parse YYYYMMDDTHHMMSSZ (ValueError if malformed). By hand: strptime showed up in
    the profile of every small request."""
    if len(value) != 16 or value[8] != "T" or value[15] != "Z" \
            or not (value[:8] + value[9:15]).isdigit() or not value.isascii():
        raise ValueError(f"not an ISO 8601 basic date-time: {value!r}")
    return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                    int(value[11:13]), int(value[13:15]), tzinfo=timezone.utc)


@functools.lru_cache(maxsize=4096)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key. Memoised: it changes once a day per credential scope, and
    deriving it costs four HMACs on every request otherwise."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def hmac_hex(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def canonical_uri(path: str, service: str) -> str:
    """S3 signs the path exactly as sent; every other service normalises and encodes it again."""
    if service == "s3":
        return path or "/"
    return aws_quote(remove_dot_segments(path), safe="/~")


def canonical_header_value(value: str) -> str:
    return " ".join(value.split())


def canonical_request(
    method: str,
    uri: str,
    query_pairs: Iterable[tuple[bytes, bytes]],
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    payload_hash: str,
) -> str:
    names = list(signed_headers)
    header_lines = "".join(
        f"{name}:{canonical_header_value(headers.get(name, ''))}\n" for name in names
    )
    return "\n".join(
        [method, uri, canonical_query(list(query_pairs)), header_lines, ";".join(names), payload_hash]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
