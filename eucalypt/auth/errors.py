"""Authentication errors, each knowing its S3 code and HTTP status (and the EC2 equivalent).

    AuthError                              base: code, message, status
    ├── MalformedAuth                      400: the request cannot even be checked
    │   ├── AuthorizationHeaderMalformed   bad Authorization header / credential scope
    │   ├── AuthorizationQueryParametersError   bad presigned-URL parameters
    │   ├── MissingSecurityHeader          a header the scheme needs is absent
    │   ├── InvalidRequest                 unsupported scheme, missing x-amz-content-sha256, ...
    │   ├── InvalidArgument                bad aws-chunked framing or trailer
    │   └── IncompleteBody                 aws-chunked body ended early
    ├── XAmzContentSHA256Mismatch          400: body hash differs from the signed claim
    ├── BadDigest                          400: a checksum header differs from the body
    ├── SignatureDoesNotMatch              403: wrong secret or tampered request
    ├── AccessDenied                       403: e.g. presigned URL expired
    ├── RequestTimeTooSkewed               403: header-signed request too far from now
    └── InvalidAccessKeyId                 403: raised by callers whose key lookup failed

The library never decides HTTP framing; the server turns an AuthError into its protocol's
error document (S3 XML or EC2 <Response><Errors>) using ``code``/``status`` or
``ec2_code``/``ec2_status``.
"""

from __future__ import annotations


class AuthError(Exception):
    """A request failed authentication; ``code`` and ``status`` are what S3 would answer."""

    code: str = "AccessDenied"
    status: int = 403
    # EC2's Query API names some of the same failures differently.
    ec2_code: str | None = None
    ec2_status: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def code_for(self, service: str) -> tuple[str, int]:
        """(code, status) as ``service`` ("s3", "ec2", ...) reports this failure."""
        if service != "s3" and self.ec2_code is not None:
            return self.ec2_code, self.ec2_status or self.status
        return self.code, self.status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class MalformedAuth(AuthError):
    code = "InvalidRequest"
    status = 400


class AuthorizationHeaderMalformed(MalformedAuth):
    code = "AuthorizationHeaderMalformed"
    ec2_code = "IncompleteSignature"


class AuthorizationQueryParametersError(MalformedAuth):
    code = "AuthorizationQueryParametersError"
    ec2_code = "IncompleteSignature"


class MissingSecurityHeader(MalformedAuth):
    code = "MissingSecurityHeader"
    ec2_code = "MissingParameter"


class InvalidRequest(MalformedAuth):
    code = "InvalidRequest"


class InvalidArgument(MalformedAuth):
    code = "InvalidArgument"


class IncompleteBody(MalformedAuth):
    code = "IncompleteBody"


class XAmzContentSHA256Mismatch(AuthError):
    code = "XAmzContentSHA256Mismatch"
    status = 400


class BadDigest(AuthError):
    code = "BadDigest"
    status = 400


class SignatureDoesNotMatch(AuthError):
    code = "SignatureDoesNotMatch"
    status = 403


class AccessDenied(AuthError):
    code = "AccessDenied"
    status = 403
    ec2_code = "RequestExpired"
    ec2_status = 400


class RequestTimeTooSkewed(AuthError):
    code = "RequestTimeTooSkewed"
    status = 403
    ec2_code = "RequestExpired"
    ec2_status = 400


class InvalidAccessKeyId(AuthError):
    code = "InvalidAccessKeyId"
    status = 403
    ec2_code = "AuthFailure"
    ec2_status = 401
