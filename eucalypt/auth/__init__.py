"""Sans-I/O AWS request authentication: verify (SigV4, SigV2, EC2 SigV2) and sign.

Used by Walrus (S3), control (EC2 Query API) and our own clients. Nothing here does I/O
or reads the clock: servers describe requests as ``HttpRequest`` values and pass ``now``.

    auth = parse(req, service="s3", sigv2_resource="/bucket/key")   # None: anonymous
    secret = await lookup(auth.access_key)
    verified = verify(auth, req, secret, now=clock.now())
    if verified.payload_mode.is_streaming:
        decoder = AwsChunkedDecoder(verified)
"""

from .checksums import checksum_b64, crc32_b64, crc32c_b64
from .chunked import AwsChunkedDecoder
from .errors import (
    AccessDenied,
    AuthError,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    BadDigest,
    IncompleteBody,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    MalformedAuth,
    MissingSecurityHeader,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)
from .request import AuthRequest, HttpRequest, PayloadMode, Scheme, StreamingSeed, Verified
from .sign import presign_v4, sign_v2_ec2, sign_v2_s3, sign_v4
from .verify import check_payload_sha256, parse, verify

__all__ = [
    "AccessDenied",
    "AuthError",
    "AuthRequest",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "AwsChunkedDecoder",
    "BadDigest",
    "HttpRequest",
    "IncompleteBody",
    "InvalidAccessKeyId",
    "InvalidArgument",
    "InvalidRequest",
    "MalformedAuth",
    "MissingSecurityHeader",
    "PayloadMode",
    "RequestTimeTooSkewed",
    "Scheme",
    "SignatureDoesNotMatch",
    "StreamingSeed",
    "Verified",
    "XAmzContentSHA256Mismatch",
    "check_payload_sha256",
    "checksum_b64",
    "crc32_b64",
    "crc32c_b64",
    "parse",
    "presign_v4",
    "sign_v2_ec2",
    "sign_v2_s3",
    "sign_v4",
    "verify",
]
