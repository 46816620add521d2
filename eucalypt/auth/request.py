"""Request descriptions exchanged with the auth library: what came in, what was parsed, what was proven.

Everything here is a frozen value; servers build an ``HttpRequest`` from whatever their
HTTP layer hands them, so the signing logic never sees a socket or a framework object.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _lower_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    # Repeated headers (a multidict's items(), or "Host" and "host" in a plain dict)
    # are comma-joined, which is also how SigV4 canonicalises them.
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as seen on the wire (path and query still percent-encoded)."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _lower_headers(self.headers))
        object.__setattr__(self, "method", self.method.upper())

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Scheme(enum.Enum):
    """How the request carries its signature."""

    V4_HEADER = "v4-header"  # Authorization: AWS4-HMAC-SHA256 ...
    V4_QUERY = "v4-query"  # presigned URL, X-Amz-Signature=...
    V2_HEADER = "v2-header"  # S3: Authorization: AWS AKID:sig
    V2_QUERY = "v2-query"  # S3 presigned: AWSAccessKeyId, Signature, Expires
    V2_EC2_QUERY = "v2-ec2-query"  # EC2/Query API: SignatureVersion=2 parameters


class PayloadMode(enum.Enum):
    """What the signature says about the body, and so what the caller must still check."""

    SIGNED = "signed"  # x-amz-content-sha256 is a hex digest; caller hashes the body
    UNSIGNED = "unsigned"  # UNSIGNED-PAYLOAD
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    NONE = "none"  # SigV2 / EC2 SigV2: the signature makes no claim about the body

    @property
    def is_streaming(self) -> bool:
        return self.value.startswith("STREAMING-")


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The signature claims of a request, parsed but not yet checked (the secret is not known yet).

    ``params`` holds the decoded query (and, for EC2, form-body) parameters that take part in
    the signature, so that ``verify`` does not parse twice.
    """

    scheme: Scheme
    access_key: str
    signature: str
    service: str
    region: str | None = None
    date: str | None = None  # credential-scope date, YYYYMMDD (SigV4)
    amz_date: str | None = None  # request timestamp as signed (SigV4: YYYYMMDDTHHMMSSZ)
    signed_headers: tuple[str, ...] = ()
    expires: int | None = None  # V4: X-Amz-Expires seconds; V2: Expires epoch seconds
    signature_method: str | None = None  # EC2 SigV2: HmacSHA256 / HmacSHA1
    sigv2_resource: str | None = None  # S3 SigV2 canonical resource incl. sub-resources
    params: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def scope(self) -> str | None:
        if self.date is None:
            return None
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class StreamingSeed:
    """What an aws-chunked decoder needs to check chunk signatures after the headers were verified."""

    signing_key: bytes = field(repr=False)
    seed_signature: str
    amz_date: str
    scope: str


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out; payload_mode says what is left to check on the body."""

    access_key: str
    scheme: Scheme
    payload_mode: PayloadMode
    service: str
    region: str | None = None
    payload_sha256: str | None = None  # SIGNED: the hex digest the body must have
    seed: StreamingSeed | None = None  # streaming modes with signed chunks/trailers
    decoded_content_length: int | None = None  # x-amz-decoded-content-length, if sent
    trailers: tuple[str, ...] = ()  # x-amz-trailer names, lowercase
