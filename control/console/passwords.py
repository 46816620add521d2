"""Console passwords: scrypt hashes (memory-hard, from `cryptography`), the strength rule,
and the tree ``console_passwords`` (A/USER -> {"hash", "updated"}).

A hash is one self-describing string, so the cost can be raised later without
invalidating stored ones:

    scrypt$<log2 n>$<r>$<p>$<salt, urlsafe base64>$<32-byte key, urlsafe base64>

n = 2**15, r = 8 costs 32 MiB and ~0.1 s a check: cheap for one login, expensive for an
offline guesser. Hashing is CPU work, so callers in the server run it in a thread
(``hash_password_async`` / ``verify_password_async``), at most two at once so that a
burst of logins cannot take the event loop's memory or both cores.
"""

from __future__ import annotations

import asyncio
import base64
import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..store import get_json, put_json

TREE = "console_passwords"
LOG2_N, R, P, KEY_BYTES, SALT_BYTES = 15, 8, 1, 32, 16
MIN_LENGTH = 10
MAX_LENGTH = 256
# The worst few; the length and class rules catch most of the rest.
_COMMON = frozenset({"password", "passw0rd", "password1", "password123", "1234567890", "0123456789",
                     "qwertyuiop", "letmein123", "eucalyptus", "administrator", "changeme123",
                     "iloveyou12", "trustno1234", "welcome123"})


class WeakPassword(ValueError):
    """The password breaks the strength rule; the message says how."""


def check_strength(password: str, *, names: tuple[str, ...] = ()) -> None:
    """Raise WeakPassword unless the password is at least MIN_LENGTH characters, uses at
    least two kinds of character (lower, upper, digit, other), is not a well-known one
    and does not contain the account or user name."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"The password must have at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"The password may have at most {MAX_LENGTH} characters.")
    kinds = sum((any(c.islower() for c in password), any(c.isupper() for c in password),
                 any(c.isdigit() for c in password), any(not c.isalnum() for c in password)))
    if kinds < 2:
        raise WeakPassword("The password must mix at least two kinds of character "
                           "(lower case, upper case, digits, symbols).")
    lowered = password.lower()
    if lowered in _COMMON or len(set(lowered)) < 4:
        raise WeakPassword("That password is too easy to guess.")
    for name in names:
        if name and len(name) >= 3 and name.lower() in lowered:
            raise WeakPassword("The password must not contain the account or user name.")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    key = Scrypt(salt=salt, length=KEY_BYTES, n=2 ** LOG2_N, r=R, p=P).derive(password.encode())
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


# What an unknown user's password is checked against, so that an unknown name costs the
# same scrypt time as a wrong password. Its key is no password's: nothing matches it.
_NOBODY = f"scrypt${LOG2_N}${R}${P}${'A' * 22}${'A' * 43}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether `password` matches `encoded`; None (no such user) never matches."""
    try:
        scheme, log2_n, r, p, salt, key = (encoded or _NOBODY).split("$")
        if scheme != "scrypt":
            return False
        kdf = Scrypt(salt=_unb64(salt), length=len(_unb64(key)), n=2 ** int(log2_n), r=int(r), p=int(p))
        kdf.verify(password.encode(), _unb64(key))
    except (InvalidKey, ValueError):
        return False
    return encoded is not None


class Hasher:
    """Runs hashing off the event loop, a bounded number at once."""

    def __init__(self, concurrency: int = 2) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)

    async def verify(self, password: str, encoded: str | None) -> bool:
        async with self._slots:
            return await asyncio.to_thread(verify_password, password, encoded)


# ---- the tree -----------------------------------------------------------------------------

def get_hash(txn, account_id: str, user: str) -> str | None:
    rec = get_json(txn, TREE, f"{account_id}/{user}")
    return rec["hash"] if rec else None


def set_hash(txn, account_id: str, user: str, encoded: str, *, now: float) -> None:
    put_json(txn, TREE, f"{account_id}/{user}", {"hash": encoded, "updated": now})


def fingerprint(encoded: str) -> str:
    """A short tag of a hash, kept in sessions: a new password ends the old sessions."""
    import hashlib
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]
