"""Accounts, users and access keys: records and the transactions that change them.

    Account   12-digit id, unique name, enabled flag
    User      name unique within its account, enabled flag, its access keys (at most
              MAX_KEYS, as IAM: a rotated-out key keeps working until it is deleted)
              and the certificates the cloud CA issued to it
    AccessKey AKID -> (account, user, secret)

An identity is usable (its keys authenticate) only while both the user and its account
are enabled. Functions take a transaction and raise ``IdentityError`` subclasses; they
are shared by the server (EC2 calls, the internal lookup) and the admin CLI.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

from walrus.users import canonical_id_for

from .store import get_json, get_text, put_json, put_text, scan_json

ADMIN_ACCOUNT = "eucalyptus"  # the cloud administrator's account, as in Eucalyptus
ADMIN_USER = "admin"
MAX_KEYS = 2

_ACCOUNT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])")
_USER_NAME = re.compile(r"[\w+=,.@-]{1,64}")


class IdentityError(ValueError):
    """Bad input to an identity operation; the message says what."""


class NotFound(IdentityError):
    pass


class Duplicate(IdentityError):
    pass


class LimitExceeded(IdentityError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    enabled: bool
    email: str
    created: float

    @property
    def canonical_seed(self) -> str:
        """What Walrus derives the S3 canonical id from: one per account, as in AWS."""
        return f"account:{self.id}"


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key: str
    secret_key: str
    account_id: str
    user: str
    created: float


@dataclass(frozen=True, slots=True)
class User:
    account_id: str
    name: str
    enabled: bool
    created: float
    access_keys: tuple[str, ...]
    certificates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed a request: the key, its user and account (all as of one snapshot)."""

    key: AccessKey
    user: User
    account: Account

    @property
    def usable(self) -> bool:
        return self.user.enabled and self.account.enabled


def _account(rec: dict) -> Account:
    return Account(rec["id"], rec["name"], rec["enabled"], rec.get("email", ""), rec["created"])


def _user(rec: dict) -> User:
    return User(rec["account_id"], rec["name"], rec["enabled"], rec["created"],
                tuple(rec.get("access_keys", ())), tuple(rec.get("certificates", ())))


def _user_rec(user: User) -> dict:
    return {"account_id": user.account_id, "name": user.name, "enabled": user.enabled,
            "created": user.created, "access_keys": list(user.access_keys),
            "certificates": list(user.certificates)}


def _random(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


# ---- accounts ---------------------------------------------------------------------------

def create_account(txn, name: str, *, now: float, email: str = "") -> Account:
    if not _ACCOUNT_NAME.fullmatch(name):
        raise IdentityError(f"invalid account name {name!r}: 3-63 lowercase letters, digits, hyphens")
    if get_text(txn, "account_names", name) is not None:
        raise Duplicate(f"account {name!r} already exists")
    while True:
        account_id = str(secrets.randbelow(9 * 10**11) + 10**11)
        if get_json(txn, "accounts", account_id) is None:
            break
    account = Account(account_id, name, True, email, now)
    put_json(txn, "accounts", account_id, {"id": account_id, "name": name, "enabled": True,
                                           "email": email, "created": now})
    put_text(txn, "account_names", name, account_id)
    put_text(txn, "canonical", canonical_id_for(account.canonical_seed), account_id)
    return account


def account_by_name(txn, name: str) -> Account:
    account_id = get_text(txn, "account_names", name)
    if account_id is None:
        raise NotFound(f"no account named {name!r}")
    return _account(get_json(txn, "accounts", account_id))


def account_by_id(txn, account_id: str) -> Account | None:
    rec = get_json(txn, "accounts", account_id)
    return _account(rec) if rec else None


def list_accounts(txn) -> list[Account]:
    return sorted((_account(rec) for _, rec in scan_json(txn, "accounts")), key=lambda a: a.name)


def set_account_enabled(txn, name: str, enabled: bool) -> Account:
    account = account_by_name(txn, name)
    rec = get_json(txn, "accounts", account.id)
    rec["enabled"] = enabled
    put_json(txn, "accounts", account.id, rec)
    return _account(rec)


# ---- users ------------------------------------------------------------------------------

def get_user(txn, account_id: str, name: str) -> User:
    rec = get_json(txn, "users", f"{account_id}/{name}")
    if rec is None:
        raise NotFound(f"no user {name!r} in account {account_id}")
    return _user(rec)


def list_users(txn, account_id: str | None = None) -> list[User]:
    prefix = f"{account_id}/" if account_id else ""
    return [_user(rec) for _, rec in scan_json(txn, "users", prefix)]


def create_user(txn, account_id: str, name: str, *, now: float) -> tuple[User, AccessKey]:
    if not _USER_NAME.fullmatch(name):
        raise IdentityError(f"invalid user name {name!r}: 1-64 of letters, digits and +=,.@_-")
    if account_by_id(txn, account_id) is None:
        raise NotFound(f"no account {account_id}")
    if get_json(txn, "users", f"{account_id}/{name}") is not None:
        raise Duplicate(f"user {name!r} already exists in account {account_id}")
    user = User(account_id, name, True, now, (), ())
    put_json(txn, "users", f"{account_id}/{name}", _user_rec(user))
    key = create_access_key(txn, account_id, name, now=now)
    return get_user(txn, account_id, name), key


def set_user_enabled(txn, account_id: str, name: str, enabled: bool) -> User:
    user = get_user(txn, account_id, name)
    rec = _user_rec(user)
    rec["enabled"] = enabled
    put_json(txn, "users", f"{account_id}/{name}", rec)
    return _user(rec)


def add_certificate(txn, account_id: str, name: str, cert_pem: str) -> None:
    rec = _user_rec(get_user(txn, account_id, name))
    rec["certificates"].append(cert_pem)
    put_json(txn, "users", f"{account_id}/{name}", rec)


# ---- access keys ------------------------------------------------------------------------

def create_access_key(txn, account_id: str, name: str, *, now: float) -> AccessKey:
    user = get_user(txn, account_id, name)
    if len(user.access_keys) >= MAX_KEYS:
        raise LimitExceeded(f"user {name!r} already has {MAX_KEYS} access keys; delete one first")
    while True:
        akid = "AKIA" + _random(16, string.ascii_uppercase + string.digits)
        if txn.get("access_keys", akid.encode()) is None:
            break
    secret = _random(40, string.ascii_letters + string.digits + "+/")
    key = AccessKey(akid, secret, account_id, name, now)
    put_json(txn, "access_keys", akid, {"access_key": akid, "secret_key": secret, "account_id": account_id,
                                        "user": name, "created": now})
    rec = _user_rec(user)
    rec["access_keys"].append(akid)
    put_json(txn, "users", f"{account_id}/{name}", rec)
    return key


def get_access_key(txn, akid: str) -> AccessKey | None:
    rec = get_json(txn, "access_keys", akid)
    if rec is None:
        return None
    return AccessKey(rec["access_key"], rec["secret_key"], rec["account_id"], rec["user"], rec["created"])


def user_keys(txn, user: User) -> list[AccessKey]:
    return [k for akid in user.access_keys if (k := get_access_key(txn, akid)) is not None]


def delete_access_key(txn, account_id: str, name: str, akid: str) -> None:
    user = get_user(txn, account_id, name)
    if akid not in user.access_keys:
        raise NotFound(f"user {name!r} has no access key {akid}")
    txn.delete("access_keys", akid.encode())
    rec = _user_rec(user)
    rec["access_keys"].remove(akid)
    put_json(txn, "users", f"{account_id}/{name}", rec)


def rotate_access_key(txn, account_id: str, name: str, *, now: float) -> tuple[AccessKey, str | None]:
    """A new key; if the user already has MAX_KEYS, the oldest is deleted to make room.

    The previous newest key keeps working (delete it once clients moved over). Returns
    (new key, id of the key deleted or None).
    """
    user = get_user(txn, account_id, name)
    dropped = None
    if len(user.access_keys) >= MAX_KEYS:
        dropped = user.access_keys[0]
        delete_access_key(txn, account_id, name, dropped)
    return create_access_key(txn, account_id, name, now=now), dropped


def identity_for_key(txn, akid: str) -> Identity | None:
    """The identity behind an access key (usable or not), or None if the key is unknown."""
    key = get_access_key(txn, akid)
    if key is None:
        return None
    account = account_by_id(txn, key.account_id)
    rec = get_json(txn, "users", f"{key.account_id}/{key.user}")
    if account is None or rec is None:
        return None
    return Identity(key, _user(rec), account)


def account_for_canonical_id(txn, canonical_id: str) -> Account | None:
    account_id = get_text(txn, "canonical", canonical_id)
    return account_by_id(txn, account_id) if account_id else None


def ensure_admin(txn, *, now: float) -> tuple[Account, AccessKey | None]:
    """The cloud administrator's account and user, created if missing (first start)."""
    try:
        return account_by_name(txn, ADMIN_ACCOUNT), None
    except NotFound:
        pass
    account = create_account(txn, ADMIN_ACCOUNT, now=now)
    _, key = create_user(txn, account.id, ADMIN_USER, now=now)
    return account, key
