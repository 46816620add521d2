"""The service-to-service user lookup: how Walrus (and later others) ask control who a key is.

    POST /_eucalypt/internal/users/lookup
    X-Eucalypt-Date: <unix seconds>
    Authorization: EUCALYPT-HMAC-SHA256 <hex HMAC-SHA256(service secret, string to sign)>
    body: {"access_key": "AKIA..."} | {"canonical_id": "<64 hex>"} | {"email": "..."}
          | {"account_name": "..."}

    string to sign = "POST\n" + path + "\n" + date + "\n" + hex SHA-256 of the body

The service secret is DATA/service.secret (mode 0600). A date more than MAX_SKEW seconds
from control's clock, a bad or missing signature: 401 {"error": ...}. Otherwise 200
``{"user": USER}`` or ``{"user": null}``, where USER is

    {"name": seed of the S3 canonical id ("account:<account id>": one per account, as in AWS),
     "display_name": account name, "email": account email, "access_key", "secret_key",
     "enabled": user and account both enabled, "account_id", "account_name", "user_name"}

Lookups by canonical id, email or account name describe the account (access_key, secret_key and
user_name are empty): S3 only needs its display name there.
"""

from __future__ import annotations

import hashlib
import hmac

LOOKUP_PATH = "/_eucalypt/internal/users/lookup"
SCHEME = "EUCALYPT-HMAC-SHA256"
MAX_SKEW = 300


def string_to_sign(method: str, path: str, date: str, body: bytes) -> str:
    return f"{method}\n{path}\n{date}\n{hashlib.sha256(body).hexdigest()}"


def sign(secret: str, method: str, path: str, date: str, body: bytes) -> str:
    return hmac.new(secret.encode(), string_to_sign(method, path, date, body).encode(), hashlib.sha256).hexdigest()


def signed_headers(secret: str, path: str, body: bytes, now: float) -> dict[str, str]:
    date = str(int(now))
    return {"X-Eucalypt-Date": date, "Authorization": f"{SCHEME} {sign(secret, 'POST', path, date, body)}",
            "Content-Type": "application/json"}


def check(secret: str, method: str, path: str, headers, body: bytes, now: float) -> str | None:
    """None if the request is properly signed and fresh, else why not."""
    date = headers.get("X-Eucalypt-Date", "")
    auth = headers.get("Authorization", "")
    if not date.isdigit():
        return "missing or malformed X-Eucalypt-Date"
    if abs(now - int(date)) > MAX_SKEW:
        return f"X-Eucalypt-Date is more than {MAX_SKEW} s from the server's clock"
    scheme, _, given = auth.partition(" ")
    if scheme != SCHEME or not given:
        return f"Authorization must be '{SCHEME} <signature>'"
    if not hmac.compare_digest(sign(secret, method, path, date, body), given.strip()):
        return "signature does not match"
    return None
