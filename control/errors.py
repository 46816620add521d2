"""EC2 errors: one exception type that knows its code and HTTP status.

    Ec2Error(code, message)        status from STATUS (400 unless listed)

Handlers raise these; the server turns them into the EC2 error envelope
``<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>``.
"""

from __future__ import annotations

# Codes whose HTTP status is not 400 (EC2 answers almost every client error with 400).
STATUS = {
    "AuthFailure": 401,
    "MissingAuthenticationToken": 401,
    "SignatureDoesNotMatch": 403,
    "UnauthorizedOperation": 403,
    "OptInRequired": 403,
    "Blocked": 403,
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "Unavailable": 503,
}


class Ec2Error(Exception):
    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS.get(code, 400)


def missing(name: str) -> Ec2Error:
    return Ec2Error("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: object, why: str = "") -> Ec2Error:
    detail = f" for parameter {name}" + (f": {why}" if why else "")
    return Ec2Error("InvalidParameterValue", f"Invalid value '{value}'{detail}")
