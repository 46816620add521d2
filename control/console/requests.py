"""Account requests: a visitor asks for an account, an administrator approves or rejects.

Tree ``account_requests``: REQUESTID -> record (JSON)::

    {"id": "req-<16 hex>", "account": NAME, "user": NAME, "email", "state":
     "pending" | "approved" | "rejected", "created", "decided": time | null,
     "decided_by": "ACCOUNT/USER" | null, "reason": str, "password_hash": scrypt | null,
     "account_id": the account approval created | null}

Nothing of the cloud exists for a pending or rejected request: no account, no user, no
access key. Approval creates all three in one transaction (identity.py), moves the
password hash to ``console_passwords`` and clears it from the request; a rejected
request keeps its hash only so that the requester (and no one else) can log in to read
the reason. A name is taken while an account of that name exists or a pending request
asks for it, so two visitors cannot both be promised one name.

Every function runs inside a transaction (shared by the console and `eucalypt admin
request`) and raises ``RequestError`` with a message fit to show.
"""

from __future__ import annotations

import re
import secrets

from .. import identity as ids
from ..store import get_json, get_text, put_json, scan_json
from . import passwords

TREE = "account_requests"
_REQUEST_ID = re.compile(r"req-[0-9a-f]{16}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")
# identity.py's own rules (kept there; repeated here so a visitor hears of a bad name
# when asking, not when an administrator approves).
_ACCOUNT_NAME = ids._ACCOUNT_NAME
_USER_NAME = ids._USER_NAME


class RequestError(ValueError):
    """Bad input to a request operation; the message says what."""


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "password_hash"}


def validate(account: str, user: str, email: str) -> None:
    if not _ACCOUNT_NAME.fullmatch(account):
        raise RequestError("The account name must be 3-63 lower-case letters, digits or hyphens, "
                           "starting and ending with a letter or digit.")
    if not _USER_NAME.fullmatch(user):
        raise RequestError("The user name must be 1-64 letters, digits or any of + = , . @ _ -.")
    if not _EMAIL.fullmatch(email):
        raise RequestError("Please give a valid email address.")


def name_taken(txn, account: str) -> bool:
    if get_text(txn, "account_names", account) is not None:
        return True
    return any(rec["account"] == account and rec["state"] == "pending" for _, rec in scan_json(txn, TREE))


def submit(txn, account: str, user: str, email: str, password_hash: str, *, now: float) -> dict:
    """Record a pending request (names validated, password already checked and hashed)."""
    validate(account, user, email)
    if name_taken(txn, account):
        raise RequestError(f"The account name {account!r} is already taken; please choose another.")
    while True:
        request_id = f"req-{secrets.token_hex(8)}"
        if txn.get(TREE, request_id.encode()) is None:
            break
    rec = {"id": request_id, "account": account, "user": user, "email": email, "state": "pending",
           "created": now, "decided": None, "decided_by": None, "reason": "", "password_hash": password_hash,
           "account_id": None}
    put_json(txn, TREE, request_id, rec)
    return _public(rec)


def get(txn, request_id: str) -> dict:
    if not _REQUEST_ID.fullmatch(request_id):
        raise RequestError(f"{request_id!r} is not a request id (req-<16 hex digits>)")
    rec = get_json(txn, TREE, request_id)
    if rec is None:
        raise RequestError(f"There is no request {request_id}.")
    return _public(rec)


def list_requests(txn, state: str | None = None) -> list[dict]:
    found = [_public(rec) for _, rec in scan_json(txn, TREE) if state is None or rec["state"] == state]
    return sorted(found, key=lambda r: r["created"])


def latest_for(txn, account: str, user: str) -> tuple[dict, str | None] | None:
    """The newest request for ACCOUNT/USER and its password hash (None once decided)."""
    found = [rec for _, rec in scan_json(txn, TREE) if rec["account"] == account and rec["user"] == user]
    if not found:
        return None
    rec = max(found, key=lambda r: r["created"])
    return _public(rec), rec.get("password_hash")


def _pending(txn, request_id: str) -> dict:
    get(txn, request_id)
    rec = get_json(txn, TREE, request_id)
    if rec["state"] != "pending":
        raise RequestError(f"Request {request_id} was already {rec['state']}.")
    return rec


def approve(txn, request_id: str, *, now: float, decided_by: str) -> dict:
    """Create the account, its user with one access key, and the console password."""
    rec = _pending(txn, request_id)
    try:
        account = ids.create_account(txn, rec["account"], now=now, email=rec["email"])
        ids.create_user(txn, account.id, rec["user"], now=now)
    except ids.IdentityError as exc:
        raise RequestError(str(exc)) from exc
    passwords.set_hash(txn, account.id, rec["user"], rec["password_hash"], now=now)
    rec.update(state="approved", decided=now, decided_by=decided_by, password_hash=None, account_id=account.id)
    put_json(txn, TREE, request_id, rec)
    return _public(rec)


def reject(txn, request_id: str, reason: str, *, now: float, decided_by: str) -> dict:
    reason = reason.strip()
    if not reason:
        raise RequestError("Please give a reason for the rejection (the requester sees it).")
    if len(reason) > 1000:
        raise RequestError("The reason may have at most 1000 characters.")
    rec = _pending(txn, request_id)
    rec.update(state="rejected", decided=now, decided_by=decided_by, reason=reason)
    put_json(txn, TREE, request_id, rec)
    return _public(rec)
