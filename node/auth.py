"""Service-to-service authentication of node API calls.

The same scheme as control's internal API (control/internal.py, whose signing we
reuse): X-Eucalypt-Date + Authorization: EUCALYPT-HMAC-SHA256 HMAC(secret, method \n
path \n date \n sha256(body)). Here `path` is the raw path *with* its query string, so
no parameter can be changed in flight.
"""

from __future__ import annotations

from control.internal import MAX_SKEW, SCHEME, check, sign

__all__ = ["MAX_SKEW", "SCHEME", "check_request", "signed_headers"]


def signed_headers(secret: str, method: str, path_qs: str, body: bytes, now: float) -> dict[str, str]:
    date = str(int(now))
    return {"X-Eucalypt-Date": date, "Authorization": f"{SCHEME} {sign(secret, method, path_qs, date, body)}"}


def check_request(secret: str, method: str, path_qs: str, headers, body: bytes, now: float) -> str | None:
    """None if properly signed and fresh, else why not."""
    return check(secret, method, path_qs, headers, body, now)
