"""Verifying signed requests in two steps: ``parse`` (no secret needed) then ``verify``.

The split lets a server look the secret up asynchronously (Walrus asks control) between
the two, and answer anonymous requests without any lookup at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from . import _sigv4 as v4
from ._encoding import aws_quote, parse_query
from .errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidArgument,
    InvalidRequest,
    MissingSecurityHeader,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)
from .request import AuthRequest, HttpRequest, PayloadMode, Scheme, StreamingSeed, Verified

MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800  # one week, the SigV4 limit

# Sub-resources that S3 SigV2 signs (the spec's list plus what botocore's HmacV1Auth adds,
# so that every client we know of agrees with us).
SIGV2_SUBRESOURCES = frozenset(
    """accelerate acl analytics cors defaultObjectAcl delete inventory lifecycle location
    logging metrics notification object-lock partNumber policy replication requestPayment
    restore select select-type storageClass tagging torrent uploadId uploads versionId
    versioning versions website response-content-type response-content-language
    response-expires response-cache-control response-content-disposition
    response-content-encoding""".split()
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_STREAMING = {m.value: m for m in PayloadMode if m.is_streaming}
_V4_QUERY_REQUIRED = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
# x-amz-* headers clients send without signing them; every other one must be signed.
_UNSIGNABLE_AMZ = frozenset({"x-amz-user-agent", "x-amz-content-sha256"})


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _single(params: list[tuple[bytes, bytes]], name: str, err: type) -> str | None:
    values = [v for k, v in params if k == name.encode()]
    if len(values) > 1:
        raise err(f"{name} was given more than once")
    return _text(values[0]) if values else None


# ---------------------------------------------------------------------------- parse


def parse(
    req: HttpRequest,
    *,
    service: str,
    sigv2_resource: str | None = None,
    form: bytes | str | None = None,
) -> AuthRequest | None:
    """Read the signature claims of ``req``; None means anonymous.

    ``service`` is the service this endpoint is ("s3", "ec2"); a SigV4 credential scope
    naming another one is refused. ``sigv2_resource`` is the S3 SigV2 resource path
    ("/bucket/key", percent-encoded as sent, without any /services/... prefix); it defaults
    to the request path. ``form`` is an application/x-www-form-urlencoded body whose
    parameters count as query parameters (EC2 Query API POSTs carry SigV2 there).
    """
    params = parse_query(req.query)
    if form:
        params += parse_query(form.decode("latin-1") if isinstance(form, bytes) else form)
    names = {k for k, _ in params}
    authorization = req.header("authorization")
    in_query = [n for n in (b"X-Amz-Signature", b"X-Amz-Algorithm", b"Signature") if n in names]
    if authorization is not None and in_query:
        raise InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified"
        )
    if authorization is not None:
        if authorization.startswith(v4.ALGORITHM + " "):
            return _parse_v4_header(req, authorization, service)
        if authorization.startswith("AWS ") and service == "s3":
            return _parse_v2_header(req, authorization, sigv2_resource)
        if authorization.startswith("AWS4-"):
            raise InvalidRequest(f"unsupported signing algorithm {authorization.split()[0]!r}")
        raise AuthorizationHeaderMalformed("unsupported Authorization header type")
    if b"X-Amz-Algorithm" in names or b"X-Amz-Signature" in names:
        return _parse_v4_query(params, service)
    if b"Signature" in names:
        if service == "s3":
            return _parse_v2_query(req, params, sigv2_resource)
        return _parse_v2_ec2(params, service)
    return None


def _parse_credential(value: str, service: str, err: type) -> tuple[str, str, str]:
    """(access_key, date, region) from "AKID/YYYYMMDD/region/service/aws4_request"."""
    parts = value.split("/")
    if len(parts) < 5 or not parts[0]:
        raise err(f"the credential {value!r} is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"")
    access_key = "/".join(parts[:-4])
    date, region, scope_service, terminator = parts[-4:]
    if not re.fullmatch(r"\d{8}", date):
        raise err(f"invalid credential date {date!r}")
    if not region:
        raise err("the credential scope names no region")
    if scope_service != service:
        raise err(f"incorrect service {scope_service!r}; this endpoint belongs to {service!r}")
    if terminator != "aws4_request":
        raise err(f"incorrect terminal {terminator!r}; this endpoint uses \"aws4_request\"")
    return access_key, date, region


def _parse_signed_headers(value: str, err: type) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.lower().strip() for n in names):
        raise err(f"mal-formed SignedHeaders {value!r}")
    if "host" not in names:
        raise err("the host header must be signed")
    return names


def _v4_request_date(req: HttpRequest) -> str:
    amz_date = req.header("x-amz-date")
    if amz_date is not None:
        try:
            v4.parse_amz_date(amz_date)
        except ValueError:
            raise AccessDenied(f"invalid x-amz-date {amz_date!r}") from None
        return amz_date
    date = req.header("date")
    if date is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    try:
        return v4.format_amz_date(parsedate_to_datetime(date))
    except (TypeError, ValueError):
        raise AccessDenied(f"invalid Date header {date!r}") from None


def _parse_v4_header(req: HttpRequest, authorization: str, service: str) -> AuthRequest:
    err = AuthorizationHeaderMalformed
    fields: dict[str, str] = {}
    for piece in authorization[len(v4.ALGORITHM) :].split(","):
        name, sep, value = piece.strip().partition("=")
        if not sep or name in fields:
            raise err("the authorization header is malformed")
        fields[name] = value
    missing = {"Credential", "SignedHeaders", "Signature"} - fields.keys()
    if missing:
        raise err(f"the authorization header is missing {', '.join(sorted(missing))}")
    access_key, date, region = _parse_credential(fields["Credential"], service, err)
    signed = _parse_signed_headers(fields["SignedHeaders"], err)
    amz_date = _v4_request_date(req)
    if amz_date[:8] != date:
        raise err(f"invalid credential date {date!r}; it is not the date of the request {amz_date[:8]!r}")
    if service == "s3":
        claim = req.header("x-amz-content-sha256")
        if claim is None:
            raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        unsigned = sorted(
            n for n in req.headers if n.startswith("x-amz-") and n not in signed and n not in _UNSIGNABLE_AMZ
        )
        if unsigned:
            raise AccessDenied(
                "There were headers present in the request which were not signed: " + ", ".join(unsigned)
            )
    return AuthRequest(
        scheme=Scheme.V4_HEADER,
        access_key=access_key,
        signature=fields["Signature"],
        service=service,
        region=region,
        date=date,
        amz_date=amz_date,
        signed_headers=signed,
        params=tuple(parse_query(req.query)),
    )


def _parse_v4_query(params: list[tuple[bytes, bytes]], service: str) -> AuthRequest:
    err = AuthorizationQueryParametersError
    got = {name: _single(params, name, err) for name in _V4_QUERY_REQUIRED}
    if any(v is None for v in got.values()):
        raise err(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
        )
    if got["X-Amz-Algorithm"] != v4.ALGORITHM:
        raise err(f"X-Amz-Algorithm only supports \"{v4.ALGORITHM}\"")
    access_key, date, region = _parse_credential(got["X-Amz-Credential"], service, err)
    signed = _parse_signed_headers(got["X-Amz-SignedHeaders"], err)
    amz_date = got["X-Amz-Date"]
    try:
        v4.parse_amz_date(amz_date)
    except ValueError:
        raise err("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"") from None
    if amz_date[:8] != date:
        raise err(f"invalid credential date {date!r}; it is not the date of X-Amz-Date")
    expires_text = got["X-Amz-Expires"]
    if not expires_text.isdigit():
        raise err("X-Amz-Expires should be a number")
    expires = int(expires_text)
    if expires > MAX_PRESIGN_EXPIRES:
        raise err("X-Amz-Expires must be less than a week (in seconds) that is 604800")
    return AuthRequest(
        scheme=Scheme.V4_QUERY,
        access_key=access_key,
        signature=got["X-Amz-Signature"],
        service=service,
        region=region,
        date=date,
        amz_date=amz_date,
        signed_headers=signed,
        expires=expires,
        params=tuple(p for p in params if p[0] != b"X-Amz-Signature"),
    )


def _sigv2_subresources(query: str) -> str:
    """The "?a&b=c" suffix S3 SigV2 appends to the resource: signed sub-resources, sorted by name."""
    found: list[tuple[str, str]] = []
    for piece in query.split("&") if query else ():
        raw_name, sep, raw_value = piece.partition("=")
        name = _text(parse_query(raw_name)[0][0]) if raw_name else ""
        if name in SIGV2_SUBRESOURCES:
            value = _text(parse_query("x=" + raw_value)[0][1])
            found.append((name, f"{name}={value}" if sep else name))
    found.sort(key=lambda item: item[0])
    return ("?" + "&".join(text for _, text in found)) if found else ""


def _parse_v2_header(req: HttpRequest, authorization: str, resource: str | None) -> AuthRequest:
    access_key, sep, signature = authorization[4:].strip().rpartition(":")
    if not sep or not access_key or not signature:
        raise AuthorizationHeaderMalformed("expected \"AWS <AccessKeyId>:<Signature>\"")
    return AuthRequest(
        scheme=Scheme.V2_HEADER,
        access_key=access_key,
        signature=signature,
        service="s3",
        sigv2_resource=(resource if resource is not None else req.path) + _sigv2_subresources(req.query),
    )


def _parse_v2_query(req: HttpRequest, params: list[tuple[bytes, bytes]], resource: str | None) -> AuthRequest:
    err = AuthorizationQueryParametersError
    access_key = _single(params, "AWSAccessKeyId", err)
    signature = _single(params, "Signature", err)
    expires = _single(params, "Expires", err)
    if not access_key or not signature or expires is None:
        raise AccessDenied("Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters")
    if not expires.isdigit():
        raise err(f"invalid Expires {expires!r}")
    return AuthRequest(
        scheme=Scheme.V2_QUERY,
        access_key=access_key,
        signature=signature,
        service="s3",
        expires=int(expires),
        sigv2_resource=(resource if resource is not None else req.path) + _sigv2_subresources(req.query),
        params=tuple(params),
    )


def _parse_v2_ec2(params: list[tuple[bytes, bytes]], service: str) -> AuthRequest:
    err = AuthorizationQueryParametersError
    version = _single(params, "SignatureVersion", err)
    if version != "2":
        raise InvalidRequest(f"unsupported SignatureVersion {version!r}; only 2 and SigV4 are accepted")
    access_key = _single(params, "AWSAccessKeyId", err)
    signature = _single(params, "Signature", err)
    method = _single(params, "SignatureMethod", err)
    if not access_key or not signature:
        raise MissingSecurityHeader("SigV2 requires the AWSAccessKeyId and Signature parameters")
    if method not in ("HmacSHA256", "HmacSHA1"):
        raise InvalidRequest(f"unsupported SignatureMethod {method!r}")
    if _single(params, "Timestamp", err) is None and _single(params, "Expires", err) is None:
        raise MissingSecurityHeader("SigV2 requires a Timestamp or an Expires parameter")
    return AuthRequest(
        scheme=Scheme.V2_EC2_QUERY,
        access_key=access_key,
        signature=signature,
        service=service,
        signature_method=method,
        params=tuple(params),
    )


# ---------------------------------------------------------------------------- verify


def verify(
    auth: AuthRequest,
    req: HttpRequest,
    secret: str,
    *,
    now: datetime,
    body_sha256: str | None = None,
) -> Verified:
    """Check ``auth`` (from ``parse(req)``) against ``secret``, at time ``now``.

    ``body_sha256`` is the hex SHA-256 of the body when the caller already knows it (small
    EC2 form bodies); for S3 it is usually left out and the caller checks the body while
    streaming it, against ``Verified.payload_sha256``. Services other than S3 sign the body
    hash without an x-amz-content-sha256 header: then ``body_sha256`` defaults to the hash
    of an empty body.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if auth.scheme in (Scheme.V4_HEADER, Scheme.V4_QUERY):
        return _verify_v4(auth, req, secret, now, body_sha256)
    if auth.scheme is Scheme.V2_EC2_QUERY:
        return _verify_v2_ec2(auth, req, secret, now)
    return _verify_v2_s3(auth, req, secret, now)


def _check_skew(signed_at: datetime, now: datetime) -> None:
    if abs(now - signed_at) > MAX_SKEW:
        raise RequestTimeTooSkewed("The difference between the request time and the current time is too large.")


def _verify_v4(auth: AuthRequest, req: HttpRequest, secret: str, now: datetime, body_sha256: str | None) -> Verified:
    signed_at = v4.parse_amz_date(auth.amz_date)
    if auth.scheme is Scheme.V4_QUERY:
        if now > signed_at + timedelta(seconds=auth.expires):
            raise AccessDenied("Request has expired")
        if signed_at - now > MAX_SKEW:
            raise AccessDenied("Request is not valid yet")
    else:
        _check_skew(signed_at, now)

    claim = req.header("x-amz-content-sha256")
    if claim is not None:
        payload_hash = claim
    elif auth.scheme is Scheme.V4_QUERY and auth.service == "s3":
        payload_hash = v4.UNSIGNED_PAYLOAD
    else:
        payload_hash = body_sha256 if body_sha256 is not None else v4.EMPTY_SHA256
    if payload_hash == v4.UNSIGNED_PAYLOAD:
        mode = PayloadMode.UNSIGNED
    elif payload_hash in _STREAMING:
        mode = _STREAMING[payload_hash]
        if auth.scheme is not Scheme.V4_HEADER:
            raise InvalidRequest("streaming payloads need header authentication")
    elif _HEX64.fullmatch(payload_hash):
        mode = PayloadMode.SIGNED
    else:
        raise InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER "
            "or a valid lowercase hex sha256 value"
        )

    key = v4.signing_key(secret, auth.date, auth.region, auth.service)
    canonical = v4.canonical_request(
        req.method,
        v4.canonical_uri(req.path, auth.service),
        auth.params,
        req.headers,
        auth.signed_headers,
        payload_hash,
    )
    expected = v4.hmac_hex(key, v4.string_to_sign(auth.amz_date, auth.scope, canonical))
    if not hmac.compare_digest(expected.encode(), auth.signature.encode("utf-8", "surrogateescape")):
        raise SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method."
        )

    if mode is PayloadMode.SIGNED and body_sha256 is not None and body_sha256 != payload_hash:
        raise XAmzContentSHA256Mismatch("The provided 'x-amz-content-sha256' header does not match what was computed.")
    decoded_length = None
    if (text := req.header("x-amz-decoded-content-length")) is not None:
        if not text.isdigit():
            raise InvalidArgument(f"invalid x-amz-decoded-content-length {text!r}")
        decoded_length = int(text)
    trailers = tuple(
        t.strip().lower() for t in (req.header("x-amz-trailer") or "").split(",") if t.strip()
    )
    seed = None
    if mode in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER):
        seed = StreamingSeed(signing_key=key, seed_signature=expected, amz_date=auth.amz_date, scope=auth.scope)
    return Verified(
        access_key=auth.access_key,
        scheme=auth.scheme,
        payload_mode=mode,
        service=auth.service,
        region=auth.region,
        payload_sha256=payload_hash if mode is PayloadMode.SIGNED else None,
        seed=seed,
        decoded_content_length=decoded_length,
        trailers=trailers,
    )


def sigv2_string_to_sign(req: HttpRequest, resource: str, *, expires: int | None = None) -> str:
    """S3 SigV2 string to sign; ``expires`` replaces the Date line for presigned URLs.

    For presigned URLs clients move x-amz-*, Content-Type and Content-MD5 into the query;
    they count as headers here.
    """
    headers = dict(req.headers)
    if expires is not None:
        for name, value in parse_query(req.query):
            lname = _text(name).lower()
            if lname.startswith("x-amz-") or lname in ("content-type", "content-md5"):
                headers.setdefault(lname, _text(value))
        date_line = str(expires)
    else:
        # "If you include x-amz-date, use the empty string for the Date" (the S3 SigV2 spec).
        date_line = "" if "x-amz-date" in headers else headers.get("date", "")
    # Repeated headers arrive already joined with "," (HttpRequest); a single value is only
    # trimmed, never split: "x-amz-date: Wed, 02 Dec 2026 ..." must keep its ", " (s3cmd
    # signs that way, as botocore's HmacV1 does).
    amz = "".join(
        f"{name}:{headers[name].strip()}\n"
        for name in sorted(h for h in headers if h.startswith("x-amz-"))
    )
    return (
        f"{req.method}\n{headers.get('content-md5', '').strip()}\n{headers.get('content-type', '').strip()}\n"
        f"{date_line}\n{amz}{resource}"
    )


def _b64_hmac(secret: str, msg: str, digest) -> str:
    return base64.b64encode(hmac.new(secret.encode(), msg.encode("utf-8", "surrogateescape"), digest).digest()).decode()


def _parse_http_date(value: str) -> datetime:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        pass
    try:
        return v4.parse_amz_date(value)
    except ValueError:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header") from None


def _signature_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def _verify_v2_s3(auth: AuthRequest, req: HttpRequest, secret: str, now: datetime) -> Verified:
    if auth.scheme is Scheme.V2_QUERY:
        if now.timestamp() > auth.expires:
            raise AccessDenied("Request has expired")
        sts = sigv2_string_to_sign(req, auth.sigv2_resource, expires=auth.expires)
    else:
        stamp = req.header("x-amz-date") or req.header("date")
        if stamp is None:
            raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        signed_at = _parse_http_date(stamp)
        if signed_at.tzinfo is None:
            signed_at = signed_at.replace(tzinfo=timezone.utc)
        _check_skew(signed_at, now)
        sts = sigv2_string_to_sign(req, auth.sigv2_resource)
    if not _signature_matches(_b64_hmac(secret, sts, hashlib.sha1), auth.signature):
        raise SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method."
        )
    return Verified(access_key=auth.access_key, scheme=auth.scheme, payload_mode=PayloadMode.NONE, service="s3")


def ec2_v2_string_to_sign(method: str, host: str, path: str, params) -> str:
    """EC2 Query SigV2: method, lowercase host, path and the sorted, encoded parameters."""
    pairs = sorted((aws_quote(k), aws_quote(v)) for k, v in params if k != b"Signature")
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method}\n{host.lower()}\n{path or '/'}\n{query}"


def _verify_v2_ec2(auth: AuthRequest, req: HttpRequest, secret: str, now: datetime) -> Verified:
    params = list(auth.params)
    expires = _single(params, "Expires", AuthorizationQueryParametersError)
    timestamp = _single(params, "Timestamp", AuthorizationQueryParametersError)
    try:
        if expires is not None:
            if now > _parse_iso8601(expires):
                raise AccessDenied("Request has expired")
        else:
            _check_skew(_parse_iso8601(timestamp), now)
    except ValueError:
        raise AuthorizationQueryParametersError("invalid Timestamp or Expires") from None
    host = req.header("host")
    if host is None:
        raise MissingSecurityHeader("the Host header is required")
    digest = hashlib.sha256 if auth.signature_method == "HmacSHA256" else hashlib.sha1
    sts = ec2_v2_string_to_sign(req.method, host, req.path, params)
    if not _signature_matches(_b64_hmac(secret, sts, digest), auth.signature):
        raise SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return Verified(access_key=auth.access_key, scheme=auth.scheme, payload_mode=PayloadMode.NONE, service=auth.service)


def _parse_iso8601(value: str) -> datetime:
    """EC2 timestamps: 2024-01-02T03:04:05Z, with optional fraction or numeric offset."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def check_payload_sha256(verified: Verified, body_sha256: str) -> None:
    """For PayloadMode.SIGNED: raise XAmzContentSHA256Mismatch unless the body hashed as signed."""
    if verified.payload_mode is PayloadMode.SIGNED and not hmac.compare_digest(
        verified.payload_sha256.encode(), body_sha256.lower().encode()
    ):
        raise XAmzContentSHA256Mismatch("The provided 'x-amz-content-sha256' header does not match what was computed.")
