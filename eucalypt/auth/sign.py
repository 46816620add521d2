"""Signing requests (our own clients and tests): pure functions from a request description to headers or a query."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone

from . import _sigv4 as v4
from ._encoding import aws_quote, parse_query
from .request import HttpRequest
from .verify import ec2_v2_string_to_sign, sigv2_string_to_sign


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return now.astimezone(timezone.utc)


def _scope(now: datetime, region: str, service: str) -> tuple[str, str, str]:
    amz_date = v4.format_amz_date(now)
    return amz_date, amz_date[:8], f"{amz_date[:8]}/{region}/{service}/aws4_request"


def sign_v4(
    req: HttpRequest,
    *,
    access_key: str,
    secret: str,
    region: str,
    service: str,
    now: datetime,
    payload_sha256: str = v4.UNSIGNED_PAYLOAD,
    signed_headers: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """Headers to add to ``req`` (Authorization, X-Amz-Date, x-amz-content-sha256).

    ``req`` must already carry a Host header. By default every header present is signed
    (as botocore does) except a few that proxies rewrite.
    """
    if req.header("host") is None:
        raise ValueError("the request needs a Host header to be signed")
    amz_date, date, scope = _scope(now, region, service)
    headers = dict(req.headers)
    headers["x-amz-date"] = amz_date
    headers["x-amz-content-sha256"] = payload_sha256
    names = tuple(sorted(signed_headers or (h for h in headers if h not in _NEVER_SIGN)))
    if "host" not in names:
        names = tuple(sorted(names + ("host",)))
    canonical = v4.canonical_request(
        req.method, v4.canonical_uri(req.path, service), parse_query(req.query), headers, names, payload_sha256
    )
    key = v4.signing_key(secret, date, region, service)
    signature = v4.hmac_hex(key, v4.string_to_sign(amz_date, scope, canonical))
    return {
        "Authorization": f"{v4.ALGORITHM} Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}",
        "X-Amz-Date": amz_date,
        "x-amz-content-sha256": payload_sha256,
    }


# The same headers botocore leaves out: hop-by-hop ones and those proxies add or rewrite.
_NEVER_SIGN = frozenset(
    {"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id", "authorization", "connection",
     "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"}
)


def presign_v4(
    req: HttpRequest,
    *,
    access_key: str,
    secret: str,
    region: str,
    service: str,
    now: datetime,
    expires: int = 3600,
) -> str:
    """The full query string (original parameters + X-Amz-* + X-Amz-Signature) of a presigned URL; signs only Host."""
    host = req.header("host")
    if host is None:
        raise ValueError("the request needs a Host header to be presigned")
    amz_date, date, scope = _scope(now, region, service)
    auth = [
        (b"X-Amz-Algorithm", v4.ALGORITHM.encode()),
        (b"X-Amz-Credential", f"{access_key}/{scope}".encode()),
        (b"X-Amz-Date", amz_date.encode()),
        (b"X-Amz-Expires", str(expires).encode()),
        (b"X-Amz-SignedHeaders", b"host"),
    ]
    params = parse_query(req.query) + auth
    payload = v4.UNSIGNED_PAYLOAD if service == "s3" else v4.EMPTY_SHA256
    canonical = v4.canonical_request(
        req.method, v4.canonical_uri(req.path, service), params, {"host": host}, ("host",), payload
    )
    key = v4.signing_key(secret, date, region, service)
    signature = v4.hmac_hex(key, v4.string_to_sign(amz_date, scope, canonical))
    return "&".join(f"{aws_quote(k)}={aws_quote(v)}" for k, v in params) + f"&X-Amz-Signature={signature}"


def sign_v2_s3(req: HttpRequest, *, access_key: str, secret: str, resource: str) -> dict[str, str]:
    """The Authorization header for S3 SigV2; ``req`` must carry the Date (or x-amz-date) it will send.

    ``resource`` is the canonical resource including signed sub-resources, e.g. "/bucket/key?acl".
    """
    sts = sigv2_string_to_sign(req, resource)
    signature = base64.b64encode(hmac.new(secret.encode(), sts.encode(), hashlib.sha1).digest()).decode()
    return {"Authorization": f"AWS {access_key}:{signature}"}


def sign_v2_ec2(
    method: str, host: str, path: str, params: dict[str, str], *, access_key: str, secret: str, now: datetime
) -> dict[str, str]:
    """EC2 Query SigV2 (HmacSHA256): returns ``params`` plus the auth parameters and Signature."""
    out = dict(params)
    out.update(
        AWSAccessKeyId=access_key,
        SignatureVersion="2",
        SignatureMethod="HmacSHA256",
        Timestamp=_utc(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    pairs = [(k.encode(), v.encode()) for k, v in out.items()]
    sts = ec2_v2_string_to_sign(method.upper(), host, path, pairs)
    out["Signature"] = base64.b64encode(hmac.new(secret.encode(), sts.encode(), hashlib.sha256).digest()).decode()
    return out
